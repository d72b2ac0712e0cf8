"""Waits in the triggerer until a live session has new complete movies, or is over."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..ingest import session_end_reason
from ..watch import WatchSettings, look_for_movies


class NewMoviesTrigger(BaseTrigger):
    """Scans the folder every `poll_interval_s` and fires once there is work or the session is over.

    It keeps nothing in memory that matters: what was taken is in the results store, so a restarted
    triggerer carries on where it was.
    """

    def __init__(self, watch: dict[str, Any], poll_interval_s: float) -> None:
        super().__init__()
        self.watch = watch
        self.poll_interval_s = poll_interval_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"watch": self.watch, "poll_interval_s": self.poll_interval_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = WatchSettings.model_validate(self.watch)
        while True:
            look = await asyncio.to_thread(look_for_movies, settings, time.time())
            if look.unclaimed:
                yield TriggerEvent({"status": "movies", "count": len(look.unclaimed)})
                return
            reason = session_end_reason(look.scan, look.unclaimed, look.claimed_total, settings.max_movies,
                                        look.idle_for_s, settings.idle_timeout_s)
            if reason:
                yield TriggerEvent({"status": "ended", "reason": reason})
                return
            await asyncio.sleep(self.poll_interval_s)
