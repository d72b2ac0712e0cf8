"""Run a program as a local subprocess, streaming its output into the Python log and a log file."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .errors import ToolExecutionError, ToolNotFoundError, ToolTimeoutError
from .spec import CommandResult, CommandSpec

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
_KILL_GRACE_S = 5.0
# Relion redraws a text progress bar (`  3/  7 sec ....~~(,_,">`) many times a second; each redraw
# reaches us as a line. They go to the log file only: in the task log and an error's tail they would
# bury the lines that matter.
_PROGRESS_BAR_MARK = '~~(,_,">'


# What a program run here inherits from the worker: what shells, Relion, MPI, CUDA, thread pools and
# environment modules need, and nothing of Airflow's (AIRFLOW_CONN_*, the metadata database URL, Fernet key).
_INHERITED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "HOSTNAME", "TERM", "TZ", "LANG", "LANGUAGE",
    "TMPDIR", "TMP", "TEMP", "LD_LIBRARY_PATH", "LIBRARY_PATH", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "MODULEPATH", "MODULESHOME", "LOADEDMODULES", "VIRTUAL_ENV",
    "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
})
_INHERITED_PREFIXES = (
    "LC_", "XDG_",
    "OMP_", "MKL_", "OPENBLAS_", "KMP_", "NUMEXPR_",  # thread pools
    "CUDA_", "NVIDIA_",  # CUDA_VISIBLE_DEVICES and the toolkit's location
    "OMPI_", "OPAL_", "PMIX_", "PRTE_", "PMI_", "I_MPI_", "HYDRA_", "MV2_", "UCX_", "FI_", "SLURM_",  # MPI, srun
    "RELION_", "IMOD_", "CONDA_", "LMOD_", "CRYOEM_",
)
# Dropped even where a name or prefix above (or a site's own list) allows it, like every AIRFLOW* name:
# names containing a secret word, or with a secret-looking part between underscores (CRYOEM_RESULTS_URL
# can hold a database password).
_SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL", "PRIVATE")
_SECRET_PARTS = frozenset({"KEY", "CONN", "AUTH", "COOKIE", "URL", "URI", "DSN"})
EXTRA_ALLOWED_ENV = "CRYOEM_TOOL_ENV_ALLOW"


def _allowed(name: str, extra: tuple[str, ...]) -> bool:
    """Whether the worker's variable `name` may reach a program; `extra` adds site names or `PREFIX*`."""
    upper = name.upper()
    if upper.startswith("AIRFLOW") or any(word in upper for word in _SECRET_WORDS) \
            or not _SECRET_PARTS.isdisjoint(upper.split("_")):
        return False
    if name in _INHERITED_NAMES or name.startswith(_INHERITED_PREFIXES):
        return True
    return any(name.startswith(item[:-1]) if item.endswith("*") else name == item for item in extra)


def child_environment(spec: CommandSpec) -> dict[str, str]:
    """The worker's environment cut down to the allow-list above, plus `spec.env` (which is passed as given).

    Sites add what their programs need (a licence server, say) with CRYOEM_TOOL_ENV_ALLOW, comma-separated
    names or `PREFIX*` patterns; names that look secret are still dropped, so those belong in `spec.env`.
    """
    extra = tuple(item.strip() for item in os.environ.get(EXTRA_ALLOWED_ENV, "").split(",") if item.strip())
    inherited = {name: value for name, value in os.environ.items() if _allowed(name, extra)}
    return {**inherited, **spec.env}


def _resolve_program(spec: CommandSpec, env: dict[str, str]) -> str:
    search_path = env.get("PATH", os.defpath)
    found = shutil.which(spec.program, path=search_path)
    if found is None:
        raise ToolNotFoundError(spec.program, search_path)
    return found


def _pump(stream: IO[str], spec: CommandSpec, log_file: IO[str] | None, lines: list[str],
          log_callback: Callable[[str], None] | None) -> None:
    """Copy each output line to the log file, and all but progress-bar redraws to the logger, the
    callback and the kept output, as soon as it arrives."""
    name = Path(spec.program).name
    for raw in stream:
        if log_file is not None:
            try:
                log_file.write(raw)
                log_file.flush()
            except OSError as exc:  # a full disk: keep draining the pipe, or the program blocks writing to it
                log.warning("%s: the program's log cannot be written any more (%s); its output goes on in the "
                            "task log", spec.log_path, os.strerror(exc.errno) if exc.errno else exc)
                log_file = None
        line = raw.rstrip("\n")
        if _PROGRESS_BAR_MARK in line:
            continue
        lines.append(line)
        log.info("[%s] %s", name, line)
        if log_callback is not None:
            log_callback(line)


def _stop(process: subprocess.Popen[str]) -> None:
    """Terminate the program's whole process group (MPI and wrapper scripts spawn children)."""
    for sig, grace_s in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_local(spec: CommandSpec, log_callback: Callable[[str], None] | None = None) -> CommandResult:
    """Run `spec` here; raise ToolNotFoundError, ToolTimeoutError or ToolExecutionError on failure."""
    env = child_environment(spec)
    executable = _resolve_program(spec, env)
    if spec.cwd is not None and not Path(spec.cwd).is_dir():
        raise ToolExecutionError(spec.program, f"working directory {spec.cwd} does not exist")
    if spec.threads > 1:
        env.setdefault("OMP_NUM_THREADS", str(spec.threads))
    log.info("running: %s", spec.display())

    lines: list[str] = []
    log_file = None
    if spec.log_path:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(spec.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in finally
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [executable, *spec.args], cwd=spec.cwd, env=env, text=True, errors="replace", bufsize=1,
            stdin=subprocess.PIPE if spec.stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(target=_pump, args=(process.stdout, spec, log_file, lines, log_callback),
                                  daemon=True)
        reader.start()
        if spec.stdin_text is not None:
            assert process.stdin is not None
            try:
                process.stdin.write(spec.stdin_text)
                process.stdin.close()
            except BrokenPipeError:  # the program exited before reading its answers
                pass
        try:
            returncode = process.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            reader.join(timeout=_KILL_GRACE_S)
            raise ToolTimeoutError(spec.program, f"stopped after exceeding its time limit of {spec.timeout_s:g} s",
                                   _tail(lines), spec.log_path) from None
        except BaseException:  # the task was killed: do not leave the program running
            _stop(process)
            raise
        reader.join()
    finally:
        if log_file is not None:
            with contextlib.suppress(OSError):  # a log the disk refused is cut short; _pump said so
                log_file.close()
    duration_s = time.monotonic() - started
    if returncode != 0:
        problem = (f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}")
        raise ToolExecutionError(spec.program, f"{problem} after {duration_s:.1f} s", _tail(lines), spec.log_path)
    return CommandResult(program=spec.program, args=spec.args, returncode=returncode, duration_s=duration_s,
                         output="\n".join(lines) + ("\n" if lines else ""), log_path=spec.log_path)


def _tail(lines: list[str]) -> list[str]:
    return lines[-LOG_TAIL_LINES:]


def run_output(spec: CommandSpec) -> str:
    """Run `spec` here and return its output: the default `Execute` of the downstream stages."""
    return run_local(spec).output
