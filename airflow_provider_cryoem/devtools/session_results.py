"""What a live run records for a simulated session, written through the real ResultsStore without running
the engines: session, claims, movies, motion / CTF / picking / ice rows, failures, and real thumbnails.

Values follow the simulator's settings (defocus and astigmatism ranges, drift, particles per
micrograph, ice), so the dashboard's tests and benchmark look at a session like the one the pipeline
writes, thousands of movies in seconds instead of hours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, select

from ..engines import thumbnails
from ..results import ResultsStore, records, schema
from ..simulate import SpaSimulationSettings

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
                   end_reason: str | None = None) -> SimulatedSession:
    """A session with `settings.n_movies` movies under `data_root/name`; every `failed_every`-th movie
    (0: none) fails CTF instead of getting CTF, picking and ice rows; the first `images_for` movies get
    thumbnails (micrograph, picks, CTF fit, drift) written under the processing folder."""
    watch_dir, processing_dir = Path(data_root) / name / "raw", Path(data_root) / name / "processing"
    processing_dir.mkdir(parents=True, exist_ok=True)
    session_id = store.get_or_create_session(name, str(watch_dir), str(processing_dir))
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
        "drift_plot": str(thumbnails.drift_plot(shifts, f"{stem}_drift.png")) if stem else None,
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
