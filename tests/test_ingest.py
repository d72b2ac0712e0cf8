"""Finding complete movies and deciding when a live session ends."""
from __future__ import annotations

import os
import time

from airflow_provider_cryoem.ingest import (
    FolderScan,
    MovieFile,
    scan_folder,
    session_end_reason,
    split_into_batches,
)


def _movie(path, size=100, age_s=10.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    past = time.time() - age_s
    os.utime(path, (past, past))


def test_growing_file_is_not_complete_until_its_size_settles(tmp_path):
    _movie(tmp_path / "a.tiff", age_s=10)
    _movie(tmp_path / "b.tiff", age_s=0)
    scan = scan_folder(tmp_path, "*.tiff", "END", stable_for_s=2.0)
    assert [m.relative_path for m in scan.complete] == ["a.tiff"]
    assert [m.relative_path for m in scan.incomplete] == ["b.tiff"]


def test_metadata_sidecar_marks_a_fresh_movie_complete(tmp_path):
    _movie(tmp_path / "b.tiff", age_s=0)
    (tmp_path / "b.xml").write_text("<MicroscopeImage/>")
    scan = scan_folder(tmp_path, "*.tiff", "END", stable_for_s=60.0)
    assert [m.relative_path for m in scan.complete] == ["b.tiff"]


def test_empty_file_is_complete_once_settled_so_it_fails_by_name_instead_of_holding_the_session(tmp_path):
    _movie(tmp_path / "empty.tiff", size=0, age_s=100)
    _movie(tmp_path / "new_empty.tiff", size=0, age_s=0)
    (tmp_path / "new_empty.xml").write_text("<MicroscopeImage/>")  # a sidecar never completes an empty file
    scan = scan_folder(tmp_path, "*.tiff", "END", 2.0)
    assert [m.relative_path for m in scan.complete] == ["empty.tiff"]
    assert [m.relative_path for m in scan.incomplete] == ["new_empty.tiff"]


def test_movies_in_subfolders_are_found_with_relative_paths(tmp_path):
    _movie(tmp_path / "GridSquare_1" / "Data" / "m1.tiff")
    scan = scan_folder(tmp_path, "*.tiff", "END", 2.0)
    assert [m.relative_path for m in scan.complete] == [os.path.join("GridSquare_1", "Data", "m1.tiff")]


def test_end_marker_ends_only_when_everything_was_taken():
    movie = MovieFile("a.tiff", 1, 0.0)
    scan = FolderScan(complete=[movie], incomplete=[], end_marker_present=True)
    assert session_end_reason(scan, [movie], 0, 0, 0.0, 600) is None
    assert "marker" in session_end_reason(scan, [], 1, 0, 0.0, 600)
    growing = FolderScan(complete=[], incomplete=[movie], end_marker_present=True)
    assert session_end_reason(growing, [], 1, 0, 0.0, 600) is None


def test_idle_timeout_and_movie_limit_end_the_session():
    quiet = FolderScan(complete=[], incomplete=[], end_marker_present=False)
    assert session_end_reason(quiet, [], 3, 0, idle_for_s=10, idle_timeout_s=60) is None
    assert "no new movie" in session_end_reason(quiet, [], 3, 0, idle_for_s=61, idle_timeout_s=60)
    assert "limit" in session_end_reason(quiet, [], 5, 5, idle_for_s=0, idle_timeout_s=60)


def test_few_movies_get_one_task_each_and_bursts_are_batched():
    assert split_into_batches(["a", "b", "c"], max_per_batch=8, parallel_tasks=4) == [["a"], ["b"], ["c"]]
    burst = [f"m{i}" for i in range(100)]
    batches = split_into_batches(burst, max_per_batch=8, parallel_tasks=4)
    assert [m for b in batches for m in b] == burst
    assert max(len(b) for b in batches) == 8 and len(batches) == 13
    assert split_into_batches([], 8, 4) == []
