"""Live tomography ingest decisions (no Airflow, no database): which tilt movie belongs to which tilt series,
and when a series is complete enough to align.

Tilt names
    `tilt_of_movie` reads series, tilt number and nominal angle from the names SerialEM and Thermo Fisher Tomo
    give tilt movies: `{series}_{tilt number}_{angle}[_anything].{suffix}` with the angle the first token with
    a decimal point after a numeric token (SerialEM `TS_01_003_-3.0_Dec02_12.01.33.tif`, Tomo 5.12+
    `Position_1_2_001_-3.00_20231003_102030_fractions.tiff`); this is cryoem-services'
    `util/tomo_output_files.py::_get_tilt_{name,number,angle}_v5_12` and Murfey's Tomo 5.12 reader, made
    strict (the tilt number must be numeric, the angle a number within +-90). Older Tomo puts the angle in
    brackets, `Position_1_001[30.00]_EER.eer` or `Position_1_001_[30.0]_date_time_fractions.tiff` (Murfey's
    `_get_tilt_angle_v5_7`). Anything else gives None. A name is ambiguous when the series name itself ends in
    `_<digits>` and the tilt number is missing (`TS_01_0.0.tif` reads as series `TS`, tilt 1); an mdoc listing
    the movie settles it, because movies are matched to an mdoc's SubFramePath first.

Completion (`plan_series`). Murfey decides this upstream of cryoem-services (python-murfey
`client/contexts/tomo.py::_check_tilt_series`): the number of `[ZValue]` sections in the series' mdoc is
the series length, and the series is complete once that many distinct-angle tilts were seen; the server then
asks for alignment only when every tilt is motion corrected and the length is over 2
(`server/api/workflow.py::register_completed_tilt_series`); a tilt seen after completion un-completes the series
and asks for a rerun (`register_tilt_series_for_rerun`); a second movie at an angle already seen is ignored.
Murfey has no timeout, so a series with a lost tilt never completes there. What this module does:

(a) complete when every tilt its mdoc lists has arrived (by SubFramePath name, or any movie of the series at
    that angle), the mdoc has no half-written section and has not changed for `stable_for_s`, and the mdoc
    reaches the end of the series: its tilts cover `expected_range_deg` (within `range_tolerance_deg`) or it
    lists at least `expected_tilt_count` tilts. With neither expectation given, the mdoc's listing is taken as
    the whole series, Murfey's rule. The stability and end tests are ours: SerialEM appends to the mdoc while
    it collects, so a growing mdoc whose listed tilts have all arrived is not yet a complete series.
(b) complete when no tilt movie (and no mdoc change) arrived for `tilt_series_idle_s`: the microscope moved
    on. Tilts the mdoc lists that never arrived are reported in `missing`.
(c) complete when the session ended.
Otherwise `waiting`, with the reason. A series completed before (`known`) is `done`, or `late` when movies
arrived since: Murfey reruns such a series, so `tilts` is then the full current set and `late` names the
new movies; whether to realign is the caller's choice.

Bad input is data, never an exception: a series without mdoc is matched by name and completes by (b)/(c);
an unreadable mdoc is reported in `problems` (the error names the file and the problem, never its content)
and the series is treated as one without mdoc; two movies at the same angle (to 0.1 degree) keep the newest
by mtime and exclude the others with reason "duplicate tilt angle", as cryoem-services' AreTomo service does
(Murfey keeps the first; the retake is the one the microscopist wanted); a series with fewer than `min_tilts`
tilts (default 3, from Murfey's `> 2`) or with mixed pixel sizes in its mdoc is complete but not `alignable`.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .ingest import MovieFile
from .io.errors import ImageFileError
from .io.mdoc import MdocSeries, MdocTilt, mdoc_series_name
from .io.movie import MOVIE_SUFFIXES

SeriesStatus = Literal["waiting", "complete", "done", "late"]
DUPLICATE_ANGLE = "duplicate tilt angle"
_ANGLE = re.compile(r"^[-+]?\d+\.\d+$")
_DIGITS = re.compile(r"^\d+$")
_BRACKETED = re.compile(r"^(?P<series>.+?)_(?P<number>\d+)_?\[(?P<angle>[-+]?\d+(?:\.\d+)?)\]")


@dataclass(frozen=True)
class TiltName:
    """What a tilt movie's name says: its series, its tilt number (acquisition order) and nominal angle."""

    series: str
    tilt_number: int
    angle_deg: float


@dataclass(frozen=True)
class PlannedTilt:
    """A tilt movie taken into its series; `angle_deg` is the mdoc's when the mdoc lists it, else the name's."""

    movie: MovieFile
    angle_deg: float
    tilt_number: int | None = None
    mdoc_tilt: MdocTilt | None = None


@dataclass(frozen=True)
class ExcludedTilt:
    movie: MovieFile
    reason: str
    angle_deg: float


@dataclass(frozen=True)
class SeriesDecision:
    """One tilt series: its status with the reason, its tilts (sorted by angle) and what is wrong with it."""

    series: str
    status: SeriesStatus
    reason: str
    tilts: list[PlannedTilt]
    alignable: bool
    mdoc_path: str | None = None
    mdoc: MdocSeries | None = None
    excluded: list[ExcludedTilt] = field(default_factory=list)
    # Tilts the mdoc lists that have not arrived (for a complete series: never arrived).
    missing: list[MdocTilt] = field(default_factory=list)
    # Movies that arrived after the series was completed (status "late").
    late: list[MovieFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last_activity_s: float = 0.0


@dataclass(frozen=True)
class TomoPlan:
    series: list[SeriesDecision]
    # Movies that no mdoc lists and whose names give no series and angle.
    unmatched: list[MovieFile] = field(default_factory=list)
    # Mdocs that describe one movie (`<movie>.tif.mdoc`, frame-set sidecars) or repeat a series name.
    ignored_mdocs: list[str] = field(default_factory=list)

    def with_status(self, status: SeriesStatus) -> list[SeriesDecision]:
        return [s for s in self.series if s.status == status]


def _basename(relative_path: str) -> str:
    return re.split(r"[\\/]", relative_path)[-1]


def _movie_stem(name: str) -> str | None:
    """The name without its movie suffix, or None when it is not a movie file."""
    dot = name.rfind(".")
    if dot <= 0 or name[dot:].lower() not in MOVIE_SUFFIXES:
        return None
    return name[:dot]


def tilt_of_movie(relative_path: str) -> TiltName | None:
    """Series, tilt number and angle from a SerialEM or Tomo tilt movie's name; None for any other name."""
    stem = _movie_stem(_basename(relative_path))
    if not stem:
        return None
    bracketed = _BRACKETED.match(stem)
    if bracketed:
        series, number, angle_text = bracketed.group("series", "number", "angle")
    else:
        tokens = stem.split("_")
        for i in range(2, len(tokens)):
            if _ANGLE.match(tokens[i]) and _DIGITS.match(tokens[i - 1]):
                series, number, angle_text = "_".join(tokens[: i - 1]), tokens[i - 1], tokens[i]
                break
        else:
            return None
    angle = float(angle_text) + 0.0  # + 0.0 turns SerialEM's "-0.0" into 0.0
    if not series or abs(angle) > 90 or len(number) > 6:
        return None
    return TiltName(series, int(number), angle)


def _angle_key(angle_deg: float) -> float:
    """Two tilts are at the same angle when they agree to 0.1 degree (names round, mdocs do not)."""
    return round(angle_deg, 1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass
class _Candidate:
    movie: MovieFile
    angle_deg: float
    tilt_number: int | None
    mdoc_tilt: MdocTilt | None


@dataclass
class _SeriesInput:
    mdoc_path: str | None = None
    mdoc: MdocSeries | None = None
    mdoc_error: str | None = None
    candidates: list[_Candidate] = field(default_factory=list)
    writing: list[MovieFile] = field(default_factory=list)


def plan_series(mdocs: Mapping[str, MdocSeries | ImageFileError], movies: Sequence[MovieFile],
                known: Mapping[str, Collection[str]] | None = None, *, now_s: float, stable_for_s: float,
                tilt_series_idle_s: float, session_ended: bool = False, expected_tilt_count: int | None = None,
                expected_range_deg: tuple[float, float] | None = None, range_tolerance_deg: float = 1.0,
                min_tilts: int = 3, still_writing: Sequence[MovieFile] = ()) -> TomoPlan:
    """Group complete tilt movies into series and decide, per series, whether it is complete (see module doc).

    `mdocs` maps each mdoc's path (relative to the watched folder) to what `read_mdoc` returned or raised;
    `movies` are the complete movies of the folder scan and `still_writing` the ones still growing (they keep
    their series waiting); `known` maps each series completed earlier to the relative paths of the movies it
    was completed with. Pure: the same inputs give the same plan, so a restarted watcher needs no memory.
    """
    known = known or {}
    inputs: dict[str, _SeriesInput] = {}
    ignored: list[str] = []
    by_name: dict[str, tuple[str, MdocTilt]] = {}
    for mdoc_path in sorted(mdocs):
        read = mdocs[mdoc_path]
        name = read.name if isinstance(read, MdocSeries) else mdoc_series_name(mdoc_path)
        if tilt_of_movie(_basename(mdoc_path)[: -len(".mdoc")]) is not None or name in inputs:
            ignored.append(mdoc_path)  # a one-movie sidecar (`X_001_3.0.tif.mdoc`) or a second mdoc for a series
            continue
        entry = inputs[name] = _SeriesInput(mdoc_path=mdoc_path)
        if isinstance(read, MdocSeries):
            entry.mdoc = read
            for tilt in read.tilts:
                if tilt.movie_name:
                    for key in (tilt.movie_name, _movie_stem(tilt.movie_name)):
                        if key:
                            by_name.setdefault(key.casefold(), (name, tilt))
        else:
            entry.mdoc_error = f"mdoc {mdoc_path} cannot be used: {read.problem}"

    def series_of(movie: MovieFile) -> tuple[str, _Candidate] | None:
        base = _basename(movie.relative_path)
        parsed = tilt_of_movie(movie.relative_path)
        for key in (base, _movie_stem(base)):
            if key and key.casefold() in by_name:
                series, tilt = by_name[key.casefold()]
                return series, _Candidate(movie, tilt.tilt_angle_deg, parsed.tilt_number if parsed else None, tilt)
        if parsed is None:
            return None
        return parsed.series, _Candidate(movie, parsed.angle_deg, parsed.tilt_number, None)

    unmatched: list[MovieFile] = []
    for movie in sorted(movies, key=lambda m: m.relative_path):
        found = series_of(movie)
        if found is None:
            unmatched.append(movie)
            continue
        series, candidate = found
        inputs.setdefault(series, _SeriesInput()).candidates.append(candidate)
    for movie in still_writing:
        found = series_of(movie)
        if found is not None:
            inputs.setdefault(found[0], _SeriesInput()).writing.append(movie)

    rules = _Rules(now_s, stable_for_s, tilt_series_idle_s, session_ended, expected_tilt_count,
                   expected_range_deg, range_tolerance_deg, min_tilts)
    decisions = [_decide(name, entry, known.get(name), rules) for name, entry in sorted(inputs.items())]
    return TomoPlan(decisions, unmatched, ignored)


@dataclass(frozen=True)
class _Rules:
    now_s: float
    stable_for_s: float
    idle_s: float
    session_ended: bool
    expected_count: int | None
    expected_range: tuple[float, float] | None
    tolerance: float
    min_tilts: int


def _decide(name: str, entry: _SeriesInput, known: Collection[str] | None, rules: _Rules) -> SeriesDecision:
    tilts, excluded = _deduplicate(entry.candidates)
    mdoc = entry.mdoc
    listed = mdoc.tilts if mdoc else []
    arrived_z = {c.mdoc_tilt.z_value for c in entry.candidates if c.mdoc_tilt is not None}
    arrived_angles = {_angle_key(c.angle_deg) for c in entry.candidates}
    missing = [t for t in listed if t.z_value not in arrived_z and _angle_key(t.tilt_angle_deg) not in arrived_angles]
    last_activity = max([c.movie.mtime_s for c in entry.candidates] + [m.mtime_s for m in entry.writing]
                        + ([mdoc.mtime_s] if mdoc else []) + [0.0])
    problems = [entry.mdoc_error] if entry.mdoc_error else []
    blocking = _blocking_problems(tilts, rules.min_tilts)
    late: list[MovieFile] = []
    if known is not None:
        late = [c.movie for c in entry.candidates if c.movie.relative_path not in known]
        status: SeriesStatus = "late" if late else "done"
        reason = (f"{len(late)} tilt movie(s) arrived after the series was completed" if late
                  else "completed earlier; nothing new")
    else:
        status, reason = _completion(entry, listed, missing, last_activity, rules)
    return SeriesDecision(
        series=name, status=status, reason=reason, tilts=tilts, alignable=status != "waiting" and not blocking,
        mdoc_path=entry.mdoc_path, mdoc=mdoc, excluded=excluded, missing=missing, late=late,
        problems=problems + blocking, last_activity_s=last_activity)


def _deduplicate(candidates: list[_Candidate]) -> tuple[list[PlannedTilt], list[ExcludedTilt]]:
    """Keep the newest movie (by mtime, then name) at each angle; the others are excluded."""
    by_angle: dict[float, list[_Candidate]] = {}
    for candidate in candidates:
        by_angle.setdefault(_angle_key(candidate.angle_deg), []).append(candidate)
    kept: list[PlannedTilt] = []
    excluded: list[ExcludedTilt] = []
    for group in by_angle.values():
        group.sort(key=lambda c: (c.movie.mtime_s, c.movie.relative_path), reverse=True)
        newest = group[0]
        kept.append(PlannedTilt(newest.movie, newest.angle_deg, newest.tilt_number, newest.mdoc_tilt))
        excluded.extend(ExcludedTilt(c.movie, DUPLICATE_ANGLE, c.angle_deg) for c in group[1:])
    kept.sort(key=lambda t: (t.angle_deg, t.movie.relative_path))
    excluded.sort(key=lambda e: e.movie.relative_path)
    return kept, excluded


def _blocking_problems(tilts: list[PlannedTilt], min_tilts: int) -> list[str]:
    """What stops a complete series from being aligned."""
    problems = []
    if len(tilts) < min_tilts:
        problems.append(f"only {len(tilts)} tilt(s): aligning a tilt series needs at least {min_tilts}")
    sizes = sorted({round(t.mdoc_tilt.pixel_spacing_a, 3) for t in tilts if t.mdoc_tilt is not None})
    if len(sizes) > 1:
        problems.append("mixed pixel sizes in one series: " + ", ".join(f"{_fmt(s)} A" for s in sizes))
    return problems


def _completion(entry: _SeriesInput, listed: list[MdocTilt], missing: list[MdocTilt], last_activity: float,
                rules: _Rules) -> tuple[SeriesStatus, str]:
    never = f"; {len(missing)} tilt(s) the mdoc lists never arrived" if missing else ""
    if rules.session_ended:
        return "complete", "the session ended" + never
    mdoc = entry.mdoc
    why_not: str
    if mdoc is None:
        why_not = ("its mdoc cannot be used" if entry.mdoc_error else "no mdoc yet") + \
                  "; waiting for the series to go idle or the session to end"
    elif not listed:
        why_not = f"{entry.mdoc_path} lists no complete tilt yet"
    elif mdoc.pending_sections:
        why_not = f"{entry.mdoc_path} is still being written"
    elif missing:
        why_not = f"{len(missing)} of {len(listed)} tilts listed in {entry.mdoc_path} have not arrived"
    elif entry.writing:
        why_not = f"{len(entry.writing)} tilt movie(s) are still being written"
    elif rules.now_s - mdoc.mtime_s < rules.stable_for_s:
        why_not = f"{entry.mdoc_path} changed less than {_fmt(rules.stable_for_s)} s ago"
    else:
        end = _end_of_series(listed, rules)
        if end.startswith("not "):
            why_not = end[len("not "):]
        else:
            return "complete", (f"all {len(listed)} tilts listed in {entry.mdoc_path} arrived, the mdoc unchanged "
                                f"for {_fmt(rules.stable_for_s)} s, and {end}")
    idle_for = rules.now_s - last_activity
    if idle_for >= rules.idle_s and not entry.writing:
        return "complete", f"no tilt arrived for {_fmt(rules.idle_s)} s" + never
    return "waiting", why_not


def _end_of_series(listed: list[MdocTilt], rules: _Rules) -> str:
    """Why the mdoc reaches the end of the series, or 'not ...' with why it does not."""
    angles = [t.tilt_angle_deg for t in listed]
    low, high = min(angles), max(angles)
    reasons = []
    if rules.expected_range is not None:
        want_low, want_high = sorted(rules.expected_range)
        if low <= want_low + rules.tolerance and high >= want_high - rules.tolerance:
            return f"its tilts cover the expected {_fmt(want_low)}..{_fmt(want_high)} degrees"
        reasons.append(f"its tilts span {_fmt(round(low, 1))}..{_fmt(round(high, 1))} of the expected "
                       f"{_fmt(want_low)}..{_fmt(want_high)} degrees")
    if rules.expected_count is not None:
        if len(listed) >= rules.expected_count:
            return f"it lists the expected {rules.expected_count} tilts"
        reasons.append(f"it lists {len(listed)} of the expected {rules.expected_count} tilts")
    if not reasons:
        return "its listing is taken as the whole series (no expected range or count; Murfey's rule)"
    return "not " + " and ".join(reasons)
