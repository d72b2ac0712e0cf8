"""RelionProject: job folders, aggregate STAR files and default_pipeline.star, safe for many writers."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mrcfile

from ..io import ImageFileError
from ..io._atomic import write_text_atomic
from . import data_files, icebreaker_files, tomo_files
from .aggregate import upsert_rows
from .data_files import TableSpec
from .job_dir import (
    alias_target,
    append_note,
    log_written_file,
    mark_exit,
    point_alias,
    update_job_options,
    write_job_files,
)
from .job_options import INPUT_OPTIONS, options_from_command
from .job_types import DIALECTS, Dialect, JobKind, JobStatus, NodeType, job_kind
from .locking import project_lock, relion_pipeline_lock
from .models import CtfValues, OpticsGroup
from .pipeline import NO_ALIAS, Pipeline, Process, read_pipeline
from .star_text import Value, parse_star
from .tomo_files import TiltAlignmentValues

_JOB_DIR = re.compile(r"^job(\d{3,})$")
GUI_PROJECT_MARKER = ".gui_projectdir"
RELION3_COORDS_NODE = "coords_suffix_autopick.star"
COORDINATE_SUFFIX = "_autopick.star"

# The output node each streaming job registers when it is created, and where its inputs come from.
_CHAIN_OUTPUT: dict[str, tuple[str, NodeType]] = {
    "import": (data_files.MOVIES.file_name, NodeType.MOVIES),
    "motioncorr": (data_files.CORRECTED_MICROGRAPHS.file_name, NodeType.MICROGRAPHS),
    "ctffind": (data_files.MICROGRAPHS_CTF.file_name, NodeType.MICROGRAPHS),
    "autopick": (data_files.AUTOPICK.file_name, NodeType.COORDINATES),
    "extract": (data_files.PARTICLES.file_name, NodeType.PARTICLES),
    "icebreaker_micrographs": (data_files.GROUPED_MICROGRAPHS.file_name, NodeType.MICROGRAPHS),
    "icebreaker_enhancecontrast": (data_files.FLATTENED_MICROGRAPHS.file_name, NodeType.MICROGRAPHS),
    "icebreaker_summary": (icebreaker_files.FIVE_FIGURES_FILE, NodeType.LOGFILE),
    "tomo_import": (tomo_files.IMPORT.file_name, NodeType.TOMOGRAMS),
    "tomo_motioncorr": (tomo_files.MOTIONCORR.file_name, NodeType.TOMOGRAMS),
    "tomo_ctffind": (tomo_files.CTFFIND.file_name, NodeType.TOMOGRAMS),
    "exclude_tilts": (tomo_files.SELECTED.file_name, NodeType.TOMOGRAMS),
    "aligntiltseries_aretomo": (tomo_files.ALIGNED.file_name, NodeType.TOMOGRAMS),
    "aligntiltseries_imod_fiducial": (tomo_files.ALIGNED.file_name, NodeType.TOMOGRAMS),
    "aligntiltseries_imod_patchtrack": (tomo_files.ALIGNED.file_name, NodeType.TOMOGRAMS),
    "aligntiltseries_builtin": (tomo_files.ALIGNED.file_name, NodeType.TOMOGRAMS),
    "tomograms": (tomo_files.TOMOGRAMS.file_name, NodeType.TOMOGRAMS),
    "denoise": (tomo_files.DENOISED.file_name, NodeType.TOMOGRAMS),
}
# Tilt-series alignment, by tool: the job kind of each (one Relion process, the method a job option).
ALIGNER_KINDS = {"aretomo": "aligntiltseries_aretomo", "imod_fiducial": "aligntiltseries_imod_fiducial",
                 "imod_patchtrack": "aligntiltseries_imod_patchtrack", "builtin": "aligntiltseries_builtin"}
# The per-tilt jobs of a live tomography session, numbered first (Import/job001 ... CtfFind/job003).
TOMO_TILT_JOBS = ("tomo_import", "tomo_motioncorr", "tomo_ctffind")
# (upstream kinds, first existing wins; the job.star option Relion 3.1/5 reads that input from)
_CHAIN_INPUTS: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "motioncorr": ((("import",), "input_star_mics"),), "ctffind": ((("motioncorr",), "input_star_mics"),),
    "autopick": ((("ctffind",), "fn_input_autopick"),),
    "extract": ((("ctffind",), "star_mics"), (("autopick",), "coords_suffix")),
    # IceBreaker as a Relion 3.1 External job reads its micrographs from `in_mic` (passed as --in_mics).
    "icebreaker_micrographs": ((("motioncorr",), "in_mic"),),
    "icebreaker_enhancecontrast": ((("motioncorr",), "in_mic"),),
    "icebreaker_summary": ((("icebreaker_micrographs",), "in_mic"),),
    "tomo_motioncorr": ((("tomo_import",), "input_star_mics"),),
    "tomo_ctffind": ((("tomo_motioncorr",), "input_star_mics"),),
    "exclude_tilts": ((("tomo_ctffind",), "in_tiltseries"),),
    **{kind: ((("exclude_tilts", "tomo_ctffind"), "in_tiltseries"),) for kind in ALIGNER_KINDS.values()},
    "tomograms": ((tuple(ALIGNER_KINDS.values()), "in_tiltseries"),),
    "denoise": ((("tomograms",), "in_tomoset"),),
}
SPA_PREPROCESSING = ("import", "motioncorr", "ctffind", "autopick", "extract")
# IceBreaker's per-micrograph jobs, numbered together in this order (cryoem-services: micrographs,
# enhancecontrast, summary); the table each micrograph job lists its output micrographs in.
ICEBREAKER_JOBS = ("icebreaker_micrographs", "icebreaker_enhancecontrast", "icebreaker_summary")
_ICEBREAKER_TABLES = {"icebreaker_micrographs": data_files.GROUPED_MICROGRAPHS,
                      "icebreaker_enhancecontrast": data_files.FLATTENED_MICROGRAPHS}


def icebreaker_jobs(enhance_contrast: bool = False) -> tuple[str, ...]:
    """The IceBreaker jobs of a session: grouping and summary, with contrast enhancement if asked for."""
    return tuple(kind for kind in ICEBREAKER_JOBS if enhance_contrast or kind != "icebreaker_enhancecontrast")


def tomo_preprocessing(aligner: str = "aretomo") -> tuple[str, ...]:
    """The Live tomography jobs, in cryoem-services' order: Import/job001 ... ExcludeTiltImages/job004,
    AlignTiltSeries/job005, Tomograms/job006 in a new project; `aligner` picks the alignment job."""
    return ("tomo_import", "tomo_motioncorr", "tomo_ctffind", "exclude_tilts", _aligner_kind(aligner), "tomograms")


def _aligner_kind(aligner: str) -> str:
    try:
        return ALIGNER_KINDS[aligner]
    except KeyError:
        raise ValueError(f"unknown tilt-series aligner {aligner!r}; known: {sorted(ALIGNER_KINDS)}") from None


# The table a Select job's output of each node type lists its items in.
_SELECTED_BLOCKS = {NodeType.PARTICLES: "particles", NodeType.MICROGRAPHS: "micrographs"}


def _row_count(star: Path, block: str) -> int:
    """Rows of one table of a STAR file (0 if it has no such table)."""
    try:
        table = parse_star(star.read_text()).get(block)
    except ValueError as exc:
        raise ImageFileError(star, f"not a readable STAR file ({exc})") from None
    return len(table.rows) if table is not None else 0


def _stack_length(path: str | Path) -> int:
    """Number of images in an MRC stack, from its header."""
    try:
        with mrcfile.open(path, mode="r", header_only=True, permissive=False) as mrc:
            return int(mrc.header.nz)
    except FileNotFoundError:
        raise ImageFileError(path, "particle stack does not exist") from None
    except (ValueError, OSError) as exc:
        raise ImageFileError(path, f"malformed MRC particle stack ({exc})") from None


@dataclass(frozen=True)
class RelionJob:
    """One job folder, e.g. `MotionCorr/job002/`."""

    project: "RelionProject"
    kind: JobKind
    number: int

    @property
    def name(self) -> str:
        """The pipeline's process name, `<Type>/jobNNN/`."""
        return f"{self.kind.directory}/job{self.number:03d}/"

    @property
    def path(self) -> Path:
        return self.project.root / self.name

    def file_for(self, source: str | Path, suffix: str, source_root: str | Path | None = None) -> Path:
        """Where this job puts its output for `source` (a movie or micrograph): `<job>/Movies/<stem><suffix>`.

        With `source_root`, the source's sub-folders below it are kept (as cryoem-services mirrors the
        raw data layout), so movies with equal names in different grid squares do not collide.
        """
        source = Path(source)
        relative = source.relative_to(source_root) if source_root is not None else Path(source.name)
        stem = relative.stem  # only the file type goes: `movie.0001.tif` and `movie.0002.tif` stay apart
        return self.path / "Movies" / relative.parent / f"{stem}{suffix}"

    def output_node_name(self) -> str:
        """Project-relative name of the job's main output node (streaming jobs only)."""
        file_name, _ = _CHAIN_OUTPUT[self.kind.name]
        if self.kind.name == "autopick" and self.project.dialect == "relion3":
            file_name = RELION3_COORDS_NODE
        return self.name + file_name

    def add_output(self, file: str | Path, node_type: NodeType, label_suffix: str | None = None) -> None:
        """Register a file of this job as an output node (the file may be written later).

        `file` is absolute, project-relative (`Class2D/job006/run_it025_data.star`) or a bare name
        inside the job folder; `label_suffix` overrides the kind's Relion 5 label suffix.
        """
        with self.project.updating_pipeline() as pipeline:
            self.project.register_output(pipeline, self, file, node_type, label_suffix)
        written = self.project.absolute(self.project.relative(
            file if Path(file).is_absolute() or "/" in str(file) else self.path / file))
        if self.kind.name == "select" and node_type in _SELECTED_BLOCKS and written.is_file():
            self.log_written(written, _row_count(written, _SELECTED_BLOCKS[node_type]))

    def add_input(self, file: str | Path, node_type: NodeType, label_suffix: str | None = None) -> None:
        """Register `file` (usually another job's output node) as an input of this job."""
        node = self.project.node_name(file)
        with self.project.updating_pipeline() as pipeline:
            pipeline.add_node(node, node_type.token(self.project.dialect, node, label_suffix))
            pipeline.add_input_edge(node, self.name)
            option = INPUT_OPTIONS.get(self.kind.name, {}).get(node_type)
            if option is not None:  # job.star names the input as Relion's GUI would (doppio rebuilds the job from it)
                update_job_options(self.path, self.kind, self.project.dialect, {option: node})

    def log_written(self, file: Path, count: int) -> None:
        """Note in run.out that this Select job wrote `count` items to `file`, in relion_star_handler's line
        (` Written: <file> with <n> objects.`; doppio's Select metadata counts them from it). A retry's line
        replaces the earlier one for the same file."""
        with project_lock(self.project.root):
            log_written_file(self.path, self.project.relative(file), count)

    def set_options(self, options: dict[str, Value]) -> None:
        """Set job.star options of this job (parameters it ran with), keeping the others."""
        with project_lock(self.project.root):
            update_job_options(self.path, self.kind, self.project.dialect, options)


class RelionProject:
    """A Relion project folder that stages write into as they finish (see the package docstring)."""

    def __init__(self, root: str | Path, dialect: Dialect = "relion5", optics: OpticsGroup | None = None) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
        self.root = Path(root).resolve()
        self.dialect: Dialect = dialect
        self.optics = optics
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / GUI_PROJECT_MARKER).touch()

    # ----- jobs and pipeline -------------------------------------------------------------------------

    def read_pipeline(self) -> Pipeline:
        return read_pipeline(self.root, self.dialect)

    @contextmanager
    def updating_pipeline(self) -> Iterator[Pipeline]:
        """Read, let the caller change, and atomically rewrite default_pipeline.star under both locks."""
        with project_lock(self.root), relion_pipeline_lock(self.root):
            pipeline = self.read_pipeline()
            yield pipeline
            pipeline.write(self.root)

    def job(self, kind: str, alias: str | None = None, new: bool = False,
            options: dict[str, Value] | None = None, command: str | None = None) -> RelionJob:
        """The job carrying `alias` (default: the kind's Live alias), created if missing or if `new`.

        A kind without a Live alias (class2d, refine3d ...) needs `alias` or `new=True`; give a stable
        alias (e.g. `batch_50000`) to make a retried task find its job instead of making another.
        `options` go to job.star, `command` to note.txt, when the job is created.
        """
        spec = job_kind(kind)
        alias = alias or spec.live_alias
        if alias is None and not new:
            raise ValueError(f"job kind {kind!r} has no Live alias: pass alias=... or new=True")
        if not new and alias is not None:
            existing = self._aliased_job(spec, alias)
            if existing is not None:
                return existing
        with self.updating_pipeline() as pipeline:
            if not new and alias is not None:  # another writer may have created it meanwhile
                existing = self._aliased_job(spec, alias)
                if existing is not None:
                    return existing
            return self._create_job(pipeline, spec, alias, options or {}, command)

    def existing_job(self, kind: str) -> RelionJob | None:
        """The kind's Live job if the project has it already (never creates one)."""
        spec = job_kind(kind)
        return self._aliased_job(spec, spec.live_alias) if spec.live_alias else None

    def reserve_jobs(self, kinds: Sequence[str] = SPA_PREPROCESSING) -> list[RelionJob]:
        """Create the Live jobs of `kinds` together, numbered consecutively in this order.

        This gives cryoem-services' positional layout (Import/job001, MotionCorr/job002, CtfFind/job003,
        AutoPick/job004, Extract/job005 in a new project) whichever stage of the first movie finishes first.
        """
        with self.updating_pipeline() as pipeline:
            jobs = []
            for kind in kinds:
                spec = job_kind(kind)
                if spec.live_alias is None:
                    raise ValueError(f"job kind {kind!r} has no Live alias and cannot be reserved")
                existing = self._aliased_job(spec, spec.live_alias)
                jobs.append(existing or self._create_job(pipeline, spec, spec.live_alias, {}, None))
            return jobs

    def finish_job(self, job: RelionJob, success: bool) -> None:
        """Mark a job Succeeded (RELION_JOB_EXIT_SUCCESS) or Failed (RELION_JOB_EXIT_FAILURE)."""
        with self.updating_pipeline() as pipeline:
            process = pipeline.process(job.name)
            if process is None:
                raise ValueError(f"{job.name} is not in {self.root / 'default_pipeline.star'}")
            process.status = JobStatus.SUCCEEDED if success else JobStatus.FAILED
            mark_exit(job.path, success)
            if success and job.kind.name == "extract":
                self._write_extract_summary(job)

    def _write_extract_summary(self, job: RelionJob) -> None:
        """The Live Extract job's run.out as relion_preprocess ends it (micrographs joined, particles written):
        doppio's Extract metadata reads the two counts from these lines."""
        star = job.path / data_files.PARTICLES.file_name
        table = parse_star(star.read_text()).get(data_files.PARTICLES.block) if star.exists() else None
        rows = table.rows if table is not None else []
        column = table.column("rlnMicrographName") if table is not None else 0
        micrographs = len({row[column] for row in rows})
        write_text_atomic(
            job.path / "run.out",
            f" Joining metadata of all particles from {micrographs} micrographs in one STAR file...\n"
            f" Written out STAR file with {len(rows)} particles in {self.relative(star)}\n")

    def add_command(self, job: RelionJob, command: str) -> None:
        """Record another command run for `job` in its note.txt, and the parameters a Relion command ran
        with in its job.star (see job_options.py)."""
        with project_lock(self.root):
            append_note(job.path, command)
            options = options_from_command(job.kind.name, command)
            if options:
                update_job_options(job.path, job.kind, self.dialect, options)

    def register_output(self, pipeline: Pipeline, job: RelionJob, file: str | Path, node_type: NodeType,
                        label_suffix: str | None = None) -> None:
        node = self.node_name(file if Path(file).is_absolute() or "/" in str(file) else job.path / file)
        pipeline.add_node(node, node_type.token(self.dialect, node, label_suffix or job.kind.node_suffix))
        pipeline.add_output_edge(job.name, node)

    def absolute(self, path: str | Path) -> Path:
        """An absolute path; relative paths are taken as relative to the project folder."""
        return Path(os.path.normpath(path if Path(path).is_absolute() else self.root / path))

    def relative(self, path: str | Path) -> str:
        """Project-relative POSIX path for files inside the project, absolute path otherwise."""
        absolute = self.absolute(path)
        try:
            return absolute.relative_to(self.root).as_posix()
        except ValueError:
            return absolute.as_posix()

    def node_name(self, path: str | Path) -> str:
        """A file's name as a pipeline node: project-relative, through the job folder, not an alias link
        (`Select/Live_best_particles/x.star` is `Select/job010/x.star`), as Relion names nodes; so the edge
        joins the job that wrote the file (doppio's metadata report follows these edges upstream)."""
        relative = self.relative(path)
        parts = relative.split("/")
        if len(parts) > 2 and not _JOB_DIR.match(parts[1]):
            target = alias_target(self.root / parts[0], parts[1])
            if target is not None and _JOB_DIR.match(target):
                return "/".join([parts[0], target, *parts[2:]])
        return relative

    def _existing_job_numbers(self) -> list[int]:
        return [int(match.group(1)) for type_dir in self.root.iterdir() if type_dir.is_dir()
                for entry in type_dir.iterdir()
                if (match := _JOB_DIR.match(entry.name)) and not entry.is_symlink()]

    def _live_job(self, kind: str) -> RelionJob | None:
        """The Live job of `kind` if it exists (never creates one)."""
        spec = job_kind(kind)
        return self._aliased_job(spec, spec.live_alias) if spec.live_alias else None

    def _aliased_job(self, spec: JobKind, alias: str) -> RelionJob | None:
        target = alias_target(self.root / spec.directory, alias)
        match = _JOB_DIR.match(target or "")
        return RelionJob(self, spec, int(match.group(1))) if match else None

    def _create_job(self, pipeline: Pipeline, spec: JobKind, alias: str | None, options: dict[str, Value],
                    command: str | None) -> RelionJob:
        number = max([pipeline.job_counter, *(n + 1 for n in self._existing_job_numbers())])
        job = RelionJob(self, spec, number)
        pipeline.add_process(Process(job.name, NO_ALIAS, spec.type_token(self.dialect), JobStatus.RUNNING))
        pipeline.job_counter = number + 1
        options = spec.default_options | (options_from_command(spec.name, command) if command else {}) | options
        if spec.name in _CHAIN_OUTPUT:
            options = self._wire_chain_job(pipeline, job) | options
        write_job_files(job.path, spec, self.dialect, options, command)
        if alias is not None:
            point_alias(self.root / spec.directory, alias, f"job{number:03d}")
            pipeline.set_alias(job.name, f"{spec.directory}/{alias}/")
        return job

    def _wire_chain_job(self, pipeline: Pipeline, job: RelionJob) -> dict[str, Value]:
        """Register a streaming job's output node, connect it to the Live jobs it reads from, and
        return the job.star options naming those inputs."""
        _, node_type = _CHAIN_OUTPUT[job.kind.name]
        output = job.output_node_name()
        self.register_output(pipeline, job, output, node_type)
        input_options: dict[str, Value] = {}
        for upstream_kinds, option in _CHAIN_INPUTS.get(job.kind.name, ()):
            upstream = next((found for kind in upstream_kinds if (found := self._live_job(kind)) is not None), None)
            if upstream is None:
                continue
            node = upstream.output_node_name()
            spec = upstream.kind
            pipeline.add_node(node, _CHAIN_OUTPUT[spec.name][1].token(self.dialect, node, spec.node_suffix))
            pipeline.add_input_edge(node, job.name)
            input_options[option] = node
        if output.endswith(RELION3_COORDS_NODE) and input_options:
            # Relion 3.1 keeps the micrographs the coordinates belong to in this small file.
            write_text_atomic(self.root / output, f"{input_options['fn_input_autopick']}\n")
        return input_options

    # ----- per-micrograph rows ------------------------------------------------------------------------

    def _upsert(self, job: RelionJob, spec: TableSpec, key: str, rows: list[list[Value]]) -> None:
        header = data_files.file_header(spec, self.optics, self.dialect)
        with project_lock(self.root):
            upsert_rows(job.path / spec.file_name, header, spec.block, spec.columns, spec.key_column, key, rows)

    def add_movie(self, movie_path: str | Path) -> None:
        """List a movie in Import/jobNNN/movies.star."""
        movie = self.relative(movie_path)
        self._upsert(self.job("import"), data_files.MOVIES, movie, [[movie, self._optics_number()]])

    def add_motion_corrected(self, micrograph_path: str | Path, total_motion_a: float, early_motion_a: float,
                             late_motion_a: float, metadata_path: str | Path | None = None) -> None:
        """Add a motion-corrected micrograph (and its accumulated motion in Å) to corrected_micrographs.star."""
        micrograph = self.relative(micrograph_path)
        values: list[Value] = [micrograph, self._optics_number(), float(total_motion_a), float(early_motion_a),
                               float(late_motion_a)]
        spec = data_files.CORRECTED_MICROGRAPHS
        if metadata_path is not None:
            spec = data_files.with_metadata(spec)
            values.insert(1, self.relative(metadata_path))
        self._upsert(self.job("motioncorr"), spec, micrograph, [values])

    def add_ctf(self, micrograph_path: str | Path, ctf: CtfValues, ctf_image_path: str | Path) -> None:
        """Add a micrograph's CTF fit to micrographs_ctf.star (`ctf_image_path`: its power spectrum, MRC)."""
        micrograph = self.relative(micrograph_path)
        ctf = CtfValues.model_validate(ctf)
        values = data_files.ctf_row_values(ctf) | {
            "rlnMicrographName": micrograph, "rlnOpticsGroup": self._optics_number(),
            "rlnCtfImage": f"{self.relative(ctf_image_path)}:mrc",
            "rlnCtfAstigmatism": abs(ctf.defocus_u_a - ctf.defocus_v_a)}
        spec = data_files.MICROGRAPHS_CTF
        self._upsert(self.job("ctffind"), spec, micrograph, [[values[column] for column in spec.columns]])
        self._write_ctffind_log(ctf_image_path, ctf)

    def _write_ctffind_log(self, ctf_image_path: str | Path, ctf: CtfValues) -> None:
        """`<stem>_ctffind4.log` beside the spectrum, unless CTFFIND itself left one there: the fit's summary
        in CTFFIND's lines, whichever program fitted it, so that doppio's CtfFind display has every micrograph.
        A retried fit replaces our summary; CTFFIND's own log (its banner names it) is kept."""
        image = self.absolute(ctf_image_path)
        log = image.with_name(image.stem + data_files.CTFFIND_LOG_SUFFIX)
        if log.exists() and "ctffind" in log.read_text(errors="replace").lower():
            return
        write_text_atomic(log, data_files.ctffind_log_text(ctf))

    def add_picks(self, micrograph_path: str | Path, coordinates_px: Sequence[Sequence[float]],
                  figures_of_merit: Sequence[float] | None = None) -> Path:
        """Write `<AutoPick job>/Movies/<mic>_autopick.star` ([x, y] px) and list it in autopick.star.

        The file name follows Relion 3.1's `--coord_suffix _autopick.star` convention, so both
        autopick.star (Relion 4/5) and coordinate suffix lookup (Relion 3.1) find it. Returns its path.
        """
        job = self.job("autopick")
        micrograph = self.relative(micrograph_path)
        coords_file = self._coordinate_file(job, micrograph)
        text = data_files.coordinates_text([list(c) for c in coordinates_px],
                                           None if figures_of_merit is None else list(figures_of_merit),
                                           self.dialect)
        write_text_atomic(coords_file, text)
        self._upsert(job, data_files.AUTOPICK, micrograph, [[micrograph, self.relative(coords_file)]])
        return coords_file

    def add_particles(self, micrograph_path: str | Path, stack_path: str | Path,
                      coordinates_px: Sequence[Sequence[float]], ctf: CtfValues) -> int:
        """Add one micrograph's extracted particles (stack image i = coordinate i) to particles.star.

        Returns the number of particles; the stack must hold exactly one image per coordinate.
        """
        n_images = _stack_length(self.absolute(stack_path))
        if n_images != len(coordinates_px):
            raise ImageFileError(stack_path, f"holds {n_images} images for {len(coordinates_px)} coordinates")
        micrograph = self.relative(micrograph_path)
        stack_name = self.relative(stack_path)
        ctf_values = data_files.ctf_row_values(CtfValues.model_validate(ctf))
        spec = data_files.PARTICLES
        rows = []
        for index, (x, y) in enumerate(coordinates_px, start=1):
            values = ctf_values | {
                "rlnCoordinateX": float(x), "rlnCoordinateY": float(y), "rlnImageName": f"{index:06d}@{stack_name}",
                "rlnMicrographName": micrograph, "rlnOpticsGroup": self._optics_number(),
                "rlnCtfBfactor": 0.0, "rlnCtfScalefactor": 1.0, "rlnPhaseShift": 0.0}
            rows.append([values[column] for column in spec.columns])
        self._upsert(self.job("extract"), spec, micrograph, rows)
        return len(rows)

    def add_icebreaker_micrograph(self, kind: str, micrograph_path: str | Path, output_path: str | Path,
                                  total_motion_a: float, early_motion_a: float, late_motion_a: float) -> None:
        """List IceBreaker's micrograph made from a motion-corrected one (`kind` icebreaker_micrographs:
        grouped; icebreaker_enhancecontrast: flattened) with that micrograph's motion, and mark it done."""
        if kind not in _ICEBREAKER_TABLES:
            raise ValueError(f"kind must be one of {sorted(_ICEBREAKER_TABLES)}, got {kind!r}")
        job = self.job(kind)
        output = self.relative(output_path)
        self._upsert(job, _ICEBREAKER_TABLES[kind], output,
                     [[output, self._optics_number(), float(total_motion_a), float(early_motion_a),
                       float(late_motion_a)]])
        with project_lock(self.root):
            icebreaker_files.add_done_micrograph(job.path, Path(micrograph_path).name)

    def add_ice_thickness(self, grouped_micrograph_path: str | Path, figures: dict[str, float]) -> Path:
        """Put a grouped micrograph's five-figure summary (minimum, q1, median, q3, maximum) into the
        IceBreaker summary job's five_figs_test.csv; returns the file."""
        job = self.job("icebreaker_summary")
        with project_lock(self.root):
            return icebreaker_files.upsert_five_figures(job.path, self.relative(grouped_micrograph_path), figures)

    def _coordinate_file(self, job: RelionJob, micrograph: str) -> Path:
        """Relion 3.1's rule: coord_dir + (micrograph path after its jobNNN/, without extension) + suffix."""
        parts = Path(micrograph).parts
        job_index = next((i for i, part in enumerate(parts) if _JOB_DIR.match(part)), None)
        tail = Path(*parts[job_index + 1:]) if job_index is not None else Path("Movies", Path(micrograph).name)
        return job.path / tail.parent / (tail.name.rsplit(".", 1)[0] + COORDINATE_SUFFIX)

    def _optics_number(self) -> int:
        if self.optics is None:
            raise ValueError("RelionProject needs optics=OpticsGroup(...) to write micrograph or particle rows")
        return self.optics.number

    # ----- tomography (Relion 5): per-tilt rows, then per-series files -------------------------------

    def add_tilt_movie(self, series: str, movie_path: str | Path, frame_count: int, tilt_angle_deg: float,
                       tilt_axis_deg: float, pre_exposure_e_a2: float, nominal_defocus_um: float) -> None:
        """List a tilt movie of `series` in the Import job's tilt_series.star and tilt_series/<series>.star.

        Angles are the nominal ones (mdoc TiltAngle, the tilt axis CCW from the image y axis), the
        pre-exposure the dose received before this tilt (e/Å²), the defocus the nominal underfocus (µm).
        """
        name = self._tomo_series(series)
        job = self.job("tomo_import")
        values = tomo_files.import_tilt_values(self.relative(movie_path), frame_count, tilt_angle_deg, tilt_axis_deg,
                                               pre_exposure_e_a2, nominal_defocus_um)
        with project_lock(self.root):
            tomo_files.upsert_tilt(job.path, job.name, tomo_files.IMPORT, name, values, self._tomo_optics())

    def add_motion_corrected_tilt(self, series: str, movie_path: str | Path, micrograph_path: str | Path,
                                  total_motion_a: float, early_motion_a: float, late_motion_a: float,
                                  half_sum_paths: Sequence[str | Path] | None = None) -> None:
        """Add a tilt's motion-corrected image and its accumulated motion (Å) to corrected_tilt_series.star;
        `half_sum_paths`: its even- and odd-frame sums (rlnMicrographNameEven/Odd, job option
        do_even_odd_split, as Relion 5's "Save images for denoising?" writes them)."""
        name = self._tomo_series(series)
        job = self.job("tomo_motioncorr")
        upstream = self._upstream_dir(job)
        added: dict[str, Value] = {"rlnMicrographName": self.relative(micrograph_path),
                                   "rlnAccumMotionTotal": float(total_motion_a),
                                   "rlnAccumMotionEarly": float(early_motion_a),
                                   "rlnAccumMotionLate": float(late_motion_a)}
        if half_sum_paths is not None:
            added |= dict(zip(tomo_files.HALF_SUM_COLUMNS, map(self.relative, half_sum_paths)))
        with project_lock(self.root):
            row = tomo_files.upstream_row(upstream, name, self.relative(movie_path))
            tomo_files.upsert_tilt(job.path, job.name, tomo_files.MOTIONCORR, name, {**row, **added},
                                   self._tomo_optics())
        if half_sum_paths is not None:
            job.set_options({"do_even_odd_split": "Yes"})

    def add_tilt_ctf(self, series: str, movie_path: str | Path, ctf: CtfValues, ctf_image_path: str | Path) -> None:
        """Add a tilt's CTF fit to tilt_series_ctf.star (`ctf_image_path`: its power spectrum, MRC)."""
        name = self._tomo_series(series)
        job = self.job("tomo_ctffind")
        upstream = self._upstream_dir(job)
        ctf = CtfValues.model_validate(ctf)
        added = data_files.ctf_row_values(ctf) | {
            "rlnCtfImage": f"{self.relative(ctf_image_path)}:mrc",
            "rlnCtfAstigmatism": abs(ctf.defocus_u_a - ctf.defocus_v_a)}
        with project_lock(self.root):
            row = tomo_files.upstream_row(upstream, name, self.relative(movie_path))
            tomo_files.upsert_tilt(job.path, job.name, tomo_files.CTFFIND, name, {**row, **added},
                                   self._tomo_optics())
            tomo_files.upsert_power_spectrum(job.path, added)

    def select_tilts(self, series: str, movie_paths: Sequence[str | Path]) -> None:
        """Keep these tilts of a complete series (ExcludeTiltImages' selected_tilt_series.star); the
        others are left out, as Relion's tilt exclusion does. A retry replaces the selection."""
        name = self._tomo_series(series)
        job = self.job("exclude_tilts")
        upstream = self._upstream_dir(job)
        kept = {self.relative(path) for path in movie_paths}
        with project_lock(self.root):
            rows = [row for _, row in self._series_rows(upstream, name, kept)]
            tomo_files.replace_series(job.path, job.name, tomo_files.SELECTED, name, rows, self._tomo_optics())

    def add_aligned_tilt_series(self, series: str, alignments: Sequence[TiltAlignmentValues],
                                aligner: str = "aretomo") -> None:
        """Write the series' aligned tilts (aligned_tilt_series.star); tilts without an alignment are left out."""
        name = self._tomo_series(series)
        job = self.job(_aligner_kind(aligner))
        upstream = self._upstream_dir(job)
        by_movie = {self.relative(one.movie): one for one in map(TiltAlignmentValues.model_validate, alignments)}
        with project_lock(self.root):
            rows = [{**row, "rlnTomoXTilt": by_movie[movie].x_tilt_deg, "rlnTomoYTilt": by_movie[movie].y_tilt_deg,
                     "rlnTomoZRot": by_movie[movie].z_rot_deg, "rlnTomoXShiftAngst": by_movie[movie].x_shift_a,
                     "rlnTomoYShiftAngst": by_movie[movie].y_shift_a}
                    for movie, row in self._series_rows(upstream, name, set(by_movie))]
            tomo_files.replace_series(job.path, job.name, tomo_files.ALIGNED, name, rows, self._tomo_optics())

    def tomogram_path(self, series: str) -> Path:
        """Where the Tomograms job keeps the series' tomogram: `Tomograms/jobNNN/tomograms/rec_<series>.mrc`."""
        return tomo_files.tomogram_file(self.job("tomograms").path, self._tomo_series(series))

    def half_tomogram_paths(self, series: str) -> tuple[Path, Path]:
        """Where the Tomograms job keeps the series' half tomograms (`rec_<series>_half1.mrc`, `_half2.mrc`)."""
        job_dir, name = self.job("tomograms").path, self._tomo_series(series)
        return tomo_files.tomogram_file(job_dir, name, 1), tomo_files.tomogram_file(job_dir, name, 2)

    def add_tomogram(self, series: str, tomogram_path: str | Path, binning: float,
                     volume_size_px: Sequence[int], half_paths: Sequence[str | Path] | None = None) -> None:
        """List the series' tomogram in tomograms.star. `volume_size_px` is the volume's [x, y, z] as written
        (binned); Relion records the bin-1 size (rlnTomoSizeX: "Width of a bin-1 tomogram in pixels").
        `half_paths`: its half tomograms (rlnTomoReconstructedTomogramHalf1/2, job option
        generate_split_tomograms, as Relion 5's "Generate tomograms for denoising?" writes them)."""
        name = self._tomo_series(series)
        if len(volume_size_px) != 3 or binning <= 0:
            raise ValueError(f"tomogram of {name}: need [x, y, z] sizes and a positive binning, "
                             f"got {list(volume_size_px)} and {binning}")
        job = self.job("tomograms")
        upstream = self._upstream_dir(job)
        sizes = [round(int(size) * binning) for size in volume_size_px]
        extra: dict[str, Value] = {"rlnTomoTomogramBinning": float(binning), "rlnTomoSizeX": sizes[0],
                                   "rlnTomoSizeY": sizes[1], "rlnTomoSizeZ": sizes[2],
                                   "rlnTomoReconstructedTomogram": self.relative(tomogram_path)}
        if half_paths is not None:
            extra |= dict(zip(tomo_files.HALF_TOMOGRAM_COLUMNS, map(self.relative, half_paths)))
        with project_lock(self.root):
            rows = list(tomo_files.upstream_rows(upstream, name).values())
            if not rows:
                raise ImageFileError(tomo_files.series_file(upstream, name), "missing: align the series first")
            tomo_files.replace_series(job.path, job.name, tomo_files.TOMOGRAMS, name, rows, self._tomo_optics(),
                                      extra)
        if half_paths is not None:
            job.set_options({"generate_split_tomograms": "Yes"})

    def denoised_tomogram_dir(self) -> Path:
        """Where the Denoise job keeps denoised tomograms: `Denoise/jobNNN/tomograms/`."""
        return self.job("denoise").path / tomo_files.TOMOGRAM_FOLDER

    def add_denoised_tomogram(self, series: str, denoised_path: str | Path) -> None:
        """List the series in the Denoise job's tomograms.star: the Tomograms job's row (per-series tilts and
        global values) with rlnTomoReconstructedTomogramDenoised, as Relion 5's denoising writes it."""
        name = self._tomo_series(series)
        job = self.job("denoise")
        upstream = self._upstream_dir(job)
        with project_lock(self.root):
            rows = list(tomo_files.upstream_rows(upstream, name).values())
            if not rows:
                raise ImageFileError(tomo_files.series_file(upstream, name), "missing: reconstruct the series first")
            reconstructed = tomo_files.global_values(upstream, tomo_files.TOMOGRAMS, name)
            extra: dict[str, Value] = {column: reconstructed[column]
                                       for column in (*tomo_files.TOMOGRAMS_GLOBAL, *tomo_files.HALF_TOMOGRAM_COLUMNS)
                                       if column in reconstructed and column not in tomo_files.TILT_SERIES_GLOBAL}
            extra[tomo_files.DENOISED_COLUMN] = self.relative(denoised_path)
            tomo_files.replace_series(job.path, job.name, tomo_files.DENOISED, name, rows, self._tomo_optics(),
                                      extra)

    def segmentation_dir(self, source_kind: str) -> Path:
        """Where the membrain-seg job writes: `Segmentation/jobNNN/tomograms/`; the job reads the tomograms.star
        of `source_kind` (`denoise` or `tomograms`), registered as its input when the job is made."""
        job = self.job("segment")
        source = self.job(source_kind)
        job.add_input(source.output_node_name(), NodeType.TOMOGRAMS)
        return job.path / tomo_files.TOMOGRAM_FOLDER

    def _tomo_series(self, series: str) -> str:
        if self.dialect != "relion5":
            raise ValueError("Relion 3.1 has no tomography jobs: open the project with dialect='relion5'")
        return tomo_files.check_series_name(series)

    def _tomo_optics(self) -> OpticsGroup:
        if self.optics is None:
            raise ValueError("RelionProject needs optics=OpticsGroup(...) to write tilt series")
        return self.optics

    def _upstream_dir(self, job: RelionJob) -> Path:
        """The folder of the job `job` reads from: its input edge in the pipeline, else the Live upstream job."""
        for node, process in self.read_pipeline().input_edges:
            if process == job.name:
                return self.absolute(node).parent
        for upstream_kinds, _ in _CHAIN_INPUTS.get(job.kind.name, ()):
            for kind in upstream_kinds:
                upstream = self._live_job(kind)
                if upstream is not None:
                    return upstream.path
        raise ValueError(f"{job.name} has no input job: reserve the tomography jobs first "
                         f"(reserve_jobs(tomo_preprocessing()))")

    @staticmethod
    def _series_rows(upstream: Path, name: str, movies: set[str]) -> list[tuple[str, dict[str, str]]]:
        """(movie, row) of `movies` in the upstream file's (acquisition) order; a movie the upstream job has
        not written is an error naming the file."""
        rows = tomo_files.upstream_rows(upstream, name)
        unknown = sorted(movies - set(rows))
        if unknown:
            raise ImageFileError(tomo_files.series_file(upstream, name), f"has no rows for {unknown}")
        return [(movie, row) for movie, row in rows.items() if movie in movies]

