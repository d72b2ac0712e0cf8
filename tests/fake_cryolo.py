"""Stand-in for crYOLO's cryolo_predict.py, which cannot be installed here (crYOLO needs Python < 3.9).

It checks the command line the pipeline builds (micrograph, configuration, weights, threshold, --otf), and
writes `<-o>/CBOX/<micrograph stem>.cbox` in the layout of tests/fixtures/tools/cryolo_mic.cbox (crYOLO 1.9:
STAR, lower-left box corners, `<NA>` in the tomography-only columns). The boxes are centred on the
positions given for that micrograph in the JSON file named by $CRYOEM_FAKE_CRYOLO_PICKS ({stem: [[x, y], ...]}),
sized by the configuration's anchors, with confidences from 0.95 down, followed by one box of confidence
BELOW_THRESHOLD_CONFIDENCE at a corner (below any sensible --threshold: the pipeline must drop it).
Run as `python fake_cryolo.py <cryolo_predict.py's arguments>`.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tools" / "cryolo_mic.cbox"
BELOW_THRESHOLD_CONFIDENCE = 0.05


def _flags(args: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    current = None
    for arg in args:
        if arg.startswith("-") and not arg.lstrip("-").replace(".", "").isdigit():
            current = arg
            flags[current] = []
        elif current is not None:
            flags[current].append(arg)
    return flags


def main(args: list[str]) -> None:
    flags = _flags(args)
    micrograph, out = Path(flags["-i"][0]), Path(flags["-o"][0])
    config = json.loads(Path(flags["--conf"][0]).read_text())
    assert micrograph.is_file(), f"no micrograph {micrograph}"
    assert Path(flags["--weights"][0]).suffix == ".h5", flags["--weights"]
    assert "--otf" in flags and flags["-g"], args
    threshold = float(flags["--threshold"][0])
    width, height = config["model"]["anchors"]
    centres = json.loads(Path(os.environ["CRYOEM_FAKE_CRYOLO_PICKS"]).read_text())[micrograph.stem]
    header = FIXTURE.read_text().split("_Angle #11\n")[0] + "_Angle #11\n"
    header = "\n".join(line for line in header.splitlines() if not line.startswith("#")) + "\n"
    rows = [(x - width / 2, y - height / 2, 0.95 - 0.01 * i) for i, (x, y) in enumerate(centres)]
    rows.append((0.0, 0.0, BELOW_THRESHOLD_CONFIDENCE))
    assert BELOW_THRESHOLD_CONFIDENCE < threshold
    lines = [f"{x:.1f}\t{y:.1f}\t<NA>\t{width:.1f}\t{height:.1f}\t<NA>\t{width:.1f}\t{height:.1f}\t{c:.4f}\t<NA>\t<NA>"
             for x, y, c in rows]
    (out / "CBOX").mkdir(parents=True, exist_ok=True)
    (out / "CBOX" / f"{micrograph.stem}.cbox").write_text(header + "\n".join(lines) + "\n")
    print(f"fake crYOLO: {len(rows)} boxes for {micrograph.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
