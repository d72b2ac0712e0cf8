"""A small membrain-seg checkpoint with random weights, for running the real `membrain segment` code path
where no trained checkpoint may be downloaded (tests, benchmarks).

The network is membrain-seg's own (SemanticSegmentationUnet, a DynUNet with deep supervision) with narrower
layers (4 … 128 channels instead of 32 … 1024), saved as a PyTorch Lightning checkpoint that membrain-seg's
`load_from_checkpoint` reads like its released ones. Its segmentations are meaningless: it exercises loading,
sliding-window inference, thresholding, connected components and the output files, never the quality.
It is written by the Python of membrain-seg's own environment (the `membrain` program's bin/ folder),
which need not be this one (scripts/membrain_env.sh).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SMALL_CHANNELS = (4, 8, 16, 32, 64, 128)

_WRITE = """
import sys
import pytorch_lightning, torch
from membrain_seg.segmentation.networks.unet import SemanticSegmentationUnet
torch.manual_seed(int(sys.argv[2]))
channels = [int(c) for c in sys.argv[3].split(",")]
network = SemanticSegmentationUnet(channels=channels)
# the network does not save its hyper-parameters itself: load_from_checkpoint passes these to its constructor
torch.save({"state_dict": network.state_dict(), "hyper_parameters": {"channels": channels},
            "pytorch-lightning_version": pytorch_lightning.__version__}, sys.argv[1])
"""


def membrain_python(program: str = "membrain") -> Path:
    """The Python interpreter of the environment the `membrain` program belongs to."""
    found = shutil.which(program)
    if found is None:
        raise FileNotFoundError(f"membrain-seg's program {program!r} is not on PATH (scripts/membrain_env.sh)")
    return Path(found).parent / "python"


def write_random_checkpoint(path: str | Path, program: str = "membrain", seed: int = 0) -> Path:
    """Write a random-weight checkpoint of membrain-seg's network (narrow layers) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(membrain_python(program)), "-c", _WRITE, str(path), str(seed),
                    ",".join(map(str, SMALL_CHANNELS))], check=True, capture_output=True, text=True, timeout=600)
    return path
