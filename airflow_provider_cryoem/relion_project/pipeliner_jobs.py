"""ccpem-pipeliner's view of the job types only this package writes, so that doppio shows them.

ccpem-pipeliner finds job types through the `ccpem_pipeliner.jobs` entry point group; this module is loaded
from there (pyproject.toml), never by the pipeline itself, so ccpem-pipeliner stays an optional package.
The built-in tilt-series aligner writes Relion 5's AlignTiltSeries job (aligned_tilt_series.star), labelled
`relion.aligntiltseries.cryoem_builtin`: Relion reads it as its own tilt-series alignment, the pipeliner
through the job type below.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeliner.job_options import EXT_STARFILE, FileDescription, InputNodeJobOption
from pipeliner.jobs.relion.relion_job import RelionJob
from pipeliner.nodes import NODE_TILTSERIESGROUPMETADATA
from pipeliner.pipeliner_job import PipelinerCommand
from pipeliner.results_display_objects import ResultsDisplayObject
from pipeliner.starfile_handler import StarFile
from pipeliner.display_tools import create_results_display_object

OUTPUT_FILE = "aligned_tilt_series.star"


class BuiltinTiltSeriesAlignmentJob(RelionJob):
    """Fiducial-less tilt-series alignment by the provider's own engine, run inside the Airflow pipeline."""

    PROCESS_NAME = "relion.aligntiltseries.cryoem_builtin"
    OUT_DIR = "AlignTiltSeries"
    CATEGORY_LABEL = "Tilt Series Alignment"

    def __init__(self) -> None:
        super().__init__()
        self.jobinfo.display_name = "cryoem built-in aligner"
        self.jobinfo.short_desc = "Fiducial-less tilt-series alignment (airflow-provider-cryoem)"
        self.jobinfo.long_desc = (
            "Tilt axis, per-tilt shifts and refined tilt angles found by airflow-provider-cryoem's built-in "
            "cross-correlation aligner while the session ran. Rerun it through the tomo_reprocess DAG.")
        self.joboptions["in_tiltseries"] = InputNodeJobOption(
            label="Input tilt series:", node_type=NODE_TILTSERIESGROUPMETADATA, default_value="",
            pattern=FileDescription("Tilt series STAR file", EXT_STARFILE),
            help_text="Global tilt-series STAR file of the selected tilts.", is_required=True)

    def create_output_nodes(self) -> None:
        self.add_output_node(OUTPUT_FILE, NODE_TILTSERIESGROUPMETADATA, ["relion", "aligntiltseries"])

    def get_commands(self) -> list[PipelinerCommand]:
        raise NotImplementedError("the built-in aligner runs inside the airflow-provider-cryoem pipeline "
                                  "(tomo_live / tomo_reprocess DAGs), not from the pipeliner")

    def create_results_display(self) -> Sequence[ResultsDisplayObject]:
        """Per series: the image shifts found for each tilt against its refined tilt angle."""
        global_file = str(Path(self.output_dir) / OUTPUT_FILE)
        displays: list[ResultsDisplayObject] = []
        for name, series_file in StarFile(global_file).loop_as_list(
                block="global", columns=["_rlnTomoName", "_rlnTomoTiltSeriesStarFile"]):
            rows = StarFile(series_file).loop_as_list(
                block=name, columns=["_rlnTomoYTilt", "_rlnTomoXShiftAngst", "_rlnTomoYShiftAngst"])
            angles_deg = [float(row[0]) for row in rows]
            displays.append(create_results_display_object(
                "graph", title=f"{name}: tilt image shifts", associated_data=[series_file],
                xvalues=[angles_deg, angles_deg],
                yvalues=[[float(row[1]) for row in rows], [float(row[2]) for row in rows]],
                data_series_labels=["X shift (Å)", "Y shift (Å)"], xaxis_label="Tilt angle (°)",
                yaxis_label="Shift (Å)", modes=["lines+markers", "lines+markers"]))
        if not displays:
            displays.append(create_results_display_object(
                "text", title="No aligned tilt series yet", display_data=f"{global_file} lists no tilt series.",
                associated_data=[global_file]))
        return displays
