"""Hostile session confs and folders: paths stay under the data roots, bad files fail by name alone,
and nothing another session or a crashed writer left behind blocks or mixes a session's data."""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_cryoem.config import ConfigError, parse_session_config
from airflow_provider_cryoem.ingest import scan_folder
from airflow_provider_cryoem.io import ImageFileError
from airflow_provider_cryoem.io.defects import load_defect_map
from airflow_provider_cryoem.pipeline.session import open_session
from airflow_provider_cryoem.pipeline.watch import MIN_WAIT_S, WatchSettings, take_new_movies, wake_up_plan
from airflow_provider_cryoem.relion_project import aggregate
from airflow_provider_cryoem.relion_project.locking import RELION_LOCK_DIR, RELION_LOCK_FILE, relion_pipeline_lock
from airflow_provider_cryoem.relion_project.project import RelionProject
from airflow_provider_cryoem.pipeline.stores import results_store


def _file(path: Path, size: int = 100, age_s: float = 60.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    (root / "visit" / "raw").mkdir(parents=True)
    monkeypatch.setenv("CRYOEM_DATA_ROOTS", str(root))
    monkeypatch.delenv("CRYOEM_RESULTS_CONN_ID", raising=False)
    return root


def _open(conf: dict, run_id: str = "run_1") -> dict:
    return open_session(conf, "spa_live", run_id, reprocess=False, logical_date=None, sessions_root=None)


@pytest.mark.parametrize("glob", ["../../x/*.tiff", "/etc/*", "raw/../../*.tiff", "**/../*.tiff"])
def test_a_movie_glob_that_could_leave_the_watched_folder_is_refused_by_name(glob: str):
    with pytest.raises(ConfigError, match="movie_glob"):
        parse_session_config({"movie_glob": glob})


@pytest.mark.parametrize("marker", ["../END", "/etc/passwd", "..", "a/b", "END\nx"])
def test_an_end_marker_that_is_not_a_plain_file_name_is_refused(marker: str):
    with pytest.raises(ConfigError, match="end_marker"):
        parse_session_config({"end_marker": marker})


def test_a_symbolic_link_out_of_the_watched_folder_is_never_taken_as_a_movie(tmp_path: Path):
    secret = _file(tmp_path / "elsewhere" / "secret.tiff")
    watch = tmp_path / "raw"
    _file(watch / "good.tiff")
    (watch / "link.tiff").symlink_to(secret)
    (watch / "sub").symlink_to(secret.parent, target_is_directory=True)
    scan = scan_folder(watch, "*.tiff", "END", 2.0)
    assert [m.relative_path for m in scan.complete] == ["good.tiff"]


def test_outputs_in_a_processing_folder_inside_the_watched_folder_are_not_read_back_as_movies(tmp_path: Path):
    watch = tmp_path / "raw"
    _file(watch / "m1.mrc")
    _file(watch / "processing" / "relion" / "MotionCorr" / "job002" / "Movies" / "m1.mrc")
    scan = scan_folder(watch, "*.mrc", "END", 2.0, skip_dir=watch / "processing")
    assert [m.relative_path for m in scan.complete] == ["m1.mrc"]


def test_files_that_cannot_be_looked_at_are_skipped_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    watch = tmp_path / "raw"
    _file(watch / "ok.tiff")
    _file(watch / "locked" / "hidden.tiff")
    (watch / "dangling.tiff").symlink_to(tmp_path / "gone.tiff")
    real_resolve = Path.resolve

    def no_permission(path: Path, strict: bool = False) -> Path:
        if path.name == "hidden.tiff":  # as a worker without rights to the folder sees it (tests run as root)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_resolve(path, strict=strict)

    monkeypatch.setattr(Path, "resolve", no_permission)
    assert [m.relative_path for m in scan_folder(watch, "*.tiff", "END", 2.0).complete] == ["ok.tiff"]


@pytest.mark.parametrize("field", ["gain_reference_path", "defect_file_path", "initial_model_path"])
def test_input_files_outside_the_data_roots_fail_the_session_at_once_naming_the_field(roots: Path, tmp_path: Path,
                                                                                   field: str):
    outside = _file(tmp_path / "etc" / "credentials.txt")
    with pytest.raises(ConfigError, match=f"{field}: .* outside the allowed data roots"):
        _open({"watch_dir": str(roots / "visit" / "raw"), field: str(outside)})
    escaping = roots / "visit" / "gain_link.mrc"
    escaping.symlink_to(outside)
    with pytest.raises(ConfigError, match=f"{field}: .* outside the allowed data roots"):
        _open({"watch_dir": str(roots / "visit" / "raw"), field: str(escaping)})


def test_missing_folders_and_files_fail_the_session_when_it_opens(roots: Path):
    with pytest.raises(ConfigError, match="watch_dir: .* is not an existing folder"):
        _open({"watch_dir": str(roots / "visit" / "typo")})
    with pytest.raises(ConfigError, match="gain_reference_path: .* is not an existing file"):
        _open({"watch_dir": str(roots / "visit" / "raw"), "gain_reference_path": str(roots / "gain.mrc")})


def test_whitespace_in_a_session_folder_is_refused_when_the_session_opens(roots: Path):
    spaced = roots / "my visit" / "raw"
    spaced.mkdir(parents=True)
    with pytest.raises(ConfigError, match="watch_dir: .*whitespace"):
        _open({"watch_dir": str(spaced)})


def test_a_defect_file_that_is_not_a_defect_list_is_refused_without_showing_its_content(tmp_path: Path):
    secrets = tmp_path / "defects.txt"
    secrets.write_text("# settings\npassword = hunter2\n")
    with pytest.raises(ImageFileError) as raised:
        load_defect_map(secrets, (16, 16))
    assert "hunter2" not in str(raised.value) and "line 2" in str(raised.value)


def test_files_with_unusable_names_are_recorded_as_failed_and_do_not_hold_the_session(roots: Path):
    watch = roots / "visit" / "raw"
    _file(watch / "good.tiff")
    _file(watch / "bad name.tiff")
    _file(watch / "bad\nname.tiff")
    opened = _open({"watch_dir": str(watch), "idle_timeout_s": 1})
    settings = WatchSettings.model_validate(opened["sessions"][0]["watch"])
    taken = take_new_movies(settings, "run_1")
    assert taken["movies"] == ["good.tiff"]
    again = take_new_movies(settings, "run_1")  # the run's retry: same movies, the rejects not again
    assert again["movies"] == ["good.tiff"]
    summary = results_store(None, settings.processing_path).session_summary(settings.session_id)
    reasons = {f.movie: f.reason for f in summary.failures}
    assert reasons == {"bad name.tiff": "file not processed: its name contains whitespace, which STAR files "
                                        "cannot hold",
                       "bad\\nname.tiff": "file not processed: its name contains a control character"}
    time.sleep(1.1)
    later = take_new_movies(settings, "run_2")
    assert later == {"movies": [], "session_over": True, "reason": "no new movie for 1 s"}


def test_an_empty_movie_no_longer_keeps_the_session_open_and_the_sensor_never_spins(roots: Path):
    watch = roots / "visit" / "raw"
    _file(watch / "empty.tiff", size=0)
    _file(watch / "growing.tiff", age_s=-3600)  # a clock an hour ahead: never settles
    opened = _open({"watch_dir": str(watch), "idle_timeout_s": 1})
    settings = WatchSettings.model_validate(opened["sessions"][0]["watch"])
    assert take_new_movies(settings, "run_1")["movies"] == ["empty.tiff"]
    plan = wake_up_plan(settings)
    assert plan["idle_deadline_s"] >= time.time() + MIN_WAIT_S - 0.5


def test_two_movies_that_differ_after_the_first_dot_get_two_micrographs(tmp_path: Path):
    project = RelionProject(tmp_path / "relion")
    job = project.job("motioncorr")
    first = job.file_for(tmp_path / "raw" / "movie.0001.tiff", ".mrc", tmp_path / "raw")
    second = job.file_for(tmp_path / "raw" / "movie.0002.tiff", ".mrc", tmp_path / "raw")
    assert first != second and first.name == "movie.0001.mrc"


def test_a_dated_reprocess_gives_each_folder_its_own_session_and_processing_folder(roots: Path):
    import datetime as dt

    sessions = roots / "sessions"
    for name in ("20261120_a", "20261120_b"):
        _file(sessions / name / "m.tiff")
    opened = open_session({"processing_dir": str(roots / "out")}, "spa_reprocess", "run_r", reprocess=True,
                          logical_date=dt.datetime(2026, 11, 20), sessions_root=str(sessions))
    found = opened["sessions"]
    assert [Path(s["processing_path"]).name for s in found] == ["20261120_a", "20261120_b"]
    assert len({(s["session_id"], s["processing_path"]) for s in found}) == 2


def test_a_stale_relion_pipeline_lock_of_a_killed_process_is_broken(tmp_path: Path):
    lock_dir = tmp_path / RELION_LOCK_DIR
    lock_dir.mkdir()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (lock_dir / RELION_LOCK_FILE).write_text(f"cryoem pid {dead} host {os.uname().nodename}\n")
    started = time.monotonic()
    with relion_pipeline_lock(tmp_path, timeout_s=5):
        pass
    assert time.monotonic() - started < 2 and not lock_dir.exists()


def test_a_lock_held_by_a_live_program_is_still_waited_for(tmp_path: Path):
    lock_dir = tmp_path / RELION_LOCK_DIR
    lock_dir.mkdir()
    (lock_dir / RELION_LOCK_FILE).write_text("relion gui\n")
    with pytest.raises(TimeoutError, match="pipeline lock"):
        with relion_pipeline_lock(tmp_path, timeout_s=0.3):
            pass


def test_a_full_disk_never_leaves_a_truncated_star_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    star = tmp_path / "micrographs.star"
    header = "data_micrographs\nloop_\n_rlnMicrographName\n_rlnValue\n"
    aggregate.upsert_rows(star, header, "micrographs", ["rlnMicrographName", "rlnValue"], "rlnMicrographName",
                          "a.mrc", [["a.mrc", 1.0]])
    before = star.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def short_then_full(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # the keys sidecar went through; the rows: 3 bytes, then the disk is full
            return real_write(fd, bytes(data)[:3])
        if calls["n"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(aggregate.os, "write", short_then_full)
    with pytest.raises(OSError):
        aggregate.upsert_rows(star, header, "micrographs", ["rlnMicrographName", "rlnValue"],
                              "rlnMicrographName", "b.mrc", [["b.mrc", 2.0]])
    monkeypatch.undo()
    assert star.read_bytes() == before
    aggregate.upsert_rows(star, header, "micrographs", ["rlnMicrographName", "rlnValue"], "rlnMicrographName",
                          "b.mrc", [["b.mrc", 2.0]])  # the retry after space was freed
    rows = [line.split() for line in star.read_text().splitlines()[4:]]
    assert [row[0] for row in rows] == ["a.mrc", "b.mrc"] and np.isclose(float(rows[1][1]), 2.0)


def _simulated_batch(roots: Path, seed: int) -> tuple[list[dict], dict, list[str]]:
    """Two small simulated movies in the session folder, opened as one micro-batch: (items, conf, movies)."""
    from airflow_provider_cryoem.pipeline.session import plan_batches
    from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, SpaSimulationSettings, write_spa_session

    settings = SpaSimulationSettings(n_movies=2, image_size_px=256, n_frames=6, particle_diameter_a=80,
                                     particles_per_micrograph=4, seed=seed)
    watch = roots / "visit" / "raw"
    truth = write_spa_session(settings, watch)
    conf = {"watch_dir": str(watch), "pixel_size_a": settings.pixel_size_a, "particle_diameter_a": 80,
            "gain_reference_path": str(watch / GAIN_REFERENCE_NAME)}
    movies = [m.movie_name for m in truth.movies]
    [items] = plan_batches(_open(conf), {"movies": movies}, max_per_task=10, parallel_tasks=1)
    return items, conf, movies


def test_a_result_the_store_refuses_fails_only_that_movie_and_reaches_no_star_file(roots: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    """CTFFIND reports an infinite fit resolution for an empty micrograph: that movie is failed with the
    reason, the other one is recorded, and micrographs_ctf.star lists only the recorded one."""
    from airflow_provider_cryoem.pipeline import movie_batch
    from airflow_provider_cryoem.pipeline.stages import BUILTIN_RUNNERS
    from airflow_provider_cryoem.recipes.stages import CtfParams, MotionCorrectionParams

    items, conf, movies = _simulated_batch(roots, seed=2)
    config = parse_session_config(conf)
    motion = movie_batch.process_batch("motioncorr", "builtin", "local", items, config, MotionCorrectionParams(),
                                       {}, "run_1")
    real_ctf = BUILTIN_RUNNERS["ctf"]

    def empty_first_micrograph(ctx):
        result = real_ctf(ctx)
        return {**result, "fit_resolution_a": float("inf")} if ctx.item["movie"] == movies[0] else result

    monkeypatch.setitem(BUILTIN_RUNNERS, "ctf", empty_first_micrograph)
    outcomes = movie_batch.process_batch("ctf", "builtin", "local", items, config, CtfParams(),
                                         {"motioncorr": {o["movie"]: o for o in motion}}, "run_1")
    assert [o["status"] for o in outcomes] == ["failed", "ok"]
    assert "fit_resolution_a" in outcomes[0]["error"]
    star = next(Path(items[0]["relion_dir"]).glob("CtfFind/job*/micrographs_ctf.star")).read_text()
    assert Path(movies[1]).stem in star and Path(movies[0]).stem not in star
    summary = results_store(None, items[0]["processing_path"]).session_summary(items[0]["session_id"])
    assert (summary.stages["ctf"].succeeded, summary.stages["ctf"].failed) == (1, 1)


def test_a_program_that_exits_0_without_its_micrograph_fails_only_that_movie(roots: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """As MotionCor2 does on some GPU errors: the run 'succeeds' and the sum is not there."""
    from airflow_provider_cryoem.pipeline import movie_batch
    from airflow_provider_cryoem.pipeline.stages import BUILTIN_RUNNERS
    from airflow_provider_cryoem.recipes.stages import MotionCorrectionParams

    items, conf, movies = _simulated_batch(roots, seed=3)
    real_motion = BUILTIN_RUNNERS["motioncorr"]

    def sum_vanishes_for_the_first(ctx):
        result = real_motion(ctx)
        if ctx.item["movie"] == movies[0]:
            Path(result["micrograph"]).unlink()
        return result

    monkeypatch.setitem(BUILTIN_RUNNERS, "motioncorr", sum_vanishes_for_the_first)
    outcomes = movie_batch.process_batch("motioncorr", "builtin", "local", items, parse_session_config(conf),
                                         MotionCorrectionParams(), {}, "run_1")
    assert [o["status"] for o in outcomes] == ["failed", "ok"]
    assert "does not exist" in outcomes[0]["error"] and Path(movies[0]).stem in outcomes[0]["error"]
