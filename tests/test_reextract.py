"""Class re-extraction before refinement (cryoem-services' ExtractClass): the best 3D class's particles cut
again from the motion-corrected micrographs at the micrograph's pixel size, recentred on their classification
origins with each particle's CTF kept, the class map rescaled by relion_image_handler, and the refinement and
B-factor series run on them.

Micrographs here are small (320² px of 2 Å) with a Gaussian "particle" planted at known sub-pixel centres; the
classification's particles are 40-px boxes of 3.9 Å (the demo's binning of a 78-px box), picked a few pixels
off the true centres, with origins that point back at them, as Class3D writes them. The refinement itself is
replaced by a recorder in the wiring tests (tests/test_spa_live_3d.py runs the real chain).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from airflow_provider_cryoem.config import SessionConfig
from airflow_provider_cryoem.downstream.class2d import Class2DClass
from airflow_provider_cryoem.downstream.class3d import Class3DResult
from airflow_provider_cryoem.downstream.reextract import (
    ReextractSettings,
    recentre,
    reextract_class,
    reextraction_geometry,
)
from airflow_provider_cryoem.downstream.refine3d import Refine3DResult
from airflow_provider_cryoem.io import read_mrc, read_mrc_pixel_size_a, read_star, write_mrc
from airflow_provider_cryoem.io.star import write_star
from airflow_provider_cryoem.pipeline import map_stages
from airflow_provider_cryoem.pipeline.stores import relion_project, results_store
from airflow_provider_cryoem.recipes.stages import BFactorParams, ClassReextractionParams, Refine3DParams
from airflow_provider_cryoem.relion_project import OpticsGroup, read_pipeline
from airflow_provider_cryoem.results import schema

pytestmark = pytest.mark.skipif(shutil.which("relion_image_handler") is None,
                                reason="needs Relion 3.1's relion_image_handler")

MIC_PX = 2.0
BINNED_PX = 3.9  # 78 px of 2 Å in a 40-px box
MIC_SIZE = 320
SIGMA_PX = 3.0
# true particle centres (x, y) in micrograph pixels; the last one sits 20 px from the edge, so its 78-px box
# crosses it
TRUE_CENTRES = np.array([[80.3, 90.6], [200.7, 150.2], [150.4, 250.9], [250.2, 60.4], [299.6, 180.3]])
PICK_ERRORS = np.array([[3, -5], [-4, 2], [6, 1], [-2, -6], [5, 4]])  # whole pixels the picker was off
DEFOCI = (12000.0, 21000.0)  # per micrograph (Å)
CONFIG = SessionConfig(pixel_size_a=MIC_PX, particle_diameter_a=130.0, downscaled_box_size_px=40)  # 78 → 40 px


def _micrograph(path: Path, centres: np.ndarray, seed: int) -> None:
    """Protein dark on a flat background (as recorded), a little noise."""
    y, x = np.indices((MIC_SIZE, MIC_SIZE), dtype=np.float64)
    image = np.random.default_rng(seed).normal(0.0, 0.05, (MIC_SIZE, MIC_SIZE))
    for cx, cy in centres:
        image -= np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * SIGMA_PX ** 2))
    write_mrc(path, image.astype(np.float32), MIC_PX)


def _class_map(path: Path) -> np.ndarray:
    """A 40³ map of 3.9 Å with a blob 4 voxels off centre in x (its Å position must survive rescaling)."""
    z, y, x = np.indices((40, 40, 40), dtype=np.float64) - 20
    volume = np.exp(-((x - 4) ** 2 + y ** 2 + z ** 2) / (2 * 2.0 ** 2))
    write_mrc(path, volume.astype(np.float32), BINNED_PX)
    return volume


def _centroid_a(volume: np.ndarray, pixel_size_a: float) -> np.ndarray:
    """Centre of mass (z, y, x) relative to the box centre, in Å."""
    weights = np.clip(volume, 0, None)
    grid = np.indices(volume.shape, dtype=np.float64) - volume.shape[0] // 2
    return np.array([(g * weights).sum() / weights.sum() for g in grid]) * pixel_size_a


@pytest.fixture
def session(tmp_path: Path) -> dict:
    """A project with two micrographs and a Class3D result whose best class holds all their particles."""
    processing = tmp_path / "processing"
    project = relion_project(str(processing / "relion"), OpticsGroup.from_session(CONFIG), "relion3")
    movies = project.root / "MotionCorr/job002/Movies"
    movies.mkdir(parents=True, exist_ok=True)
    halves = (TRUE_CENTRES[:3], TRUE_CENTRES[3:])
    rows = []
    for number, (centres, errors) in enumerate(zip(halves, (PICK_ERRORS[:3], PICK_ERRORS[3:]))):
        micrograph = movies / f"mic_{number}.mrc"
        _micrograph(micrograph, centres, seed=number)
        for centre, error in zip(centres, errors):
            pick = centre + error + 0.2  # fractional picks, as the picker writes them
            origin_a = (np.rint(pick) - centre) * MIC_PX  # Relion: centre = box centre − origin
            rows.append({"rlnCoordinateX": pick[0], "rlnCoordinateY": pick[1],
                         "rlnImageName": f"{len(rows) + 1:06d}@Extract/job005/Movies/mic_{number}.mrcs",
                         "rlnMicrographName": f"MotionCorr/job002/Movies/mic_{number}.mrc", "rlnOpticsGroup": 1,
                         "rlnDefocusU": DEFOCI[number], "rlnDefocusV": DEFOCI[number] - 300.0,
                         "rlnDefocusAngle": 30.0 + number, "rlnCtfBfactor": 0.0, "rlnCtfScalefactor": 1.0,
                         "rlnPhaseShift": 0.0, "rlnAngleRot": 10.0 * len(rows), "rlnAngleTilt": 45.0,
                         "rlnAnglePsi": -20.0, "rlnOriginXAngst": origin_a[0], "rlnOriginYAngst": origin_a[1],
                         "rlnClassNumber": 2, "rlnNormCorrection": 1.0})
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnMicrographOriginalPixelSize": [MIC_PX], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [BINNED_PX], "rlnImageSize": [40], "rlnImageDimensionality": [2],
                           "rlnCtfDataAreCtfPremultiplied": [0]})
    select_dir = project.root / "Select/job010"
    write_star(select_dir / "particles.star", {"optics": optics, "particles": pd.DataFrame(rows)})
    volume = _class_map(project.root / "Class3D/job009/run_it008_class002.mrc")
    class3d = Class3DResult(
        batch_number=len(rows), particles_per_batch=len(rows), classes_per_batch=2, symmetry="C1",
        binned_pixel_size_a=BINNED_PX, job_dir="Class3D/job009", particles_star="Select/job008/particles.star",
        reference_map="InitialModel/job007/initial_model.mrc", model_star="Class3D/job009/run_it008_model.star",
        data_star="Class3D/job009/run_it008_data.star", resolution_a=20.0,
        classes=[Class2DClass(class_number=2, particles_per_class=len(rows), class_distribution=1.0,
                              image=str(project.root / "Class3D/job009/run_it008_class002.mrc"))],
        best_class=2, best_class_map="Class3D/job009/run_it008_class002.mrc",
        best_class_particles_star="Select/job010/particles.star", gallery="", command="", duration_s=1.0)
    store = results_store(None, str(processing))
    store.ensure_schema()
    session_id = store.get_or_create_session("reextract", str(tmp_path / "raw"), str(processing))
    job_id = store.start_processing_job(session_id, "spa_live", "refine3d", False, "run-1")
    item = {"session_id": session_id, "session_name": "reextract", "processing_job_id": job_id,
            "watch_dir": str(tmp_path / "raw"), "processing_path": str(processing),
            "relion_dir": str(project.root), "relion_dialect": "relion3", "experiment": "spa",
            "results_conn_id": None, "class3d": class3d.model_dump(mode="json")}
    return {"project": project, "item": item, "class3d": class3d, "volume": volume, "store": store,
            "rows": pd.DataFrame(rows)}


def test_recentring_moves_boxes_by_whole_pixels_and_keeps_the_sub_pixel_rest():
    coordinates = np.array([[100.4, 50.0], [10.0, 20.0]])
    origins_a = np.array([[6.6, -3.0], [0.4, 0.9]])  # 3.3 and -1.5 px; 0.2 and 0.45 px at 2 Å
    centres, rest_a = recentre(coordinates, origins_a, 2.0)
    assert centres.tolist() == [[97.0, 52.0], [10.0, 20.0]]
    np.testing.assert_allclose(rest_a, [[0.6, 1.0], [0.4, 0.9]], atol=1e-9)
    # the particle's centre (box centre − origin) does not move
    np.testing.assert_allclose(centres - rest_a / 2.0, np.rint(coordinates) - origins_a / 2.0)


def test_geometry_defaults_to_the_full_box_at_the_micrograph_pixel_size():
    full = reextraction_geometry(2.0, 78, None)
    assert (full.cut_box_px, full.box_px, full.pixel_size_a) == (78, 78, 2.0)
    cropped = reextraction_geometry(2.0, 78, 64)
    assert (cropped.cut_box_px, cropped.box_px) == (78, 64) and cropped.pixel_size_a == pytest.approx(2.4375)
    wider = reextraction_geometry(2.0, 78, 96)
    assert (wider.cut_box_px, wider.box_px, wider.pixel_size_a) == (96, 96, 2.0)
    with pytest.raises(ValueError, match="even"):
        ClassReextractionParams(box_px=77)


def test_class_is_re_extracted_at_full_scale_recentred_with_its_ctf(session):
    project, class3d = session["project"], session["class3d"]
    settings = ReextractSettings(geometry=reextraction_geometry(MIC_PX, CONFIG.extraction_box_px, None))
    result = reextract_class(project, class3d.best_class_particles_star, class3d.best_class_map, 2, settings,
                             alias="class2_particles_5", micrographs_star="CtfFind/job003/micrographs_ctf.star")
    assert (result.pixel_size_a, result.box_px, result.source_pixel_size_a, result.source_box_px) == (2.0, 78, 3.9, 40)
    assert result.number_of_particles == 5 and result.dropped_particles == 0  # the edge particle is kept

    blocks = read_star(project.absolute(result.particles_star))
    optics, particles = blocks["optics"], blocks["particles"]
    assert float(optics.rlnImagePixelSize.iloc[0]) == 2.0 and int(optics.rlnImageSize.iloc[0]) == 78
    # recentred: the box centre is the true centre rounded, the origin the sub-pixel rest
    np.testing.assert_array_equal(particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), np.rint(TRUE_CENTRES))
    np.testing.assert_allclose(particles[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(),
                               (np.rint(TRUE_CENTRES) - TRUE_CENTRES) * MIC_PX, atol=1e-6)
    # every other column as the classification left it: each particle's CTF, angles, class
    kept = ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
            "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnClassNumber"]
    pd.testing.assert_frame_equal(particles[kept], session["rows"][kept], check_dtype=False)

    # the images: 78 px of 2 Å, particle (white after inversion) at the box centre less its origin
    y, x = np.indices((78, 78), dtype=np.float64) - 39
    for row, centre in zip(particles.itertuples(), TRUE_CENTRES):
        index, stack = row.rlnImageName.split("@")
        assert stack.startswith(f"{result.job}/Movies/")
        image = np.asarray(read_mrc(project.absolute(stack), mmap=False)[int(index) - 1], dtype=np.float64)
        assert image.shape == (78, 78) and read_mrc_pixel_size_a(project.absolute(stack)) == pytest.approx(2.0)
        weights = np.clip(image, 0, None) * (np.hypot(x, y) < 12)
        found = np.array([(x * weights).sum(), (y * weights).sum()]) / weights.sum()
        expected = centre - np.rint(centre)  # = −origin in px
        np.testing.assert_allclose(found, expected, atol=0.35)

    # the class map at 2 Å in a 78³ box, its density where it was (in Å)
    reference = project.absolute(result.reference_map)
    assert read_mrc_pixel_size_a(reference) == pytest.approx(2.0)
    rescaled = np.asarray(read_mrc(reference, mmap=False), dtype=np.float64)
    assert rescaled.shape == (78, 78, 78)
    np.testing.assert_allclose(_centroid_a(rescaled, 2.0), _centroid_a(session["volume"], BINNED_PX), atol=0.5)

    # a Relion Extract job (re-extraction) that reads the class and the micrographs and writes both
    job = project.root / result.job
    assert (job / "RELION_JOB_EXIT_SUCCESS").is_file()
    assert "relion_image_handler" in (job / "note.txt").read_text()
    assert "do_reextract" in (job / "job.star").read_text()
    pipeline = read_pipeline(project.root, "relion3")
    process = next(p for p in pipeline.processes if p.name == f"{result.job}/")
    assert process.type_token == "5" and process.status.name == "SUCCEEDED"
    assert {(class3d.best_class_particles_star, f"{result.job}/"),
            ("CtfFind/job003/micrographs_ctf.star", f"{result.job}/")} <= set(pipeline.input_edges)
    assert {(f"{result.job}/", result.particles_star), (f"{result.job}/", result.reference_map)} \
        <= set(pipeline.output_edges)
    # Relion 3.1 reads it all: its pipeliner keeps the job, relion_reconstruct the particles (images, CTFs, origins)
    for command in (["relion_pipeliner", "--check_job_completion"], ["relion_pipeliner", "--addJobFromStar",
                    f"{result.job}/job.star"], ["relion_reconstruct", "--i", result.particles_star, "--o",
                    f"{result.job}/check.mrc", "--ctf"]):
        done = subprocess.run(command, cwd=project.root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "ERROR" not in done.stdout + done.stderr, done.stdout + done.stderr
    after = read_pipeline(project.root, "relion3")
    assert after.process(f"{result.job}/").status.name == "SUCCEEDED"
    assert [p.type_token for p in after.processes][-1] == "5"  # the job.star added as a new Extract job
    assert read_mrc(project.root / result.job / "check.mrc", mmap=False).shape == (78, 78, 78)


def test_a_configured_box_fourier_crops_the_re_extracted_particles(session):
    project, class3d = session["project"], session["class3d"]
    settings = ReextractSettings(geometry=reextraction_geometry(MIC_PX, CONFIG.extraction_box_px, 64))
    result = reextract_class(project, class3d.best_class_particles_star, class3d.best_class_map, 2, settings,
                             alias="cropped")
    assert result.box_px == 64 and result.pixel_size_a == pytest.approx(2.4375)
    particles = read_star(project.absolute(result.particles_star))["particles"]
    index, stack = particles.rlnImageName.iloc[0].split("@")
    assert read_mrc(project.absolute(stack), mmap=False).shape[-2:] == (64, 64)
    assert read_mrc(project.absolute(result.reference_map), mmap=False).shape == (64, 64, 64)


def _recording(monkeypatch) -> list[tuple[str, str, float]]:
    """Replace the Relion refinement by a recorder of what it was given."""
    calls = []

    def run_refine3d(project, particles_star, reference_map, settings, alias, execute):
        calls.append((particles_star, reference_map, settings.pixel_size_a))
        n = len(read_star(project.absolute(particles_star))["particles"])
        return Refine3DResult(refine_job="Refine3D/job012", postprocess_job="PostProcess/job014",
                              number_of_particles=n, symmetry="C1", pixel_size_a=settings.pixel_size_a,
                              refine_resolution_a=9.0, resolution_a=8.0, bfactor_a2=-500.0,
                              map="PostProcess/job014/postprocess.mrc", mask="MaskCreate/job013/mask.mrc",
                              duration_s=1.0)

    monkeypatch.setattr(map_stages, "run_refine3d", run_refine3d)
    return calls


def test_refinement_runs_on_the_re_extracted_particles_and_records_the_pixel_size(session, monkeypatch):
    calls = _recording(monkeypatch)
    reextracted = map_stages.reextract_best_class(CONFIG, ClassReextractionParams(), session["item"])
    assert map_stages.reextract_best_class(CONFIG, ClassReextractionParams(), reextracted) is reextracted  # once
    item = map_stages.refine_best_class(CONFIG, Refine3DParams(), "local", reextracted)
    assert "skipped" not in item
    done = item["reextract"]
    assert calls == [(done["particles_star"], done["reference_map"], 2.0)]
    assert done["particles_star"].startswith("Extract/") and done["reference_map"].startswith(done["job"])
    assert item["refine3d"]["pixel_size_a"] == 2.0
    with session["store"].engine.connect() as connection:
        (row,) = connection.execute(select(schema.refinement)).all()
    assert row.pixel_size_a == 2.0 and row.class_number == 2 and row.number_of_particles == 5

    series = []

    def run_bfactor_series(project, particles_star, reference_map, settings, **kwargs):
        series.append((particles_star, reference_map, settings.pixel_size_a))
        raise ValueError("stop here")  # recorded as a failed step: the inputs are what this test is after

    monkeypatch.setattr(map_stages, "run_bfactor_series", run_bfactor_series)
    few = BFactorParams.model_construct(fractions=(0.5, 1.0), min_particles=2)  # 5 particles: subsets of 2 and 5
    map_stages.bfactor_series(CONFIG, few, Refine3DParams(), "local", item)
    assert series == [(done["particles_star"], done["reference_map"], 2.0)]


def test_without_re_extraction_the_classification_particles_are_refined(session, monkeypatch):
    calls = _recording(monkeypatch)
    item = map_stages.refine_best_class(CONFIG, Refine3DParams(), "local", session["item"])
    class3d = session["class3d"]
    assert "reextract" not in item
    assert calls == [(class3d.best_class_particles_star, class3d.best_class_map, BINNED_PX)]
    assert not [p for p in (session["project"].root / "Extract").glob("job*") if p.name != "job005"]
    with session["store"].engine.connect() as connection:
        (row,) = connection.execute(select(schema.refinement)).all()
    assert row.pixel_size_a == BINNED_PX


def test_phase_flipped_particles_are_re_extracted_phase_flipped(session):
    """Particles extracted phase-flipped (ExtractionParams.phase_flip) are cut from the micrograph flipped
    with each micrograph's own CTF, as the first extraction did."""
    project, class3d = session["project"], session["class3d"]
    star = project.absolute(class3d.best_class_particles_star)
    blocks = read_star(star)
    settings = ReextractSettings(geometry=reextraction_geometry(MIC_PX, CONFIG.extraction_box_px, None))
    plain = reextract_class(project, class3d.best_class_particles_star, class3d.best_class_map, 2, settings,
                            alias="plain")
    write_star(star, {"optics": blocks["optics"].assign(rlnCtfDataArePhaseFlipped=1),
                      "particles": blocks["particles"]})
    flipped = reextract_class(project, class3d.best_class_particles_star, class3d.best_class_map, 2, settings,
                              alias="flipped")
    optics = read_star(project.absolute(flipped.particles_star))["optics"]
    assert int(optics.rlnCtfDataArePhaseFlipped.iloc[0]) == 1
    names = [read_star(project.absolute(r.particles_star))["particles"].rlnImageName.iloc[0] for r in (plain, flipped)]
    images = [np.asarray(read_mrc(project.absolute(n.split("@")[1]), mmap=False)[0]) for n in names]
    assert np.corrcoef(images[0].ravel(), images[1].ravel())[0, 1] < 0.95  # different images of the same particle
