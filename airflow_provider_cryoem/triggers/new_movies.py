"""Waits in the triggerer until the watched folder changes in a way that may give a live run work."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..ingest import FolderSnapshot, scan_folder


class NewMoviesTrigger(BaseTrigger):
    """Scans the folder every `poll_interval_s`; fires when it differs from the sensor's snapshot
    (a movie completed, the end marker appeared, the last growing file finished) or the idle deadline passed.

    It only looks at files: which movies were taken is decided by the sensor against the results store,
    so the triggerer needs no database and a restarted triggerer loses nothing.
    """

    def __init__(self, watch_dir: str, movie_glob: str, end_marker: str, stable_for_s: float,
                 snapshot: dict[str, Any], idle_deadline_s: float, poll_interval_s: float,
                 skip_dir: str | None = None) -> None:
        super().__init__()
        self.watch_dir = watch_dir
        self.movie_glob = movie_glob
        self.end_marker = end_marker
        self.stable_for_s = stable_for_s
        self.snapshot = snapshot
        self.idle_deadline_s = idle_deadline_s
        self.poll_interval_s = poll_interval_s
        self.skip_dir = skip_dir

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "watch_dir": self.watch_dir, "movie_glob": self.movie_glob, "end_marker": self.end_marker,
            "stable_for_s": self.stable_for_s, "snapshot": self.snapshot, "idle_deadline_s": self.idle_deadline_s,
            "poll_interval_s": self.poll_interval_s, "skip_dir": self.skip_dir})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        before = FolderSnapshot(**self.snapshot)
        while True:
            now_s = time.time()
            scan = await asyncio.to_thread(scan_folder, self.watch_dir, self.movie_glob, self.end_marker,
                                           self.stable_for_s, now_s, self.skip_dir)
            if FolderSnapshot.of(scan) != before:
                yield TriggerEvent({"status": "changed"})
                return
            if now_s >= self.idle_deadline_s:
                yield TriggerEvent({"status": "idle"})
                return
            await asyncio.sleep(self.poll_interval_s)
