"""Picking on real micrographs with reference picks: the built-in picker, relion_autopick --LoG and Topaz.

Data (none of it ships with the project; `--download` fetches it into --data, or lay it out by hand):
- fei-extended.mrc from mrcfile 1.5.4's source distribution (BSD-3-Clause; `pip download --no-binary :all:
  --no-deps mrcfile==1.5.4`): 3838 × 3710 px at 0.854 Å/px, scored against the picks annotated by eye in
  tests/fixtures/picking_real/fei_extended_reference_picks.star (how: that file's header).
- Ucsf_stack_1142_DW.mrc from micrograph-cleaner-em 1.0.2's source distribution (MIT): a dose-weighted
  micrograph with Relion autopick coordinates and a contamination mask. Those picks are Relion's, not a
  ground truth: the row reports agreement with them off the contamination, and picks on the contamination.
- AutoCryoPicker (github.com/jianlin-cheng/AutoCryoPicker, EMPIAR-10146 apoferritin, binned 16-bit PNG):
  the 19 micrographs with ground-truth images, particles painted as discs; centres from the discs.
- CryoPPP subsets in Prompt_sam_cryoPPP (github.com/yangyang-69/Prompt_sam_cryoPPP at 5f7cca15):
  EMPIAR-10028, 10059 and 10947, 10 micrographs each (1024², 8-bit PNG) with particle masks (discs);
  centres from the discs.

The PNG sets carry no pixel size: they are picked at 1 Å/px with the particle diameter measured on their
reference discs, the same numbers for every picker. Scoring: one-to-one matching within a particle radius;
reference entries and picks within a particle radius of the image edge are left out for every picker;
a pick on an 'ambiguous' reference entry counts neither way. Relion 3.1's LoG picker runs with the GUI's
defaults (threshold 0, lowpass 20 Å) over the same diameter range; Topaz's pretrained resnet16 runs as the
pick stage runs it (downsampling by Relion's rule), at the stage's default threshold -3 and at 0.

    .venv/bin/python benchmarks/bench_picking_real.py --data /tmp/cryoem-real-picking --download
    .venv/bin/python benchmarks/bench_picking_real.py --data /tmp/cryoem-real-picking [--pickers builtin,relion,topaz]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from airflow_provider_cryoem.engines.extract import read_coordinates
from airflow_provider_cryoem.engines.picking import PickingInputs, pick_particles
from airflow_provider_cryoem.io import read_star, write_mrc
from airflow_provider_cryoem.simulate import SpaSimulationSettings, simulate_movie
from airflow_provider_cryoem.tools.topaz import relion_downscale

sys.path.insert(0, str(Path(__file__).parent))
from bench_picking import prf, score  # noqa: E402
from bench_topaz_picking import read_picks, topaz  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "picking_real"
FEI_REFERENCE = FIXTURES / "fei_extended_reference_picks.star"
FEI_FIXTURE = FIXTURES / "fei_extended_bin4.mrc"
FEI_PIXEL_SIZE_A = 0.854
FIXTURE_BINNING = 4
CRYOPPP_COMMIT = "5f7cca15"
SDISTS = {"mrcfile": "1.5.4", "micrograph-cleaner-em": "1.0.2"}
REPOSITORIES = {"AutoCryoPicker": "https://github.com/jianlin-cheng/AutoCryoPicker",
                "Prompt_sam_cryoPPP": "https://github.com/yangyang-69/Prompt_sam_cryoPPP"}
TOPAZ_THRESHOLDS = (-3.0, 0.0)


@dataclass
class Micrograph:
    """One real micrograph with its reference: `particles` [x, y] px, `ambiguous` counted neither way."""

    name: str
    image: np.ndarray
    particles: np.ndarray
    ambiguous: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    excluded: np.ndarray | None = None  # boolean mask (row, col) of areas where a pick is counted apart


@dataclass
class Dataset:
    label: str
    pixel_size_a: float
    diameter_a: float
    diameter_range_a: tuple[float, float]
    micrographs: list[Micrograph]
    note: str = ""
    sizes_in_px: bool = False  # no pixel size known: Å stand for pixels


def download(data: Path) -> None:
    """pip download the two source distributions and unpack them; git clone the two repositories."""
    data.mkdir(parents=True, exist_ok=True)
    for name, version in SDISTS.items():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"{name}=={version}", "-d", str(data)], check=True)
        archive = next(data.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(data, filter="data")
    for name, url in REPOSITORIES.items():
        if not (data / name).exists():
            subprocess.run(["git", "clone", url, str(data / name)], check=True)
    subprocess.run(["git", "-C", str(data / "Prompt_sam_cryoPPP"), "checkout", CRYOPPP_COMMIT], check=True)


def disc_centres(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """[x, y] centres of painted discs of one radius, touching or overlapping: maxima of the distance
    transform at least 0.6 radius deep and 0.8 radius apart (a blob centroid would merge touching discs)."""
    depth = ndimage.distance_transform_edt(mask)
    size = max(3, int(round(0.8 * radius_px)) | 1)
    peaks = (depth == ndimage.maximum_filter(depth, size=size)) & (depth >= 0.6 * radius_px)
    labels, count = ndimage.label(peaks)  # a flat-topped maximum is one plateau: one centre
    centres = np.asarray(ndimage.center_of_mass(peaks, labels, range(1, count + 1))).reshape(-1, 2)
    return centres[:, ::-1]


def disc_radius_px(mask: np.ndarray) -> float:
    """Radius of the painted discs: the median area of the isolated ones (the smaller half of the blobs)."""
    labels, count = ndimage.label(mask)
    areas = np.sort(np.bincount(labels.ravel())[1:])
    return float(np.sqrt(np.median(areas[: max(1, count // 2)]) / np.pi))


def fei_path(data: Path) -> Path:
    return data / "mrcfile-1.5.4" / "tests" / "test_data" / "fei-extended.mrc"


def write_fixture(data: Path) -> Path:
    """tests/fixtures/picking_real/fei_extended_bin4.mrc: the whole micrograph, 4 × 4 pixels averaged (3.415 Å/px)
    and rounded to uint16 (1.8 MB); the reference picks divided by 4 fit it."""
    image = np.asarray(mrcfile.read(fei_path(data)), dtype=np.float64)
    ny, nx = (n // FIXTURE_BINNING * FIXTURE_BINNING for n in image.shape)
    binned = image[:ny, :nx].reshape(ny // FIXTURE_BINNING, FIXTURE_BINNING, nx // FIXTURE_BINNING,
                                     FIXTURE_BINNING).mean(axis=(1, 3))
    return write_mrc(FEI_FIXTURE, np.round(binned).astype(np.uint16), FEI_PIXEL_SIZE_A * FIXTURE_BINNING)


def fei_dataset(data: Path) -> Dataset:
    image = np.asarray(mrcfile.read(fei_path(data)), dtype=np.float32)
    blocks = read_star(FEI_REFERENCE)
    particles, ambiguous = (blocks[name][["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=np.float64)
                            for name in ("particles", "ambiguous"))
    return Dataset("fei-extended (annotated by eye)", FEI_PIXEL_SIZE_A, 115.0, (80.0, 150.0),
                   [Micrograph("fei-extended", image, particles, ambiguous)])


def cleaner_dataset(data: Path) -> Dataset:
    root = data / "micrograph_cleaner_em-1.0.2" / "micrograph_cleaner_em" / "tests" / "data"
    image = np.asarray(mrcfile.read(root / "mics" / "Ucsf_stack_1142_DW.mrc"), dtype=np.float32)
    contamination = np.asarray(mrcfile.read(root / "masks" / "Ucsf_stack_1142_DW.mrc")) > 0.5
    relion = read_coordinates(root / "inCoords" / "relion" / "Ucsf_stack_1142_DW_autopick.star")
    rows, cols = np.clip(relion[:, ::-1].round().astype(int), 0, np.array(image.shape) - 1).T
    return Dataset("micrograph-cleaner test micrograph (vs Relion autopick)", 1.0, 36.0, (28.0, 44.0),
                   [Micrograph("Ucsf_stack_1142_DW", image, relion[~contamination[rows, cols]],
                               excluded=contamination)],
                   note="reference = Relion's own autopicks off the contamination mask (not a ground truth)",
                   sizes_in_px=True)


def autocryopicker_dataset(data: Path) -> Dataset:
    root = data / "AutoCryoPicker" / "cryo-EM Dataset"
    micrographs, radii = [], []
    for truth_path in sorted((root / "Apoferritin cryo-EM Ground Truth").glob("*.png")):
        stem = truth_path.stem.rsplit("_", 1)[0]  # May08_03.05.02.bin_avg / .bin_GT -> May08_03.05.02.bin
        image = np.asarray(Image.open(root / "Apoferritin_cryo-EM_Dataset_without_averaging" / f"{stem}.png"),
                           dtype=np.float32)
        painted = np.asarray(Image.open(truth_path).convert("RGB"))
        mask = np.all(np.abs(painted.astype(int) - [255, 242, 0]) < 40, axis=-1)
        scale = image.shape[0] / mask.shape[0]
        radius = disc_radius_px(mask)
        radii.append(radius * scale)
        micrographs.append(Micrograph(stem, image, disc_centres(mask, radius) * scale))
    diameter = 2 * float(np.median(radii))
    return Dataset("AutoCryoPicker apoferritin (EMPIAR-10146)", 1.0, diameter, (0.8 * diameter, 1.2 * diameter),
                   micrographs, sizes_in_px=True)


def cryoppp_dataset(data: Path, entry: str) -> Dataset:
    root = data / "Prompt_sam_cryoPPP" / "dataset" / entry
    micrographs, radii = [], []
    for label_path in sorted(root.glob("*/labels/*.png")):
        image = np.asarray(Image.open(label_path.parent.parent / "images" / label_path.name), dtype=np.float32)
        mask = np.asarray(Image.open(label_path).convert("L")) > 127
        scale = image.shape[0] / mask.shape[0]
        radius = disc_radius_px(mask)
        radii.append(radius * scale)
        micrographs.append(Micrograph(label_path.stem, image, disc_centres(mask, radius) * scale))
    diameter = 2 * float(np.median(radii))
    return Dataset(f"CryoPPP EMPIAR-{entry}", 1.0, diameter, (0.8 * diameter, 1.2 * diameter), micrographs,
                   sizes_in_px=True)


def simulated_datasets(count: int, size_px: int, first_seed: int = 0) -> list[Dataset]:
    """The realistic simulator preset (dose-integrated image + Poisson counts), scored twice: against every
    planted particle, and with the particles planted on the carbon film counting neither way (the built-in
    picker leaves carbon out by design; Relion's LoG and Topaz do not). Seeds `first_seed` onwards: the
    picker was tuned on seeds 0-5, so later seeds are a held-out check."""
    everything, in_holes = [], []
    for seed in range(first_seed, first_seed + count):
        settings = SpaSimulationSettings.realistic(image_size_px=size_px, seed=seed)
        movie = simulate_movie(settings, 0)
        image = np.random.default_rng(seed).poisson(np.maximum(movie.clean_micrograph, 0)).astype(np.float32)
        planted = [p for p in movie.truth.particles if not p.is_junk]
        centres = np.array([[p.x_px, p.y_px] for p in planted]).reshape(-1, 2)
        on_carbon = np.array([p.on_carbon for p in planted], dtype=bool)
        everything.append(Micrograph(f"realistic{seed:03d}", image, centres))
        in_holes.append(Micrograph(f"realistic{seed:03d}", image, centres[~on_carbon], centres[on_carbon]))
    diameter = settings.particle_diameter_a
    label = f"realistic simulator, {size_px}², seeds {first_seed}-{first_seed + count - 1}"
    return [Dataset(f"{label}, all particles", settings.pixel_size_a, diameter, (0.8 * diameter, 1.2 * diameter),
                    everything),
            Dataset(f"{label}, particles on carbon count neither way", settings.pixel_size_a, diameter,
                    (0.8 * diameter, 1.2 * diameter), in_holes)]


def load_datasets(data: Path) -> list[Dataset]:
    return [fei_dataset(data), cleaner_dataset(data), autocryopicker_dataset(data),
            *(cryoppp_dataset(data, entry) for entry in ("10028", "10059", "10947"))]


def count_matches(picks: np.ndarray, micrograph: Micrograph, radius_px: float) -> tuple[int, int, int]:
    """(matched, picks counted, reference particles) away from the edge, one-to-one within `radius_px`."""
    shape = np.array(micrograph.image.shape[::-1], dtype=np.float64)

    def inside(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return points[np.all((points >= radius_px) & (points <= shape - 1 - radius_px), axis=1)]

    picks, particles, ambiguous = inside(picks), inside(micrograph.particles), inside(micrograph.ambiguous)
    if len(picks) and len(ambiguous):
        to_ambiguous = np.hypot(*(picks[:, None] - ambiguous[None]).transpose(2, 0, 1)).min(axis=1)
        to_particle = (np.hypot(*(picks[:, None] - particles[None]).transpose(2, 0, 1)).min(axis=1)
                       if len(particles) else np.full(len(picks), np.inf))
        picks = picks[~((to_ambiguous <= radius_px) & (to_ambiguous < to_particle))]
    return score(picks, particles, radius_px)


def chance_precision(dataset: Dataset) -> float:
    """Precision of picks dropped at random: the share of the scored area within a radius of a reference
    particle. On densely packed references a picker that sees nothing still scores this."""
    radius_px = dataset.diameter_a / 2 / dataset.pixel_size_a
    near, area = 0, 0
    for micrograph in dataset.micrographs:
        free = np.ones(micrograph.image.shape, dtype=bool)
        rows, cols = np.clip(np.round(np.asarray(micrograph.particles).reshape(-1, 2)[:, ::-1]).astype(int), 0,
                             np.array(free.shape) - 1).T
        free[rows, cols] = False
        inside = np.zeros_like(free)
        edge = int(np.ceil(radius_px))
        inside[edge:-edge, edge:-edge] = True
        near += int(np.count_nonzero((ndimage.distance_transform_edt(free) <= radius_px) & inside))
        area += int(np.count_nonzero(inside))
    return near / max(area, 1)


def on_excluded(picks: np.ndarray, micrograph: Micrograph) -> int:
    if micrograph.excluded is None or len(picks) == 0:
        return 0
    rows, cols = np.clip(np.asarray(picks)[:, ::-1].round().astype(int), 0,
                         np.array(micrograph.excluded.shape) - 1).T
    return int(np.count_nonzero(micrograph.excluded[rows, cols]))


def picking_inputs(dataset: Dataset) -> PickingInputs:
    return PickingInputs(micrograph_path="(in memory)", pixel_size_a=dataset.pixel_size_a,
                         particle_diameter_a=dataset.diameter_a, min_diameter_a=dataset.diameter_range_a[0],
                         max_diameter_a=dataset.diameter_range_a[1])


def run_builtin(dataset: Dataset) -> tuple[list[np.ndarray], float]:
    """Picks per micrograph and the median seconds per micrograph."""
    picks, seconds = [], []
    inputs = picking_inputs(dataset)
    for micrograph in dataset.micrographs:
        start = time.perf_counter()
        coordinates = pick_particles(micrograph.image, inputs)[0]
        seconds.append(time.perf_counter() - start)
        picks.append(coordinates)
    return picks, float(np.median(seconds))


def write_micrographs(dataset: Dataset, folder: Path) -> list[Path]:
    paths = []
    for index, micrograph in enumerate(dataset.micrographs):
        paths.append(write_mrc(folder / f"mic{index:03d}.mrc", micrograph.image, dataset.pixel_size_a))
    return paths


def run_relion(dataset: Dataset, folder: Path) -> tuple[list[np.ndarray], float]:
    """relion_autopick --LoG with the GUI defaults over the dataset's diameter range; seconds per micrograph."""
    paths = write_micrographs(dataset, folder)
    output = folder / "AutoPick"
    low, high = dataset.diameter_range_a
    command = ["relion_autopick", "--i", str(folder / "mic*.mrc"), "--odir", f"{output}/", "--pickname", "autopick",
               "--LoG", "--LoG_diam_min", f"{low:g}", "--LoG_diam_max", f"{high:g}",
               "--angpix", f"{dataset.pixel_size_a:g}", "--shrink", "0", "--lowpass", "20",
               "--LoG_adjust_threshold", "0", "--LoG_upper_threshold", "999"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    seconds = (time.perf_counter() - start) / len(paths)
    picks = []
    for path in paths:
        stars = list(output.rglob(f"{path.stem}_autopick.star"))
        picks.append(read_coordinates(stars[0]) if stars else np.zeros((0, 2)))
    return picks, seconds


def run_topaz(dataset: Dataset, folder: Path) -> tuple[dict[float, list[np.ndarray]], float]:
    """Topaz resnet16 picks per threshold; seconds per micrograph (both commands over the whole set)."""
    paths = write_micrographs(dataset, folder)
    scale = relion_downscale(dataset.diameter_a, dataset.pixel_size_a)
    radius = max(1, round(dataset.diameter_a / 2 / dataset.pixel_size_a / scale))
    start = time.perf_counter()
    table = read_picks(topaz(folder, paths, scale, radius, min(TOPAZ_THRESHOLDS)), scale)
    seconds = (time.perf_counter() - start) / len(paths)
    result = {}
    for threshold in TOPAZ_THRESHOLDS:
        result[threshold] = []
        for path in paths:
            rows = table.get(path.stem, np.zeros((0, 3)))
            result[threshold].append(rows[rows[:, 2] >= threshold, :2])
    return result, seconds


def cell(dataset: Dataset, picks: list[np.ndarray]) -> str:
    radius_px = dataset.diameter_a / 2 / dataset.pixel_size_a
    p, r, f = prf([count_matches(p, m, radius_px) for p, m in zip(picks, dataset.micrographs)])
    text = f"{p:.2f} / {r:.2f} / **{f:.2f}**"
    excluded = sum(on_excluded(p, m) for p, m in zip(picks, dataset.micrographs))
    if any(m.excluded is not None for m in dataset.micrographs):
        text += f" ({excluded} on contamination)"
    return text


def overlay_picture(dataset: Dataset, picks: np.ndarray, path: Path, binning: int = 6) -> Path:
    """The first micrograph binned, ice gradient removed and low-passed as it was annotated; reference
    particles green, ambiguous yellow, the built-in picker's picks red (smaller circles)."""
    micrograph = dataset.micrographs[0]
    image = micrograph.image.astype(np.float64)
    ny, nx = (n // binning * binning for n in image.shape)
    small = image[:ny, :nx].reshape(ny // binning, binning, nx // binning, binning).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, 1.3) - ndimage.gaussian_filter(small, 60)
    low, high = np.percentile(small, [0.5, 99.5])
    picture = Image.fromarray((np.clip((small - low) / (high - low), 0, 1) * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    radius = dataset.diameter_a / 2 / dataset.pixel_size_a / binning
    for points, colour, scale in ((micrograph.particles, (0, 220, 0), 1.0), (micrograph.ambiguous, (255, 200, 0), 1.0),
                                  (picks, (255, 40, 40), 0.6)):
        for x, y in (np.asarray(points).reshape(-1, 2) + 0.5) / binning - 0.5:
            r = radius * scale
            draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
    picture.quantize(colors=64).save(path, optimize=True)  # a noisy picture: 64 colours keep it small
    return path


def reference_average(dataset: Dataset) -> np.ndarray:
    """The mean of boxes 1.5 diameters wide centred on the reference particles, each micrograph's slow
    variation removed and its std scaled to 1: what the particles have in common at their given size."""
    box = int(1.5 * dataset.diameter_a / dataset.pixel_size_a) // 2 * 2
    half, total, count = box // 2, np.zeros((box, box)), 0
    for micrograph in dataset.micrographs:
        image = micrograph.image - ndimage.gaussian_filter(micrograph.image, box / 2)
        image = image / image.std()
        for x, y in np.round(micrograph.particles).astype(int):
            if half <= x < image.shape[1] - half and half <= y < image.shape[0] - half:
                total += image[y - half:y + half, x - half:x + half]
                count += 1
    return total / max(count, 1)


def reference_averages_picture(averages: list[np.ndarray], path: Path, size_px: int = 160) -> Path:
    """Reference averages side by side, each stretched to its own range (dark = protein)."""
    tiles = []
    for average in averages:
        tile = Image.fromarray((255 * (average - average.min()) / np.ptp(average)).astype(np.uint8))
        tiles.append(np.asarray(tile.resize((size_px, size_px), Image.Resampling.BICUBIC)))
    Image.fromarray(np.hstack(tiles)).save(path, optimize=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/cryoem-real-picking"))
    parser.add_argument("--download", action="store_true", help="Fetch the data into --data first.")
    parser.add_argument("--pickers", default="builtin,relion,topaz")
    parser.add_argument("--write-fixture", action="store_true", help=f"Write {FEI_FIXTURE.name} and stop.")
    parser.add_argument("--simulated", type=int, default=0, metavar="N",
                        help="Also N micrographs of the realistic simulator preset.")
    parser.add_argument("--simulated-size", type=int, default=1024, help="Their size (px, 1 Å/px).")
    parser.add_argument("--simulated-first-seed", type=int, default=0,
                        help="Seed of the first (the picker was tuned on 0-5; 6 onwards are held out).")
    parser.add_argument("--only-simulated", action="store_true", help="Leave the real data out.")
    parser.add_argument("--datasets", default="", help="Comma-separated parts of data-set labels to keep "
                                                       "(e.g. 10028,fei); default all.")
    parser.add_argument("--picture", type=Path, default=None,
                        help="Write the fei-extended picks over the reference to this PNG and stop.")
    parser.add_argument("--averages", type=Path, default=None,
                        help="Write the averages of the reference particles of the PNG sets to this PNG and stop.")
    args = parser.parse_args()
    if args.download:
        download(args.data)
    if args.write_fixture:
        print(write_fixture(args.data))
        return 0
    if args.averages:
        sets = [autocryopicker_dataset(args.data),
                *(cryoppp_dataset(args.data, entry) for entry in ("10028", "10059", "10947"))]
        averages = [reference_average(dataset) for dataset in sets]
        for dataset, average in zip(sets, averages):
            print(f"{dataset.label}: centre {average[len(average) // 2, len(average) // 2]:+.2f}, "
                  f"range {average.min():+.2f} .. {average.max():+.2f} std of one micrograph")
        print(reference_averages_picture(averages, args.averages))
        return 0
    if args.picture:
        fei = fei_dataset(args.data)
        print(overlay_picture(fei, run_builtin(fei)[0][0], args.picture))
        return 0
    pickers = set(args.pickers.split(","))
    if "relion" in pickers and shutil.which("relion_autopick") is None:
        print("relion_autopick not found: Relion's column left out")
        pickers.discard("relion")
    datasets = [] if args.only_simulated else load_datasets(args.data)
    if args.simulated:
        datasets += simulated_datasets(args.simulated, args.simulated_size, args.simulated_first_seed)
    if args.datasets:
        datasets = [d for d in datasets if any(part in d.label for part in args.datasets.split(","))]
    header = "| data set | micrographs (reference particles) | diameter | chance P |"
    if "builtin" in pickers:
        header += " built-in P / R / F1 | built-in s/mic |"
    if "relion" in pickers:
        header += " Relion LoG P / R / F1 | Relion s/mic |"
    if "topaz" in pickers:
        header += "".join(f" Topaz t={t:g} P / R / F1 |" for t in TOPAZ_THRESHOLDS) + " Topaz s/mic |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    done: dict[tuple[str, tuple[str, ...]], tuple] = {}  # one run per picker and set of images

    def once(picker: str, dataset: Dataset, run) -> tuple:
        key = (picker, tuple(m.name for m in dataset.micrographs))
        if key not in done:
            with tempfile.TemporaryDirectory(prefix=f"bench-real-{picker}-") as tmp:
                done[key] = run(dataset, Path(tmp))
        return done[key]

    for dataset in datasets:
        reference = sum(len(m.particles) for m in dataset.micrographs)
        row = (f"| {dataset.label} | {len(dataset.micrographs)} ({reference}) | {dataset.diameter_a:.0f} Å"
               f"{' (px)' if dataset.sizes_in_px else ''} | {chance_precision(dataset):.2f} |")
        if "builtin" in pickers:
            picks, seconds = once("builtin", dataset, lambda d, _: run_builtin(d))
            row += f" {cell(dataset, picks)} | {seconds:.2f} |"
        if "relion" in pickers:
            picks, seconds = once("relion", dataset, run_relion)
            row += f" {cell(dataset, picks)} | {seconds:.1f} |"
        if "topaz" in pickers:
            by_threshold, seconds = once("topaz", dataset, run_topaz)
            row += "".join(f" {cell(dataset, by_threshold[t])} |" for t in TOPAZ_THRESHOLDS) + f" {seconds:.1f} |"
        print(row, flush=True)
    notes = [f"{d.label}: {d.note}" for d in datasets if d.note]
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\nReproduce: .venv/bin/python benchmarks/bench_picking_real.py --data {args.data} --pickers {args.pickers}"
          + (f" --simulated {args.simulated}" if args.simulated else "")
          + (f" --simulated-first-seed {args.simulated_first_seed}" if args.simulated_first_seed else "")
          + (" --only-simulated" if args.only_simulated else "")
          + (f" --datasets {args.datasets}" if args.datasets else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
