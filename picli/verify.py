"""`picli verify`: passkey k_max and sliding-window perplexity, for a model and optionally a
baseline measured with exactly the same protocol (same prompts, same seed, same text).

The full record goes to `picli-verify.json` in the model directory and a summary into its
`picli.json`, which is what `picli push` turns into the model card's tables.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import passkey as passkey_module
from .checkpoint import Checkpoint, read_config, resolve
from .errors import PicliError
from .files import atomic_write_json
from .provenance import last_output, now, read_record, record_path, versions

Events = Callable[[dict], None] | None
VERIFY_RECORD = "picli-verify.json"


@dataclass(frozen=True)
class Settings:
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "sdpa"
    device_map: str | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class ModelRun:
    model: str
    path: str
    window: int
    passkey: dict | None
    perplexity: dict | None
    source: dict | None = None  # checkpoint.source: lets the card tell the recorded source from another baseline


@dataclass(frozen=True)
class VerifyReport:
    model: ModelRun
    baseline: ModelRun | None
    passkey_lengths: list[int]
    perplexity_lengths: list[int]
    settings: dict
    notes: list[str] = field(default_factory=list)
    saved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(model: str | None, on_event: Events) -> Checkpoint:
    if model is None:
        path = last_output()
        if on_event:
            on_event({"kind": "message", "text": f"MODEL: {path} (the last checkpoint picli wrote here)"})
        model = str(path)
    checkpoint = resolve(model, on_event=on_event)
    if checkpoint.kind == "gguf":
        raise PicliError("verify runs transformers checkpoints, not GGUF files",
                         hint="verify the safetensors checkpoint the GGUF was made from")
    return checkpoint


def run_verify(
    model: str | None,
    *,
    passkey: bool = True,
    perplexity: bool = False,
    lengths: list[int] | None = None,
    data: str | None = None,
    text_field: str = "text",
    stride: int = 256,
    max_tokens: int | None = None,
    protocol: passkey_module.Protocol = passkey_module.Protocol(),
    baseline: str | None = None,
    settings: Settings = Settings(),
    save: bool = True,
    command: str = "picli verify",
    on_event: Events = None,
) -> VerifyReport:
    if not passkey and not perplexity:
        raise PicliError("nothing to verify", hint="pass --passkey, --perplexity --data FILE, or both")
    if perplexity and not data:
        raise PicliError("--perplexity needs text to score", hint="pass --data FILE|DIR|JSONL|hf:NAME")
    if stride <= 0:
        raise PicliError(f"--stride must be positive, got {stride}", hint="the paper uses 256")
    checkpoint = resolve_model(model, on_event)
    window = _window(checkpoint.path)
    lengths = sorted(set(lengths or [window]))
    if any(length <= 0 for length in lengths):
        raise PicliError("--length must be positive", hint=f"e.g. --length {window}")
    documents = None
    if perplexity:
        from .textdata import load_texts

        documents = load_texts(data, text_field=text_field)
    baseline_checkpoint = resolve_model(baseline, on_event) if baseline else None

    runs = []
    for label, target in (("model", checkpoint), ("baseline", baseline_checkpoint)):
        if target is None:
            continue
        if on_event:
            on_event({"kind": "message", "text": f"Loading {label} {target.path}"})
        runs.append(_measure(target, label, lengths, passkey, perplexity, documents, stride, max_tokens,
                             protocol, settings, on_event))
    notes = _notes(runs, lengths)
    report = VerifyReport(model=runs[0], baseline=runs[1] if len(runs) > 1 else None,
                          passkey_lengths=lengths if passkey else [], perplexity_lengths=lengths if perplexity else [],
                          settings=asdict(settings), notes=notes)
    if save:
        saved = _save(checkpoint, report, command, data)
        report = VerifyReport(**{**report.__dict__, "saved_to": saved})
    return report


def _window(path: Path) -> int:
    from . import rope

    return rope.read_state(read_config(path)).window


def _measure(checkpoint, label, lengths, passkey, perplexity, documents, stride, max_tokens, protocol,
             settings, on_event) -> ModelRun:
    from .modeling import load_model

    loaded = load_model(checkpoint.path, device=settings.device, dtype=settings.dtype,
                        attention=settings.attention, device_map=settings.device_map)
    try:
        passkey_report = passkey_module.evaluate_passkey(
            loaded, lengths, protocol, batch_size=settings.batch_size, on_event=on_event).to_dict() if passkey else None
        perplexity_report = None
        if perplexity:
            from .perplexity import evaluate_perplexity

            perplexity_report = evaluate_perplexity(loaded, documents, lengths, stride=stride, max_tokens=max_tokens,
                                                    on_event=on_event).to_dict()
    finally:
        del loaded
        gc.collect()
        _empty_cuda_cache()
    return ModelRun(model=label, path=str(checkpoint.path), window=_window(checkpoint.path),
                    passkey=passkey_report, perplexity=perplexity_report, source=checkpoint.source)


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _notes(runs: list[ModelRun], lengths: list[int]) -> list[str]:
    notes = []
    for run in runs:
        beyond = [length for length in lengths if length > run.window]
        if beyond:
            notes.append(f"{run.model}: {', '.join(map(str, beyond))} tokens lie beyond its window of {run.window} "
                         "tokens (extrapolation, no interpolation there)")
    return notes


def _save(checkpoint: Checkpoint, report: VerifyReport, command: str, data: str | None) -> str | None:
    """Beside the model (never into the Hugging Face cache): the full record and a summary."""
    if checkpoint.source.get("repo") or checkpoint.source.get("embedded"):
        return None  # a cache is not the user's checkpoint; the report is printed instead
    path = checkpoint.path / VERIFY_RECORD
    record = {"created": now(), "command": command, "data": data, "versions": versions(), **report.to_dict()}
    atomic_write_json(path, record)
    picli_record = read_record(checkpoint.path)
    picli_record["verification"] = summarise(report, data)
    atomic_write_json(record_path(checkpoint.path), picli_record)
    return str(path)


def summarise(report: VerifyReport, data: str | None = None) -> dict:
    """What the model card needs: k_max and perplexity per length, model and baseline."""
    def one(run: ModelRun | None) -> dict | None:
        if run is None:
            return None
        summary = {"path": run.path, "source": run.source, "window": run.window}
        if run.passkey:
            summary["passkey_k_max"] = {str(r["length"]): r["k_max"] for r in run.passkey["results"]}
            summary["passkey_k_largest"] = {str(r["length"]): max(r["ks"]) for r in run.passkey["results"]}
            summary["passkey_lowest_success"] = {
                str(r["length"]): passkey_module.lowest_success(r["ks"], r["success"], r["k_max"])
                for r in run.passkey["results"]}
            summary["passkey_success"] = {str(r["length"]): sum(r["success"]) / len(r["success"])
                                          for r in run.passkey["results"]}
        if run.perplexity:
            summary["perplexity"] = {str(r["length"]): r["perplexity"] for r in run.perplexity["results"]}
        return summary

    protocol = report.model.passkey["protocol"] if report.model.passkey else None
    return {"created": now(), "passkey_protocol": protocol, "perplexity_data": data,
            "model": one(report.model), "baseline": one(report.baseline), "notes": report.notes}
