"""What the benchmark scripts share: picli as a user runs it, measured child processes, the
machine record every results JSON carries, and the targets table.

- `picli_env`, `picli_command`, `PicliRunner`: each picli command is its own `python -m picli`
  process with this checkout on PYTHONPATH, offline and quiet, optionally with a fixed torch
  thread count (miniature_pi.py, real_loop.py and methods.py run every model operation so).
  `PicliRunner(replay=True)` continues an interrupted run in its own work directory
  (recovery.py --resume).
- `run_child`: one child process measured alone (wall seconds, its own peak RSS from
  `os.wait4`, so runs never mix): extend.py, verify.py and finetune.py.
- `wait_for_quiet`: wait for a low load average before a measured run (verify.py, finetune.py).
- `machine`: torch and transformers versions, the CPU and GPU: every script's JSON records it.
- `targets_table`, `targets_summary`: the PASS/FAIL table of the scripts that check targets.

Scripts import it as `from _common import ...` (benchmarks/ is the script's own folder, so it is
on sys.path when the script runs).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------
# picli as a user runs it


def picli_env(threads: int | None = None, **extra: str) -> dict:
    """The environment of a picli child: this checkout first on PYTHONPATH, offline, no progress
    bars or library chatter; `threads` fixes torch's intra-op threads (OMP/MKL read it at start)."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra)
    return env


def picli_command(*args: str) -> list[str]:
    return [PYTHON, "-m", "picli", *args]


def smollm2_source(env: dict) -> Path:
    """The embedded SmolLM2's checkpoint directory, imported into picli's cache once (not timed)."""
    home = Path(env.get("PICLI_HOME") or Path.home() / ".cache" / "picli")
    source = home / "models" / "smollm2-135m"
    if not (source / "config.json").is_file():
        print(f"Importing smollm2-135m into {source} (once, not timed)...", file=sys.stderr)
        subprocess.run(picli_command("inspect", "smollm2-135m", "--json"), env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return source


def work_directory(keep: str | None, prefix: str) -> Path:
    """The experiment's work directory: --keep DIR (new or empty, so no earlier run's files mix
    in), or a fresh temporary one."""
    workdir = Path(keep or tempfile.mkdtemp(prefix=prefix)).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"--keep {workdir} is not empty: choose a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


class PicliRunner:
    """picli's commands, each `python -m picli ... --json` in the work directory; every result is
    appended to commands.jsonl there, so an interrupted run still leaves what it measured.

    With `replay=True` the work directory is an interrupted run's, and its commands.jsonl is
    replayed: the n-th command of this run is answered by the n-th recorded one (which must be
    the same command, else the two runs differ and the script stops) without running picli again;
    once the record is used up, commands run for real and are appended after it. A script whose
    commands follow from their results (as recovery.py's do) then continues where it stopped.
    """

    def __init__(self, workdir: Path, threads: int, verbose: bool, timeout: float | None = None,
                 replay: bool = False):
        self.workdir, self.verbose, self.timeout, self.started = workdir, verbose, timeout, time.perf_counter()
        self.env = picli_env(threads)
        self.log = workdir / "commands.jsonl"
        self.pending: list[dict] = self._recorded() if replay else []
        self.replayed, self.replayed_seconds = 0, 0.0

    def _recorded(self) -> list[dict]:
        """The commands an interrupted run completed. A last line cut short by the interruption is
        dropped, and the log rewritten without it, so that new results append to whole lines."""
        if not self.log.is_file():
            return []
        entries = []
        for line in self.log.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
        self.log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
        return entries

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.0f}s] {text}", file=sys.stderr, flush=True)

    def run(self, *args: str, fresh: Path | None = None) -> tuple[dict, float]:
        """picli's JSON result and the command's wall seconds; a failure ends the script.

        `fresh`: the command's output directory inside the work directory. When the command
        really runs (is not replayed), a directory left there by an interrupted run of this same
        script is removed first: picli refuses to write over an existing output."""
        if self.pending:
            return self._replay(list(args))
        if (fresh is not None and fresh.exists() and fresh.resolve() != self.workdir.resolve()
                and fresh.resolve().is_relative_to(self.workdir.resolve())):
            shutil.rmtree(fresh)
        started = time.perf_counter()
        child = subprocess.Popen(picli_command(*args, "--json"), cwd=self.workdir, env=self.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = child.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"picli {' '.join(args)} ran past --timeout {self.timeout:g} s") from None
        finally:
            if child.poll() is None:  # interrupted or timed out: do not leave picli running
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

    def _replay(self, args: list[str]) -> tuple[dict, float]:
        entry = self.pending.pop(0)
        if entry["command"] != ["picli", *args]:
            raise SystemExit(f"cannot resume: command {self.replayed + 1} of the interrupted run was "
                             f"`{' '.join(entry['command'])}`, this run's is `picli {' '.join(args)}`; "
                             "its arguments or code differ: start a new work directory")
        self.replayed += 1
        self.replayed_seconds += entry["seconds"]
        if self.verbose:
            self.say(f"replayed: picli {' '.join(args)}  ({entry['seconds']:.0f} s when it ran)")
        return entry["result"], entry["seconds"]


# ---------------------------------------------------------------------------------------
# Measured child processes


@dataclass(frozen=True)
class ChildRun:
    wall_s: float
    peak_rss_mb: float  # the child's own ru_maxrss
    stdout: str


def run_child(command: list[str], env: dict, cwd: Path, while_running=None) -> ChildRun:
    """One child process, measured alone: wall seconds and its own peak RSS (`os.wait4`'s
    ru_maxrss, so no other run's memory mixes in). `while_running(pid)` is called every 0.2 s
    until it exits. Raises RuntimeError with the end of its stderr when it fails."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG if while_running else 0)
            if pid:
                break
            while_running(child.pid)
            time.sleep(0.2)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}:\n{err[-3000:]}")
    return ChildRun(wall, usage.ru_maxrss / 1024, out)  # ru_maxrss is KiB on Linux


def wait_for_quiet(max_load: float, max_wait: float) -> float:
    """Wait until the 1-minute load average is below max_load (or max_wait passes); return it."""
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    if load >= max_load:
        print(f"  load average {load:.2f} >= {max_load}: waiting up to {max_wait:.0f} s", file=sys.stderr, flush=True)
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(15)
        load = os.getloadavg()[0]
    return load


# ---------------------------------------------------------------------------------------
# The record of the machine


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                            capture_output=True, text=True)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []


def machine() -> dict:
    """What a results JSON needs to be read later: the library versions the measurement ran on
    and the hardware (read from the installed packages' metadata, so torch is not imported)."""
    return {"python": sys.version.split()[0], "torch": _version("torch"), "transformers": _version("transformers"),
            "picli": _version("picli"), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpus": os.cpu_count(), "gpus": _gpus()}


# ---------------------------------------------------------------------------------------
# Targets


def targets_table(checks: list[dict], show=lambda item: item["value"]) -> str:
    """| target | measured | wanted | result |; `show(item)` renders the measured value."""
    lines = ["| target | measured | wanted | result |", "|---|---:|---|---|"]
    for item in checks:
        lines.append(f"| {item['target']} | {show(item)} | {item['wanted']} | {'PASS' if item['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def targets_summary(checks: list[dict], separator: str = ", ") -> str:
    failed = [item["target"] for item in checks if not item["pass"]]
    return f"{len(checks) - len(failed)}/{len(checks)} targets met" + (
        f"; FAILED: {separator.join(failed)}" if failed else "")
