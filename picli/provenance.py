"""picli's records: the only module that knows their names, their shape, and how to read them.

- `picli.json` beside every output (a directory keeps it inside; a GGUF file gets the
  sidecar `X.gguf.picli.json`): where the checkpoint came from, what changed, which
  versions did it, the fine-tune record and a summary of the latest verification, so that
  `picli push` can write a model card that tells the truth.
- `picli-verify.json` inside a verified checkpoint: the full `picli verify` report.
- `.picli/last.json` in the working directory: the newest output, so that `picli verify`,
  `picli finetune`, `picli card` and `picli push` work without naming MODEL
  (`checkpoint.resolve(None)` reads it through `last_output`).

Reading. A record that is absent is `{}` (or None); a record that exists but is broken
(not UTF-8, invalid JSON, not an object, or a field of the wrong type, e.g. `"factor":
"abc"` after a hand edit) raises `RecordError`, one line naming the file, the field and
what to do: picli never builds a model card or a new record on top of a record it cannot
trust. `inspect` turns that error into a warning and ignores the record (it only reports;
what config.json says is still true); `extend`, `card`, `push` (as a pre-flight problem),
`verify` (before measuring, when it would write into the record) and `finetune` (before
training) stop. `read_json_quiet` is the one tolerant reader, for the places that only
peek (e.g. the base model name while resolving MODEL).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelNotFound, NotACheckpoint, PicliError
from .files import atomic_write_json

RECORD = "picli.json"
VERIFY_RECORD = "picli-verify.json"
STATE_DIR = ".picli"
LAST = Path(STATE_DIR) / "last.json"


class RecordError(NotACheckpoint):
    """A picli record exists but cannot be used: not JSON, not an object, or a field of the wrong type."""


# ---------------------------------------------------------------------------------------
# Names.


def record_path(output: Path) -> Path:
    """A directory keeps picli.json inside; a single file (GGUF) gets a sidecar."""
    output = Path(output)
    return output / RECORD if output.is_dir() else sidecar_path(output)


def sidecar_path(single_file: Path) -> Path:
    """model.gguf -> model.gguf.picli.json."""
    return single_file.with_name(single_file.name + "." + RECORD)


def verify_record_path(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / VERIFY_RECORD


def is_picli_output(path: Path) -> bool:
    """Did picli write this checkpoint? Only then may picli add records to it unasked."""
    return record_path(path).is_file()


def is_verify_record(path: Path) -> bool:
    """Is this file a record `picli verify -o` wrote (which the next run may rewrite)?"""
    path = Path(path)
    # A record is a few kilobytes: a large file is something else, and is not read whole.
    record = read_json_quiet(path) if path.is_file() and path.stat().st_size < 2**26 else {}
    return str(record.get("command", "")).startswith("picli") and isinstance(record.get("versions"), dict)


def is_record_file(relative: str) -> bool:
    """Records that describe one checkpoint and are rewritten (or dropped) for a new one."""
    return relative in (RECORD, VERIFY_RECORD)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict:
    found = {"picli": __version__, "python": sys.version.split()[0]}
    for package in ("transformers", "torch", "huggingface_hub", "gguf"):
        try:
            from importlib.metadata import version

            found[package] = version(package)
        except Exception:  # not installed: simply not recorded
            pass
    return found


# ---------------------------------------------------------------------------------------
# Reading.


def read_json_quiet(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is absent, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
        return {}
    return value if isinstance(value, dict) else {}


def _read_object(path: Path) -> dict | None:
    """None when absent; RecordError when present but not a JSON object."""
    if not path.is_file():
        return None
    fix = f"restore {path.name} or delete it (the checkpoint then has no picli record)"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{path} is not UTF-8 text", hint=fix) from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          hint=fix) from None
    except RecursionError:
        raise RecordError(f"{path} is nested too deeply to be a picli record", hint=fix) from None
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror or exc}", hint="check its permissions") from None
    if not isinstance(value, dict):
        raise RecordError(f"{path} holds a JSON {_kind(value)}, not the object picli writes", hint=fix)
    return value


def read_record(source: Path) -> dict:
    """The picli.json of a checkpoint (or a GGUF's sidecar): {} when there is none."""
    path = record_path(source)
    record = _read_object(path)
    if record is None:
        return {}
    _check_record(record, path)
    return record


def read_verify_record(checkpoint_dir: Path) -> dict | None:
    """picli-verify.json of a checkpoint, None when there is none; checked by `verification_summary`."""
    return _read_object(verify_record_path(checkpoint_dir))


def verify_runs(verify_file: dict | None, path: Path | None = None) -> list[dict]:
    """Every `picli verify` run a picli-verify.json keeps, newest first ([] for None).

    The file is {"format": 2, "runs": [record, ...]}; a file written before it kept one run
    (the record itself, "model" at the top) and is read as that one run.
    """
    if not verify_file:
        return []
    if "runs" not in verify_file:
        return [verify_file]
    runs = verify_file["runs"]
    path = Path(path or VERIFY_RECORD)
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise RecordError(f"{path}: \"runs\" is not the list of verify records picli writes",
                          hint=f"restore {path.name} or delete it (the checkpoint then has no verification)")
    return runs


def recorded_window(record: dict) -> int | None:
    """The window picli wrote a checkpoint for, whichever max_position_embeddings convention it used."""
    return (record.get("rope") or {}).get("target_window")


# A hand edit can put any JSON anywhere; these are the fields picli reads from a record and
# the types it formats them as (a string factor would fail deep inside the model card).
_TEXT, _OBJECT, _LIST = "a string", "an object", "a list"
_NUMBER, _POSITIVE, _COUNT = "a number", "a finite number above 0", "a whole number"
_RECORD_FIELDS = {
    "picli_version": _TEXT, "created": _TEXT, "command": _TEXT, "operation": _TEXT, "base_model": _TEXT,
    "note": _TEXT, "weights": _TEXT, "source": _OBJECT, "rope": _OBJECT, "changes": _OBJECT,
    "self_check": _OBJECT, "versions": _OBJECT, "history": _LIST, "finetune": _OBJECT,
    "verification": _OBJECT, "parameters": _COUNT,
}
_ROPE_FIELDS = {"factor": _POSITIVE, "previous_factor": _POSITIVE, "theta": _POSITIVE, "original_window": _COUNT,
                "current_window": _COUNT, "target_window": _COUNT, "type": _TEXT, "max_position_embeddings": _TEXT,
                "parameters": _OBJECT}
_FINETUNE_FIELDS = {"steps": _COUNT, "planned_steps": _COUNT, "tokens": _COUNT, "seq_len": _COUNT,
                    "batch_size": _COUNT, "micro_batch_size": _COUNT, "processes": _COUNT, "lr": _NUMBER,
                    "warmup_steps": _COUNT, "final_loss": _NUMBER, "eval_loss": _NUMBER, "wall_seconds": _NUMBER,
                    "eval_history": _LIST, "hardware": _OBJECT, "lora": _OBJECT, "data": _TEXT, "finished": _TEXT,
                    "unique_tokens": _COUNT, "epochs": _NUMBER, "train_sequences": _COUNT}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def _fits(value: Any, expected: str) -> bool:
    if expected == _TEXT:
        return isinstance(value, str)
    if expected == _OBJECT:
        return isinstance(value, dict)
    if expected == _LIST:
        return isinstance(value, list)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if expected == _NUMBER:
        return True  # a diverged run's loss or perplexity is honestly inf or NaN
    if not math.isfinite(value):
        return False
    return value > 0 if expected == _POSITIVE else float(value).is_integer() and value >= 0


def _check_fields(values: dict, fields: dict[str, str], path: Path, prefix: str) -> None:
    for name, expected in fields.items():
        value = values.get(name)
        if value is not None and not _fits(value, expected):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise RecordError(f"{path}: \"{prefix}{name}\" should be {expected}, found {_kind(value)} {shown}",
                              hint=f"restore {path.name} or delete it (the checkpoint then has no picli record)")


def _check_record(record: dict, path: Path) -> None:
    _check_fields(record, _RECORD_FIELDS, path, "")
    ropes = [("rope.", record.get("rope"))]
    for number, step in enumerate(record.get("history") or []):
        _check_fields({f"history[{number}]": step}, {f"history[{number}]": _OBJECT}, path, "")
        _check_fields(step, {"rope": _OBJECT}, path, f"history[{number}].")
        ropes.append((f"history[{number}].rope.", step.get("rope")))
    for prefix, rope in ropes:
        if rope:
            _check_fields(rope, _ROPE_FIELDS, path, prefix)
    if record.get("finetune"):
        _check_fields(record["finetune"], _FINETUNE_FIELDS, path, "finetune.")
    if record.get("verification"):
        _check_summary(record["verification"], path, "verification.")


_SUMMARY_FIELDS = {"created": _TEXT, "passkey_protocol": _OBJECT, "perplexity_data": _TEXT, "model": _OBJECT,
                   "baseline": _OBJECT, "notes": _LIST, "measured": _OBJECT}
_RUN_FIELDS = {"path": _TEXT, "source": _OBJECT, "window": _COUNT, "passkey_k_max": _OBJECT,
               "passkey_k_largest": _OBJECT, "passkey_lowest_success": _OBJECT, "passkey_success": _OBJECT,
               "perplexity": _OBJECT, "stride": _COUNT}


def _check_summary(summary: dict, path: Path, prefix: str) -> None:
    _check_fields(summary, _SUMMARY_FIELDS, path, prefix)
    for run_name in ("model", "baseline"):
        run = summary.get(run_name)
        if not run:
            continue
        _check_fields(run, _RUN_FIELDS, path, f"{prefix}{run_name}.")
        for table, expected in (("passkey_k_max", _COUNT), ("passkey_k_largest", _COUNT),
                                ("passkey_success", _NUMBER), ("perplexity", _NUMBER)):
            values = run.get(table) or {}
            _check_fields(values, dict.fromkeys(values, expected), path, f"{prefix}{run_name}.{table}.")
            bad = [length for length in values if not length.isdigit()]
            if bad:
                raise RecordError(f"{path}: \"{prefix}{run_name}.{table}\" has {bad[0]!r} where a length in tokens "
                                  "belongs", hint=f"restore {path.name}, or run `picli verify` again")


# ---------------------------------------------------------------------------------------
# Building and adding records.


def extension_record(previous: dict, *, command: str, source: dict, base_model: str | None, factor: float,
                     previous_factor: float, original_window: int, current_window: int, target_window: int,
                     theta: float, max_position_embeddings: str, changes: dict[str, list[tuple[str, Any, Any]]],
                     weights: str, self_check: dict, method: str = "linear",
                     parameters: dict | None = None) -> dict:
    """picli.json of a `picli extend` output; `previous` is the source's record (its steps become history).

    rope.type is the method (linear, yarn, ntk); rope.parameters its own numbers (yarn: the
    original window, betas, attention factor and which readers compute it as meant; ntk: the
    scale, rotary dimension and theta before and after)."""
    history = list(previous.get("history") or [])
    if previous.get("rope"):
        history.append({"operation": previous.get("operation"), "rope": previous["rope"],
                        "created": previous.get("created")})
    return {
        "picli_version": versions()["picli"],
        "created": now(),
        "command": command,
        "operation": "position_interpolation",
        "source": source,
        "base_model": base_model or previous.get("base_model"),
        "rope": {
            "type": method, "factor": factor, "previous_factor": previous_factor,
            "original_window": original_window, "current_window": current_window,
            "target_window": target_window, "theta": theta, "max_position_embeddings": max_position_embeddings,
            "parameters": parameters or {"factor": factor},
        },
        "changes": {name: [{"key": key, "before": before, "after": after} for key, before, after in diffs]
                    for name, diffs in changes.items()},
        "weights": weights,
        "self_check": self_check,
        "versions": versions(),
        "history": history,
        "finetune": None,
        "verification": None,
    }


def finetune_record(previous: dict, *, model_path: Path, command: str, finetune: dict, parameters: int) -> dict:
    """picli.json of a `picli finetune` output: the source's record plus the fine-tune; verification reset."""
    return {**previous, "created": now(), "command": command, "finetune": finetune,
            "source": previous.get("source") or {"path": str(model_path)}, "verification": None,
            "versions": versions(), "history": list(previous.get("history") or []), "parameters": parameters}


def write_record(output: Path, record: dict) -> Path:
    """Write picli.json for `output` (a staging directory, or the GGUF file it will sit beside)."""
    path = record_path(output)
    atomic_write_json(path, record)
    return path


def verify_record(report: dict, *, command: str, data: str | None) -> dict:
    """The full picli-verify.json content of a `picli verify` report."""
    return {"created": now(), "command": command, "data": data, "versions": versions(), **report}


VERIFY_FORMAT = 2  # picli-verify.json as {"format", "runs"}; before it, the file was one run


def add_verification(checkpoint_dir: Path, record: dict) -> Path:
    """`record` added to picli-verify.json's runs (newest first: an earlier run's measurements
    stay), and the summary of what the card shows into the checkpoint's picli.json."""
    checkpoint_dir = Path(checkpoint_dir)
    picli_record = read_record(checkpoint_dir)
    path = verify_record_path(checkpoint_dir)
    runs = [record, *verify_runs(_read_object(path), path)]
    summary = shown_summary(runs, path)  # checked before anything is written
    atomic_write_json(path, {"format": VERIFY_FORMAT, "runs": runs})
    picli_record["verification"] = summary
    write_record(checkpoint_dir, picli_record)
    return path


# The summary tables each protocol fills (verification_summary), by the name of its report in a
# run ("passkey": run["model"]["passkey"]). A protocol verify gains adds its line here, and its
# measurements are then kept and shown per length like these.
PROTOCOL_TABLES = {
    "passkey": ("passkey_k_max", "passkey_k_largest", "passkey_lowest_success", "passkey_success"),
    "perplexity": ("perplexity",),
}


_TABLES = {key for tables in PROTOCOL_TABLES.values() for key in tables}


def shown_summary(runs: list[dict], path: Path | None = None) -> dict:
    """What the card shows from several runs (newest first): per protocol and length the newest
    run's numbers (model and its baseline), in `verification_summary`'s shape, plus "measured":
    {protocol: {length: when, by which command, with which settings}}."""
    summaries = [verification_summary(run, path) for run in runs]
    if not summaries:
        return {}
    shown = {**summaries[0], "model": dict(summaries[0]["model"] or {}), "measured": {}}
    baseline_shown = None
    notes: list[str] = []
    for name, tables in PROTOCOL_TABLES.items():
        for key in tables:
            shown["model"].pop(key, None)
        for run, summary in zip(runs, summaries):
            model, baseline = summary["model"] or {}, summary["baseline"] or {}
            for length in model.get(tables[0]) or {}:
                if length in shown["measured"].get(name, {}):
                    continue  # a newer run measured this length
                for key in tables:
                    if length in (model.get(key) or {}):
                        shown["model"].setdefault(key, {})[length] = model[key][length]
                    if length in (baseline.get(key) or {}):
                        baseline_shown = baseline_shown or {k: v for k, v in baseline.items() if k not in _TABLES}
                        baseline_shown.setdefault(key, {})[length] = baseline[key][length]
                report = (run.get("model") or {}).get(name) or {}
                shown["measured"].setdefault(name, {})[length] = {
                    "created": run.get("created"), "command": run.get("command"), "data": run.get("data"),
                    "settings": {k: v for k, v in report.items() if k != "results"}, "runtime": run.get("settings"),
                    "baseline": {k: baseline.get(k) for k in ("path", "source", "window")} if baseline else None}
                notes += [note for note in summary["notes"] if note not in notes]
    shown["baseline"] = baseline_shown
    shown["notes"] = notes
    for name in PROTOCOL_TABLES:  # lengths in order, as one run lists them
        for key in PROTOCOL_TABLES[name]:
            if key in shown["model"]:
                shown["model"][key] = dict(sorted(shown["model"][key].items(), key=lambda item: int(item[0])))
            if baseline_shown and key in baseline_shown:
                baseline_shown[key] = dict(sorted(baseline_shown[key].items(), key=lambda item: int(item[0])))
        if name in shown["measured"]:
            shown["measured"][name] = dict(sorted(shown["measured"][name].items(), key=lambda item: int(item[0])))
    return shown


def verification_summary(record: dict, path: Path | None = None) -> dict:
    """What the model card needs from a picli-verify.json: k_max and perplexity per length, model and baseline.

    RecordError (naming `path`) when a hand edit left the record in a shape picli cannot read.
    """
    path = Path(path or VERIFY_RECORD)

    def one(run: Any, name: str) -> dict | None:
        if not run:
            return None
        _check_fields({name: run}, {name: _OBJECT}, path, "")
        summary: dict[str, Any] = {"path": run.get("path"), "source": run.get("source"), "window": run.get("window")}
        if run.get("passkey"):
            from .passkey import lowest_success

            results = _results(run["passkey"], "k_max", path, f"{name}.passkey")
            summary["passkey_k_max"] = {str(r["length"]): r["k_max"] for r in results}
            # k_max can never reach the length: the deepest key tested is the ceiling it is read against.
            summary["passkey_k_largest"] = {str(r["length"]): max(r["ks"]) for r in results}
            summary["passkey_lowest_success"] = {str(r["length"]): lowest_success(r["ks"], r["success"], r["k_max"])
                                                 for r in results}
            summary["passkey_success"] = {str(r["length"]): sum(r["success"]) / len(r["success"]) for r in results}
        if run.get("perplexity"):
            results = _results(run["perplexity"], "perplexity", path, f"{name}.perplexity")
            summary["perplexity"] = {str(r["length"]): r["perplexity"] for r in results}
            summary["stride"] = run["perplexity"].get("stride")
        return summary

    model = record.get("model")
    passkey = model.get("passkey") if isinstance(model, dict) else None
    summary = {"created": record.get("created"),
               "passkey_protocol": passkey.get("protocol") if isinstance(passkey, dict) else None,
               "perplexity_data": record.get("data"), "model": one(model, "model"),
               "baseline": one(record.get("baseline"), "baseline"), "notes": record.get("notes") or []}
    _check_summary(summary, path, "")
    return summary


def _results(measured: Any, value: str, path: Path, where: str) -> list[dict]:
    results = measured.get("results") if isinstance(measured, dict) else None
    expected = _COUNT if value == "k_max" else _NUMBER
    fine = isinstance(results, list) and all(
        isinstance(r, dict) and _fits(r.get("length"), _COUNT) and _fits(r.get(value), expected)
        and (value != "k_max" or (isinstance(r.get("success"), list) and r["success"]
                                  and all(_fits(rate, _NUMBER) for rate in r["success"])
                                  and isinstance(r.get("ks"), list) and len(r["ks"]) == len(r["success"])
                                  and all(_fits(k, _COUNT) for k in r["ks"])))
        for r in results)
    if not fine:
        raise RecordError(f"{path}: \"{where}.results\" is not the list of per-length results picli writes",
                          hint=f"restore {path.name}, or run `picli verify` again")
    return results


# ---------------------------------------------------------------------------------------
# The last output written in this working directory.


def check_state_dir(cwd: Path | None = None) -> None:
    """.picli here must be a directory for last.json: checked before a command's work, so a file
    of that name fails in a second instead of after the output was written."""
    state = (cwd or Path.cwd()) / STATE_DIR
    if (state.exists() or state.is_symlink()) and not state.is_dir():
        raise PicliError(f"{state} is not a directory, so picli cannot remember its output here "
                         f"({LAST})", hint=f"rename or remove {state}, or run picli from another directory")


def remember_last(output: Path, command: str, cwd: Path | None = None) -> Path:
    check_state_dir(cwd)
    path = (cwd or Path.cwd()) / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"path": str(output.resolve()), "command": command, "time": now()})
    return path


def last_output(cwd: Path | None = None) -> Path:
    """The checkpoint the last `picli extend` wrote here; fails clearly when there is none."""
    path = (cwd or Path.cwd()) / LAST
    recorded = read_json_quiet(path).get("path")
    if not isinstance(recorded, str) or not recorded:
        raise ModelNotFound("no MODEL given and no checkpoint recorded in this directory",
                            hint="pass MODEL, or run `picli extend MODEL --to N` here first")
    output = Path(recorded)
    if not output.exists():
        raise ModelNotFound(f"the last checkpoint picli wrote here, {output}, no longer exists",
                            hint="pass MODEL explicitly")
    return output
