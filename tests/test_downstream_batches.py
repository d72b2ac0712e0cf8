"""Rebatching extracted particles into 2D batches: sizes, retries, flush and concurrent callers.

Particle rows are those the project writer puts into Extract/job005/particles.star for simulated
micrographs (the simulator's planted particles as picks, its planted defocus as the CTF fit).
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import starfile

from airflow_provider_cryoem.downstream.particle_batches import (
    BatchSizes,
    add_particles,
    emitted_batches,
    flush,
    particle_rows,
    pending_count,
)
from airflow_provider_cryoem.relion_project import (
    CtfValues,
    OpticsGroup,
    RelionProject,
    read_pipeline,
)
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

PIXEL_SIZE_A = 2.0
OPTICS = OpticsGroup(movie_pixel_size_a=PIXEL_SIZE_A, micrograph_pixel_size_a=PIXEL_SIZE_A, voltage_kv=300.0,
                     cs_mm=2.7, amplitude_contrast=0.1, particle_box_px=48, particle_pixel_size_a=PIXEL_SIZE_A)
SIMULATION = SpaSimulationSettings(image_size_px=256, n_frames=2, pixel_size_a=PIXEL_SIZE_A,
                                   particle_diameter_a=64.0, particles_per_micrograph=12, seed=5)
SIZES = BatchSizes(first_batch_size=10, batch_size=25)
N_MICROGRAPHS = 6


def _micrograph_rows(index: int) -> tuple[str, list[dict]]:
    """The particles.star rows of one simulated micrograph, as extraction would list them."""
    truth = simulate_movie(SIMULATION, index).truth
    micrograph = f"MotionCorr/job002/Movies/movie_{index:03d}.mrc"
    ctf = CtfValues(defocus_u_a=truth.defocus_u_a, defocus_v_a=truth.defocus_v_a,
                    astigmatism_angle_deg=truth.astigmatism_angle_deg, figure_of_merit=0.2, max_resolution_a=5.0)
    rows = [{"rlnCoordinateX": p.x_px, "rlnCoordinateY": p.y_px,
             "rlnImageName": f"{i + 1:06d}@Extract/job005/Movies/movie_{index:03d}.mrcs",
             "rlnMicrographName": micrograph, "rlnOpticsGroup": 1, "rlnDefocusU": ctf.defocus_u_a,
             "rlnDefocusV": ctf.defocus_v_a, "rlnDefocusAngle": ctf.astigmatism_angle_deg}
            for i, p in enumerate(truth.particles)]
    return micrograph, rows


@pytest.fixture(scope="module")
def session_rows() -> list[tuple[str, list[dict]]]:
    return [_micrograph_rows(index) for index in range(N_MICROGRAPHS)]


def _image_names(project: RelionProject, star_path: str) -> list[str]:
    return list(starfile.read(project.root / star_path, always_dict=True)["particles"]["rlnImageName"])


def test_batches_fill_first_small_then_full_size_and_flush_emits_the_rest(tmp_path: Path, session_rows):
    project = RelionProject(tmp_path, "relion3", OPTICS)
    emitted = [batch for mic, rows in session_rows for batch in add_particles(project, mic, rows, SIZES)]
    total = sum(len(rows) for _, rows in session_rows)
    assert [b.n_particles for b in emitted] == [10] + [25] * ((total - 10) // 25)
    assert all(b.complete for b in emitted)
    pending = pending_count(project)
    assert 0 < pending == total - sum(b.n_particles for b in emitted) < SIZES.batch_size
    rest = flush(project, SIZES)
    assert len(rest) == 1 and not rest[0].complete and rest[0].n_particles == pending
    assert pending_count(project) == 0
    assert flush(project, SIZES) == []
    every = emitted + rest
    names = [name for batch in every for name in _image_names(project, batch.star_path)]
    expected = [row["rlnImageName"] for _, rows in session_rows for row in rows]
    assert names == expected  # every particle exactly once, in arrival order
    assert [b.star_path for b in every] == [f"Select/job001/particles_split{k}.star" for k in range(1, len(every) + 1)]
    blocks = starfile.read(project.root / every[0].star_path, always_dict=True)
    assert float(blocks["optics"]["rlnImagePixelSize"].iloc[0]) == PIXEL_SIZE_A
    pipeline = read_pipeline(project.root, "relion3")
    outputs = {node for _, node in pipeline.output_edges}
    assert {b.star_path for b in every} <= outputs
    assert emitted_batches(project) == every


def test_a_retried_micrograph_never_duplicates_particles(tmp_path: Path, session_rows):
    project = RelionProject(tmp_path, "relion5", OPTICS)
    (first_mic, first_rows), (second_mic, second_rows) = session_rows[0], session_rows[1]
    assert add_particles(project, first_mic, first_rows, SIZES)[0].n_particles == 10  # mic 0 now in batch 1
    assert add_particles(project, first_mic, first_rows, SIZES) == []                 # retry after emission
    add_particles(project, second_mic, second_rows[:3], SIZES)                        # partial try ...
    add_particles(project, second_mic, second_rows, SIZES)                            # ... then the retry
    assert pending_count(project) == len(first_rows) - 10 + len(second_rows)
    names = [n for b in flush(project, SIZES) + emitted_batches(project)[:1] for n in _image_names(project, b.star_path)]
    assert sorted(names) == sorted(r["rlnImageName"] for r in first_rows + second_rows)


def test_changed_batch_sizes_or_columns_are_refused_with_a_clear_error(tmp_path: Path, session_rows):
    project = RelionProject(tmp_path, "relion3", OPTICS)
    mic, rows = session_rows[0]
    add_particles(project, mic, rows[:2], SIZES)
    with pytest.raises(ValueError, match="batches were started with"):
        add_particles(project, mic, rows, BatchSizes(first_batch_size=10, batch_size=99))
    other_mic, other_rows = session_rows[1]
    with pytest.raises(ValueError, match="columns"):
        add_particles(project, other_mic, [{k: v for k, v in r.items() if k != "rlnDefocusAngle"}
                                           for r in other_rows], SIZES)


def test_particle_rows_reads_one_micrographs_rows_from_the_extract_star(tmp_path: Path, session_rows):
    project = RelionProject(tmp_path, "relion3", OPTICS)
    for mic, rows in session_rows[:2]:
        add_particles(project, mic, rows, BatchSizes(first_batch_size=1000, batch_size=1000))
    flush(project, BatchSizes(first_batch_size=1000, batch_size=1000))
    star = project.root / emitted_batches(project)[0].star_path
    mic, rows = session_rows[1]
    read_back = particle_rows(star, mic)
    assert [r["rlnImageName"] for r in read_back] == [r["rlnImageName"] for r in rows]
    assert read_back[0]["rlnDefocusU"] == pytest.approx(rows[0]["rlnDefocusU"], abs=1e-3)


def _add_in_process(args: tuple[str, str, list[dict]]) -> int:
    root, mic, rows = args
    return sum(b.n_particles for b in add_particles(RelionProject(root, "relion3", OPTICS), mic, rows, SIZES))


def test_concurrent_callers_and_retries_write_each_particle_once(tmp_path: Path, session_rows):
    work = [(str(tmp_path), mic, rows) for mic, rows in session_rows] * 2  # every micrograph twice
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_add_in_process, work)
    project = RelionProject(tmp_path, "relion3", OPTICS)
    flush(project, SIZES)
    names = [n for b in emitted_batches(project) for n in _image_names(project, b.star_path)]
    assert sorted(names) == sorted(r["rlnImageName"] for _, rows in session_rows for r in rows)


def test_class_ranker_command_is_built_only_where_relion_has_the_ranker(monkeypatch):
    import shutil

    from airflow_provider_cryoem.downstream.class_selection import class_ranker_command

    monkeypatch.setattr(shutil, "which", lambda program: None)
    assert class_ranker_command("/proj", "Class2D/job007/run_it025_optimiser.star", "Select/job009", 0.7) is None
    monkeypatch.setattr(shutil, "which", lambda program: f"/opt/relion5/bin/{program}")
    spec = class_ranker_command("/proj dir", "Class2D/job007/run_it025_optimiser.star", "Select/job009", None)
    assert spec.program == "relion_class_ranker" and spec.cwd == "/proj dir"
    args = spec.args
    assert args[args.index("--opt") + 1] == "Class2D/job007/run_it025_optimiser.star"
    assert args[args.index("--o") + 1] == "Select/job009/" and "--auto_select" in args
    assert args[args.index("--min_score") + 1] == "0"  # no score yet: rank everything, choose the cut later
    assert args[args.index("--select_min_nr_particles") + 1] == "500"


def test_initial_model_command_asks_relion_31_for_an_sgd_de_novo_map():
    from airflow_provider_cryoem.downstream.initial_model import initial_model_command

    spec = initial_model_command("/proj", "Select/job009/particles_all.star", "InitialModel/job010", 154.0,
                                 threads=2, sgd_iterations=(5, 20, 5))
    args = spec.args
    assert spec.program == "relion_refine" and spec.threads == 2
    assert {"--denovo_3dref", "--sgd", "--ctf"} <= set(args)
    assert args[args.index("--o") + 1] == "InitialModel/job010/run"
    assert [args[args.index(flag) + 1] for flag in ("--sgd_ini_iter", "--sgd_inbetween_iter", "--sgd_fin_iter")] \
        == ["5", "20", "5"]
    assert args[args.index("--particle_diameter") + 1] == "154"
