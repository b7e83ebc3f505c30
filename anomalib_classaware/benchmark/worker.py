"""Where runs execute: in a worker process each (isolated) or in this process.

Isolated runs are started from a ``forkserver`` that has imported torch and anomalib once, so
each run starts in well under a second, gets its own peak-memory figure (``ru_maxrss``), and a
crash, an out-of-memory kill or a timeout fails that run only. Each run's stdout/stderr go to
its log file. This module itself stays light: the parent process never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_RUNNER = "anomalib_classaware.benchmark.runner"
_PRELOAD = "anomalib_classaware.benchmark._preload"  # the runner, imported with deprecation warnings silenced


@contextlib.contextmanager
def redirect_output(path: str | Path | None) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``path`` (appending)."""
    if path is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])


def run_task(task: str, payload: Mapping[str, Any], result_path: str, log_path: str | None) -> None:
    """Execute ``task`` (``"describe"`` or ``"run"``) and write its result (or its error) as JSON to ``result_path``."""
    with redirect_output(log_path):
        try:
            import importlib

            runner = importlib.import_module(_RUNNER)
            if task == "describe":
                result = runner.describe_data(payload["class_path"], payload["init_args"])
            elif task == "run":
                result = runner.execute_run(payload)
            else:
                msg = f"Unknown task {task!r}."
                raise ValueError(msg)
            result = {"status": "ok", **result}
        except Exception as error:  # every failure is recorded; none stops the benchmark
            traceback.print_exc()
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    temporary = Path(result_path).with_suffix(".tmp")
    temporary.write_text(json.dumps(result, default=str))
    temporary.replace(result_path)


def _log_tail(log_path: str | None, lines: int = 5) -> str:
    if log_path is None or not Path(log_path).is_file():
        return ""
    return " | ".join(Path(log_path).read_text(errors="replace").strip().splitlines()[-lines:])


class Executor:
    """Runs benchmark tasks in isolated worker processes or in this process.

    Args:
        isolate: One worker process per task (forkserver where available, else spawn).
        timeout: Seconds after which an isolated task is killed and recorded as failed.

    """

    def __init__(self, isolate: bool = True, timeout: float | None = None) -> None:
        self.isolate = isolate
        self.timeout = timeout
        self._context: Any = None
        if isolate:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._context = multiprocessing.get_context(method)
            if method == "forkserver":
                self._context.set_forkserver_preload([_PRELOAD])

    def call(self, task: str, payload: Mapping[str, Any], log_path: str | Path | None = None) -> dict[str, Any]:
        """Run one task and return its result; failures come back as ``{"status": "failed", "error": ...}``.

        The result has ``wall_time_s``, the task's wall time seen from this process.
        """
        log = str(log_path) if log_path is not None else None
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="anomalib_classaware_bench_") as folder:
            result_path = str(Path(folder) / "result.json")
            if not self.isolate:
                run_task(task, payload, result_path, log)
            else:
                process = self._context.Process(target=run_task, args=(task, dict(payload), result_path, log))
                process.start()
                process.join(self.timeout)
                if process.is_alive():
                    process.kill()
                    process.join()
                    result = {"status": "failed", "error": f"TimeoutError: stopped after {self.timeout:g} s"}
                    return {**result, "wall_time_s": time.perf_counter() - start}
                if not Path(result_path).is_file():
                    code = process.exitcode
                    reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    tail = _log_tail(log)
                    error = f"WorkerDied: the run's process ended without a result ({reason})"
                    result = {"status": "failed", "error": f"{error}; log: {tail}" if tail else error}
                    return {**result, "wall_time_s": time.perf_counter() - start}
            result = json.loads(Path(result_path).read_text())
        result["wall_time_s"] = time.perf_counter() - start
        return result
