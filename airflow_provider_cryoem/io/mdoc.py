"""SerialEM / Tomo 5 tilt-series `.mdoc` files: one `[ZValue = n]` section per tilt, read while they grow.

The microscope appends a section per tilt while it collects, so a reader can meet a file whose last section
is still being written. That is not an error: the complete sections are returned and the unfinished one is
counted in `pending_sections`. The last section counts as unfinished when the file does not end with a line
break (a line is half written), or when it lacks a key that every earlier section has (SubFramePath,
DateTime, ...), or when it has no TiltAngle or pixel spacing yet.

Values are validated with mdocfile's models (`MdocGlobalData`, `MdocSectionData`); a malformed value in a
field this module does not use is dropped, so only what the pipeline needs can make a file bad. Errors are
`ImageFileError`s naming the file, the line or section number and the field, never quoting the file's text:
a wrong path may point at something secret.
"""
from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from mdocfile.data_models import MdocGlobalData, MdocSectionData
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ImageFileError

# A real tilt-series mdoc is a few hundred bytes per tilt; anything this big is not one.
MAX_MDOC_BYTES = 16 * 1024 * 1024
SECTION_KINDS = ("ZValue", "FrameSet", "MontSection")
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SECTION = re.compile(r"^\[\s*(ZValue|FrameSet|MontSection)\s*=\s*(.*?)\s*\]$")
_TILT_AXIS = re.compile(r"tilt\s*axis\s*angle\s*=\s*([-+]?\d+(?:\.\d*)?)", re.IGNORECASE)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Section fields the pipeline reads; a bad value anywhere else is dropped, not an error.
_USED_SECTION_FIELDS = ("ZValue", "TiltAngle", "PixelSpacing", "ExposureDose", "Defocus", "DateTime",
                        "SubFramePath")
_USED_GLOBAL_FIELDS = ("PixelSpacing", "Voltage")
# The stack's own suffix in `TS_01.mrc.mdoc` is not part of the series name.
_STACK_SUFFIXES = (".mrc", ".st", ".mrcs", ".ali")
_DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M:%S")


class MdocTilt(BaseModel):
    """One complete `[ZValue = n]` section: one tilt image of the series."""

    model_config = ConfigDict(frozen=True)
    z_value: int
    tilt_angle_deg: float
    # Basename of SubFramePath (Windows or POSIX), the movie the camera saved; None when frames were not saved.
    movie_name: str | None
    # 0 when the microscope did not record it (SerialEM writes 0 without a dose calibration).
    exposure_dose_e_a2: float
    pixel_spacing_a: float
    defocus_um: float | None = None
    date_time: datetime | None = None


class MdocSeries(BaseModel):
    """What a tilt-series mdoc says so far: its complete tilts, in file order, and how much is still unwritten."""

    model_config = ConfigDict(frozen=True)
    path: str
    name: str
    pixel_spacing_a: float | None
    voltage_kv: float | None
    tilt_axis_deg: float | None
    tilts: list[MdocTilt]
    # Sections (0 or 1: the last) the microscope is still writing; they are left out of `tilts`.
    pending_sections: int = 0
    mtime_s: float = 0.0
    size_bytes: int = 0


def mdoc_series_name(path: str | Path) -> str:
    """The tilt series an mdoc describes: its file name without `.mdoc`, and without the stack's `.mrc`/`.st`
    in `TS_01.mrc.mdoc`. Works on Windows and POSIX paths."""
    name = re.split(r"[\\/]", str(path))[-1]
    if name.lower().endswith(".mdoc"):
        name = name[: -len(".mdoc")]
    for suffix in _STACK_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def movie_basename(sub_frame_path: str) -> str:
    """The file name at the end of a SubFramePath, whether the microscope PC wrote it Windows-style
    (`X:\\frames\\a.tif`, `\\\\server\\share\\a.tif`) or POSIX-style."""
    return re.split(r"[\\/]", sub_frame_path.strip())[-1]


def read_mdoc(path: str | Path) -> MdocSeries:
    """Read a SerialEM / Tomo 5 tilt-series mdoc, tolerating a last section that is still being written.

    Raises ImageFileError (naming the file and the problem, never its content) when the file is missing, not
    a text mdoc, not a tilt series (frame-set or montage sections), or has a malformed complete section.
    """
    path = Path(path)
    if not path.name.lower().endswith(".mdoc"):
        raise ImageFileError(path, "is not an .mdoc file")
    try:
        if not path.is_file():
            raise ImageFileError(path, "file does not exist" if not path.exists() else "is not a regular file")
        if path.stat().st_size > MAX_MDOC_BYTES:
            raise ImageFileError(path, f"is larger than {MAX_MDOC_BYTES // (1024 * 1024)} MiB, not an mdoc")
        with path.open("rb") as handle:
            data = handle.read(MAX_MDOC_BYTES + 1)
        stat = path.stat()  # after reading: a change during the read shows as a newer mtime, never an older one
    except OSError as exc:
        raise ImageFileError(path, f"cannot be read ({type(exc).__name__})") from None
    if len(data) > MAX_MDOC_BYTES:
        raise ImageFileError(path, f"is larger than {MAX_MDOC_BYTES // (1024 * 1024)} MiB, not an mdoc")
    series = parse_mdoc_bytes(data, path)
    return series.model_copy(update={"mtime_s": stat.st_mtime, "size_bytes": len(data)})


def parse_mdoc_bytes(data: bytes, path: str | Path) -> MdocSeries:
    """Parse mdoc content; `path` only names the file in errors and gives the series name."""
    if b"\x00" in data:
        raise ImageFileError(path, "is binary, not a text mdoc")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # Windows microscope PCs may write code-page text in titles and labels
    lines = _LINE_BREAK.split(text)
    # After the last line break split() leaves "" (a complete file) or the line being written. A half-written
    # line that opens a new section means the section before it is complete.
    partial = lines.pop().strip()
    new_section = partial.startswith("[") and not partial.startswith("[T")
    finished = not partial or new_section
    header, sections = _split_sections(path, lines)
    titles = [line for _, line in header if line.startswith("[")]
    global_data = _global_data(path, header)
    tilt_axis = _tilt_axis(titles)
    tilts: list[MdocTilt] = []
    pending = 0
    common_keys: set[str] | None = None
    for index, (line_no, kind, value, body) in enumerate(sections):
        last = index == len(sections) - 1
        if kind != "ZValue":
            raise ImageFileError(path, f"has a [{kind}] section (line {line_no}): a frame-set or montage mdoc, "
                                       "not a tilt series")
        fields = _key_values(body)
        if last and (not finished or (common_keys is not None and not common_keys <= fields.keys())
                     or "TiltAngle" not in fields
                     or ("PixelSpacing" not in fields and global_data.get("PixelSpacing") is None)):
            pending = 1
            break
        try:
            tilts.append(_tilt(path, index, value, fields, global_data))
        except ImageFileError:
            if last and not finished:
                pending = 1
                break
            raise
        common_keys = set(fields) if common_keys is None else common_keys & fields.keys()
    pending += int(new_section)
    pixel = global_data.get("PixelSpacing")
    if pixel is None and tilts:
        pixel = tilts[0].pixel_spacing_a
    return MdocSeries(path=str(path), name=mdoc_series_name(path), pixel_spacing_a=pixel,
                      voltage_kv=global_data.get("Voltage"), tilt_axis_deg=tilt_axis, tilts=tilts,
                      pending_sections=pending)


def _split_sections(path: str | Path, lines: list[str]
                    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, str, list[tuple[int, str]]]]]:
    """Header lines, then (line number, kind, header value, body lines) per section; checks each line's shape."""
    header: list[tuple[int, str]] = []
    sections: list[tuple[int, str, str, list[tuple[int, str]]]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        match = _SECTION.match(line)
        if match:
            sections.append((number, match.group(1), match.group(2), []))
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ImageFileError(path, f"line {number} opens a '[' header it does not close")
            if sections:
                continue  # titles or unknown headers inside sections carry nothing the pipeline uses
            header.append((number, line))
            continue
        key, sep, _ = line.partition("=")
        if not sep or not _KEY.match(key.strip()):
            raise ImageFileError(path, f"line {number} is neither 'Key = value' nor a [section] header")
        (sections[-1][3] if sections else header).append((number, line))
    return header, sections


def _key_values(body: list[tuple[int, str]]) -> dict[str, str]:
    data: dict[str, str] = {}
    for _, line in body:
        if line.startswith("["):
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        # mdocfile maps SerialEM's 'FrameDosesAndNumber' itself, logging a warning each time; do it quietly.
        data["FrameDosesAndNumbers" if key == "FrameDosesAndNumber" else key] = value.strip()
    return data


def _validated(path: str | Path, model: type[BaseModel], data: dict[str, Any], used: tuple[str, ...],
               where: str) -> BaseModel:
    """Validate with mdocfile's model; fields the pipeline does not use are dropped when malformed."""
    for _ in range(len(data) + 1):
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err.get("loc")}
            named = sorted(field for field in bad if field in model.model_fields)
            if not bad or any(field in used for field in bad) or not bad <= data.keys():
                label = ", ".join(f for f in named if f in used) or "a field"
                raise ImageFileError(path, f"{where}: {label} is not a valid value") from None
            for field in bad:
                data.pop(field, None)
        except Exception:  # a validator failing outside pydantic's wrapping (TypeError...): still this file's fault
            raise ImageFileError(path, f"{where}: a value cannot be read") from None
    raise ImageFileError(path, f"{where}: values cannot be read")


def _global_data(path: str | Path, header: list[tuple[int, str]]) -> dict[str, float | None]:
    data = _key_values(header)
    model = _validated(path, MdocGlobalData, data, _USED_GLOBAL_FIELDS, "the header")
    pixel = _positive(path, getattr(model, "PixelSpacing", None), "the header: PixelSpacing")
    voltage = _positive(path, getattr(model, "Voltage", None), "the header: Voltage")
    return {"PixelSpacing": pixel, "Voltage": voltage}


def _tilt(path: str | Path, index: int, value: str, fields: dict[str, str],
          global_data: dict[str, float | None]) -> MdocTilt:
    where = f"section {index + 1}"
    data: dict[str, Any] = dict(fields)
    data["ZValue"] = value
    section = _validated(path, MdocSectionData, data, _USED_SECTION_FIELDS, where)
    z_value = section.ZValue
    if z_value is None or z_value < 0:
        raise ImageFileError(path, f"{where}: ZValue is not a valid value")
    angle = section.TiltAngle
    if angle is None:
        raise ImageFileError(path, f"{where}: has no TiltAngle")
    if not math.isfinite(angle) or abs(angle) > 90:
        raise ImageFileError(path, f"{where}: TiltAngle is not an angle between -90 and 90 degrees")
    pixel = _positive(path, section.PixelSpacing, f"{where}: PixelSpacing")
    if pixel is None:
        pixel = global_data.get("PixelSpacing")
    if pixel is None:
        raise ImageFileError(path, f"{where}: has no PixelSpacing and the header gives none")
    dose = section.ExposureDose
    if dose is None:
        dose = 0.0
    if not math.isfinite(dose) or dose < 0:
        raise ImageFileError(path, f"{where}: ExposureDose is not a finite dose of 0 or more")
    defocus = section.Defocus if section.Defocus is not None and math.isfinite(section.Defocus) else None
    movie = movie_basename(fields["SubFramePath"]) if fields.get("SubFramePath", "").strip() else None
    return MdocTilt(z_value=z_value, tilt_angle_deg=angle, movie_name=movie or None, exposure_dose_e_a2=dose,
                    pixel_spacing_a=pixel, defocus_um=defocus, date_time=_date_time(section.DateTime))


def _positive(path: str | Path, value: float | None, where: str) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ImageFileError(path, f"{where} is not a positive number")
    return float(value)


def _tilt_axis(titles: list[str]) -> float | None:
    """SerialEM and Tomo write the nominal tilt axis only in a title: `[T = Tilt axis angle = 85.3, binning = 4 ...]`."""
    for title in titles:
        match = _TILT_AXIS.search(title)
        if match:
            try:
                angle = float(match.group(1))
            except ValueError:
                continue
            if math.isfinite(angle):
                return angle
    return None


def _date_time(value: str | None) -> datetime | None:
    if not value:
        return None
    text = " ".join(value.split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None
