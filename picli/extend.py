"""`picli extend`: write Position Interpolation (or yarn, or ntk) into a new checkpoint.

Plan, then apply. `plan_extend` resolves MODEL, computes the new config (picli.rope) and the
list of files to write, and checks the output location; it writes nothing, so `--dry-run`
is just the plan rendered. `apply_extend` builds the output in a staging directory beside
the target, proves the result with the installed transformers (its inverse frequencies and
attention scaling must equal picli's own computation of the method, which the method itself
states: `expected_rope` in picli/rope/methods/), and only then renames it into place. The
source checkpoint is only ever read. `extend_command` is the whole command: plan, apply, remember the output
here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import rope
from .checkpoint import (Checkpoint, length_setting, outside_links, read_config, read_json_file, require_shards,
                         resolve)
from .errors import CannotExtend, NotACheckpoint, OutputError, SelfCheckFailed
from .events import Events
from .files import (atomic_write_json, check_output, check_writable_parent, copy_file, model_files,
                    staged_directory, staged_file, target_lock)
from .provenance import (RECORD, check_state_dir, extension_record, is_picli_output, is_record_file, read_record,
                         recorded_window, record_path, remember_last, sidecar_path, write_record)
from .self_check import self_check

# picli finetune's resumable training state (optimizer included) is not part of a model.
SKIPPED_DIRS = {".picli", ".git", ".cache", "__pycache__", "checkpoints"}
# Left out of the copy without a word: picli's own state and Python's cache. Everything else
# that is not part of a model (files.not_model_reason: hidden files, keys, tokens) is named.
SILENT_DIRS = {".picli", "__pycache__", "checkpoints"}
WEIGHT_MODES = ("copy", "hardlink", "symlink")


@dataclass(frozen=True)
class FileAction:
    path: str  # relative to the checkpoint
    size: int
    action: str  # "rewrite", "copy", "hardlink", "symlink"


@dataclass(frozen=True)
class ExtendPlan:
    source: Checkpoint
    output: Path
    target_window: int
    current_window: int
    original_window: int
    factor: float
    previous_factor: float
    previous_type: str  # "default", "linear", or the scheme --force replaces
    theta: float
    weights: str
    replace: bool
    max_position: str
    # file name -> [(key, before, after)]: the diff `--dry-run` shows.
    changes: dict[str, list[tuple[str, Any, Any]]]
    files: list[FileAction]
    new_files: dict[str, dict]  # file name -> new JSON content (HF checkpoints)
    gguf_updates: dict[str, tuple[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    method: str = "linear"
    parameters: dict = field(default_factory=dict)  # the method's numbers (rope.plan_config)
    left_out: list[dict] = field(default_factory=list)  # [{path, reason}]: not part of a model, not copied

    def to_dict(self) -> dict:
        """The plan as --dry-run and --json show it; the new files' full content is left out."""
        return {
            "source": str(self.source.path), "source_record": self.source.source, "output": str(self.output),
            "current_window": self.current_window, "target_window": self.target_window,
            "original_window": self.original_window, "factor": self.factor, "previous_factor": self.previous_factor,
            "theta": self.theta, "weights": self.weights, "max_position_embeddings": self.max_position,
            "changes": {name: [{"key": key, "before": before, "after": after} for key, before, after in diffs]
                        for name, diffs in self.changes.items()},
            "files": [asdict(action) for action in self.files],
            "warnings": self.warnings, "method": self.method, "parameters": self.parameters,
            "left_out": self.left_out,
        }


@dataclass(frozen=True)
class ExtendResult:
    plan: ExtendPlan
    self_check: dict
    record: dict


def default_output(checkpoint: Checkpoint, target_window: int, cwd: Path) -> Path:
    suffix = f"-{rope.format_window(target_window)}"
    if checkpoint.kind == "gguf":
        return cwd / f"{checkpoint.path.stem}{suffix}.gguf"
    return cwd / f"{checkpoint.name}{suffix}"


def plan_extend(
    model: str,
    target_window: int,
    output: Path | None = None,
    from_window: int | None = None,
    weights: str = "copy",
    max_position: str = "target",
    force: bool = False,
    on_event: Events = None,
    cwd: Path | None = None,
    method: str = "linear",
) -> ExtendPlan:
    rope.get_method(method)
    if weights not in WEIGHT_MODES:
        raise CannotExtend(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}",
                           hint="the default, copy, never shares storage with the source")
    if max_position not in ("target", "original"):
        raise CannotExtend(f"--max-position-embeddings must be target or original, got {max_position!r}",
                           hint="target is the transformers/llama.cpp convention; original suits vLLM")
    if from_window is not None and from_window <= 0:
        raise CannotExtend(f"--from must be a positive number of tokens, got {from_window}", hint="e.g. --from 4096")
    checkpoint = resolve(model, need_weights=False, on_event=on_event)
    if "repo" in checkpoint.source:
        # A Hub model is judged by its config.json before its weights download: a refusal that
        # depends on the architecture (Llama 4, M-RoPE with yarn) must not cost gigabytes.
        reason = rope.refusal(read_config(checkpoint.path), method)
        if reason:
            raise reason
        checkpoint = resolve(model, need_weights=True)
    cwd = cwd or Path.cwd()
    output = Path(output).expanduser() if output else default_output(checkpoint, target_window, cwd)
    output = output if output.is_absolute() else (cwd / output)
    output = output.parent.resolve() / output.name
    if checkpoint.kind == "gguf":
        plan = _plan_gguf(checkpoint, target_window, output, from_window, max_position, force, method)
    else:
        plan = _plan_hf(checkpoint, target_window, output, from_window, weights, max_position, force, method)
    _check_output(checkpoint, output, force)
    return plan


def _check_output(checkpoint: Checkpoint, output: Path, force: bool) -> None:
    if checkpoint.kind == "gguf" and output.is_dir():
        raise OutputError(f"output {output} is a directory; a GGUF is extended into a .gguf file",
                          hint="name a .gguf file with -o/--output")
    check_output(output, force=force, sources=[checkpoint.path], ours=is_picli_output,
                 mark=f"NAME.gguf.{RECORD} beside it" if checkpoint.kind == "gguf" else RECORD)
    check_writable_parent(output)


def _plan_hf(checkpoint, target_window, output, from_window, weights, max_position, force, method) -> ExtendPlan:
    source = checkpoint.path
    config = read_config(source)
    # What depends on the architecture first: a user who downloaded only config.json learns
    # the real reason (Llama 4, M-RoPE, no RoPE), not "no weight files".
    reason = rope.refusal(config, method)
    if reason:
        raise reason
    require_shards(source)
    _refuse_outside_links(source)
    record = read_record(source)
    # A checkpoint picli wrote says its window in its record, whichever convention it used.
    recorded = recorded_window(record)
    config_plan = rope.plan_config(config, target_window, method, from_window=from_window,
                                   keep_max_position=(max_position == "original"), force=force,
                                   recorded_window=recorded, recorded_rope=record.get("rope"))
    changes = {"config.json": config_plan.changes}
    new_files = {"config.json": config_plan.config}
    source_files, left_out = model_files(source, skip_dirs=SILENT_DIRS)
    withheld = {entry["path"] for entry in left_out}
    # Tokenizers truncate (or warn) at model_max_length and generate() stops at max_length:
    # raise them when they stood at the old window, leave deliberate other values alone.
    # Multimodal processors may carry the tokenizer's limit in their own files.
    for name, key in (("tokenizer_config.json", "model_max_length"), ("generation_config.json", "max_length"),
                      ("processor_config.json", "model_max_length"), ("processor_config.json", "max_length"),
                      ("preprocessor_config.json", "model_max_length"), ("preprocessor_config.json", "max_length")):
        if name in withheld:  # a side file holding a token is not rewritten into the output either
            continue
        side = new_files.get(name) or read_json_file(source / name)
        try:
            length_setting((side or {}).get(key))
        except ValueError as exc:  # not ours to guess: copied as it is, and said
            config_plan.warnings.append(f"{name} {key} {exc}; copied unchanged: set it to {target_window} "
                                        "in the output")
        if isinstance(side, dict) and side.get(key) == config_plan.current_window:
            updated = dict(side)
            updated[key] = target_window
            new_files[name] = updated
            changes.setdefault(name, []).append((key, config_plan.current_window, target_window))
    files = []
    for path in source_files:
        relative = str(path.relative_to(source))
        # The source's records are false for the output: its picli.json is rewritten below,
        # its verification is redone on the output.
        if relative in new_files or is_record_file(relative):
            continue
        action = weights if path.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")) else "copy"
        files.append(FileAction(relative, path.stat().st_size, action))
    files += [FileAction(name, 0, "rewrite") for name in new_files]
    files.append(FileAction(RECORD, 0, "rewrite"))
    return ExtendPlan(
        source=checkpoint, output=output, target_window=target_window,
        current_window=config_plan.current_window, original_window=config_plan.original_window,
        factor=config_plan.factor, previous_factor=config_plan.previous_factor,
        previous_type=config_plan.previous_type, theta=config_plan.theta,
        weights=weights, replace=force, max_position=max_position, changes=changes, files=files,
        new_files=new_files, warnings=config_plan.warnings, method=config_plan.method,
        parameters=config_plan.parameters, left_out=left_out,
    )


def _refuse_outside_links(source: Path) -> None:
    """Every file extend copies comes from the checkpoint itself (docs/safety.md)."""
    links = outside_links(source, skip=lambda relative, _: bool(SKIPPED_DIRS.intersection(relative.split("/"))))
    if links:
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise NotACheckpoint(f"{links[0]}{more}; picli copies only the checkpoint's own files",
                             hint="replace the link with the file itself, or remove it from the checkpoint")


def _plan_gguf(checkpoint, target_window, output, from_window, max_position, force, method) -> ExtendPlan:
    """The same planner as config.json's (rope.plan), on the GGUF's metadata keys (rope.gguf)."""
    from .gguf_io import read_gguf, rope_settings

    rope.values.check_target(target_window)
    info = read_gguf(checkpoint.path)
    arch = info.architecture
    record = read_record(checkpoint.path)
    # The one decision inspect shows as "can extend" (rope.gguf.plan): the same checks, in the same order.
    extension, updates = rope.gguf.plan(arch, info.metadata, rope_settings(info), record.get("rope"), method,
                                        rope.Request(target_window, from_window=from_window,
                                                     recorded_window=recorded_window(record),
                                                     keep_window=(max_position == "original"), force=force),
                                        file_name=checkpoint.path.name)
    meta = info.metadata
    changes = {checkpoint.path.name: [(name, meta.get(name), value) for name, (_, value) in updates.items()
                                      if meta.get(name) != value]}
    return ExtendPlan(
        source=checkpoint, output=output, target_window=target_window, current_window=extension.current_window,
        original_window=extension.original_window, factor=extension.factor,
        previous_factor=extension.previous_factor, previous_type=extension.previous_type, theta=extension.theta,
        weights="copy", replace=force, max_position=max_position, changes=changes,
        files=[FileAction(output.name, info.file_size, "rewrite"), FileAction(sidecar_path(output).name, 0, "rewrite")],
        new_files={}, gguf_updates=updates, warnings=extension.warnings, method=method,
        parameters=extension.parameters,
    )


def apply_extend(plan: ExtendPlan, command: str, on_event: Events = None) -> ExtendResult:
    if plan.source.kind == "gguf":
        return _apply_gguf(plan, command, on_event)
    source = plan.source.path
    total = sum(action.size for action in plan.files)
    done = 0
    with staged_directory(plan.output, replace=plan.replace) as staging:
        for action in plan.files:
            if action.action == "rewrite":
                continue
            target = staging / action.path
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(source / action.path, target, action.action)
            done += action.size
            if on_event:
                on_event({"kind": "progress", "task": "writing", "done": done, "total": total})
        for name, content in plan.new_files.items():
            atomic_write_json(staging / name, content)
        check = self_check(staging, source, plan)
        record = _record(plan, command, check)
        write_record(staging, record)
    return ExtendResult(plan, check, record)


def extend_command(model: str, target_window: int, *, dry_run: bool = False, command: str = "picli extend",
                   on_event: Events = None, **plan_options: Any) -> dict:
    """`picli extend`: plan (plan_options go to plan_extend), then, unless dry_run, apply it and
    remember the output as this directory's last checkpoint. The plan's warnings and what
    MODEL resolved to reach on_event before anything is written. Returns what --json prints:
    {dry_run, plan} and, once written, the self_check."""
    if not dry_run:
        check_state_dir()  # where the output is remembered: refused now, not after writing it
    plan = plan_extend(model, target_window, on_event=on_event, **plan_options)
    if on_event:
        for text in plan.warnings:
            on_event({"kind": "warning", "text": text})
        if plan.source.resolved_from:
            on_event({"kind": "message", "text": f"MODEL: {plan.source.resolved_from}"})
    if dry_run:
        return {"dry_run": True, "plan": plan.to_dict()}
    result = apply_extend(plan, command=command, on_event=on_event)
    remember_last(plan.output, "extend")
    return {"dry_run": False, "plan": plan.to_dict(), "self_check": result.self_check}


def _apply_gguf(plan: ExtendPlan, command: str, on_event: Events) -> ExtendResult:
    from .gguf_io import read_gguf, rewrite_gguf_metadata

    sidecar = record_path(plan.output)
    # One lock for the GGUF and its sidecar. The old sidecar leaves as the new GGUF lands
    # (staged_file's companion) and the new one is written after it, still under the lock:
    # a crash can leave a GGUF without its record, never beside another file's record.
    with target_lock(plan.output):
        with staged_file(plan.output, replace=plan.replace, companion=sidecar) as staging:
            rewrite_gguf_metadata(plan.source.path, staging, plan.gguf_updates, on_event=on_event, replace=True,
                                  staged=False)
            written = read_gguf(staging)
            source_info = read_gguf(plan.source.path)
            wrong = [name for name, (_, value) in plan.gguf_updates.items()
                     if not _same(written.metadata.get(name), value)]
            if wrong or written.tensor_count != source_info.tensor_count or written.data_bytes != source_info.data_bytes:
                raise SelfCheckFailed(f"the written GGUF does not read back as intended ({', '.join(wrong) or 'tensors differ'})",
                                      hint="please report this; nothing was written")
            check = {"ok": True, "method": "GGUF metadata read back; tensor data section copied unchanged",
                     "tensors": written.tensor_count}
            record = _record(plan, command, check)
        atomic_write_json(sidecar, record)
    return ExtendResult(plan, check, record)


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, float):
        return found is not None and abs(float(found) - expected) <= 1e-6 * abs(expected)
    return found == expected


def _record(plan: ExtendPlan, command: str, check: dict) -> dict:
    return extension_record(
        read_record(plan.source.path), command=command, source=plan.source.source,
        base_model=plan.source.base_model, factor=plan.factor, previous_factor=plan.previous_factor,
        original_window=plan.original_window, current_window=plan.current_window,
        target_window=plan.target_window, theta=plan.theta, max_position_embeddings=plan.max_position,
        changes=plan.changes, weights=plan.weights, self_check=check, method=plan.method,
        parameters=plan.parameters)
