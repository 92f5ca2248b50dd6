"""Everything picli prints. The only module that imports rich.

Results go to stdout (tables, or JSON with --json); messages, warnings, progress and
errors go to stderr, so `picli inspect m --json | jq` always gets clean JSON.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import rope
from .errors import PicliError


def out() -> Console:
    # Built per call so tests (CliRunner swaps sys.stdout) and pipes get the right stream.
    # emoji=False: a `:name:` in a file's string stays text.
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, emoji=False)


def err() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True, emoji=False)


# What a string from a file (config.json, GGUF metadata, README, a server) may not send to a
# terminal: C0 controls (ESC starts ANSI sequences; CR and LF forge lines), DEL, C1 controls,
# and the bidirectional overrides and isolates that reorder what is shown (Trojan Source).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: Any, keep_newlines: bool = False) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\n`, `\\u202e`).

    The one escaping function: applied to everything picli prints that came from outside
    (emit's data, messages, warnings, errors). Rich markup is escaped separately, where a
    string meets a markup template (rich's `escape`). keep_newlines: a document (the model
    card) keeps its lines and tabs; everything else stays on the line it was printed on.
    """
    def shown(match: re.Match) -> str:
        char = match.group()
        if keep_newlines and char in "\n\t":
            return char
        return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")

    return _UNPRINTABLE.sub(shown, str(text))


# Result fields that are documents, printed as they are written (their lines kept).
_DOCUMENTS = {"card"}


def _printable_data(value: Any, key: str | None = None) -> Any:
    if isinstance(value, str):
        return printable(value, keep_newlines=key in _DOCUMENTS)
    if isinstance(value, dict):
        return {printable(name) if isinstance(name, str) else name: _printable_data(item, name)
                for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_data(item) for item in value]
    return value


def print_json(data: Any) -> None:
    # json escapes every control character (and ensure_ascii every non-ASCII one): exact and safe.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def emit(data: dict, *, json_output: bool, human: Callable[[dict], None], dry_run: bool = False,
         plan: Callable[[dict], None] | None = None) -> None:
    """How every command shows its result, the one place that chooses: `data` as JSON on stdout
    with --json (the same dict the renderers read, so the two never disagree); otherwise the
    plan (`plan`) when the command only planned (--dry-run, --plan); otherwise `human`, both
    given the data with control characters escaped (`printable`)."""
    if json_output:
        print_json(data)
    elif dry_run and plan is not None:
        plan(_printable_data(data))
    else:
        human(_printable_data(data))


def message(text: str) -> None:
    err().print(escape(printable(text)))


def warning(text: str) -> None:
    err().print(f"[yellow]Warning:[/] {escape(printable(text))}")


def error(exc: PicliError) -> None:
    """`Error:` and `Hint:`, one line each, whatever text (a server's, a file's) they carry."""
    console = err()
    console.print(f"[red]Error:[/] {escape(printable(one_line(exc.message)))}", soft_wrap=True)
    if exc.hint:
        console.print(f"[dim]Hint:[/] {escape(printable(one_line(exc.hint)))}", soft_wrap=True)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def human_bytes(size: float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(size)


def human_count(count: int | None) -> str:
    if count is None:
        return "unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit} ({count:,})"
    return f"{count:,}"


@contextlib.contextmanager
def progress(bars: bool = True) -> Iterator[Any]:
    """An `on_event` callback that prints messages and draws progress bars on stderr.

    bars=False (--json) keeps the messages and drops the bars. A bar starts on the first
    progress event, so commands that never report progress print nothing extra.
    """
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                   TimeRemainingColumn(), console=err(), transient=True)
    tasks: dict[str, Any] = {}
    started: dict[str, float] = {}
    logged: dict[str, _ProgressLog] = {}

    def on_event(event: dict) -> None:
        if event.get("kind") == "message":
            bar.console.print(escape(printable(event["text"])), style="dim")
            return
        if event.get("kind") == "warning":
            bar.console.print(f"[yellow]Warning:[/] {escape(printable(event['text']))}")
            return
        if event.get("kind") == "settings":
            training_settings(_printable_data(event))
            return
        if event.get("kind") == "step":
            if not bars or not bar.console.is_terminal:
                # No live bar (a log file, a batch job, --json): one line per step instead.
                step_line(event)
                return
            event = {"kind": "progress", "task": "training", "done": event["step"], "total": event["total_steps"],
                     "unit": "steps", "extra": f"loss {event['loss']:.4f}  {event['tokens_per_second']:,.0f} tok/s  "
                     f"mem {human_bytes(event['memory_bytes'])}"}
        if event.get("kind") != "progress":
            return
        name = event.get("task", "writing")
        if not bars or not bar.console.is_terminal:
            # No live bar: measurements (trials, tokens) that run for minutes log a line now and
            # then instead, as training logs its steps; a file copy's bytes stay quiet.
            if event.get("unit", "bytes") != "bytes":
                logged.setdefault(name, _ProgressLog(name)).update(event)
            return
        if not tasks:
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(name.capitalize(), total=event.get("total"), detail="")
            started[name] = time.perf_counter()
        done, total, unit = event.get("done", 0), event.get("total"), event.get("unit", "bytes")
        rate = done / max(time.perf_counter() - started[name], 1e-9)
        if unit == "bytes":
            detail = f"{human_bytes(done)} / {human_bytes(total)}  {human_bytes(rate)}/s"
        else:
            detail = f"{done:,} / {total:,} {unit}  {rate:,.1f} {unit}/s"
        if event.get("extra"):
            detail += "  " + event["extra"]
        bar.update(tasks[name], completed=done, total=total, detail=detail)

    try:
        yield on_event
    finally:
        if tasks:
            bar.stop()


PROGRESS_LOG_SECONDS = 30.0  # the most a log stays silent while a task runs (no live bar)


class _ProgressLog:
    """One task's log lines where no bar can be drawn: its first event, then at most one line
    per PROGRESS_LOG_SECONDS, and its last (done == total)."""

    def __init__(self, name: str):
        self.name, self.started, self.last = name, time.perf_counter(), None

    def update(self, event: dict) -> None:
        now = time.perf_counter()
        done, total, unit = event.get("done", 0), event.get("total"), event["unit"]
        finished = total is not None and done >= total
        if self.last is not None and not finished and now - self.last < PROGRESS_LOG_SECONDS:
            return
        self.last = now
        elapsed = now - self.started
        line = f"{self.name}: {done:,}" + (f" / {total:,}" if total is not None else "") + f" {unit}"
        line += f"  {_clock(elapsed)} elapsed"
        if total and 0 < done < total and elapsed > 0:
            line += f"  eta {_clock(elapsed * (total - done) / done)}"
        print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_line(event: dict) -> None:
    """One training step as a log line, for when no progress bar can be drawn."""
    step, total = event["step"], event["total_steps"]
    eta = ""
    if event.get("seconds"):
        remaining = int(event["seconds"] * (total - step))
        eta = f"  eta {remaining // 3600}:{remaining // 60 % 60:02d}:{remaining % 60:02d}"
    extra = f"  eval loss {event['eval_loss']:.4f}" if event.get("eval_loss") is not None else ""
    if event.get("passkey_k_max") is not None:
        extra += f"  passkey k_max {event['passkey_k_max']} (deepest tested {event['passkey_target']})"
    print(f"step {step}/{total}  loss {event['loss']:.4f}  lr {event['lr']:.2e}  "
          f"{event['tokens_per_second']:,.0f} tok/s  mem {human_bytes(event['memory_bytes'])}{extra}{eta}",
          file=sys.stderr, flush=True)


def _kv(table: Table, key: str, value: Any) -> None:
    table.add_row(key, escape(str(value)))


def _section(title: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None, pad_edge=False)
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    return table


def _rope_table(report: dict, rope: dict):
    """inspect's RoPE section: window, theta, rotary dims, scaling, the layers RoPE runs in, both
    schemas' dicts, the keys transformers fills in, the tokenizer's limit."""
    table = _section("RoPE")
    if rope.get("language_model"):
        _kv(table, "language model", f"{rope['language_model']}  (the vision tower has no RoPE window; untouched)")
    scaling = "none" if rope["type"] == "default" else f"{rope['type']}, factor {rope['factor']:g}"
    _kv(table, "window", f"{rope['window']} tokens" + ("  (family default: not in config)"
                                                       if rope.get("window_from_default") else "")
        + (f"  (effective window {rope['effective_window']}: picli.json or the scaling says so)"
           if rope.get("effective_window") not in (None, rope["window"]) else ""))
    _kv(table, "theta", f"{rope['theta']:g}" + (f"  (sliding layers {rope['local_theta']:g})"
                                                if rope.get("local_theta") else ""))
    _kv(table, "head_dim / rotary", f"{rope['head_dim']} / {rope['rotary_dim']}"
        + (f"  (partial rotary {rope['partial_rotary_factor']:g})" if rope["partial_rotary_factor"] != 1 else ""))
    _kv(table, "scaling", scaling + ("  (full-attention layers only)" if rope.get("nested") else ""))
    if rope.get("rope_layers"):
        layers = rope["rope_layers"]
        _kv(table, "RoPE layers", f"{layers['rope']} of {layers['layers']} ({layers['source']}); the "
            f"{layers['layers'] - layers['rope']} without RoPE are unaffected by the extension")
    if report["format"] == "transformers":
        _kv(table, "rope_scaling", json.dumps(rope.get("rope_scaling")))
        _kv(table, "rope_parameters", json.dumps(rope.get("rope_parameters")))
    if rope.get("defaults"):
        # Grouped by source: the file left these out and transformers fills them in.
        by_source: dict[str, list[str]] = {}
        for key, filled in rope["defaults"].items():
            by_source.setdefault(filled["source"], []).append(f"{key} {filled['value']:g}"
                                                              if isinstance(filled["value"], float)
                                                              else f"{key} {filled['value']}")
        _kv(table, "class defaults", "; ".join(f"{', '.join(keys)} ({source})" for source, keys in by_source.items())
            + "  (not in config.json)")
    _kv(table, "tokenizer max", report.get("tokenizer_max_length") or "not set")
    return table


def inspection(report: dict, check: bool = False) -> None:
    """`picli inspect`'s tables; with check (--check), the verdict line on stderr after them."""
    console = out()
    rope = report["rope"]
    summary = _section(escape(f"{report['model']}  ({report['format']})"))
    _kv(summary, "path", report["path"])
    if report.get("resolved_from"):
        _kv(summary, "resolved", report["resolved_from"])
    _kv(summary, "architecture", f"{report['architecture']}  (model_type {report['model_type']})")
    _kv(summary, "parameters", human_count(report["parameters"]))
    _kv(summary, "dtype", ", ".join(f"{dtype} x{count}" for dtype, count in report["dtypes"].items()) or "-")
    if report["format"] == "transformers":
        files = (f"{len(report['files'])} weight file(s), {report['shards']} safetensors shard(s), "
                 f"{human_bytes(report['size_bytes'])}")
    elif report["shards"] > 1:  # a split GGUF: what was found of it
        files = f"{len(report['files'])} of {report['shards']} GGUF shards, {human_bytes(report['size_bytes'])}"
    else:
        files = human_bytes(report["size_bytes"])
    _kv(summary, "files", files)
    console.print(summary)

    if rope:
        console.print(_rope_table(report, rope))

    verdict = _section("Position Interpolation")
    _kv(verdict, "can extend", "yes" if report["can_extend"] else f"no: {report['cannot_extend_reason']}")
    if report["kv_cache_bytes"]:
        _kv(verdict, "KV cache / seq", "   ".join(f"{int(window) // 1024}k: {human_bytes(size)}"
                                                 for window, size in report["kv_cache_bytes"].items()) + "  (fp16)")
    if report.get("kv_layers"):
        _kv(verdict, "KV layers", kv_layers_line(report["kv_layers"]))
    console.print(verdict)

    if report["runtimes"]:
        table = Table(title="What each runtime will do", title_justify="left", title_style="bold")
        table.add_column("runtime", style="cyan")
        table.add_column("reads")
        table.add_column("notes")
        for name, view in report["runtimes"].items():
            table.add_row(*_runtime_row(name, view))
        console.print(table)

    if report.get("provenance"):
        record = report["provenance"]
        rope_record = record["rope"]
        origin = f", from {escape(record['base_model'])}" if record.get("base_model") else ""
        console.print(f"[bold]picli.json[/]: PI x{rope_record['factor']:g}, {rope_record['original_window']} -> "
                      f"{rope_record['target_window']} tokens{origin}")
    for text in report["warnings"]:
        warning(text)
    if check:
        check_summary(report)


def kv_layers_line(layers: dict) -> str:
    """'10 global, 52 sliding (window 1024)': which layers the KV cache grows in, and where that was read."""
    parts = [f"{layers['global']} global"]
    if layers["sliding"]:
        parts.append(f"{layers['sliding']} sliding (window {layers['sliding_window']})")
    if layers["chunked"]:
        parts.append(f"{layers['chunked']} chunked (chunk {layers['chunk']})")
    if layers["none"]:
        parts.append(f"{layers['none']} without KV cache (linear attention, SSM or MLP)")
    return ", ".join(parts) + f"  ({layers['source']})"


def _runtime_row(name: str, view: dict) -> tuple[str, str, str]:
    """One runtime: what it reads, then its notes; a disagreement with transformers 5 is marked
    on the line where it applies ("differs: ...")."""
    differs = [f"[bold red]differs:[/] {escape(text)}" for text in view.get("differs") or []]
    if name.startswith("transformers"):
        label = {"transformers5": "transformers 5.x", "transformers4": "transformers 4.x"}[name]
        reads = escape(f"theta {view['theta']:g}, " + ("no scaling" if view["rope_type"] == "default"
                                                        else f"{view['rope_type']} x{view['factor']:g}"))
        notes = list(view.get("notes") or [])
        if view.get("min_version") and view["rope_type"] != "default":
            notes.insert(0, f"needs >= {view['min_version']} for this family")
        return label, reads, "\n".join([escape("; ".join(notes))] * bool(notes) + differs)
    if name == "vllm":
        notes = [f"pass {view['flag']}"]
        if view["over_claims"]:
            notes[0] += f" (vLLM alone would allow {view['derived_max_model_len']}, past the interpolated window)"
        notes += view.get("notes") or []
        return "vLLM", f"max model len {view['derived_max_model_len']}", "\n".join([escape("; ".join(notes))] + differs)
    if name == "llama_cpp":
        reads = escape(f"context {view['context_length']}, " + (
            "no scaling" if view["rope_scaling"] in ("default", "none") else f"{view['rope_scaling']} x{view['factor']:g}"))
        notes = [view["flags"], *(view.get("notes") or [])]
        return "llama.cpp", reads, "\n".join([escape("; ".join(notes))] + differs)
    return escape(name), escape(json.dumps(view)), ""


def check_summary(report: dict) -> None:
    """inspect --check: one line on stderr saying whether every runtime reads it as 5.x does."""
    check = report.get("check") or {"ok": True, "disagreements": []}
    if check["ok"]:
        message("check: every runtime reads this checkpoint as transformers 5 does")
        return
    err().print(f"[bold red]check failed[/]: {len(check['disagreements'])} disagreement(s)")
    for text in check["disagreements"]:
        err().print(f"  - {escape(text)}")


def extend_plan(plan: dict, dry_run: bool) -> None:
    console = out()
    title = "Plan (dry run: nothing written)" if dry_run else "Extended"
    table = _section(title)
    _kv(table, "source", plan["source"])
    _kv(table, "output", plan["output"])
    _kv(table, "window", f"{plan['current_window']} -> {plan['target_window']} tokens")
    method_line = _method(plan).plan_line(plan)
    if method_line:
        _kv(table, "method", method_line)
    _kv(table, "factor", f"{plan['factor']:g}" + (f"  ({plan['previous_factor']:g} already applied)"
                                                  if plan["previous_factor"] != 1 else ""))
    console.print(table)
    for name, diffs in plan["changes"].items():
        if not diffs:
            continue
        diff = Table(title=escape(name), title_justify="left", title_style="bold")
        diff.add_column("key", style="cyan")
        diff.add_column("before", style="red")
        diff.add_column("after", style="green")
        for change in diffs:
            diff.add_row(escape(change["key"]), escape(json.dumps(change["before"])),
                         escape(json.dumps(change["after"])))
        console.print(diff)
    if dry_run:
        files = Table(title="Files", title_justify="left", title_style="bold")
        files.add_column("file")
        files.add_column("size", justify="right")
        files.add_column("action")
        for action in plan["files"]:
            files.add_row(escape(action["path"]), human_bytes(action["size"]) if action["size"] else "",
                          action["action"])
        console.print(files)
    left_out(plan.get("left_out") or [], "not part of a model, not copied")


def left_out(entries: list[dict], why: str) -> None:
    """Files picli would not copy or upload (files.not_model_reason), each with its reason."""
    if entries:
        out().print(f"[yellow]Left out[/] ({why}): "
                    + escape("; ".join(f"{entry['path']} ({entry['reason']})" for entry in entries)))


def _method(plan: dict):
    """The method a plan names (picli.rope's registry), which says how to describe itself."""
    return rope.METHODS.get(plan.get("method", "linear"), rope.METHODS["linear"])


def extend_result(result: dict) -> None:
    extend_plan(result["plan"], dry_run=False)
    check = result["self_check"]
    console = out()
    method = _method(result["plan"])
    # The GGUF path's check is a read-back, said in its own words.
    passed = method.self_check_line(check, result["plan"]) if "max_relative_error" in check else check["method"]
    console.print(f"[green]Self-check passed[/]: {escape(passed)}")
    console.print(f"[yellow]Not fine-tuned yet[/]: {escape(method.untrained_hint())}")


def extend_dry_run(payload: dict) -> None:
    """`picli extend --dry-run`: the plan, the config diff and the files; nothing was written."""
    extend_plan(payload["plan"], dry_run=True)


def extend_written(payload: dict) -> None:
    extend_result(payload)
    message(f"Wrote {payload['plan']['output']}; commands run here without MODEL will use it.")


def push_dry_run(payload: dict) -> None:
    push_plan(payload["plan"])


def push_plan(plan: dict) -> None:
    """The --dry-run text of `picli push` (PushPlan.to_dict()): where, what, and the card."""
    target = plan["repo_id"] + (f" (branch {plan['revision']}, created from main if new)" if plan["revision"] else "")
    lines = [
        "Push plan (dry run: no network call was made, nothing was written)",
        f"  repo        {target}",
        f"  url         {plan['url']}",
        f"  visibility  {'private' if plan['private'] else 'public'} (applies when the repo is created)",
        "  mode        " + ("pull request against main" if plan["create_pr"] else
                             "upload into an existing repo allowed (--exist-ok)" if plan["exist_ok"] else
                             "new repo (refused if it exists and is not empty)"),
        f"  commit      {plan['commit_message']}",
        f"  auth        {plan['auth'] or 'none found: pass --token, set HF_TOKEN or run `hf auth login`'}",
        f"  model card  README.md ({plan['card_action']})",
        f"Files ({len(plan['files'])}, {human_bytes(plan['total_bytes'])}):",
    ]
    width = max((len(entry["path"]) for entry in plan["files"]), default=0)
    lines += [f"  {entry['path']:<{width}}  {human_bytes(entry['size']):>9}" for entry in plan["files"]]
    if plan["ignored"]:
        lines.append(f"Left out ({len(plan['ignored'])}): " + ", ".join(plan["ignored"]))
    if plan.get("withheld"):
        lines.append("Not part of a model, never uploaded: "
                     + "; ".join(f"{entry['path']} ({entry['reason']})" for entry in plan["withheld"]))
    lines += ["", "----- README.md -----", plan["card"].rstrip(), "----- end of README.md -----"]
    out().print("\n".join(lines), markup=False)


def push_result(result: dict) -> None:
    """One line on stderr saying what happened; the URL alone on stdout (for scripts)."""
    where = " as a pull request" if result["pr_url"] else f", branch {result['revision']}" \
        if result["revision"] else ""
    files = f"{len(result['files'])} files ({human_bytes(result['total_bytes'])})"
    visibility = "private" if result["private"] else "public"
    if result["changed"]:
        message(f"Pushed {files} to {result['repo_id']}{where} ({visibility}); "
                f"commit {(result['commit'] or '')[:12]}")
    else:
        message(f"Nothing to push: {result['repo_id']}{where} ({visibility}) already has these {files}")
    out().print(result["url"], markup=False)


def card_preview(payload: dict) -> None:
    """`picli card --dry-run`: the card itself on stdout, as it would be written."""
    out().print(payload["card"], markup=False)


def card_written(payload: dict) -> None:
    message(f"Wrote {payload['path']} ({payload['action']})")


def _rate_style(rate: float) -> str:
    if rate >= 1.0:
        return "green"
    if rate >= 0.6:
        return "chartreuse3"
    if rate >= 0.2:
        return "yellow"
    return "red" if rate == 0 else "dark_orange"


def verification(report: dict) -> None:
    """`picli verify`'s tables, for one model's report or run_side_by_side's dict."""
    if "reports" in report:
        verify_side_by_side(report)
    else:
        verify_report(report)


def verify_report(report: dict) -> None:
    """One model (and its baseline): role-named columns, a delta column beside the baseline."""
    runs = [report["model"]] + ([report["baseline"]] if report.get("baseline") else [])
    _verify_tables([(run["model"], run["model"], run) for run in runs], report, delta=len(runs) == 2,
                   side_by_side=False)
    if report.get("saved_to"):
        message(f"Saved {report['saved_to']} (summary in picli.json)")
    _samples_files(runs)


def _samples_files(runs: list[dict]) -> None:
    """Where every RULER sample went (a file per record written; none: they are in --json)."""
    for samples_file in dict.fromkeys((run.get("ruler") or {}).get("samples_file") for run in runs):
        if samples_file:
            message(f"Every RULER sample (input, prediction, references, score): {samples_file}")


def verify_side_by_side(result: dict) -> None:
    """Several models (run_side_by_side's dict): a column group per model, #1, #2, ... in the
    order given, and the baseline last as `base`; a legend line names them (full names would
    not fit 80 columns)."""
    first = result["reports"][0]
    groups = [(f"#{index}", entry["name"], entry["model"]) for index, entry in enumerate(result["reports"], 1)]
    if first.get("baseline"):
        groups.append(("base", result["baseline"], first["baseline"]))
    legend = "  ".join(f"{label} {name}" + (" (baseline)" if label == "base" else "") for label, name, _ in groups)
    out().print(f"[bold]Models:[/] {escape(legend)}")
    _verify_tables(groups, {**first, "notes": result.get("notes")}, delta=False, side_by_side=True)
    for entry in result["reports"]:
        if entry.get("saved_to"):
            message(f"Saved {entry['saved_to']} (summary in picli.json)")
    _samples_files([entry["model"] for entry in result["reports"]] + [first.get("baseline") or {}])


def _verify_tables(groups: list[tuple[str, str, dict]], report: dict, delta: bool, side_by_side: bool) -> None:
    """Passkey and perplexity tables, a column group per (header label, name, run); notes last."""
    console = out()
    runs = [run for _, _, run in groups]
    if runs[0].get("passkey"):
        protocol = runs[0]["passkey"]["protocol"]
        console.print(f"[bold]Passkey retrieval[/] ({protocol['name']} protocol: {protocol['positions']} positions x "
                      f"{protocol['trials']} trials, seed {protocol['seed']}, k_max at >= "
                      f"{protocol['threshold']:.0%} success)")
        table = Table(title_justify="left")
        table.add_column("length", justify="right")
        # k_max can never reach the length (the deepest key sits after the task line), so it
        # stands beside the deepest depth tested; the lines below add the weakest success it counted.
        # Two-line headers keep a model-and-baseline table inside 80 columns.
        table.add_column("deepest\nk tested", justify="right", no_wrap=True)
        for label, _, _ in groups:
            table.add_column(f"{label}\nk_max", justify="right", no_wrap=True)
            table.add_column(f"{label}\nok", justify="right", no_wrap=True)
        if delta:
            table.add_column("delta\nk_max", justify="right", no_wrap=True)
        for index, length in enumerate(report["passkey_lengths"]):
            row = [str(length), str(max(runs[0]["passkey"]["results"][index]["ks"]))]
            values = []
            for run in runs:
                result = run["passkey"]["results"][index]
                rate = sum(result["success"]) / len(result["success"])
                values.append(result["k_max"])
                row += [f"{result['k_max']}" + (" *" if result["beyond_window"] else ""),
                        f"[{_rate_style(rate)}]{rate:.0%}[/]"]
            if delta:
                row.append(f"{values[0] - values[1]:+d}")
            table.add_row(*row)
        console.print(table)
        for _, name, run in groups:
            console.print(f"[bold]{escape(name)}[/] success by k (key depth, tokens from the end; "
                          "left = near the end):")
            for result in run["passkey"]["results"]:
                cells = "".join(f"[{_rate_style(rate)}]█[/]" for rate in result["success"])
                lowest = result.get("lowest_success")
                console.print(f"  {result['length']:>7}  {cells}  k_max {result['k_max']} of deepest "
                              f"{max(result['ks'])}" + ("" if lowest is None else
                                                        f", lowest success up to k_max {lowest:.0%}"))
        console.print("  legend: [green]█[/] 100%  [chartreuse3]█[/] >=60%  [yellow]█[/] >=20%  "
                      "[dark_orange]█[/] <20%  [red]█[/] 0%   * beyond the model's trained window")
    if runs[0].get("perplexity"):
        table = Table(title="Perplexity (sliding window, stride "
                      f"{runs[0]['perplexity']['stride']})", title_justify="left", title_style="bold")
        table.add_column("length", justify="right")
        for label, _, _ in groups:
            table.add_column(f"{label} ppl", justify="right")
        if delta:
            table.add_column("delta", justify="right")
        table.add_column("tokens scored", justify="right")
        for index, length in enumerate(report["perplexity_lengths"]):
            results = [run["perplexity"]["results"][index] for run in runs]
            row = [str(length)]
            for result, run in zip(results, runs):
                # Side by side, models of different windows share rows: mark the extrapolated cells
                # as the passkey table does (one model's table says it in its note only).
                beyond = side_by_side and length > run["window"]
                row.append(f"{result['perplexity']:.3f}" + (" *" if beyond else ""))
            if delta:
                row.append(f"{results[0]['perplexity'] - results[1]['perplexity']:+.3f}")
            # Models with different tokenizers score the same text in different numbers of tokens.
            counts = list(dict.fromkeys(f"{result['tokens_scored']:,}" for result in results))
            row.append(" / ".join(counts))
            table.add_row(*row)
        console.print(table)
    if runs[0].get("ruler"):
        _ruler_tables(groups, delta)
    for note in report.get("notes") or []:
        console.print(f"[yellow]Note:[/] {escape(note)}")


def _score_style(score: float) -> str:
    return _rate_style(score / 100)


def effective_text(effective: dict) -> str:
    """An effective length as a reader takes it: a length, the longest tested one, or none."""
    if effective["length"] is None:
        return "none"
    return f"{effective['length']}" + (" (the longest tested: maybe more)" if effective["longest_tested_passed"] else "")


def _ruler_tables(groups: list[tuple[str, str, dict]], delta: bool) -> None:
    """RULER: the averages per length side by side, both effective lengths per model with their
    rules, then each model's task x length scores."""
    console = out()
    runs = [run["ruler"] for _, _, run in groups]
    protocol = runs[0]["protocol"]
    templates = "/".join(dict.fromkeys(run["protocol"]["template"]["used"] for run in runs))
    haystack = (protocol.get("haystack") or {}).get("name")
    tasks, samples = len(protocol["tasks"]), protocol["samples"]
    console.print(f"[bold]RULER[/] ({protocol['source']}: {tasks} task{'s' * (tasks != 1)} x {samples} "
                  f"sample{'s' * (samples != 1)} per length, seed {protocol['seed']}, {templates} template"
                  + (f", essay haystack {escape(haystack)}" if haystack else "") + "; scores 0-100)")
    table = Table(title_justify="left")
    table.add_column("length", justify="right")
    for label, _, _ in groups:
        table.add_column(f"{label}\naverage", justify="right", no_wrap=True)
    if delta:
        table.add_column("delta", justify="right", no_wrap=True)
    for index, average in enumerate(runs[0]["averages"]):
        row, values = [str(average["length"])], []
        for run in runs:
            cell = run["averages"][index]
            values.append(cell["average"])
            row.append(f"[{_score_style(cell['average'])}]{cell['average']:.1f}[/]" + (" *" if cell["beyond_window"] else ""))
        if delta:
            row.append(f"{values[0] - values[1]:+.1f}")
        table.add_row(*row)
    console.print(table)
    for label, name, run in zip([label for label, _, _ in groups], [name for _, name, _ in groups], runs):
        ruler, relative = run["effective"]
        console.print(f"  {escape(name)}: effective length {effective_text(ruler)} (RULER's rule), "
                      f"{effective_text(relative)} (relative: >= {relative['threshold']:.1f})")
    console.print(f"  RULER's rule: {escape(runs[0]['effective'][0]['description'])}; relative: the largest tested "
                  "length whose average is at least 85% of the model's own at the shortest tested length (NoLiMa)")
    for label, name, run in zip([label for label, _, _ in groups], [name for _, name, _ in groups], runs):
        lengths = [average["length"] for average in run["averages"]]
        table = Table(title=f"{name}: RULER score by task and length", title_justify="left", title_style="bold")
        table.add_column("task")
        for length in lengths:
            table.add_column(str(length), justify="right", no_wrap=True)
        for task, scores in _ruler_grid(run).items():
            table.add_row(task, *[f"[{_score_style(scores[length])}]{scores[length]:.1f}[/]" for length in lengths])
        table.add_row("average", *[f"{average['average']:.1f}" for average in run["averages"]])
        console.print(table)
    if any(average["beyond_window"] for run in runs for average in run["averages"]):
        console.print("  * beyond the model's trained window")


def _ruler_grid(ruler: dict) -> dict[str, dict[int, float]]:
    grid: dict[str, dict[int, float]] = {}
    for score in ruler["scores"]:
        grid.setdefault(score["task"], {})[score["length"]] = score["score"]
    return grid


def require_matplotlib(option: str) -> None:
    """Before any measurement: a figure asked for without matplotlib fails first, not after an hour."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # sys.modules["matplotlib"] is None: importing it raises ImportError
        found = False
    if not found:
        raise PicliError(f"{option} needs matplotlib", hint="pip install matplotlib (or picli[plot])")


def _panels(report: dict, measure: str) -> list[tuple[str, dict]]:
    """(title, run) per model of one report or run_side_by_side's dict, the baseline last."""
    if "reports" in report:
        panels = [(entry["name"], entry["model"]) for entry in report["reports"]]
        if report["reports"][0].get("baseline"):
            panels.append((f"{report['baseline']} (baseline)", report["reports"][0]["baseline"]))
    else:
        panels = [(f"{Path(run['path']).name} ({run['model']})", run)
                  for run in [report["model"], report.get("baseline")] if run]
    return [(name, run) for name, run in panels if run.get(measure)]


def ruler_heatmap_png(report: dict, path: str) -> None:
    """RULER's task x length scores as a PNG: one figure, a panel per model (baseline last),
    each cell its score, the averages as the last row."""
    require_matplotlib("--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(report, "ruler")
    tasks = panels[0][1]["ruler"]["protocol"]["tasks"]
    width = 2.5 + 1.1 * len(panels[0][1]["ruler"]["averages"]) * len(panels)
    figure, axes = plt.subplots(1, len(panels), figsize=(max(width, 5), 1.8 + 0.4 * (len(tasks) + 1)), squeeze=False,
                                sharey=True, constrained_layout=True)
    for axis, (name, run) in zip(axes[0], panels):
        ruler = run["ruler"]
        lengths = [average["length"] for average in ruler["averages"]]
        grid = _ruler_grid(ruler)
        rows = [[grid[task][length] for length in lengths] for task in tasks]
        rows.append([average["average"] for average in ruler["averages"]])
        image = axis.imshow(rows, aspect="auto", cmap="RdYlGn", vmin=0, vmax=100)
        for y, row in enumerate(rows):
            for x, value in enumerate(row):
                axis.text(x, y, f"{value:.0f}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(lengths)), [str(length) for length in lengths], rotation=45, fontsize=7)
        axis.set_yticks(range(len(rows)), list(tasks) + ["average"], fontsize=7)  # shared: the first panel's show
        axis.axhline(len(tasks) - 0.5, color="black", linewidth=1)
        axis.set_xlabel("length (tokens)")
        effective = ", ".join(f"{e['rule']} {effective_text(e).split(' ')[0]}" for e in ruler["effective"])
        axis.set_title(f"{name}\neffective: {effective}", fontsize=8)
    figure.colorbar(image, ax=axes[0].tolist(), fraction=0.02)
    figure.suptitle(f"RULER score (0-100), {panels[0][1]['ruler']['protocol']['samples']} samples per cell", fontsize=9)
    figure.savefig(path, dpi=120)
    plt.close(figure)
def check_heatmap(path: Path, option: str = "--heatmap", example: str = "passkey.png") -> None:
    """--heatmap (or --plot) before anything loads: matplotlib there and the PNG writable, not a
    finding after the whole measurement."""
    from .files import check_writable_parent

    require_matplotlib(option)
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise PicliError(f"{option} {path} is a directory", hint=f"name a file, e.g. {option} {example}")
    check_writable_parent(target)


def passkey_heatmap_png(report: dict, path: str) -> None:
    """The success-by-k grid as a PNG (matplotlib, the optional 'plot' extra): one figure, a
    panel per model, for one model's report or run_side_by_side's dict (baseline last)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PicliError("--heatmap needs matplotlib", hint="pip install matplotlib (or picli[plot])") from None
    if "reports" in report:
        panels = [(entry["name"], entry["model"]) for entry in report["reports"]]
        if report["reports"][0].get("baseline"):
            panels.append((f"{report['baseline']} (baseline)", report["reports"][0]["baseline"]))
    else:
        panels = [(run["model"], run) for run in [report["model"], report.get("baseline")] if run]
    lengths = len(panels[0][1]["passkey"]["results"])
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + 0.6 * lengths * len(panels)), squeeze=False)
    for axis, (name, run) in zip(axes[:, 0], panels):
        results = run["passkey"]["results"]
        grid = [result["success"] for result in results]
        image = axis.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1)
        axis.set_yticks(range(len(results)), [str(result["length"]) for result in results])
        axis.set_xticks(range(len(results[0]["ks"])), [str(k) for k in results[0]["ks"]], rotation=90, fontsize=6)
        axis.set_ylabel("length")
        axis.set_title(f"{name}: passkey success by k (tokens from the end)")
        figure.colorbar(image, ax=axis, fraction=0.02)
    axes[-1, 0].set_xlabel("k")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def training_settings(event: dict) -> None:
    """Every setting of a training run, printed before it starts (stderr)."""
    settings = event["settings"]
    console = err()
    console.print("[bold]Fine-tune settings[/] (paper defaults unless set):")
    shown = {key: value for key, value in settings.items() if value is not None}
    console.print("  " + escape(", ".join(f"{key}={value}" for key, value in shown.items())), highlight=False)
    console.print(f"  processes={event['processes']} accumulation={event['accumulation']} "
                  f"gradient_checkpointing={event['gradient_checkpointing']} train_sequences={event['sequences']} "
                  f"held_out={event['held_out']} parameters={event['parameters']:,}")


def finetune_plan(plan: dict) -> None:
    console = out()
    width = "16-bit activations (bf16 autocast)" if plan["bytes_per_value"] == 2 else "float32"
    console.print(f"[bold]Plan[/] for {escape(plan['model'])}: {human_count(plan['parameters'])} parameters "
                  f"(from {escape(plan['parameters_from'])}), seq-len {plan['seq_len']}, global batch "
                  f"{plan['batch_size']} (micro {plan['micro_batch_size']}), {width}")
    console.print(f"Schedule: {escape(plan['schedule']['text'])}")
    table = Table(title="Estimated GB per device (an estimate: docs/finetune.md says what it counts)",
                  title_justify="left")
    table.add_column("mode")
    table.add_column("ckpt")
    table.add_column("1 dev", justify="right")
    table.add_column("DDP", justify="right")
    counts = list(plan["memory"][0]["fsdp"]) if plan["memory"] else []
    for count in counts:
        table.add_column(f"FSDP {count}", justify="right")

    def gigabytes(size: float) -> str:
        return f"{size / 1e9:,.0f}" if size >= 1e10 else f"{size / 1e9:.1f}"

    for row in plan["memory"]:
        table.add_row(row["mode"], "on" if row["gradient_checkpointing"] else "off", gigabytes(row["bytes"]),
                      gigabytes(row["ddp"]), *(gigabytes(row["fsdp"][count]) for count in counts))
    console.print(table)
    console.print("LoRA under FSDP needs --keep-adapter (sharded weights cannot be merged).")
    if plan["probe"]:
        console.print(f"Measured: one step of {plan['probe']['tokens']} tokens took {plan['probe']['seconds']:.2f} s; "
                      f"estimated {plan['estimated_seconds_per_step']:.1f} s per optimizer step, "
                      f"{plan['estimated_hours']:.2f} h for the run (a floor: attention grows faster than linear).")
    else:
        console.print(f"Time: not measured ({escape(plan['probe_skipped'])}).")
    console.print(f"Suggestion: {escape(plan['suggestion'])}")


def finetune_result(result: dict) -> None:
    console = out()
    if result["interrupted"]:
        by = f" by {result['signal']}" if result.get("signal") else ""
        console.print(f"[yellow]Interrupted[/]{by} after step {result['steps_done']}; checkpoint saved in "
                      f"{escape(result['output'])}/checkpoints. Continue with: picli finetune -o "
                      f"{escape(result['output'])} --resume")
        return
    eval_text = f", eval loss {result['eval_loss']:.4f}" if result.get("eval_loss") is not None else ""
    early = (f"; stopped at step {result['stopped_early_at']}: passkey retrieved at every depth tested by the "
             "quick protocol (4 depths x 2 keys, at least 1 of 2 at each)" if result.get("stopped_early_at") else "")
    steps = f"{result['steps_done']} step{'' if result['steps_done'] == 1 else 's'}"
    repeated = ""
    if result.get("epochs") is not None and result["epochs"] > 1:
        repeated = f" ({result['unique_tokens']:,} unique; {result['epochs']:.2f} epochs over the data)"
    console.print(f"[green]Fine-tuned[/] {steps}, {result['tokens']:,} tokens{repeated} in "
                  f"{result['seconds']:.0f} s; final loss {result['final_loss']:.4f}{eval_text}{early}")
    console.print(f"Wrote {escape(result['output'])} (metrics.jsonl, picli.json); next: picli verify --passkey")
