"""picli as a user runs it, for the benchmark scripts (miniature_pi.py, real_loop.py,
recovery.py, ruler.py), and the machine and versions every result records.

Each command is its own `python -m picli ... --json` process in the experiment's work
directory, with one torch thread count for every process, offline, and this checkout's picli
on PYTHONPATH; every result is appended to commands.jsonl there, so an interrupted run still
leaves what it measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def work_directory(keep: str | None, prefix: str) -> Path:
    """The experiment's work directory: --keep DIR (new or empty, so no earlier run's files mix
    in), or a fresh temporary one."""
    workdir = Path(keep or tempfile.mkdtemp(prefix=prefix)).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"--keep {workdir} is not empty: choose a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


class PicliRunner:
    def __init__(self, workdir: Path, threads: int, verbose: bool):
        self.workdir, self.verbose, self.started = workdir, verbose, time.perf_counter()
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        self.log = workdir / "commands.jsonl"

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.0f}s] {text}", file=sys.stderr, flush=True)

    def run(self, *args: str) -> tuple[dict, float]:
        """picli's JSON result and the command's wall seconds; a failure ends the script."""
        command = [sys.executable, "-m", "picli", *args, "--json"]
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = child.communicate()
        finally:
            if child.poll() is None:  # this script was interrupted: do not leave picli running
                child.terminate()
                child.wait()
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            sys.stderr.write(stderr[-4000:])
            raise SystemExit(f"picli failed (exit {child.returncode}): picli {' '.join(args)}")
        result = json.loads(stdout)
        with open(self.log, "a") as handle:
            handle.write(json.dumps({"command": ["picli", *args], "seconds": seconds, "result": result}) + "\n")
        if self.verbose:
            self.say(f"picli {' '.join(args)}  ({seconds:.0f} s)")
        return result, seconds


def environment() -> dict:
    """Versions and machine: timings and per-step numbers reproduce on one machine and library version only."""
    import torch
    import transformers

    import picli

    found = {"picli": picli.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
             "system": f"{platform.system()} {platform.release()}"}
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
