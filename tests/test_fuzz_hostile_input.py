"""Property tests: random session confs, file names and file contents never crash the session opening,
the folder scan or the readers with anything but their documented errors, and never reach outside the roots.

The documented errors: ConfigError (a bad conf, naming the field) from open_session, ImageFileError (a
bad file, naming it) from the readers; the scan and the watcher raise nothing for any file name.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from airflow_provider_cryoem.config import ConfigError, SessionConfig
from airflow_provider_cryoem.ingest import name_problem, scan_folder
from airflow_provider_cryoem.io import (
    ImageFileError,
    load_defect_map,
    read_image_2d,
    read_movie,
    read_star,
    write_mrc,
    write_tiff,
)
from airflow_provider_cryoem.pipeline.session import open_session
from airflow_provider_cryoem.pipeline.watch import WatchSettings, take_new_movies

ROOT = "{root}"
HOSTILE_PATHS = ["../../etc", "/etc/passwd", "{root}/visit/raw", "{root}/visit/raw/../../..", "{root}/../x",
                 "{root}/visit/link_out", "{root}/visit/gain.mrc", "relative/raw", "", "~", "{root}/a b",
                 "{root}/visit/raw\n", "{root}/visit/raw/*", "\x00"]
values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=20), st.sampled_from(HOSTILE_PATHS), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
keys = st.sampled_from([*SessionConfig.model_fields, "extraction_box_px", "unknown_setting", "__class__"])
# The watched folder is usually a good one, so that the other fields' checks are reached too.
confs = st.builds(lambda watch, rest: {"watch_dir": watch, **rest},
                  st.one_of(st.just("{root}/visit/raw"), st.sampled_from(HOSTILE_PATHS)),
                  st.dictionaries(keys, st.one_of(values, st.sampled_from(HOSTILE_PATHS)), max_size=4))
CALM = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def _temporary_files_in_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each example makes its own folders; they go under pytest's temporary folder, which pytest prunes."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("fuzz"))
    yield
    tempfile.tempdir = saved


def _data_root() -> Path:
    base = Path(tempfile.mkdtemp(prefix="cryoem-fuzz-"))
    root = base / "data"
    (root / "visit" / "raw").mkdir(parents=True)
    write_mrc(root / "visit" / "gain.mrc", np.ones((8, 8), np.float32), 1.0)
    (base / "outside").mkdir()
    (root / "visit" / "link_out").symlink_to(base / "outside", target_is_directory=True)
    return root


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@CALM
@given(conf=confs)
def test_any_conf_opens_a_session_inside_the_roots_or_is_refused_by_field(conf: dict) -> None:
    root = _data_root()
    outside_before = _files_under(root.parent / "outside")
    conf = {key: value.replace(ROOT, str(root)) if isinstance(value, str) else value for key, value in conf.items()}
    os.environ["CRYOEM_DATA_ROOTS"] = str(root)
    os.environ.pop("CRYOEM_RESULTS_CONN_ID", None)
    try:
        opened = open_session(conf, "spa_live", "run_fuzz", reprocess=False, logical_date=None, sessions_root=None)
    except ConfigError as exc:
        assert str(exc).split(":")[0] in (*SessionConfig.model_fields, "invalid session configuration")
    else:
        event("opened")
        for session in opened["sessions"]:
            for key in ("watch_dir", "processing_path", "relion_dir"):
                assert Path(session[key]).resolve().is_relative_to(root.resolve()), (key, session[key])
    finally:
        os.environ.pop("CRYOEM_DATA_ROOTS", None)
    assert _files_under(root.parent / "outside") == outside_before


names = st.one_of(
    st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), min_size=1, max_size=24),
    st.binary(min_size=1, max_size=24).filter(lambda b: b"/" not in b and b"\x00" not in b).map(os.fsdecode))


@CALM
@given(movie_names=st.lists(names, min_size=1, max_size=8, unique=True),
       sizes=st.lists(st.integers(0, 64), min_size=8, max_size=8))
def test_any_file_names_are_taken_once_each_or_reported_and_the_session_still_ends(movie_names: list[str],
                                                                                   sizes: list[int]) -> None:
    root = _data_root()
    watch = root / "visit" / "raw"
    made = []
    for name, size in zip(movie_names, sizes):
        if name in (".", "..") or not name.endswith(".tiff"):
            name = f"{name}.tiff"
        try:
            path = watch / name
            path.write_bytes(b"\x01" * size)
        except OSError:  # a name the file system refuses (too long, ...)
            continue
        past = time.time() - 60
        os.utime(path, (past, past))
        made.append(name)
    scan = scan_folder(watch, "*.tiff", "END", 2.0)
    assert sorted(m.relative_path for m in scan.complete + scan.rejected) == sorted(made)
    assert all(name_problem(m.relative_path) is None for m in scan.complete)
    os.environ["CRYOEM_DATA_ROOTS"] = str(root)
    os.environ.pop("CRYOEM_RESULTS_CONN_ID", None)
    try:
        opened = open_session({"watch_dir": str(watch), "idle_timeout_s": 0.5}, "spa_live", "run_1",
                              reprocess=False, logical_date=None, sessions_root=None)
    finally:
        os.environ.pop("CRYOEM_DATA_ROOTS", None)
    watch_settings = WatchSettings.model_validate(opened["sessions"][0]["watch"])
    first = take_new_movies(watch_settings, "run_1")
    taken = [] if first is None else first["movies"]
    assert sorted(taken) == sorted(m.relative_path for m in scan.complete)
    time.sleep(0.6)
    assert take_new_movies(watch_settings, "run_2") == {"movies": [], "session_over": True,
                                                        "reason": "no new movie for 0.5 s"}


def _valid_mrc(folder: Path) -> bytes:
    return write_mrc(folder / "valid.mrc", np.arange(3 * 16 * 16, dtype=np.float32).reshape(3, 16, 16),
                     1.0, is_stack=True).read_bytes()


def _valid_tiff(folder: Path) -> bytes:
    return write_tiff(folder / "valid.tiff", np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)).read_bytes()


@CALM
@given(kind=st.sampled_from([".mrc", ".tiff", ".mrcs"]), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 255)), max_size=12),
       noise=st.binary(max_size=64))
def test_corrupted_movies_and_images_fail_with_an_error_naming_the_file(kind: str, cut: int,
                                                                       flips: list[tuple[int, int]],
                                                                       noise: bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cryoem-fuzz-io-"))
    data = bytearray(_valid_tiff(folder) if kind == ".tiff" else _valid_mrc(folder))
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    data = data[:cut] + noise if cut < len(data) else data + noise
    path = folder / f"movie{kind}"
    path.write_bytes(bytes(data))
    for reader in (read_movie, read_image_2d, lambda p: load_defect_map(p, (16, 16))):
        try:
            reader(path)
        except ImageFileError as exc:
            assert str(path) in str(exc)


@CALM
@given(text=st.text(max_size=300), raw=st.binary(max_size=300))
def test_any_star_or_defect_text_fails_naming_the_file_and_never_quoting_it(text: str, raw: bytes) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cryoem-fuzz-star-"))
    secret = "hunter2-secret"
    for name, content in (("a.star", (text + f"\n{secret}\n").encode()), ("b.star", raw),
                          ("defects.txt", (text + f"\n{secret} 1 2\n").encode())):
        path = folder / name
        path.write_bytes(content)
        try:
            read_star(path) if name.endswith(".star") else load_defect_map(path, (16, 16))
        except ImageFileError as exc:
            assert str(path) in str(exc) and secret not in str(exc)
