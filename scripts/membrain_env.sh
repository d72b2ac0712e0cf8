#!/usr/bin/env bash
# A separate Python environment for membrain-seg (the `segment: {tool: membrain}` stage), by default
# .venv-membrain beside the project's .venv; its bin/ holds the `membrain` program the stage runs
# (put it on the worker's PATH or name it as stages.segment.params.program).
#
# Why not the project's own environment: topaz-em (the `[topaz]` extra) requires torchvision, and PyPI's
# torchvision wheels cannot load beside the CPU build of torch ("operator torchvision::nms does not exist").
# Topaz's picking and denoising never import it, but membrain-seg imports pytorch-lightning, whose
# torchmetrics imports torchvision whenever its package metadata is installed, and fails. Here torch is the
# CPU build (installed first, pinned, so membrain-seg does not pull a CUDA build) and torchvision is absent.
#
# Usage: scripts/membrain_env.sh [folder]     (about a minute; a second run with the same folder is instant)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$here/.venv-membrain}"
python="${PYTHON:-python3}"
if [ -x "$target/bin/membrain" ] && [ -f "$target/.installed-stamp" ]; then
    exit 0
fi
"$python" -m venv "$target"
"$target/bin/pip" install --quiet --upgrade pip
"$target/bin/pip" install --quiet 'torch==2.13.0'
# membrain-seg's CLI imports click, which the typer pip picks (0.29.2) no longer brings
"$target/bin/pip" install --quiet 'membrain-seg==0.0.10' 'torch==2.13.0' click
touch "$target/.installed-stamp"
echo "membrain-seg installed: $target/bin/membrain" >&2
