"""What a live run records for a simulated session, written through the real ResultsStore without running
the engines: session (with its quality limits), claims, movies, motion / CTF / picking / ice rows, failures,
real thumbnails; 2D/3D classification, refinement and B-factor results with the Relion files the dashboard
reads (class stacks and maps, postprocess.star); a reconstructed tilt series.

Values follow the simulator's settings (defocus and astigmatism ranges, drift, particles per
micrograph, ice; class averages are projections of the simulator's particle, scored by the real class
selection), so the dashboard's tests and benchmark look at a session like the one the pipeline
writes, thousands of movies in seconds instead of hours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sqlalchemy import insert, select

from scipy.spatial.transform import Rotation

from ..config import SessionConfig
from ..engines import plots, thumbnails
from ..engines.class_selection import ClassSelectionSettings, score_classes
from ..io import write_mrc, write_star
from ..results import ResultsStore, records, schema
from ..simulate import SpaSimulationSettings
from ..simulate.density import render_gaussians
from ..simulate.structure import make_structure

FAILURE_STAGE = "ctf"
FAILURE_REASON = "no Thon rings above the noise (fit resolution not finite)"


@dataclass
class SimulatedSession:
    """A session recorded by record_session, and what the next movie needs."""

    session_id: int
    job_id: int
    watch_dir: Path
    processing_dir: Path
    settings: SpaSimulationSettings
    run_id: str
    rng: np.random.Generator
    movies: list[int] = field(default_factory=list)  # movie ids in order
    failed: list[int] = field(default_factory=list)


def record_session(store: ResultsStore, name: str, data_root: str | Path, settings: SpaSimulationSettings,
                   recipe: str = "spa_live", failed_every: int = 0, images_for: int = 2,
                   end_reason: str | None = None, config: SessionConfig | None = None) -> SimulatedSession:
    """A session with `settings.n_movies` movies under `data_root/name`; every `failed_every`-th movie
    (0: none) fails CTF instead of getting CTF, picking and ice rows; the first `images_for` movies get
    thumbnails (micrograph, picks, CTF fit, drift) written under the processing folder. The quality
    limits of `config` (default: the session settings' defaults) are recorded as a run's opening does."""
    watch_dir, processing_dir = Path(data_root) / name / "raw", Path(data_root) / name / "processing"
    processing_dir.mkdir(parents=True, exist_ok=True)
    session_id = store.get_or_create_session(name, str(watch_dir), str(processing_dir))
    store.set_quality_limits(session_id, (config or SessionConfig()).quality_limits())
    run_id = f"manual__{name}"
    job_id = store.start_processing_job(session_id, recipe, "preprocessing", reprocess=False, run_id=run_id)
    session = SimulatedSession(session_id=session_id, job_id=job_id, watch_dir=watch_dir,
                               processing_dir=processing_dir, settings=settings, run_id=run_id,
                               rng=np.random.default_rng(settings.seed))
    for index in range(settings.n_movies):
        record_movie(store, session, fail=bool(failed_every) and (index + 1) % failed_every == 0,
                     images=index < images_for)
    if end_reason is not None:
        store.finish_processing_job(job_id, "success")
        store.end_session(session_id, end_reason)
    return session


def movie_name(settings: SpaSimulationSettings, index: int) -> str:
    acquired = settings.session_start + timedelta(seconds=index * settings.acquisition_interval_s)
    return f"FoilHole_{1000 + index}_Data_{acquired:%Y%m%d_%H%M%S}_fractions.{settings.movie_format}"


def movie_results(settings: SpaSimulationSettings, rng: np.random.Generator, stem: Path | None,
                  fail: bool = False) -> dict[str, dict[str, Any]]:
    """One movie's results as the engines return them (stage -> result), for the store to record;
    thumbnails written next to `stem` when given; a failed movie has motion correction only."""
    shifts = np.cumsum(rng.normal(settings.drift_a_per_frame / settings.pixel_size_a, 0.2,
                                  size=(settings.n_frames, 2)), axis=0)
    shifts[:2] *= settings.initial_drift_factor
    shifts -= shifts[0]
    steps = np.linalg.norm(np.diff(shifts, axis=0), axis=1) * settings.pixel_size_a
    early = int(np.ceil(4.0 / settings.dose_per_frame_e_a2))  # frames before 4 e⁻/Å²
    micrograph = rng.normal(size=(128, 128)) if stem else None
    results: dict[str, dict[str, Any]] = {"motion": {
        "n_frames": settings.n_frames, "dose_per_frame_e_a2": settings.dose_per_frame_e_a2,
        "total_motion_a": float(steps.sum()), "early_motion_a": float(steps[:early].sum()),
        "late_motion_a": float(steps[early:].sum()), "average_motion_per_frame_a": float(steps.mean()),
        "micrograph": f"{stem}.mrc",
        "drift_plot": str(plots.drift_plot(shifts, f"{stem}_drift.png")) if stem else None,
        "snapshot": str(thumbnails.micrograph_jpeg(micrograph, f"{stem}.jpeg")) if stem else None}}
    if fail:
        return results
    defocus = rng.uniform(settings.defocus_min_a, settings.defocus_max_a)
    astigmatism = rng.uniform(0, settings.astigmatism_max_a)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(micrograph))) if stem else None
    results["ctf"] = {
        "defocus_u_a": defocus + astigmatism / 2, "defocus_v_a": defocus - astigmatism / 2,
        "astigmatism_angle_deg": float(rng.uniform(0, 180)), "astigmatism_a": astigmatism,
        "fit_resolution_a": float(rng.uniform(3.0, 8.0)), "cc": float(rng.uniform(0.05, 0.3)),
        "diagnostic_image": str(thumbnails.spectrum_fit_image(spectrum, spectrum, f"{stem}_ctf.png"))
        if stem else None}
    picks = int(rng.poisson(settings.particles_per_micrograph))
    coordinates = rng.uniform(10, 118, size=(picks, 2)) if stem else None
    results["picking"] = {
        "particle_count": picks, "diameter_a": settings.particle_diameter_a,
        "summary_image": str(thumbnails.picks_overlay(micrograph, coordinates, 12.0, f"{stem}_picks.jpeg"))
        if stem else None}
    ice = np.sort(rng.normal(settings.ice_thickness_a / 300.0, settings.ice_gradient_a / 3000.0, size=5))
    results["ice"] = dict(zip(("minimum", "q1", "median", "q3", "maximum"), map(float, ice)))
    return results


def record_movie(store: ResultsStore, session: SimulatedSession, fail: bool = False, images: bool = False) -> int:
    """Claim, register and record the session's next movie as the live pipeline would; its movie id."""
    name = movie_name(session.settings, len(session.movies))
    store.claim_files(session.session_id, [(name, 1 << 20)], session.run_id)
    movie_id = store.register_movie(session.session_id, name)
    session.movies.append(movie_id)
    results = movie_results(session.settings, session.rng, session.processing_dir / Path(name).stem if images else None,
                            fail)
    store.record_motion_correction(session.job_id, movie_id, results["motion"])
    if fail:
        store.record_failure(session.job_id, movie_id, FAILURE_STAGE, FAILURE_REASON)
        session.failed.append(movie_id)
        return movie_id
    store.record_ctf(session.job_id, movie_id, results["ctf"])
    store.record_picking(session.job_id, movie_id, results["picking"])
    store.record_ice_thickness(session.job_id, movie_id, results["ice"])
    return movie_id


_BULK_TABLES = {"motion": (schema.motion_correction, records.MOTION_CORRECTION),
                "ctf": (schema.ctf, records.CTF), "picking": (schema.particle_picker, records.PARTICLE_PICKER),
                "ice": (schema.relative_ice_thickness, records.RELATIVE_ICE_THICKNESS)}


def bulk_record_session(store: ResultsStore, name: str, data_root: str | Path, settings: SpaSimulationSettings,
                        failed_every: int = 0) -> SimulatedSession:
    """record_session for thousands of movies (benchmarks): the same rows, converted by the store's own
    field maps, inserted in a few statements; acquisition times follow the simulator's interval; no images."""
    session = record_session(store, name, data_root, settings.model_copy(update={"n_movies": 0}), images_for=0)
    session.settings = settings
    names = [movie_name(settings, index) for index in range(settings.n_movies)]
    failing = {index for index in range(settings.n_movies) if failed_every and (index + 1) % failed_every == 0}
    results = [movie_results(settings, session.rng, None, index in failing) for index in range(settings.n_movies)]
    now = datetime.now(timezone.utc)
    movie = schema.movie
    with store.engine.begin() as connection:
        connection.execute(insert(schema.session_file), [
            {"session_id": session.session_id, "relative_path": movie_name_, "size_bytes": 1 << 20,
             "first_seen": now, "claimed_at": now, "claimed_by": session.run_id} for movie_name_ in names])
        connection.execute(insert(movie), [
            {"session_id": session.session_id, "movie_number": index + 1, "movie_full_path": movie_name_,
             "created_time_stamp": settings.session_start.replace(tzinfo=timezone.utc)
             + timedelta(seconds=index * settings.acquisition_interval_s),
             "status": "failed" if index in failing else "registered",
             "failure_reason": f"{FAILURE_STAGE}: {FAILURE_REASON}" if index in failing else None}
            for index, movie_name_ in enumerate(names)])
        ids = dict(connection.execute(select(movie.c.movie_number, movie.c.movie_id)
                                      .where(movie.c.session_id == session.session_id)).all())
        session.movies = [ids[index + 1] for index in range(settings.n_movies)]
        session.failed = [ids[index + 1] for index in sorted(failing)]
        for stage, (table, fields) in _BULK_TABLES.items():
            rows = [{"processing_job_id": session.job_id, "movie_id": ids[index + 1],
                     **records.row_values(stage, table, result[stage], fields)}
                    for index, result in enumerate(results) if stage in result]
            connection.execute(insert(table), rows)
        if session.failed:
            connection.execute(insert(schema.processing_failure), [
                {"processing_job_id": session.job_id, "movie_id": movie_id, "stage": FAILURE_STAGE,
                 "reason": FAILURE_REASON, "recorded": now} for movie_id in session.failed])
    return session


# --- particle stages -------------------------------------------------------------------------------------

CLASS_BOX_PX = 64
BFACTOR_A2 = 300.0  # the B-factor series below follows Rosenthal-Henderson with this B


@dataclass
class ParticleResults:
    """What record_particle_results wrote: row ids and the files the dashboard reads."""

    class2d_groups: list[int]  # batch 1, 2, ...
    class3d_group: int
    refinement_id: int
    postprocess_star: Path
    class_pixel_size_a: float


def _projection(atoms_a: np.ndarray, weights: np.ndarray, rotation: Rotation, box_px: int, pixel_size_a: float,
                sigma_a: float, depth: bool = False) -> np.ndarray:
    """The particle's density rotated and summed along z onto a box (or, with `depth`, rendered in 3D)."""
    xyz_px = rotation.apply(atoms_a) / pixel_size_a + box_px / 2
    shape = (box_px,) * (3 if depth else 2)
    coords = xyz_px[:, ::-1] if depth else xyz_px[:, 1::-1]  # (z, y, x) / (y, x) order of the arrays
    return render_gaussians(coords, weights, shape, sigma_a / pixel_size_a)


def _class_averages(rng: np.random.Generator, atoms_a: np.ndarray, weights: np.ndarray, classes: int,
                    good: int, pixel_size_a: float, sigma_a: float) -> np.ndarray:
    """`good` projections of the particle in random views, then junk (a blob off-centre, or noise), with noise."""
    stack = np.zeros((classes, CLASS_BOX_PX, CLASS_BOX_PX), dtype=np.float32)
    for index in range(classes):
        if index < good:
            stack[index] = _projection(atoms_a, weights, Rotation.random(random_state=rng), CLASS_BOX_PX,
                                       pixel_size_a, sigma_a)
        elif index % 2:
            offset = rng.uniform(-0.35, 0.35, size=2) * CLASS_BOX_PX + CLASS_BOX_PX / 2
            stack[index] = render_gaussians(offset[None, :], np.array([weights.sum()]), stack.shape[1:],
                                            CLASS_BOX_PX / 10)
    scale = float(stack[:good].std()) if good else 1.0
    return stack + rng.normal(0, 0.35 * scale, size=stack.shape).astype(np.float32)


def record_particle_results(store: ResultsStore, session: SimulatedSession, batches_2d: int = 2,
                            classes_2d: int = 12, particles_per_batch: int = 10_000,
                            resolution_a: float = 6.5) -> ParticleResults:
    """2D batches (class stacks written, scored and selected by the real class selection), one 3D batch
    with its initial model and class maps, a refinement whose postprocess.star FSC crosses 0.143 at
    `resolution_a`, and a B-factor series following B = BFACTOR_A2, as the pipeline records them
    (Relion files in the run's project folder `relion/`)."""
    settings, rng = session.settings, session.rng
    structure = make_structure(settings)
    atoms, weights = np.array(structure.atoms_xyz_a), np.array(structure.weights)
    pixel_a = round(1.6 * settings.particle_diameter_a / CLASS_BOX_PX, 3)
    project = session.processing_dir / "relion"
    sid, run, recipe = session.session_id, session.run_id, "spa_live"

    job = store.start_processing_job(sid, recipe, "class2d", False, run)
    selection = ClassSelectionSettings(min_score=SessionConfig().class_selection_min_score,
                                       particle_diameter_a=settings.particle_diameter_a, pixel_size_a=pixel_a)
    groups_2d = []
    for batch in range(1, batches_2d + 1):
        good = max(1, classes_2d * (batch + 2) // 8)  # later batches: more classes of the particle
        stack = _class_averages(rng, atoms, weights, classes_2d, good, pixel_a, structure.atom_sigma_a)
        stack_path = write_mrc(project / f"Class2D/job{10 + batch:03d}/run_it025_classes.mrcs", stack, pixel_a,
                               is_stack=True)
        share = rng.dirichlet(np.where(np.arange(classes_2d) < good, 4.0, 1.0))
        particles = np.round(share * particles_per_batch).astype(int)
        resolutions = [float(rng.uniform(7, 12) if index < good else rng.uniform(18, 30)) for index in range(classes_2d)]
        group = store.record_classification_group(job, {
            "type": "2D", "batch_number": batch, "particles_per_batch": particles_per_batch,
            "classes_per_batch": classes_2d, "binned_pixel_size_a": pixel_a}, [
            {"class_number": number, "particles_per_class": int(particles[number - 1]),
             "class_distribution": float(share[number - 1]), "estimated_resolution_a": resolutions[number - 1],
             "image": f"{number:06d}@{stack_path}"} for number in range(1, classes_2d + 1)])
        scores = score_classes(stack, particles.tolist(), share.tolist(), resolutions, selection)
        store.record_class_selection(group, [one.class_number for one in scores if one.selected],
                                     {one.class_number: one.score for one in scores})
        groups_2d.append(group)
    store.finish_processing_job(job, "success")

    job = store.start_processing_job(sid, recipe, "class3d", False, run)
    maps = []
    for number in range(1, 5):  # class 1 is the particle, the others blurred and shifted copies of it
        volume = _projection(atoms, weights, Rotation.identity(), 32, 2 * pixel_a, structure.atom_sigma_a * number,
                             depth=True)
        maps.append(write_mrc(project / f"Class3D/job020/run_it025_class{number:03d}.mrc", volume, 2 * pixel_a))
    share = np.array([0.46, 0.24, 0.18, 0.12])
    class3d = store.record_classification_group(job, {
        "type": "3D", "batch_number": 1, "particles_per_batch": 2 * particles_per_batch, "classes_per_batch": 4,
        "binned_pixel_size_a": 2 * pixel_a}, [
        {"class_number": number, "particles_per_class": int(round(share[number - 1] * 2 * particles_per_batch)),
         "class_distribution": float(share[number - 1]), "estimated_resolution_a": 9.0 + 4 * (number - 1),
         "image": str(path)} for number, path in enumerate(maps, start=1)])
    store.record_class_selection(class3d, [1])
    store.record_initial_model(class3d, {"resolution_a": 16.0, "number_of_particles": 2 * particles_per_batch})
    store.finish_processing_job(job, "success")

    job = store.start_processing_job(sid, recipe, "refine3d", False, run)
    star = project / "PostProcess/job031/postprocess.star"
    write_star(star, {"general": {"rlnFinalResolution": resolution_a}, "fsc": pd.DataFrame(_fsc_table(resolution_a, pixel_a / 2))})
    refined = int(round(share[0] * 2 * particles_per_batch))
    refinement = store.record_refinement(job, {
        "symmetry": "C1", "class_number": 1, "resolution_a": resolution_a, "bfactor_a2": -BFACTOR_A2,
        "number_of_particles": refined, "map": "PostProcess/job031/postprocess.mrc", "pixel_size_a": pixel_a / 2})
    store.finish_processing_job(job, "success")

    job = store.start_processing_job(sid, recipe, "bfactor", False, run)
    inverse_d2_full = 1 / resolution_a**2
    for count in (refined // 8, refined // 4, refined // 2, refined):
        inverse_d2 = inverse_d2_full + 2 / BFACTOR_A2 * np.log(count / refined)
        store.record_bfactor_fit(job, {"number_of_particles": count, "resolution_a": float(1 / np.sqrt(inverse_d2)),
                                       "pixel_size_a": pixel_a / 2})
    store.finish_processing_job(job, "success")
    return ParticleResults(class2d_groups=groups_2d, class3d_group=class3d, refinement_id=refinement,
                           postprocess_star=star, class_pixel_size_a=pixel_a)


def _fsc_table(resolution_a: float, pixel_size_a: float, shells: int = 32) -> dict[str, list[float]]:
    """A data_fsc table as relion_postprocess writes it (its columns): a logistic fall through 0.143 at
    `resolution_a` (the masked curve a little above, the unmasked a little below)."""
    frequency = np.linspace(0, 0.5 / pixel_size_a, shells + 1)
    width = 0.08 / resolution_a
    centre = 1 / resolution_a - width * np.log(1 / 0.143 - 1)
    corrected = 1 / (1 + np.exp((frequency - centre) / width))
    with np.errstate(divide="ignore"):
        angstrom = np.where(frequency > 0, 1 / np.maximum(frequency, 1e-12), 999.0)
    return {"rlnSpectralIndex": list(range(shells + 1)), "rlnResolution": frequency.round(6).tolist(),
            "rlnAngstromResolution": angstrom.round(6).tolist(),
            "rlnFourierShellCorrelationCorrected": corrected.round(6).tolist(),
            "rlnFourierShellCorrelationUnmaskedMaps": (corrected * 0.9).round(6).tolist(),
            "rlnFourierShellCorrelationMaskedMaps": np.minimum(1, corrected * 1.05).round(6).tolist()}


# --- tomography -----------------------------------------------------------------------------------------

def record_tilt_series(store: ResultsStore, session: SimulatedSession, name: str = "TS_01",
                       recipe: str = "tomo_live") -> int:
    """The session's movies as one tilt series (0°, then ±3° steps), complete, reconstructed with a
    central-slice image and per-tilt alignment residuals growing with the angle, then denoised and segmented
    (processed tomograms with their pictures); the tomogram's id."""
    series_id = store.get_or_create_tilt_series(session.session_id, name, None, 85.0,
                                                expected_tilts=len(session.movies) + 1)
    angles = [3.0 * ((index + 1) // 2) * (1 if index % 2 else -1) + 0.0 for index in range(len(session.movies))]
    for order, (movie_id, angle) in enumerate(zip(session.movies, angles), start=1):
        store.add_tilt(series_id, movie_id, order - 1, angle, order, 3.0 * (order - 1))
    store.complete_tilt_series(series_id, "idle")
    slice_png = session.processing_dir / f"{name}_slice.png"
    Image.fromarray(thumbnails.stretch_to_uint8(session.rng.normal(size=(64, 64)))).save(slice_png)
    job = store.start_processing_job(session.session_id, recipe, "tomogram", False, session.run_id)
    tomogram_id = store.record_tomogram(job, series_id, {
        "volume": str(session.processing_dir / f"{name}.mrc"), "pixel_size_a": 10.0, "tilt_axis_deg": 84.2,
        "mean_residual_px": 1.25, "residual_sd_px": 0.5, "central_slice": str(slice_png)},
        [{"movie_id": movie_id, "refined_tilt_angle_deg": angle + 0.1, "shift_x_px": 1.0, "shift_y_px": -1.0,
          "residual_px": 1.0 + abs(angle) / 10, "excluded": False}
         for movie_id, angle in zip(session.movies, angles)])
    pictures = {}
    for picture in ("denoised", "membranes", "membranes_xy"):
        pictures[picture] = session.processing_dir / f"{name}_{picture}.png"
        Image.fromarray(thumbnails.stretch_to_uint8(session.rng.normal(size=(64, 64)))).save(pictures[picture])
    store.record_processed_tomogram(job, series_id, {
        "processing_type": "Denoised", "path": str(session.processing_dir / f"{name}_denoised.mrc"),
        "central_slice": str(pictures["denoised"])})
    store.record_processed_tomogram(job, series_id, {
        "processing_type": "Segmented", "path": str(session.processing_dir / f"{name}_membranes.mrc"),
        "central_slice": str(pictures["membranes"]), "projection_xy": str(pictures["membranes_xy"])})
    return tomogram_id
