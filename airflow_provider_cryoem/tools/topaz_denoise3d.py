"""Topaz's pretrained 3D denoiser over a memory-mapped tomogram, one padded cube at a time.

Run as `python -m airflow_provider_cryoem.tools.topaz_denoise3d VOLUME -o DIR --suffix S -m MODEL -s PATCH
-p PADDING -d DEVICE -j THREADS` (the flags of `topaz denoise3d`), in a Python environment with topaz-em.

Why not `topaz denoise3d` itself (topaz-em 0.3.20 on Python 3.11, measured here):
- the `topaz` entry point imports Topaz's training code and with it torchvision, which PyPI's wheel cannot
  load beside the CPU build of torch ("operator torchvision::nms does not exist");
- the pretrained 3D models do not load: Topaz asks importlib.resources for a resource of the *module*
  topaz.denoising.models ('../pretrained/...'), which Python 3.11 refuses ("not a package"), then falls back
  to pkg_resources, which setuptools ≥ 81 no longer has; and a model file given by path is rebuilt with an
  11-voxel first kernel where the shipped models have 7 (size mismatch);
- it reads the whole tomogram into memory (the file's bytes, a float32 copy, the output) and zero-pads edge
  cubes to full size: memory grows with the tomogram.
This runner loads the same weights from the wheel (importlib.resources on the `topaz` package itself),
builds the same network as Topaz's loader does for them (UDenoiseNet3D, first kernel 7) and follows the
arithmetic of Topaz's Denoise3D.denoise: the tomogram normalised by its mean and standard deviation; each
cube taken with `padding` voxels of context on every side (clipped at the volume's edges instead of
zero-filled), normalised again by its own mean and SD for the network and restored after; the context cut
off. Input and output are memory-mapped, so the memory taken is the network's activations for one padded
cube (about 1.3 kB per voxel on the CPU, measured) whatever the tomogram's size.

Noise2noise training takes `topaz denoise3d`'s flags too (-a EVEN -b ODD --N-train --N-test --batch-size
--num-epochs --optim --lr --criteria --save-interval --save-prefix) and runs Topaz's own training code on them
as that command does: the model named by -m is the starting point, training cubes are cut at the patch size
(-s), the model is saved as `<save-prefix>_epochN.sav`, and the volumes are then denoised with the trained
network. Training holds both half tomograms in memory (Topaz's dataset reads them whole).
"""
from __future__ import annotations

import argparse
import importlib.resources
import itertools
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import mrcfile
import numpy as np

from airflow_provider_cryoem.io._atomic import atomic_path

if TYPE_CHECKING:
    import torch

# The shipped 3D models and their files (topaz/pretrained/denoise/); `unet-3d` is Topaz's alias of 10a.
_PRETRAINED_FILES = {"unet-3d": "unet-3d-10a-v0.2.4.sav", "unet-3d-10a": "unet-3d-10a-v0.2.4.sav",
                     "unet-3d-20a": "unet-3d-20a-v0.2.4.sav"}
_SLAB_Z = 16  # slices read at once for the tomogram's mean and SD
# The U-net halves its input five times: each side of a cube must be at least 2⁵ voxels.
MIN_EXTENT_PX = 32


def load_network(model: str, device: str = "cpu") -> "torch.nn.Module":
    """Topaz's 3D U-net with a pretrained model's weights (by name) or a model saved by Topaz (by path)."""
    import torch
    from topaz.denoising.models import UDenoiseNet3D

    if model in _PRETRAINED_FILES:
        resource_file = importlib.resources.files("topaz") / "pretrained" / "denoise" / _PRETRAINED_FILES[model]
        with resource_file.open("rb") as handle:
            saved = torch.load(handle, map_location=device, weights_only=True)
    else:
        saved = torch.load(model, map_location=device, weights_only=False)  # Topaz saves whole modules
    if isinstance(saved, torch.nn.Module):
        network = saved
    else:
        first_kernel = int(saved["enc1.0.weight"].shape[-1])
        network = UDenoiseNet3D(base_width=first_kernel)
        network.load_state_dict(saved)
    return network.to(device).eval()


def cube_windows(shape: tuple[int, ...], patch: int, padding: int) -> Iterator[tuple[tuple[slice, ...],
                                                                                     tuple[slice, ...]]]:
    """(padded window in the volume, the cube's part of that window) for every cube, in Topaz's order.

    A window is widened inside the volume to the network's smallest input (MIN_EXTENT_PX) where it can be."""
    starts = [range(0, n, patch) for n in shape]
    for corner in itertools.product(*starts):
        window, inner = [], []
        for start, n in zip(corner, shape):
            low, high = max(0, start - padding), min(n, start + patch + padding)
            short = MIN_EXTENT_PX - (high - low)
            if short > 0:
                high = min(n, high + short)
                low = max(0, high - MIN_EXTENT_PX)
            window.append(slice(low, high))
            inner.append(slice(start - low, min(start + patch, n) - low))
        yield tuple(window), tuple(inner)


def volume_mean_sd(volume: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a (memory-mapped) volume, read a slab at a time in float64."""
    total = total_sq = 0.0
    for z in range(0, volume.shape[0], _SLAB_Z):
        slab = np.asarray(volume[z:z + _SLAB_Z], dtype=np.float64)
        total += float(slab.sum())
        total_sq += float(np.square(slab).sum())
    count = volume.size
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0) ** 0.5


def denoise_volume(volume: np.ndarray, out: np.ndarray, network: "torch.nn.Module", patch: int, padding: int,
                   device: str = "cpu", log: TextIO = sys.stderr) -> dict[str, float]:
    """Denoise `volume` into `out` (same shape) cube by cube; returns the output's min, max, mean and RMS."""
    import torch

    mean, sd = volume_mean_sd(volume)
    sd = sd or 1.0
    windows = list(cube_windows(volume.shape, patch, padding))
    low, high, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    started = time.monotonic()
    for index, (window, inner) in enumerate(windows, 1):
        cube = (np.asarray(volume[window], dtype=np.float32) - mean) / sd
        # a volume thinner than the network's smallest input: the missing part is the volume's mean (0)
        cube = np.pad(cube, [(0, max(0, MIN_EXTENT_PX - n)) for n in cube.shape])
        with torch.no_grad():
            x = torch.from_numpy(cube).to(device)
            cube_mean, cube_sd = x.mean(), x.std()
            x = (x - cube_mean) / (cube_sd if float(cube_sd) > 0 else 1.0)
            y = network(x[None, None])[0, 0] * cube_sd + cube_mean
        result = y.cpu().numpy()[inner] * sd + mean
        target = tuple(slice(w.start + i.start, w.start + i.stop) for w, i in zip(window, inner))
        out[target] = result
        low, high = min(low, float(result.min())), max(high, float(result.max()))
        total += float(result.sum(dtype=np.float64))
        total_sq += float(np.square(result, dtype=np.float64).sum())
        print(f"# cube {index}/{len(windows)} ({time.monotonic() - started:.0f} s)", file=log, flush=True)
    mean_out = total / out.size
    return {"min": low, "max": high, "mean": mean_out, "rms": max(total_sq / out.size - mean_out ** 2, 0.0) ** 0.5}


def train_network(network: "torch.nn.Module", even_path: str, odd_path: str, args: argparse.Namespace,
                  device: str) -> "torch.nn.Module":
    """Fine-tune `network` by noise2noise on one pair of half tomograms with Topaz's dataset and training loop
    (cubes of the patch size, random rotations and flips), as `topaz denoise3d -a -b` does."""
    from topaz.denoising.datasets import make_tomogram_datasets
    from topaz.denoising.models import train_model

    for path in (even_path, odd_path):
        if not Path(path).is_file():
            raise ValueError(f"half tomogram {path} not found")
    train, validation = make_tomogram_datasets(even_path, odd_path, args.patch_size, args.N_train, args.N_test)
    network = network.to(device)
    # Topaz's DataLoader would start a worker process; the cubes are already in memory, so none is needed.
    train_model(network, train, validation, loss_fn=args.criteria, optim=args.optim, lr=args.lr,
                batch_size=args.batch_size, num_epochs=args.num_epochs, use_cuda=device != "cpu", num_workers=0,
                save_best=True, save_interval=args.save_interval, save_prefix=args.save_prefix, dims=3)
    return network.to(device).eval()


def output_path(volume_path: str, out_dir: str, suffix: str) -> Path:
    source = Path(volume_path)
    return Path(out_dir or source.parent) / f"{source.stem}{suffix or '.denoised'}{source.suffix}"


def denoise_file(volume_path: str, out_dir: str, suffix: str, model: "str | torch.nn.Module", patch: int,
                 padding: int, device: int = -1) -> Path:
    """Denoise one MRC tomogram into `out_dir/<stem><suffix>.mrc` (float32, voxel size kept), atomically;
    `model`: a pretrained model's name, a saved model's path, or a network in memory."""
    torch_device = f"cuda:{device}" if device >= 0 else "cpu"
    network = load_network(model, torch_device) if isinstance(model, str) else model
    target = output_path(volume_path, out_dir, suffix)
    with atomic_path(target) as partial, mrcfile.mmap(volume_path, mode="r", permissive=False) as source:
        volume = source.data
        if volume is None or volume.ndim != 3:
            raise ValueError(f"{volume_path}: not a 3D volume")
        with mrcfile.new_mmap(partial, shape=volume.shape, mrc_mode=2, overwrite=True) as written:
            _allocate(partial)
            stats = denoise_volume(volume, written.data, network, patch, padding, torch_device)
            written.voxel_size = source.voxel_size
            written.header.dmin, written.header.dmax = stats["min"], stats["max"]
            written.header.dmean, written.header.rms = stats["mean"], stats["rms"]
    return target


def _allocate(path: Path) -> None:
    """Give the (sparse) file its disk blocks now: a full disk is then ENOSPC here, where storing into the
    memory map would kill the process with SIGBUS at the first page that has no block."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Topaz 3D denoising, memory-mapped, one padded cube at a time.")
    parser.add_argument("volumes", nargs="+")
    parser.add_argument("-o", "--output", default="")
    parser.add_argument("--suffix", default=".denoised")
    parser.add_argument("-m", "--model", default="unet-3d-10a")
    parser.add_argument("-s", "--patch-size", type=int, default=96)
    parser.add_argument("-p", "--patch-padding", type=int, default=48)
    parser.add_argument("-d", "--device", type=int, default=-1)
    parser.add_argument("-j", "--num-threads", type=int, default=0)
    training = parser.add_argument_group("noise2noise training (topaz denoise3d's flags and defaults)")
    training.add_argument("-a", "--even-train-path")
    training.add_argument("-b", "--odd-train-path")
    training.add_argument("--N-train", type=int, default=1000)
    training.add_argument("--N-test", type=int, default=200)
    training.add_argument("--optim", choices=("adam", "adagrad", "sgd"), default="adagrad")
    training.add_argument("--lr", type=float, default=0.001)
    training.add_argument("--criteria", choices=("L1", "L2"), default="L2")
    training.add_argument("--batch-size", type=int, default=10)
    training.add_argument("--num-epochs", type=int, default=500)
    training.add_argument("--save-interval", type=int, default=10)
    training.add_argument("--save-prefix")
    args = parser.parse_args(argv)
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    torch_device = f"cuda:{args.device}" if args.device >= 0 else "cpu"
    model: Any = args.model
    if args.even_train_path or args.odd_train_path:
        if not (args.even_train_path and args.odd_train_path):
            print("ERROR: noise2noise training needs both -a (even) and -b (odd) half tomograms", file=sys.stderr)
            return 2
        try:
            model = train_network(load_network(args.model, torch_device), args.even_train_path,
                                  args.odd_train_path, args, torch_device)
        except (ValueError, OSError) as exc:
            print(f"ERROR: {args.even_train_path}, {args.odd_train_path}: cannot train ({exc})", file=sys.stderr)
            return 2
    for volume in args.volumes:
        try:
            written = denoise_file(volume, args.output, args.suffix, model, args.patch_size,
                                   args.patch_padding, args.device)
        except (ValueError, OSError) as exc:
            print(f"ERROR: {volume}: cannot denoise ({exc})", file=sys.stderr)
            return 2
        print(f"# wrote {written}", file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# peak memory {peak_mb:.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
