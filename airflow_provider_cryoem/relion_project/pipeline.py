"""default_pipeline.star: the project's job graph (processes, nodes, edges) in either Relion dialect.

Tokens read from an existing pipeline are kept verbatim, so jobs we did not create survive a
rewrite unchanged. A pipeline in the other dialect is refused rather than silently converted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..io import ImageFileError
from ..io._atomic import write_text_atomic
from .job_types import STAR_VERSION, Dialect, JobStatus
from .star_text import loop_block, pair_block, parse_star

PIPELINE_FILE = "default_pipeline.star"
NO_ALIAS = "None"
# Relion 5 writes a label depth of 1 for every node.
DEFAULT_NODE_DEPTH = "1"


@dataclass
class Process:
    name: str  # "MotionCorr/job002/"
    alias: str  # "MotionCorr/Live_motioncorr/" or "None"
    type_token: str
    status: JobStatus


@dataclass
class Node:
    name: str  # project-relative file path
    type_token: str
    depth: str = DEFAULT_NODE_DEPTH


@dataclass
class Pipeline:
    """The parsed pipeline; edges are (node, process) for inputs and (process, node) for outputs."""

    dialect: Dialect
    job_counter: int = 1
    processes: list[Process] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    input_edges: list[tuple[str, str]] = field(default_factory=list)
    output_edges: list[tuple[str, str]] = field(default_factory=list)

    def process(self, name: str) -> Process | None:
        return next((p for p in self.processes if p.name == name), None)

    def add_process(self, process: Process) -> None:
        if self.process(process.name) is None:
            self.processes.append(process)

    def add_node(self, name: str, type_token: str) -> None:
        if all(node.name != name for node in self.nodes):
            self.nodes.append(Node(name, type_token))

    def add_input_edge(self, node: str, process: str) -> None:
        if (node, process) not in self.input_edges:
            self.input_edges.append((node, process))

    def add_output_edge(self, process: str, node: str) -> None:
        if (process, node) not in self.output_edges:
            self.output_edges.append((process, node))

    def set_alias(self, process_name: str, alias: str) -> None:
        """Give `alias` to one process, taking it from any other (Relion aliases are unique)."""
        for process in self.processes:
            if process.alias == alias:
                process.alias = NO_ALIAS
        target = self.process(process_name)
        if target is not None:
            target.alias = alias

    def to_text(self) -> str:
        """The file as Relion writes it: general and processes always, empty tables left out."""
        version = STAR_VERSION[self.dialect]
        relion3 = self.dialect == "relion3"
        process_columns = ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias",
                           "rlnPipeLineProcessType" if relion3 else "rlnPipeLineProcessTypeLabel",
                           "rlnPipeLineProcessStatus" if relion3 else "rlnPipeLineProcessStatusLabel"]
        node_columns = ["rlnPipeLineNodeName"] + (["rlnPipeLineNodeType"] if relion3 else
                                                  ["rlnPipeLineNodeTypeLabel", "rlnPipeLineNodeTypeLabelDepth"])
        text = pair_block("pipeline_general", {"rlnPipeLineJobCounter": self.job_counter}, version)
        text += loop_block("pipeline_processes", process_columns,
                           [[p.name, p.alias, p.type_token, p.status.token(self.dialect)] for p in self.processes],
                           version)
        if self.nodes:
            text += loop_block("pipeline_nodes", node_columns,
                               [[n.name, n.type_token] + ([] if relion3 else [n.depth]) for n in self.nodes],
                               version)
        if self.input_edges:
            text += loop_block("pipeline_input_edges", ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"],
                               self.input_edges, version)
        if self.output_edges:
            text += loop_block("pipeline_output_edges", ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"],
                               self.output_edges, version)
        return text

    def write(self, project_dir: Path) -> None:
        """Replace default_pipeline.star atomically (readers never see a half-written file)."""
        write_text_atomic(project_dir / PIPELINE_FILE, self.to_text())


def read_pipeline(project_dir: Path, dialect: Dialect) -> Pipeline:
    """Read default_pipeline.star (an empty Pipeline if there is none yet)."""
    path = project_dir / PIPELINE_FILE
    if not path.exists():
        return Pipeline(dialect)
    try:
        blocks = parse_star(path.read_text())
        general = blocks["pipeline_general"]
        pipeline = Pipeline(dialect, job_counter=int(general.pairs["rlnPipeLineJobCounter"]))
        processes = blocks.get("pipeline_processes")
        if processes is not None and processes.columns:
            found: Dialect = "relion5" if "rlnPipeLineProcessTypeLabel" in processes.columns else "relion3"
            if found != dialect:
                raise ImageFileError(path, f"is a {found} pipeline; open the project with dialect={found!r}")
            pipeline.processes = [Process(row[0], row[1], row[2], JobStatus.from_token(row[3]))
                                  for row in processes.rows]
        if "pipeline_nodes" in blocks:
            pipeline.nodes = [Node(*row[:3]) for row in blocks["pipeline_nodes"].rows]
        if "pipeline_input_edges" in blocks:
            pipeline.input_edges = [(row[0], row[1]) for row in blocks["pipeline_input_edges"].rows]
        if "pipeline_output_edges" in blocks:
            pipeline.output_edges = [(row[0], row[1]) for row in blocks["pipeline_output_edges"].rows]
    except ImageFileError:
        raise
    except (KeyError, ValueError, IndexError) as exc:
        raise ImageFileError(path, f"not a readable Relion pipeline ({exc})") from None
    return pipeline
