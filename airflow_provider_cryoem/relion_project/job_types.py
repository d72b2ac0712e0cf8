"""The Relion job and node types we write, in both pipeline dialects.

Relion 3.1 identifies process types, node types and statuses by integers (`pipeline_jobs.h`,
`PROC_*`, `NODE_*`); Relion 4/5 by labels (`relion.motioncorr.own`,
`MicrographGroupMetadata.star.relion.motioncorr`, `Succeeded`). Both are kept here, side by side.

Tomography jobs exist in Relion 5 only. Their folders and output node labels are Relion 5.0's
`src/pipeline_jobs.h` (PROC_TOMO_*_DIRNAME, LABEL_*_TOMOGRAMS). Process labels carry the variant one layer
deeper, as ccpem-pipeliner names its job types, because Relion 5 reads a label by dropping its deepest layers
until it knows it (`get_proc_type`: "remove deepest layers of the process label, from ccpem-pipeliner"),
while the pipeliner needs the deep label to pick its tomography job class (and so doppio's display):
motion correction and CTF are `relion.motioncorr.tomo.own` / `relion.ctffind.tomo.ctffind4` (Relion itself
writes `relion.motioncorr.own` with `rlnJobIsTomo 1`, which the pipeliner 1.6.1 takes for the
single-particle job and cannot display), tilt-series alignment `relion.aligntiltseries.aretomo` /
`.imod_fiducial` / `.imod_patchtrack` by method, and `relion.aligntiltseries.cryoem_builtin` for our own
aligner (a pipeliner job type this package registers: relion_project/pipeliner_jobs.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from pathlib import PurePosixPath
from typing import Literal

Dialect = Literal["relion3", "relion5"]
DIALECTS: tuple[Dialect, ...] = ("relion3", "relion5")

# The "# version" line each Relion writes above every data block.
STAR_VERSION = {"relion3": "30001", "relion5": "50001"}


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its folder, its type in each dialect, and its Live alias if it streams."""

    name: str
    directory: str
    relion3_type: int
    relion5_label: str
    live_alias: str | None = None
    node_suffix: str | None = None  # appended to Relion 5 labels of this job's output nodes
    # job.star options Relion needs to accept the job at all (it refuses a CtfFind job naming no program)
    default_options: dict[str, str] = field(default_factory=dict)
    is_tomo: bool = False  # job.star `rlnJobIsTomo`; tomography jobs need the relion5 dialect

    def type_token(self, dialect: Dialect) -> str:
        """The process type as written in default_pipeline.star and job.star."""
        return str(self.relion3_type) if dialect == "relion3" else self.relion5_label


# Live aliases follow cryoem-services (MotionCorr/Live_motioncorr ...). Our picker is registered as
# Relion's LoG picker type so Relion opens the job; downstream jobs only read its coordinates.
JOB_KINDS: dict[str, JobKind] = {kind.name: kind for kind in (
    JobKind("import", "Import", 0, "relion.import.movies", "Live_import"),
    JobKind("motioncorr", "MotionCorr", 1, "relion.motioncorr.own", "Live_motioncorr", "motioncorr"),
    JobKind("ctffind", "CtfFind", 2, "relion.ctffind.ctffind4", "Live_ctffind", "ctf", {"use_ctffind4": "Yes"}),
    JobKind("autopick", "AutoPick", 4, "relion.autopick.log", "Live_autopick", "autopick", {"do_log": "Yes"}),
    JobKind("extract", "Extract", 5, "relion.extract", "Live_all_particles"),
    # Re-extraction of a 3D class for refinement (cryoem-services' ExtractClass): ccpem-pipeliner's label,
    # which Relion 5 reads as relion.extract; Relion 3.1 knows it as an Extract job with do_reextract.
    JobKind("reextract", "Extract", 5, "relion.extract.reextract",
            default_options={"do_reextract": "Yes", "do_recenter": "Yes"}),
    JobKind("select", "Select", 7, "relion.select.split", "Live_particle_batches"),
    JobKind("class_selection", "Select", 7, "relion.select.class2dauto"),
    JobKind("class2d", "Class2D", 8, "relion.class2d", node_suffix="class2d"),
    JobKind("initialmodel", "InitialModel", 18, "relion.initialmodel", node_suffix="initialmodel"),
    JobKind("class3d", "Class3D", 9, "relion.class3d", node_suffix="class3d"),
    JobKind("refine3d", "Refine3D", 10, "relion.refine3d", node_suffix="refine3d"),
    JobKind("maskcreate", "MaskCreate", 12, "relion.maskcreate"),
    JobKind("postprocess", "PostProcess", 15, "relion.postprocess", node_suffix="postprocess"),
    # IceBreaker (relative ice thickness): ccpem-pipeliner's labels as cryoem-services writes them; Relion 3.1
    # runs IceBreaker as an External job (PROC_EXTERNAL 99) with these options (IceBreaker's job templates).
    JobKind("icebreaker_micrographs", "IceBreaker", 99, "icebreaker.micrograph_analysis.micrographs",
            "Live_icebreaker_micrographs", "icebreaker.group",
            {"fn_exe": "ib_job", "param1_label": "mode", "param1_value": "group"}),
    JobKind("icebreaker_enhancecontrast", "IceBreaker", 99, "icebreaker.micrograph_analysis.enhancecontrast",
            "Live_icebreaker_enhancecontrast", "icebreaker.flatten",
            {"fn_exe": "ib_job", "param1_label": "mode", "param1_value": "flatten"}),
    JobKind("icebreaker_summary", "IceBreaker", 99, "icebreaker.micrograph_analysis.summary",
            "Live_icebreaker_summary", "icebreaker.summary", {"fn_exe": "ib_5fig"}),
    # Tomography (Relion 5; the integers are Relion 5's PROC_TOMO_* numbers, MotionCorr and CtfFind shared).
    JobKind("tomo_import", "Import", 50, "relion.importtomo", "Live_tomo_import", "tomo.import", is_tomo=True),
    JobKind("tomo_motioncorr", "MotionCorr", 1, "relion.motioncorr.tomo.own", "Live_tomo_motioncorr",
            "tomo.motioncorr", {"do_own_motioncor": "Yes"}, is_tomo=True),
    JobKind("tomo_ctffind", "CtfFind", 2, "relion.ctffind.tomo.ctffind4", "Live_tomo_ctffind", "tomo.ctffind",
            {"use_ctffind4": "Yes"}, is_tomo=True),
    JobKind("exclude_tilts", "ExcludeTiltImages", 57, "relion.excludetilts", "Live_exclude_tilts",
            "tomo.excludeimages", is_tomo=True),
    JobKind("aligntiltseries_aretomo", "AlignTiltSeries", 55, "relion.aligntiltseries.aretomo", "Live_aretomo",
            "tomo.aligntiltseries", {"do_aretomo2": "Yes", "do_imod_fiducials": "No", "do_imod_patchtrack": "No"},
            is_tomo=True),
    JobKind("aligntiltseries_imod_fiducial", "AlignTiltSeries", 55, "relion.aligntiltseries.imod_fiducial",
            "Live_imod_fiducial", "tomo.aligntiltseries",
            {"do_aretomo2": "No", "do_imod_fiducials": "Yes", "do_imod_patchtrack": "No"}, is_tomo=True),
    JobKind("aligntiltseries_imod_patchtrack", "AlignTiltSeries", 55, "relion.aligntiltseries.imod_patchtrack",
            "Live_imod_patchtrack", "tomo.aligntiltseries",
            {"do_aretomo2": "No", "do_imod_fiducials": "No", "do_imod_patchtrack": "Yes"}, is_tomo=True),
    # Our built-in aligner: no external program chosen; Relion reads it as relion.aligntiltseries.
    JobKind("aligntiltseries_builtin", "AlignTiltSeries", 55, "relion.aligntiltseries.cryoem_builtin",
            "Live_builtin_align",
            "tomo.aligntiltseries", {"do_aretomo2": "No", "do_imod_fiducials": "No", "do_imod_patchtrack": "No"},
            is_tomo=True),
    JobKind("tomograms", "Tomograms", 56, "relion.reconstructtomograms", "Live_tomograms", "tomo.reconstruct",
            is_tomo=True),
    # Relion 5's PROC_TOMO_DENOISE_TOMOGRAM (its own runs are cryoCARE; cryoem-services files Topaz here too).
    JobKind("denoise", "Denoise", 58, "relion.denoisetomo", "Live_denoise", "tomo.denoise", is_tomo=True),
    # Not a Relion process: ccpem-pipeliner's membrain-seg job type and cryoem-services' Segmentation folder,
    # an External job (99) to Relion.
    JobKind("segment", "Segmentation", 99, "membrain.segment", "Live_membrain", "membrain.segment",
            is_tomo=True),
)}


def job_kind(name: str) -> JobKind:
    """Look up a job kind by name, with an error listing the known ones."""
    try:
        return JOB_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown Relion job kind {name!r}; known: {sorted(JOB_KINDS)}") from None


class NodeType(IntEnum):
    """Node types; the value is Relion 3.1's NODE_* integer."""

    MOVIES = 0
    MICROGRAPHS = 1
    COORDINATES = 2
    PARTICLES = 3
    CLASS_AVERAGES = 5
    MAP = 6
    MASK = 7
    OPTIMISER = 9
    HALF_MAP = 10
    POSTPROCESS_MAP = 11
    LOGFILE = 13
    POSTPROCESS_STAR = 14
    TOMOGRAMS = 100  # a tilt-series / tomogram set STAR file: Relion 4/5 only, no Relion 3.1 integer

    def token(self, dialect: Dialect, file_name: str, suffix: str | None = None) -> str:
        """Relion 3.1's integer, or Relion 5's `<Kind>.<ext>.relion[.<suffix>]` label."""
        if dialect == "relion3":
            if self is NodeType.TOMOGRAMS:
                raise ValueError("Relion 3.1 has no tomography node types; write the project with dialect='relion5'")
            return str(int(self))
        extension = PurePosixPath(file_name).suffix.lstrip(".") or "star"
        parts = [_RELION5_NODE_KIND[self], extension, "relion"]
        parts += [_RELION5_FIXED_SUFFIX[self]] if self in _RELION5_FIXED_SUFFIX else []
        parts += [suffix] if suffix and self not in _RELION5_FIXED_SUFFIX else []
        return ".".join(parts)


_RELION5_NODE_KIND = {
    NodeType.MOVIES: "MicrographMovieGroupMetadata",
    NodeType.MICROGRAPHS: "MicrographGroupMetadata",
    NodeType.COORDINATES: "MicrographCoordsGroup",
    NodeType.PARTICLES: "ParticleGroupMetadata",
    NodeType.CLASS_AVERAGES: "Image2DGroupMetadata",
    NodeType.MAP: "DensityMap",
    NodeType.MASK: "Mask3D",
    NodeType.OPTIMISER: "OptimiserData",
    NodeType.HALF_MAP: "DensityMap",
    NodeType.POSTPROCESS_MAP: "DensityMap",
    NodeType.LOGFILE: "LogFile",
    NodeType.POSTPROCESS_STAR: "ProcessData",
    NodeType.TOMOGRAMS: "TomogramGroupMetadata",  # LABEL_TOMOGRAMS_CPIPE
}
# Relion 5 labels that do not depend on the job (e.g. LABEL_POST_POST, LABEL_REFINE3D_HALFMAP).
_RELION5_FIXED_SUFFIX = {
    NodeType.HALF_MAP: "halfmap.refine3d",
    NodeType.POSTPROCESS_MAP: "postprocess",
    NodeType.POSTPROCESS_STAR: "postprocess",
}


class JobStatus(Enum):
    """Process status; the value is (Relion 3.1 integer, Relion 5 label)."""

    RUNNING = (0, "Running")
    SCHEDULED = (1, "Scheduled")
    SUCCEEDED = (2, "Succeeded")
    FAILED = (3, "Failed")
    ABORTED = (4, "Aborted")

    def token(self, dialect: Dialect) -> str:
        return str(self.value[0]) if dialect == "relion3" else self.value[1]

    @classmethod
    def from_token(cls, token: str) -> "JobStatus":
        for status in cls:
            if token in (str(status.value[0]), status.value[1]):
                return status
        raise ValueError(f"unknown Relion process status {token!r}")
