"""How real the simulator looks: the easy and realistic presets next to a real micrograph.

The real micrograph is `fei-extended.mrc` from mrcfile 1.5.4's source distribution (tests/test_data/;
3838 × 3710 px, 0.854 Å/px, 300 kV, K2/K3-class counting camera behind an energy filter, 47.6 e⁻/Å²,
defocus 0.91 µm in its header; contributed by Kevin Savage, Diamond Light Source; BSD-3-Clause). Each
preset simulates one micrograph with the real one's pixel size, defocus, dose and particle density
(noise-free dose-integrated image + Poisson counts = a perfectly motion-corrected sum). Printed:
- radial power spectrum of the relative contrast (image / mean - 1), in bands, as log10 of the band's
  power over the image's own shot-noise plateau (the mean power between 1/3 Å and Nyquist, ice ring
  excluded) and as log10(sim / real) of that ratio;
- pixel statistics of the normalised image, raw and low-passed to 20 Å;
- particle contrast: in the 20 Å low-passed image with the smooth background removed, (ring - core) /
  background std for each particle (core r < 0.25 d, ring 0.6-0.9 d away from other particles); the
  simulator's planted centres, and for the real micrograph the reference picks of
  tests/fixtures/picking_real/fei_extended_reference_picks.star;
- core depression: how much darker a particle's centre is than its surroundings in the raw image (median,
  fraction of the beam), and from it the per-pixel particle SNR of one frame of 1.19 e⁻/Å² (depression² ×
  electrons per pixel per frame).
It writes docs/simulator_vs_real.png (low-passed real, realistic, easy, power spectra).

    .venv/bin/python benchmarks/bench_simulator_realism.py [--real-dir DIR] [--size-px 2048]

Without --real-dir it downloads the sdist once into /tmp/mrcfile-sdist (`pip download --no-binary :all:
--no-deps mrcfile==1.5.4`) and unpacks its test data.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

import mrcfile
import numpy as np
import starfile
from scipy import ndimage, stats

from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie

REPO = Path(__file__).resolve().parents[1]
REFERENCE_PICKS = REPO / "tests/fixtures/picking_real/fei_extended_reference_picks.star"
SDIST_DIR = Path("/tmp/mrcfile-sdist")
REAL_NAME = "fei-extended.mrc"
# fei-extended.mrc's header: dose 4.76e21 e/m² = 47.6 e/Å², defocus -0.9066 µm, 0.8538 Å/px.
REAL_PIXEL_SIZE_A = 0.8537755
REAL_DOSE_E_A2 = 47.6
REAL_DEFOCUS_A = 9066.0
REAL_PARTICLE_DIAMETER_A = 130.0
SIM_FRAMES = 40
BANDS_A = [(1000, 100), (100, 30), (30, 10), (10, 5), (5, 4.2), (4.2, 3.3), (3.3, None)]
LOWPASS_A = 20.0
TILE_PX = 512


def real_micrograph(real_dir: Path | None) -> tuple[np.ndarray, Path]:
    """fei-extended.mrc as float32 (counts scaled by the camera software), fetched once if not given."""
    if real_dir is None:
        real_dir = SDIST_DIR / "mrcfile-1.5.4" / "tests" / "test_data"
        if not (real_dir / REAL_NAME).exists():
            SDIST_DIR.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                            "mrcfile==1.5.4", "-d", str(SDIST_DIR)], check=True)
            with tarfile.open(SDIST_DIR / "mrcfile-1.5.4.tar.gz") as archive:
                archive.extractall(SDIST_DIR, members=[m for m in archive.getmembers()
                                                       if m.name.startswith("mrcfile-1.5.4/tests/test_data/")])
    path = real_dir / REAL_NAME
    with mrcfile.open(path, permissive=True) as mrc:
        return mrc.data.astype(np.float32), path


def simulate(preset: str, size_px: int, particles: int, seed: int) -> tuple[np.ndarray, SpaSimulationSettings, object]:
    """A Poisson-noisy dose-integrated micrograph of the preset at the real micrograph's conditions (inside the
    hole, as the real one is: no carbon rim)."""
    settings = SpaSimulationSettings.preset(
        preset, seed=seed, image_size_px=size_px, pixel_size_a=REAL_PIXEL_SIZE_A, n_frames=SIM_FRAMES,
        dose_per_frame_e_a2=REAL_DOSE_E_A2 / SIM_FRAMES, defocus_min_a=REAL_DEFOCUS_A,
        defocus_max_a=REAL_DEFOCUS_A, particles_per_micrograph=particles, drift_a_per_frame=0.0,
        local_motion_a=0.0, counting_noise=False,
        **({"carbon_edge": False, "carbon_particle_fraction": 0.0} if preset == "realistic" else {}))
    movie = simulate_movie(settings, 0)
    counts = np.random.default_rng(seed).poisson(np.clip(movie.clean_micrograph, 0, None)).astype(np.float32)
    return counts, settings, movie


def radial_power(image: np.ndarray, pixel_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean tile periodogram of image/mean - 1, radially averaged: (frequency 1/Å, power per px)."""
    relative = image / image.mean() - 1.0
    ny, nx = (s // TILE_PX for s in relative.shape)
    tiles = relative[:ny * TILE_PX, :nx * TILE_PX].reshape(ny, TILE_PX, nx, TILE_PX).swapaxes(1, 2)
    tiles = tiles.reshape(-1, TILE_PX, TILE_PX)
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
    power = np.mean(np.abs(np.fft.rfft2(tiles)) ** 2, axis=0) / TILE_PX**2
    freq = np.hypot(*np.meshgrid(np.fft.fftfreq(TILE_PX), np.fft.rfftfreq(TILE_PX), indexing="ij"))
    edges = np.linspace(0, 0.5, TILE_PX // 4 + 1)
    which = np.digitize(freq.ravel(), edges) - 1
    keep = which < len(edges) - 1
    sums = np.bincount(which[keep], power.ravel()[keep], minlength=len(edges) - 1)
    counts = np.bincount(which[keep], minlength=len(edges) - 1)
    centres = 0.5 * (edges[1:] + edges[:-1]) / pixel_size_a
    return centres[1:], (sums / np.maximum(counts, 1))[1:]


def shot_plateau(freq: np.ndarray, power: np.ndarray) -> float:
    """Mean power from 1/3 Å to Nyquist, away from the ice ring: the white counting noise."""
    return float(power[(freq > 1 / 3.0)].mean())


def band_ratios(freq: np.ndarray, power: np.ndarray) -> list[float]:
    plateau = shot_plateau(freq, power)
    out = []
    for low_a, high_a in BANDS_A:
        inside = (freq >= 1 / low_a) & ((freq < 1 / high_a) if high_a else True)
        out.append(float(np.log10(power[inside].mean() / plateau)) if inside.any() else float("nan"))
    return out


def pixel_statistics(image: np.ndarray, pixel_size_a: float, lowpass_a: float | None) -> list[float]:
    """Mean, std, skew, excess kurtosis of (image / mean): raw or Gaussian low-passed to `lowpass_a`."""
    relative = image / image.mean()
    if lowpass_a:
        relative = ndimage.gaussian_filter(relative, lowpass_a / pixel_size_a / 2.355 * 2)
    flat = relative.ravel()
    return [float(flat.mean()), float(flat.std()), float(stats.skew(flat)), float(stats.kurtosis(flat))]


def particle_contrast(image: np.ndarray, pixel_size_a: float, centres_px: np.ndarray,
                      diameter_a: float) -> tuple[float, float]:
    """(median, 25th percentile) of (ring mean - core mean) / background std over particles, in the low-passed
    image with its smooth background (Gaussian of 2 diameters) removed; positive = particles darker."""
    diameter_px = diameter_a / pixel_size_a
    low = ndimage.gaussian_filter(image / image.mean(), LOWPASS_A / pixel_size_a / 2.355 * 2)
    flat = low - ndimage.gaussian_filter(low, 2 * diameter_px)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    near_any = np.zeros(image.shape, dtype=bool)
    step = 4
    sub_y, sub_x = yy[::step, ::step], xx[::step, ::step]
    distance = np.full(sub_y.shape, np.inf)
    for x, y in centres_px:
        distance = np.minimum(distance, np.hypot(sub_x - x, sub_y - y))
    near_any[::step, ::step] = distance < 0.9 * diameter_px
    background_std = float(flat[::step, ::step][distance > 0.9 * diameter_px].std())
    values = []
    for index, (x, y) in enumerate(centres_px):
        y0, y1 = int(max(y - diameter_px, 0)), int(min(y + diameter_px + 1, image.shape[0]))
        x0, x1 = int(max(x - diameter_px, 0)), int(min(x + diameter_px + 1, image.shape[1]))
        r = np.hypot(xx[y0:y1, x0:x1] - x, yy[y0:y1, x0:x1] - y)
        others = np.delete(centres_px, index, axis=0)
        free = np.ones(r.shape, dtype=bool)
        for ox, oy in others[np.hypot(others[:, 0] - x, others[:, 1] - y) < 2 * diameter_px]:
            free &= np.hypot(xx[y0:y1, x0:x1] - ox, yy[y0:y1, x0:x1] - oy) > 0.5 * diameter_px
        core = r < 0.25 * diameter_px
        ring = (r > 0.6 * diameter_px) & (r < 0.9 * diameter_px) & free
        if core.sum() and ring.sum() > 10:
            patch = flat[y0:y1, x0:x1]
            values.append((patch[ring].mean() - patch[core].mean()) / background_std)
    return float(np.median(values)), float(np.percentile(values, 25))


def core_depression(image: np.ndarray, pixel_size_a: float, centres_px: np.ndarray, diameter_a: float) -> float:
    """Median over particles of (ring mean - core mean) / ring mean in the raw image (core r < 0.25 d, ring
    0.6-0.9 d): how much darker a particle's centre is, as a fraction of the beam."""
    diameter_px = diameter_a / pixel_size_a
    values = []
    for x, y in centres_px:
        y0, y1 = int(max(y - diameter_px, 0)), int(min(y + diameter_px + 1, image.shape[0]))
        x0, x1 = int(max(x - diameter_px, 0)), int(min(x + diameter_px + 1, image.shape[1]))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        r = np.hypot(xx - x, yy - y)
        patch = image[y0:y1, x0:x1]
        ring = patch[(r > 0.6 * diameter_px) & (r < 0.9 * diameter_px)].mean()
        values.append((ring - patch[r < 0.25 * diameter_px].mean()) / ring)
    return float(np.median(values))


def per_frame_snr(depression: float, pixel_size_a: float) -> float:
    """Per-pixel SNR of a particle's centre in one frame of REAL_DOSE_E_A2 / SIM_FRAMES: depression² × electrons."""
    return depression**2 * REAL_DOSE_E_A2 / SIM_FRAMES * pixel_size_a**2


def reference_picks() -> np.ndarray | None:
    if not REFERENCE_PICKS.exists():
        return None
    blocks = starfile.read(REFERENCE_PICKS, always_dict=True)
    table = blocks["particles"]
    return np.stack([table["rlnCoordinateX"], table["rlnCoordinateY"]], axis=1).astype(float)


def save_figure(path: Path, real: np.ndarray, sims: dict[str, np.ndarray], spectra: dict[str, tuple],
                size_px: int) -> None:
    """Low-passed real crop, realistic and easy sims (same field size) and the spectra, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shown(image: np.ndarray) -> np.ndarray:
        low = ndimage.gaussian_filter(image / image.mean(), LOWPASS_A / REAL_PIXEL_SIZE_A / 2.355 * 2)
        lo, hi = np.percentile(low, [1, 99])
        return np.clip((low - lo) / (hi - lo), 0, 1)

    y0 = (real.shape[0] - size_px) // 2
    x0 = (real.shape[1] - size_px) // 2
    panels = [("real fei-extended.mrc (centre crop)", shown(real[y0:y0 + size_px, x0:x0 + size_px]))]
    panels += [(f"simulated: {name} preset", shown(image)) for name, image in sims.items()]
    figure, axes = plt.subplots(1, 4, figsize=(20, 5.4))
    for axis, (title, image) in zip(axes, panels):
        axis.imshow(image, cmap="gray")
        axis.set_title(f"{title}\nlow-passed to {LOWPASS_A:.0f} Å", fontsize=10)
        axis.axis("off")
    plot = axes[3]
    for name, (freq, power) in spectra.items():
        plot.semilogy(freq, power / shot_plateau(freq, power), label=name, lw=1)
    plot.set_xlabel("spatial frequency (1/Å)")
    plot.set_ylabel("power / shot-noise plateau")
    plot.axvline(1 / 3.7, color="grey", ls=":", lw=0.8)
    plot.text(1 / 3.7, plot.get_ylim()[1] * 0.5, " 3.7 Å", fontsize=8, color="grey")
    plot.set_title(f"radial power spectrum ({REAL_PIXEL_SIZE_A:.3f} Å/px)", fontsize=10)
    plot.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-dir", type=Path, help="folder holding fei-extended.mrc (default: fetch the sdist)")
    parser.add_argument("--size-px", type=int, default=2048, help="simulated micrograph size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "simulator_vs_real.png")
    args = parser.parse_args()

    real, real_path = real_micrograph(args.real_dir)
    picks = reference_picks()
    # Particle density of the real micrograph (its reference picks, or 140 per 3838 × 3710 px when absent).
    real_count = len(picks) if picks is not None else 140
    particles = int(round(real_count * args.size_px**2 / real.size))
    images = {"real": real}
    spectra: dict[str, tuple] = {"real": radial_power(real, REAL_PIXEL_SIZE_A)}
    contrast = {"real": particle_contrast(real, REAL_PIXEL_SIZE_A, picks, REAL_PARTICLE_DIAMETER_A)
                if picks is not None else (float("nan"), float("nan"))}
    depression = {"real": core_depression(real, REAL_PIXEL_SIZE_A, picks, REAL_PARTICLE_DIAMETER_A)
                  if picks is not None else float("nan")}
    for preset in ("realistic", "easy"):
        image, settings, movie = simulate(preset, args.size_px, particles, args.seed)
        images[preset] = image
        spectra[preset] = radial_power(image, REAL_PIXEL_SIZE_A)
        centres = np.asarray(movie.truth.particle_coordinates_px()).reshape(-1, 2)
        contrast[preset] = particle_contrast(image, REAL_PIXEL_SIZE_A, centres, settings.particle_diameter_a)
        depression[preset] = core_depression(image, REAL_PIXEL_SIZE_A, centres, settings.particle_diameter_a)

    print(f"real: {real_path} {real.shape[1]}×{real.shape[0]} px; simulated: {args.size_px}² px, "
          f"{particles} particles, {SIM_FRAMES} frames, {REAL_DOSE_E_A2} e/Å², defocus {REAL_DEFOCUS_A:.0f} Å\n")
    band_names = [f"{low}-{high or 'Nyq'} Å" for low, high in BANDS_A]
    print("Radial power, log10(band power / shot-noise plateau):\n")
    print("| image | " + " | ".join(band_names) + " |")
    print("|---|" + "---|" * len(band_names))
    ratios = {name: band_ratios(*spectrum) for name, spectrum in spectra.items()}
    for name, values in ratios.items():
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in values) + " |")
    for name in ("realistic", "easy"):
        print(f"| log10({name} / real) | " + " | ".join(f"{a - b:+.2f}" for a, b in zip(ratios[name], ratios["real"]))
              + " |")
    print("\nPixel statistics of image / mean (raw | low-passed to 20 Å), particle contrast, core depression and "
          "per-frame SNR:\n")
    print("| image | std | skew | excess kurtosis | std 20 Å | skew 20 Å | kurtosis 20 Å | "
          "particle contrast median (25th pct) | core depression % | per-frame SNR |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, image in images.items():
        raw = pixel_statistics(image, REAL_PIXEL_SIZE_A, None)
        low = pixel_statistics(image, REAL_PIXEL_SIZE_A, LOWPASS_A)
        median, quartile = contrast[name]
        print(f"| {name} | {raw[1]:.3f} | {raw[2]:+.2f} | {raw[3]:+.2f} | {low[1]:.4f} | {low[2]:+.2f} | "
              f"{low[3]:+.2f} | {median:.2f} ({quartile:.2f}) | {100 * depression[name]:.2f} | "
              f"{per_frame_snr(depression[name], REAL_PIXEL_SIZE_A):.1e} |")
    save_figure(args.figure, real, {k: images[k] for k in ("realistic", "easy")}, spectra, args.size_px)
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
