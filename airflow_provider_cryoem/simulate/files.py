"""What a microscope leaves on disk: movie files (TIFF or MRC), the gain reference, EPU-like metadata XML."""
from __future__ import annotations

import io
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import mrcfile
import numpy as np
import tifffile

from ..io.mrc import write_mrc
from .truth import MovieTruth


def movie_bytes(frames: np.ndarray, movie_format: str, pixel_size_a: float) -> bytes:
    """The complete file content of a movie, so it can be written at once or in chunks.

    TIFF: one LZW-compressed page per frame, counts as they are (uint8 like EPU). MRC: an image stack,
    counts as uint16 (MRC mode 6), pixel size in the header.
    """
    if movie_format == "tiff":
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, frames, photometric="minisblack", compression="lzw", metadata=None)
        return buffer.getvalue()
    data = frames if frames.dtype.kind == "f" else frames.astype(np.uint16)
    with tempfile.TemporaryDirectory(prefix="cryoem-sim-") as tmp:
        path = Path(tmp) / "movie.mrc"
        with mrcfile.new(path) as mrc:
            mrc.set_data(data)
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size_a
        return path.read_bytes()


def write_atomically(path: Path, content: bytes) -> Path:
    """Write via a hidden temporary file and rename, so a watcher never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)
    return path


def write_gain_reference(path: Path, gain: np.ndarray, pixel_size_a: float) -> Path:
    """Gain reference as float32 MRC with the pixel size in the header."""
    return write_mrc(path, gain.astype(np.float32), pixel_size_a)


def epu_metadata_xml(truth: MovieTruth) -> bytes:
    """EPU-like per-movie metadata with EPU's element names and SI units (m, V, e⁻/m²), namespaces left out."""
    image = ET.Element("MicroscopeImage")
    ET.SubElement(image, "uniqueID").text = Path(truth.metadata_name).stem
    microscope = ET.SubElement(image, "microscopeData")
    ET.SubElement(ET.SubElement(microscope, "acquisition"), "acquisitionDateTime").text = truth.acquisition_time
    ET.SubElement(ET.SubElement(microscope, "gun"), "AccelerationVoltage").text = f"{truth.voltage_kv * 1e3:g}"
    optics = ET.SubElement(microscope, "optics")
    ET.SubElement(optics, "Defocus").text = f"{-truth.defocus_target_a * 1e-10:.4e}"
    ET.SubElement(optics, "SphericalAberration").text = f"{truth.cs_mm * 1e-3:g}"
    scale = ET.SubElement(ET.SubElement(image, "SpatialScale"), "pixelSize")
    for axis in ("x", "y"):
        ET.SubElement(ET.SubElement(scale, axis), "numericValue").text = f"{truth.pixel_size_a * 1e-10:.6e}"
    custom = ET.SubElement(image, "CustomData")
    total_dose_e_m2 = truth.dose_per_frame_e_a2 * truth.n_frames * 1e20
    for key, value in (("Dose", f"{total_dose_e_m2:.6e}"), ("DosePerFrame", f"{truth.dose_per_frame_e_a2:g}"),
                       ("FrameCount", str(truth.n_frames)),
                       ("AppliedDefocus", f"{-truth.defocus_target_a * 1e-10:.4e}")):
        entry = ET.SubElement(custom, "KeyValueOfstringanyType")
        ET.SubElement(entry, "Key").text = key
        ET.SubElement(entry, "Value").text = value
    ET.indent(image)
    return ET.tostring(image, encoding="utf-8", xml_declaration=True)
