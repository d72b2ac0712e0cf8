"""Faults of the processing disk and of the watched folder, driven through the per-movie stages as the
operators call them (pipeline.movie_batch.process_batch), with the results in a real PostgreSQL database.

A. The processing folder is a small tmpfs filled up to a chosen free space: a stage fails with DiskFullError
   naming the file it was writing; no STAR, MRC, JPEG or PNG is left truncated, no temp file stays behind,
   the movies it did not finish are neither in the results database nor in the stage's STAR file; the same
   stage run again after space is freed (an Airflow retry) completes them, each exactly once.
B. A movie deleted, truncated or replaced while motion correction reads it: the movie fails naming the file
   (deleted, truncated) or its new content is processed once (replaced), and the batch goes on.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from airflow_provider_cryoem.config import parse_session_config
from airflow_provider_cryoem.execution import CommandSpec, run_local
from airflow_provider_cryoem.io import ImageFileError, read_movie, write_mrc
from airflow_provider_cryoem.io import movie as movie_io
from airflow_provider_cryoem.io.errors import DiskFullError
from airflow_provider_cryoem.operators.movie_steps import upstream_steps
from airflow_provider_cryoem.pipeline import movie_batch
from airflow_provider_cryoem.pipeline.session import open_session, plan_batches
from airflow_provider_cryoem.pipeline.stores import results_store
from airflow_provider_cryoem.recipes.stages import STAGES
from airflow_provider_cryoem.relion_project import aggregate
from airflow_provider_cryoem.relion_project.star_text import parse_star
from airflow_provider_cryoem.results import schema
from airflow_provider_cryoem.simulate import GAIN_REFERENCE_NAME, SpaSimulationSettings, write_spa_session

from ._pg import pg_url  # noqa: F401  (fixture)
from .test_hardening_sessions import roots as data_root  # noqa: F401  (fixture: data roots with visit/raw)

CONN_ID = "cryoem_faults_test"
SIM = SpaSimulationSettings(n_movies=3, image_size_px=256, n_frames=6, particle_diameter_a=80,
                            particles_per_micrograph=4, seed=21)
STAGE_ORDER = ("motioncorr", "ctf", "pick", "extract")
# Where each stage lists its movies: (Relion job folder glob, STAR file, key column), and its results table.
STAGE_STAR = {"import": ("Import/job*", "movies.star", "rlnMicrographMovieName"),
              "motioncorr": ("MotionCorr/job*", "corrected_micrographs.star", "rlnMicrographName"),
              "ctf": ("CtfFind/job*", "micrographs_ctf.star", "rlnMicrographName"),
              "pick": ("AutoPick/job*", "autopick.star", "rlnMicrographName"),
              "extract": ("Extract/job*", "particles.star", "rlnMicrographName")}
STAGE_TABLE = {"motioncorr": schema.motion_correction, "ctf": schema.ctf, "pick": schema.particle_picker}
DISK_MB = 24
# What each stage writes per movie of SIM on tmpfs (measured: 617 kB, 511 kB, 56 kB, 64 kB, first movie's job
# files included), rounded.
BYTES_PER_MOVIE = {"motioncorr": 620_000, "ctf": 510_000, "pick": 56_000, "extract": 64_000}


@pytest.fixture
def results_in_postgres(pg_url: str, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """Sessions opened in the test record into the run's PostgreSQL database, as a deployment would (after
    `data_root`, which clears the variable)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    monkeypatch.setenv("CRYOEM_RESULTS_CONN_ID", CONN_ID)
    return pg_url


@pytest.fixture
def small_disk(data_root: Path) -> Iterator[Path]:
    """The session's processing folder on its own small filesystem (tmpfs, as root; unmounted after)."""
    folder = data_root / "visit" / "processing"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _open_batch(data_root: Path, seed: int = SIM.seed, **conf: Any) -> tuple[list[dict], Any]:
    """A simulated session of SIM's movies opened as one micro-batch: (items, SessionConfig)."""
    watch = data_root / "visit" / "raw"
    truth = write_spa_session(SIM.model_copy(update={"seed": seed}), watch)
    conf = {"watch_dir": str(watch), "pixel_size_a": SIM.pixel_size_a, "particle_diameter_a": 80,
            "gain_reference_path": str(watch / GAIN_REFERENCE_NAME), **conf}
    opened = open_session(conf, "spa_live", "run_1", reprocess=False, logical_date=None, sessions_root=None)
    [items] = plan_batches(opened, {"movies": [m.movie_name for m in truth.movies]}, max_per_task=10,
                           parallel_tasks=1)
    return items, parse_session_config(conf)


def _run(stage: str, items: list[dict], config: Any, upstream: dict[str, dict]) -> list[dict]:
    """One stage over the batch, as the operator's execute() calls it; upstream results are by stage and movie."""
    return movie_batch.process_batch(stage, "builtin", "local", items, config, STAGES[stage].params_model(),
                                     {name: upstream[name] for name in upstream_steps(stage)}, "run_1")


def _free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _leave_free(folder: Path, free_bytes: int) -> Path:
    """Fill the filesystem with a ballast file until about `free_bytes` are left; delete it to free the space."""
    ballast = folder / "ballast.bin"
    with open(ballast, "ab") as handle:
        handle.write(b"\0" * max(0, _free_bytes(folder) - free_bytes))
    return ballast


def _star_keys(relion: Path, stage: str) -> list[str]:
    """The key column of the stage's STAR file, one entry per row (duplicates kept)."""
    jobs, name, column = STAGE_STAR[stage]
    found = list(relion.glob(f"{jobs}/{name}"))
    if not found:
        return []
    block = list(parse_star(found[0].read_text()).values())[-1]
    return [row[block.column(column)] for row in block.rows]


def _db_rows(items: list[dict], stage: str) -> list[str]:
    """Movie paths with a results row of `stage` (one entry per row)."""
    store = results_store(items[0]["results_conn_id"], items[0]["processing_path"])
    table, movie = STAGE_TABLE[stage], schema.movie
    with store.engine.connect() as connection:
        return list(connection.execute(select(movie.c.movie_full_path).join(table, table.c.movie_id == movie.c.movie_id)
                                       .where(movie.c.session_id == items[0]["session_id"])).scalars())


def _failures(items: list[dict]) -> list[tuple[str, str]]:
    store = results_store(items[0]["results_conn_id"], items[0]["processing_path"])
    failure, movie = schema.processing_failure, schema.movie
    with store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(movie.c.movie_full_path, failure.c.reason).join(movie, failure.c.movie_id == movie.c.movie_id)
            .where(movie.c.session_id == items[0]["session_id"]))]


def _assert_nothing_half_written(processing: Path) -> int:
    """Every file the stages wrote is whole: no temp file, every MRC/STAR/JPEG/PNG reads completely. Returns
    how many files were checked."""
    checked = 0
    for path in processing.rglob("*"):
        if not path.is_file() or path.name == "ballast.bin":
            continue
        assert not path.name.endswith(".tmp"), f"temp file left behind: {path}"
        suffix = path.suffix.lower()
        if suffix in (".mrc", ".mrcs", ".ctf"):
            with mrcfile.open(path, permissive=False) as mrc:
                assert mrc.data is not None, path
        elif suffix == ".star":
            parse_star(path.read_text())  # raises on a cut row (wrong number of values) or a cut header
        elif suffix in (".jpg", ".jpeg", ".png", ".gif"):
            with Image.open(path) as picture:
                picture.load()  # raises on a truncated image
        else:
            continue
        checked += 1
    return checked


def _done_movies(items: list[dict], stage: str) -> tuple[set[str], set[str]]:
    """(movies with a results row, movies listed in the stage's STAR file), by movie name."""
    relion = Path(items[0]["relion_dir"])
    stems = {Path(item["movie"]).stem: item["movie"] for item in items}
    listed = {stems[Path(key.split("/")[-1]).stem.removesuffix("_autopick")] for key in _star_keys(relion, stage)}
    if stage == "extract":  # extraction writes no results row: its STAR rows are its record
        return listed, listed
    recorded = {Path(path).name for path in _db_rows(items, stage)}
    return recorded, listed


@pytest.mark.parametrize("movies_of_room", [0.4, 1.5])
@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_a_full_processing_disk_fails_the_stage_by_file_and_a_retry_completes_each_movie_once(
        stage: str, movies_of_room: float, data_root: Path, small_disk: Path, results_in_postgres: str):
    items, config = _open_batch(data_root)
    upstream: dict[str, dict] = {}
    for earlier in STAGE_ORDER[:STAGE_ORDER.index(stage)]:
        upstream[earlier] = {o["movie"]: o for o in _run(earlier, items, config, upstream)}
    # Leave room for part of the first movie's outputs of this stage, or one and a half movies', so the disk
    # fills at whichever writer is writing then: in the first movie, or after one movie was done.
    free_before = _free_bytes(small_disk)
    need = int(movies_of_room * BYTES_PER_MOVIE[stage])
    ballast = _leave_free(small_disk, need)
    with pytest.raises(DiskFullError) as full:
        _run(stage, items, config, upstream)
    message = str(full.value)
    assert str(small_disk) in message and "No space left on device" in message, message
    assert _assert_nothing_half_written(small_disk) > 0
    recorded, listed = _done_movies(items, stage)
    assert recorded == listed, "a movie is in the results database but not the STAR file, or the reverse"
    assert len(recorded) == int(movies_of_room), "the disk filled in another movie than planned"
    assert not _failures(items), "a full disk is not a bad movie: nothing may be recorded as failed"

    ballast.unlink()  # space comes back; the task's retry runs the same batch again
    outcomes = _run(stage, items, config, upstream)
    assert [o["status"] for o in outcomes] == ["ok"] * len(items)
    recorded, listed = _done_movies(items, stage)
    assert recorded == listed == {item["movie"] for item in items}
    relion = Path(items[0]["relion_dir"])
    keys = _star_keys(relion, stage)
    if stage == "extract":
        assert len(keys) == sum(o["result"]["particle_count"] for o in outcomes)
    else:
        assert len(keys) == len(set(keys)) == len(items), keys
        assert len(_db_rows(items, stage)) == len(items)
    if stage == "motioncorr":  # the Import job's list, appended before corrected_micrographs.star
        imported = _star_keys(relion, "import")
        assert len(imported) == len(set(imported)) == len(items), imported
    _assert_nothing_half_written(small_disk)
    print(f"{stage}: filled with {need} bytes free of {free_before}; failed: {message}")


@pytest.mark.relion
def test_an_external_program_failing_on_a_full_disk_fails_the_task_not_the_movie(
        data_root: Path, small_disk: Path, results_in_postgres: str):
    """relion_run_motioncorr on a full disk dies with "Can not close image file" (signal 6); that is the disk's
    fault, so the task fails for a retry instead of the movie being recorded failed for good."""
    if shutil.which("relion_run_motioncorr") is None:
        pytest.skip("needs the Debian relion package")
    items, config = _open_batch(data_root)
    params = STAGES["motioncorr"].params_model()
    ballast = _leave_free(small_disk, 300_000)
    with pytest.raises(DiskFullError, match="when motioncorr failed on .*_fractions.tiff"):
        movie_batch.process_batch("motioncorr", "relion", "local", items, config, params, {}, "run_1")
    assert not _failures(items)
    ballast.unlink()
    outcomes = movie_batch.process_batch("motioncorr", "relion", "local", items, config, params, {}, "run_1")
    assert [o["status"] for o in outcomes] == ["ok"] * len(items)
    recorded, listed = _done_movies(items, "motioncorr")
    assert recorded == listed == {item["movie"] for item in items} and not _failures(items)


def _error_in_a_child(setup: str, call: str, caught: str) -> str:
    """Run `call` in a fresh Python after `setup` and return the `caught` error it printed: in a child process,
    so a SIGBUS (what a memory map does when its file is cut or its disk full) fails the test, not the run."""
    script = f"{setup}try:\n    {call}\nexcept {caught} as exc:\n    print(exc)\n"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    return child.stdout


def test_denoising_into_a_full_disk_fails_naming_the_tomogram_instead_of_sigbus(small_disk: Path, tmp_path: Path):
    """The 3D denoiser writes its tomogram through a memory map of a sparse file: on a full disk the first store
    into a page with no block was SIGBUS (measured: exit 135 after 2 of 8 cubes, a 1 MB `.partial` left behind).
    The blocks are now allocated first, so it is a DiskFullError naming the tomogram and nothing stays."""
    pytest.importorskip("torch")
    source = tmp_path / "tomogram.mrc"
    write_mrc(source, np.random.default_rng(0).random((64, 64, 64), dtype=np.float32), 10.0)
    _leave_free(small_disk, 300_000)
    printed = _error_in_a_child("import torch\nfrom airflow_provider_cryoem.tools.topaz_denoise3d import denoise_file\n",
                                f"denoise_file({str(source)!r}, {str(small_disk)!r}, '.denoised', "
                                "torch.nn.Identity(), 32, 8)", "OSError")
    assert printed.startswith(f"{small_disk / 'tomogram.denoised.mrc'}: No space left on device"), printed
    assert sorted(path.name for path in small_disk.iterdir()) == ["ballast.bin"]


def test_a_program_whose_log_fills_the_disk_is_not_blocked_on_its_output(small_disk: Path):
    """The reader thread copying a program's output into its log died on ENOSPC, the pipe filled and the program
    blocked until its time limit (measured: 20 s of a 20 s limit, then a bare OSError). Now the log stops, the
    output is still read, and the program's own result decides."""
    _leave_free(small_disk, 16_384)
    spec = CommandSpec(program=sys.executable, args=["-c", "for i in range(20000): print('line', i, 'x' * 60)"],
                       log_path=str(small_disk / "run.out"), timeout_s=60)
    result = run_local(spec)
    assert result.duration_s < 10 and len(result.output.splitlines()) == 20000
    assert (small_disk / "run.out").stat().st_size < 20000 * 70  # the log was cut where the disk filled


@pytest.mark.parametrize("stage", ["motioncorr", "ctf", "pick"])
def test_a_disk_filling_just_as_a_star_row_is_appended_leaves_that_movie_unrecorded(
        stage: str, data_root: Path, results_in_postgres: str, monkeypatch: pytest.MonkeyPatch):
    """The second movie's row is appended to the stage's STAR file (after its key went into the sidecar) just
    as the row needs a new block of a full disk: write() fails with ENOSPC there (a row that fits in the file's
    last block still goes through on a full disk, so this one write is made to fail). That movie then has
    neither a STAR row nor a results row, and the retry adds each movie once."""
    items, config = _open_batch(data_root)
    upstream: dict[str, dict] = {}
    for earlier in STAGE_ORDER[:STAGE_ORDER.index(stage)]:
        upstream[earlier] = {o["movie"]: o for o in _run(earlier, items, config, upstream)}
    star_name = STAGE_STAR[stage][1]
    real_append = aggregate.append_whole

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_at_the_first_appended_row(path: Path, text: str) -> None:  # the first movie created the file
        if path.name == star_name:
            with monkeypatch.context() as patch:
                patch.setattr(aggregate.os, "write", no_space)
                real_append(path, text)
        else:
            real_append(path, text)

    monkeypatch.setattr(aggregate, "append_whole", full_at_the_first_appended_row)
    with pytest.raises(DiskFullError, match=f"{star_name}: No space left on device"):
        _run(stage, items, config, upstream)
    recorded, listed = _done_movies(items, stage)
    assert recorded == listed == {items[0]["movie"]}
    monkeypatch.undo()
    assert [o["status"] for o in _run(stage, items, config, upstream)] == ["ok"] * len(items)
    keys = _star_keys(Path(items[0]["relion_dir"]), stage)
    assert len(keys) == len(set(keys)) == len(items) and len(_db_rows(items, stage)) == len(items)


# ---------------------------------------------------------------------------------------------------------
# B. Movies deleted, truncated or replaced while motion correction reads them


def _fault_during_read(monkeypatch: pytest.MonkeyPatch, target: Path, fault: Any) -> dict[str, int]:
    """Run `fault(target)` once, after motion correction opened `target` and before it reads the frames."""
    real = movie_io.read_tiff
    calls = {"reads": 0, "faults": 0}

    def read_with_fault(path: Path, frame_range: Any = None, handle: Any = None) -> np.ndarray:
        calls["reads"] += 1
        if Path(path) == target and not calls["faults"]:
            calls["faults"] += 1
            fault(target)
        return real(path, frame_range, handle)

    monkeypatch.setattr(movie_io, "read_tiff", read_with_fault)
    return calls


def _motion(items: list[dict], config: Any) -> dict[str, dict]:
    return {o["movie"]: o for o in _run("motioncorr", items, config, {})}


def test_a_movie_deleted_before_or_while_it_is_read_fails_by_name_and_the_batch_goes_on(
        data_root: Path, results_in_postgres: str, monkeypatch: pytest.MonkeyPatch):
    items, config = _open_batch(data_root)
    gone_before = Path(items[0]["watch_dir"]) / items[0]["movie"]
    gone_during = Path(items[1]["watch_dir"]) / items[1]["movie"]
    gone_before.unlink()
    _fault_during_read(monkeypatch, gone_during, Path.unlink)
    outcomes = _motion(items, config)
    assert [outcomes[item["movie"]]["status"] for item in items] == ["failed", "failed", "ok"]
    assert outcomes[items[0]["movie"]]["error"] == f"{gone_before}: file disappeared: it does not exist " \
                                                  "(deleted or moved away?)"
    assert outcomes[items[1]["movie"]]["error"] == f"{gone_during}: file disappeared while it was being read " \
                                                  "(deleted or moved away)"
    recorded, listed = _done_movies(items, "motioncorr")
    assert recorded == listed == {items[2]["movie"]}
    reasons = dict(_failures(items))
    assert set(reasons) == {items[0]["movie"], items[1]["movie"]}
    assert all("disappeared" in reason for reason in reasons.values())


def test_a_movie_that_fails_and_then_succeeds_on_a_retry_is_no_longer_reported_failed(
        data_root: Path, results_in_postgres: str):
    items, config = _open_batch(data_root)
    movie = Path(items[0]["watch_dir"]) / items[0]["movie"]
    aside = movie.rename(movie.with_name("aside.tmp"))
    assert _motion(items, config)[items[0]["movie"]]["status"] == "failed"
    assert [path for path, _ in _failures(items)] == [items[0]["movie"]]
    aside.rename(movie)  # copied again, then the batch retried
    assert {outcome["status"] for outcome in _motion(items, config).values()} == {"ok"}
    assert _failures(items) == []
    recorded, listed = _done_movies(items, "motioncorr")
    assert recorded == listed == {item["movie"] for item in items}
    store = results_store(items[0]["results_conn_id"], items[0]["processing_path"])
    with store.engine.connect() as connection:
        statuses = connection.execute(select(schema.movie.c.status).where(
            schema.movie.c.session_id == items[0]["session_id"])).scalars().all()
    assert statuses == ["registered"] * len(items)


def test_a_movie_truncated_while_it_is_read_fails_by_name_without_crashing_the_worker(
        data_root: Path, results_in_postgres: str, monkeypatch: pytest.MonkeyPatch):
    items, config = _open_batch(data_root)
    cut = Path(items[0]["watch_dir"]) / items[0]["movie"]
    calls = _fault_during_read(monkeypatch, cut, lambda path: os.truncate(path, path.stat().st_size // 2))
    outcomes = _motion(items, config)
    assert [outcomes[item["movie"]]["status"] for item in items] == ["failed", "ok", "ok"]
    error = outcomes[items[0]["movie"]]["error"]
    assert error.startswith(f"{cut}: ") and "truncated" in error, error
    assert calls["reads"] == len(items) + 1  # the changed file was read once more, then failed as truncated
    recorded, listed = _done_movies(items, "motioncorr")
    assert recorded == listed == {items[1]["movie"], items[2]["movie"]}


def test_a_truncated_mrc_movie_is_a_read_error_not_sigbus(tmp_path: Path):
    """The old reader memory-mapped MRC movies: pages cut off underneath a map kill the process with SIGBUS.
    Reading through a handle, the same cut is a short read and an error naming the file."""
    path = tmp_path / "movie.mrc"
    write_mrc(path, np.arange(8 * 64 * 64, dtype=np.float32).reshape(8, 64, 64), 1.0)
    printed = _error_in_a_child("import os\n"
                                "from airflow_provider_cryoem.io import movie, ImageFileError\n"
                                "real = movie.read_mrc_frames\n"
                                "def cut(path, handle, frame_range=None):\n"
                                "    os.truncate(path, 4096)\n"
                                "    return real(path, handle, frame_range)\n"
                                "movie.read_mrc_frames = cut\n", f"movie.read_movie({str(path)!r})", "ImageFileError")
    assert printed.startswith(f"{path}: ") and "truncated" in printed, printed


def test_a_movie_replaced_while_it_is_read_is_processed_once_from_its_new_content(
        data_root: Path, results_in_postgres: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A transfer tool renames a new copy over the movie (a new inode): the new content is complete when it
    appears, so it is read again and processed once; no frame of the old content reaches the micrograph."""
    items, config = _open_batch(data_root)
    replaced = Path(items[0]["watch_dir"]) / items[0]["movie"]
    other = write_spa_session(SIM.model_copy(update={"seed": SIM.seed + 1}), tmp_path / "other")
    new_content = tmp_path / "other" / other.movies[0].movie_name
    old_frames, new_frames = read_movie(replaced), read_movie(new_content)
    assert not np.array_equal(old_frames, new_frames)

    def rename_over(path: Path) -> None:
        staged = path.with_name(f".{path.name}.partial")
        staged.write_bytes(new_content.read_bytes())
        os.replace(staged, path)

    calls = _fault_during_read(monkeypatch, replaced, rename_over)
    outcomes = _motion(items, config)
    assert [outcomes[item["movie"]]["status"] for item in items] == ["ok", "ok", "ok"]
    assert calls["reads"] == len(items) + 1  # the replaced movie was read twice: old handle, then new file
    monkeypatch.undo()
    store = results_store(items[0]["results_conn_id"], items[0]["processing_path"])
    with store.engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(schema.motion_correction)
                                  .join(schema.movie).where(schema.movie.c.session_id == items[0]["session_id"],
                                                            schema.movie.c.movie_full_path == items[0]["movie"]))
        assert rows.scalar_one() == 1
    # The micrograph is the new content's: run the same stage on a folder holding only the new movie.
    micrograph = outcomes[items[0]["movie"]]["result"]["micrograph"]
    with mrcfile.open(micrograph, permissive=False) as mrc:
        processed = np.array(mrc.data)
    reference = _reference_micrograph(new_content, config, tmp_path / "reference")
    np.testing.assert_allclose(processed, reference, rtol=1e-4, atol=1e-4)


def _reference_micrograph(movie: Path, config: Any, folder: Path) -> np.ndarray:
    """The built-in motion correction of `movie` alone, with the session's settings."""
    from airflow_provider_cryoem.engines.motion import MotionCorrectionInputs, run_motion_correction
    from airflow_provider_cryoem.pipeline.stages import available_cores

    params = STAGES["motioncorr"].params_model()
    result = run_motion_correction(MotionCorrectionInputs(
        movie_path=str(movie), output_path=str(folder / "reference.mrc"), pixel_size_a=config.pixel_size_a,
        dose_per_frame_e_a2=config.dose_per_frame_e_a2, voltage_kv=config.voltage_kv,
        gain_reference_path=config.gain_reference_path, gain_rotation=config.gain_rotation,
        gain_flip=config.gain_flip, defect_file_path=config.defect_file_path, eer_grouping=config.eer_grouping,
        bin_factor=1, patches_x=params.patches_x, patches_y=params.patches_y, bfactor_a2=params.bfactor_a2,
        iterations=params.iterations, tolerance_px=params.tolerance_px, threads=available_cores()))
    with mrcfile.open(result.micrograph, permissive=False) as mrc:
        return np.array(mrc.data)


def test_a_movie_that_keeps_changing_is_failed_by_name_after_three_reads(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "movie.mrc"
    frames = np.ones((4, 32, 32), dtype=np.float32)
    write_mrc(path, frames, 1.0)
    real = movie_io.read_mrc_frames

    def rewrite_every_time(source: Path, handle: Any, frame_range: Any = None) -> np.ndarray:
        write_mrc(source, frames + 1, 1.0)  # a new inode each time, as a writer that keeps replacing it
        return real(source, handle, frame_range)

    monkeypatch.setattr(movie_io, "read_mrc_frames", rewrite_every_time)
    with pytest.raises(ImageFileError, match=r"movie\.mrc: file kept changing while it was being read \(3 tries"):
        read_movie(path)
