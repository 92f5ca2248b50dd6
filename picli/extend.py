"""`picli extend`: write Position Interpolation (or yarn, or ntk) into a new checkpoint.

Plan, then apply. `plan_extend` resolves MODEL, computes the new config (picli.rope) and the
list of files to write, and checks the output location; it writes nothing, so `--dry-run`
is just the plan rendered. `apply_extend` builds the output in a staging directory beside
the target, proves the result with the installed transformers (its inverse frequencies and
attention scaling must equal picli's own computation of the method: the source's divided
by the factor for linear PI, rope.yarn_inverse_frequencies for yarn, the plain formula at
the new theta for ntk), and only then renames it into place. The source checkpoint is only
ever read. `extend_command` is the whole command: plan, apply, remember the output here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import rope
from .checkpoint import (Checkpoint, length_setting, outside_links, read_config, read_json_file, require_shards,
                         resolve)
from .errors import CannotExtend, NotACheckpoint, OutputError, SelfCheckFailed
from .events import Events
from .files import (atomic_write_json, check_writable_parent, copy_file, staged_directory, staged_file,
                    target_lock)
from .provenance import (RECORD, check_state_dir, extension_record, is_record_file, read_record, recorded_window,
                         record_path, remember_last, sidecar_path, versions, write_record)

# picli finetune's resumable training state (optimizer included) is not part of a model.
SKIPPED_DIRS = {".picli", ".git", ".cache", "__pycache__", "checkpoints"}
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
    parameters: dict = field(default_factory=dict)  # the method's numbers (rope.plan_method_config)

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
    rope.check_method(method)
    if weights not in WEIGHT_MODES:
        raise CannotExtend(f"--weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}",
                           hint="the default, copy, never shares storage with the source")
    if max_position not in ("target", "original"):
        raise CannotExtend(f"--max-position-embeddings must be target or original, got {max_position!r}",
                           hint="target is the transformers/llama.cpp convention; original suits vLLM")
    if from_window is not None and from_window <= 0:
        raise CannotExtend(f"--from must be a positive number of tokens, got {from_window}", hint="e.g. --from 4096")
    checkpoint = resolve(model, need_weights=True, on_event=on_event)
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
    source = checkpoint.path.resolve()
    if output == source:
        raise OutputError("the output is the source checkpoint itself", hint="choose another -o/--output")
    if output.is_relative_to(source):
        raise OutputError(f"the output {output} is inside the source checkpoint {source}",
                          hint="choose an -o/--output outside the source")
    if source.is_relative_to(output):
        # --force would replace the output directory, and the source with it.
        raise OutputError(f"the source {source} is inside the output {output}",
                          hint="choose an -o/--output that does not contain the source")
    if checkpoint.kind == "gguf" and output.is_dir():
        raise OutputError(f"output {output} is a directory; a GGUF is extended into a .gguf file",
                          hint="name a .gguf file with -o/--output")
    if (output.exists() or output.is_symlink()) and not force:
        raise OutputError(f"output {output} already exists", hint="pass --force to replace it, or choose -o/--output")
    check_writable_parent(output)


def _plan_hf(checkpoint, target_window, output, from_window, weights, max_position, force, method) -> ExtendPlan:
    source = checkpoint.path
    config = read_config(source)
    require_shards(source)
    _refuse_outside_links(source)
    record = read_record(source)
    # A checkpoint picli wrote says its window in its record, whichever convention it used.
    recorded = recorded_window(record)
    config_plan = rope.plan_method_config(config, target_window, method, from_window=from_window,
                                          keep_max_position=(max_position == "original"), force=force,
                                          recorded_window=recorded, recorded_rope=record.get("rope"))
    changes = {"config.json": config_plan.changes}
    new_files = {"config.json": config_plan.config}
    # Tokenizers truncate (or warn) at model_max_length and generate() stops at max_length:
    # raise them when they stood at the old window, leave deliberate other values alone.
    # Multimodal processors may carry the tokenizer's limit in their own files.
    for name, key in (("tokenizer_config.json", "model_max_length"), ("generation_config.json", "max_length"),
                      ("processor_config.json", "model_max_length"), ("processor_config.json", "max_length"),
                      ("preprocessor_config.json", "model_max_length"), ("preprocessor_config.json", "max_length")):
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
    for path in _source_files(source):
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
        parameters=config_plan.parameters,
    )


def _refuse_outside_links(source: Path) -> None:
    """Every file extend copies comes from the checkpoint itself (docs/safety.md)."""
    links = outside_links(source, skip=lambda relative, _: bool(SKIPPED_DIRS.intersection(relative.split("/"))))
    if links:
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise NotACheckpoint(f"{links[0]}{more}; picli copies only the checkpoint's own files",
                             hint="replace the link with the file itself, or remove it from the checkpoint")


def _source_files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*")
                  if p.is_file() and not SKIPPED_DIRS.intersection(p.relative_to(source).parts))


def _plan_gguf(checkpoint, target_window, output, from_window, max_position, force, method) -> ExtendPlan:
    """The same methods and stacking rules as rope.plan_method_config, on GGUF metadata keys."""
    from .gguf_io import read_gguf, rope_settings

    rope.values.check_target(target_window)
    info = read_gguf(checkpoint.path)
    arch = info.architecture
    key = f"{arch}.rope".__add__
    settings = rope_settings(info)
    if arch in rope.GGUF_PROJECTOR:
        raise CannotExtend(f"this GGUF is a multimodal projector (mmproj, architecture {arch}): an image encoder "
                           "with no text positions", hint="extend the language model's GGUF; the mmproj file works "
                           "with it unchanged")
    if arch in rope.GGUF_NO_ROPE or not settings.has_rope:
        raise CannotExtend(f"this GGUF ({arch}) has no RoPE metadata ({arch}.rope.*), so there is nothing to interpolate",
                           hint="Position Interpolation applies only to RoPE models")
    meta = info.metadata
    recorded_rope = read_record(checkpoint.path).get("rope") or {}
    scaling_type = settings.scaling_type
    # ntk leaves no scaling type, only a larger freq_base: the sidecar picli.json says it.
    previous_type = "ntk" if scaling_type == "none" and recorded_rope.get("type") == "ntk" else scaling_type
    previous_factor = settings.factor if previous_type in ("linear", "yarn") else 1.0
    if previous_factor < 1:
        raise CannotExtend(f"the existing {previous_type} factor {previous_factor:g} is below 1, which is "
                           "extrapolation, not interpolation",
                           hint="fix the GGUF's rope.scaling.factor, or extend the base model")
    context_key = f"{arch}.context_length"
    if settings.context_length is None and from_window is None:
        raise CannotExtend(f"this GGUF has no {context_key}", hint="pass --from N with the model's trained window")
    context = settings.context_length if settings.context_length is not None else from_window
    original_context = settings.original_context_length
    theta = settings.freq_base
    same = previous_type in ("none", method)
    if not same:
        if not force:
            raise CannotExtend(f"this GGUF already uses {previous_type} RoPE scaling; {method} on top of it mixes two "
                               "methods that no runtime composes",
                               hint=f"extend the base model instead, or pass --force to replace {previous_type} with "
                                    f"{method} from the pretraining window")
        if previous_type == "ntk":
            theta = float((recorded_rope.get("parameters") or {}).get("theta_before") or 0) or theta
        previous_factor = 1.0
        current_window = from_window or int(original_context or recorded_rope.get("original_window") or context)
    elif previous_type == "ntk":
        previous_factor = float(recorded_rope.get("factor") or 1.0)
        current_window = from_window or int(recorded_rope.get("target_window") or context)
    else:
        current_window = from_window or context
        if previous_type in ("linear", "yarn") and original_context and not from_window:
            current_window = int(original_context * previous_factor)
    if method == "ntk" and target_window < current_window:
        raise CannotExtend(f"--method ntk with --to {target_window} below the current window of {current_window} "
                           f"tokens is a factor {target_window / current_window:.3g} < 1: it would shrink the window",
                           hint=f"pass a target above {current_window}")
    if target_window <= current_window:
        raise CannotExtend(f"--to {target_window} is not larger than the current window ({current_window} tokens)",
                           hint=f"pass a target above {current_window}")
    factor = float(previous_factor * target_window / current_window)
    original_window = round(current_window / previous_factor)
    context_after = target_window if max_position == "target" else \
        (settings.context_length if settings.context_length is not None else current_window)
    warnings = [] if same else [f"--force: replacing {previous_type} scaling with {method} from {current_window} tokens"]
    updates: dict[str, tuple[str, Any]] = {context_key: ("UINT32", context_after)}
    if method == "ntk":
        rotary_dim = _gguf_rotary_dim(meta, arch)
        if rotary_dim <= 2:
            raise CannotExtend(f"--method ntk needs a rotary dimension above 2, this model rotates {rotary_dim}",
                               hint="use --method linear")
        theta_before = float((recorded_rope.get("parameters") or {}).get("theta_before") or theta) \
            if previous_type == "ntk" else theta
        new_theta = rope.ntk_theta(theta, target_window / current_window, rotary_dim)
        updates[key(".freq_base")] = ("FLOAT32", new_theta)
        if scaling_type != "none":
            updates[key(".scaling.type")] = ("STRING", "none")
            updates[key(".scaling.factor")] = ("FLOAT32", 1.0)
        parameters = {"scale": factor, "rotary_dim": rotary_dim, "exponent": rotary_dim / (rotary_dim - 2),
                      "theta_before": theta_before, "theta": new_theta, "max_position_embeddings": max_position}
        theta = new_theta
    else:
        updates[key(".scaling.type")] = ("STRING", method)
        updates[key(".scaling.factor")] = ("FLOAT32", factor)
        updates[key(".scaling.original_context_length")] = ("UINT32", original_window)
        if not same and previous_type == "ntk":
            updates[key(".freq_base")] = ("FLOAT32", theta)
        parameters = {"factor": factor}
        if method == "yarn":
            parameters.update({"original_max_position_embeddings": original_window,
                               "beta_fast": rope.YARN_BETA_FAST, "beta_slow": rope.YARN_BETA_SLOW,
                               "attention_factor": rope.yarn_attention_factor(factor),
                               "max_position_embeddings": max_position})
    changes = {checkpoint.path.name: [(name, meta.get(name), value) for name, (_, value) in updates.items()
                                      if meta.get(name) != value]}
    return ExtendPlan(
        source=checkpoint, output=output, target_window=target_window, current_window=current_window,
        original_window=original_window, factor=factor, previous_factor=previous_factor,
        previous_type=previous_type, theta=theta, weights="copy", replace=force,
        max_position=max_position, changes=changes,
        files=[FileAction(output.name, info.file_size, "rewrite"), FileAction(sidecar_path(output).name, 0, "rewrite")],
        new_files={}, gguf_updates=updates, warnings=warnings, method=method, parameters=parameters,
    )


def _gguf_rotary_dim(meta: dict, arch: str) -> int:
    """d of ntk's s^(d/(d-2)): rope.dimension_count, else the head dimension."""
    heads = meta.get(f"{arch}.attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length") or (
        int(meta[f"{arch}.embedding_length"]) // int(heads)
        if isinstance(heads, int) and heads > 0 and f"{arch}.embedding_length" in meta else None)
    rotary_dim = meta.get(f"{arch}.rope.dimension_count") or head_dim
    if not isinstance(rotary_dim, int) or isinstance(rotary_dim, bool) or rotary_dim <= 0:
        raise CannotExtend(f"this GGUF does not say its rotary dimension ({arch}.rope.dimension_count), which "
                           "--method ntk needs", hint="use --method linear or yarn, or extend the HF checkpoint")
    return rotary_dim


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


# ---------------------------------------------------------------------------------------
# The self-check: what the installed transformers will actually compute.


def effective_rope(checkpoint_dir: Path) -> dict[str, tuple["Any", float]]:
    """(inverse frequencies, attention scaling) as the installed transformers computes them,
    per layer type: {layer type: (tensor, float)}.

    transformers itself reads the config (that is where the schema traps are: rope_scaling
    winning, top-level theta, partial rotary, nested layer types) and computes every scaled
    type with its own ROPE_INIT_FUNCTIONS, whose second value is what the rotary classes
    store as attention_scaling (multiplied into cos and sin). Unscaled layers use the one
    formula every default rotary class shares. Importing a modeling module would add ~1.5 s
    for nothing; the tests hold this function against each family's own rotary class.
    """
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    transformers.logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(checkpoint_dir)
    except (ValueError, KeyError) as exc:
        # An unknown model_type (or one needing trust_remote_code): transformers cannot
        # build the config, so nothing can prove the written RoPE. Its message spans lines.
        reason = " ".join(str(exc).split())
        raise SelfCheckFailed(f"transformers {transformers.__version__} cannot read {checkpoint_dir.name}/config.json, "
                              f"so picli cannot check the result: {reason[:200]}",
                              hint="nothing was written; use a model_type the installed transformers knows") from None
    config = getattr(config, "text_config", None) or config
    config.standardize_rope_params()
    params = config.rope_parameters
    layer_types = config.nested_rope_parameter_keys(params) or [None]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    computed = {}
    for layer_type in layer_types:
        layer_params = params[layer_type] if layer_type else params
        if layer_params is None:
            continue
        rope_type = layer_params.get("rope_type", "default")
        if rope_type == "default":
            dim = int(head_dim * layer_params.get("partial_rotary_factor", 1.0))
            exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
            inv_freq, attention_scaling = 1.0 / (layer_params["rope_theta"] ** exponents), 1.0
        else:
            inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", layer_type=layer_type)
        computed[layer_type or "all"] = (inv_freq.double(), float(attention_scaling))
    return computed


def effective_inv_freqs(checkpoint_dir: Path) -> dict[str, "Any"]:
    """Inverse frequencies as the installed transformers computes them: {layer type: tensor}."""
    return {layer_type: frequencies for layer_type, (frequencies, _) in effective_rope(checkpoint_dir).items()}


def effective_attention_scaling(checkpoint_dir: Path) -> dict[str, float]:
    """The rotary classes' attention_scaling as the installed transformers computes it: {layer type: float}."""
    return {layer_type: attention for layer_type, (_, attention) in effective_rope(checkpoint_dir).items()}


def _expected_rope(plan: ExtendPlan, state, source: tuple) -> tuple[Any, float, str]:
    """picli's own (inverse frequencies, attention scaling) for an interpolated layer, and how."""
    import torch

    source_frequencies, _ = source
    if plan.method == "yarn":
        original = plan.parameters["original_max_position_embeddings"]
        frequencies = rope.yarn_inverse_frequencies(plan.theta, state.rotary_dim, plan.factor, original)
        return (torch.tensor(frequencies, dtype=torch.float64), rope.yarn_attention_factor(plan.factor),
                f"yarn (factor {plan.factor:g}, ramp at the original {original} tokens, attention x"
                f"{rope.yarn_attention_factor(plan.factor):.6g})")
    if plan.method == "ntk":
        return (torch.tensor(rope.inverse_frequencies(plan.theta, state.rotary_dim), dtype=torch.float64), 1.0,
                f"plain RoPE at the ntk theta {plan.theta:.6g}")
    if plan.previous_type in rope.OTHER_SCHEMES:  # --force replaced another scheme: plain PI
        reference = rope.inverse_frequencies(plan.theta, state.rotary_dim, plan.factor)
        return torch.tensor(reference, dtype=torch.float64), 1.0, f"plain RoPE / {plan.factor:g}"
    step = plan.factor / plan.previous_factor
    return source_frequencies / step, 1.0, f"the source's / {step:g}"


def self_check(new_dir: Path, source_dir: Path, plan: ExtendPlan) -> dict:
    """On interpolated layers, transformers' inverse frequencies and attention scaling equal
    picli's own computation of the method; elsewhere they equal the source's."""
    import torch

    new_attention, source_attention = effective_attention_scaling(new_dir), effective_attention_scaling(source_dir)
    new = {name: (frequencies, new_attention[name]) for name, frequencies in effective_inv_freqs(new_dir).items()}
    source = {name: (frequencies, source_attention[name])
              for name, frequencies in effective_inv_freqs(source_dir).items()}
    state = rope.read_state(plan.new_files["config.json"])
    layers, worst, attention_ok = {}, 0.0, True
    for layer_type, (frequencies, attention) in new.items():
        interpolated = layer_type == "all" or layer_type in rope.INTERPOLATED_LAYER_TYPES
        if interpolated:
            expected, expected_attention, how = _expected_rope(plan, state, source[layer_type])
        else:
            (expected, expected_attention), how = source[layer_type], "the source's"
        if frequencies.shape != expected.shape:
            raise SelfCheckFailed(f"self-check: {layer_type} has {frequencies.numel()} frequencies, "
                                  f"expected {expected.numel()}", hint="nothing was written; please report this")
        for whose, checked in (("output's", frequencies), ("source's", expected)):
            # max() and comparisons let NaN through (max(0.0, nan) is 0.0): test it by name.
            if not bool(torch.isfinite(checked).all()):
                bad = checked[~torch.isfinite(checked)][0].item()
                raise SelfCheckFailed(
                    f"self-check: the {whose} inverse frequencies for {layer_type} layers are not finite ({bad}) "
                    f"as transformers computes them (theta {plan.theta:g}, factor {plan.factor:g})",
                    hint="nothing was written; check rope_theta and the scaling factor in config.json")
        error = float(((frequencies - expected).abs() / expected.abs()).max())
        if not math.isfinite(error):
            raise SelfCheckFailed(f"self-check: the relative error for {layer_type} layers is not finite ({error}): "
                                  "an inverse frequency of the source is 0",
                                  hint="nothing was written; check rope_theta and head_dim in config.json")
        same_attention = abs(attention - expected_attention) <= 1e-6 * expected_attention
        layers[layer_type] = {"interpolated": interpolated, "max_relative_error": error, "expected": how,
                              "attention_scaling": attention, "expected_attention_scaling": expected_attention}
        if interpolated and plan.method == "linear":
            layers[layer_type]["factor_applied"] = float((source[layer_type][0] / frequencies).mean())
        worst = max(worst, error)
        attention_ok = attention_ok and same_attention
    tolerance = 1e-5  # float32 buffers: relative rounding ~1e-7, far below a wrong factor or theta
    legacy = rope.predict_transformers4(rope.language_config(plan.new_files["config.json"]))
    if not (math.isfinite(legacy["theta"]) and math.isfinite(legacy["factor"])):
        raise SelfCheckFailed(f"self-check: transformers 4.x would read theta {legacy['theta']} and factor "
                              f"{legacy['factor']} from the output, which are not finite",
                              hint="nothing was written; check rope_theta and the scaling factor in config.json")
    legacy_type, legacy_factor = ("default", 1.0) if plan.method == "ntk" else (plan.method, plan.factor)
    legacy_ok = abs(legacy["factor"] - legacy_factor) < 1e-9 and legacy["rope_type"] == legacy_type \
        and abs(legacy["theta"] - plan.theta) <= 1e-6 * plan.theta
    check = {"ok": worst < tolerance and legacy_ok and attention_ok,
             "method": "transformers reads source and output; its inverse frequencies and attention scaling are "
                       "compared with picli's own computation of the method",
             "extension_method": plan.method,
             "transformers": versions().get("transformers"), "max_relative_error": worst, "layers": layers,
             "transformers4_reads": {"theta": legacy["theta"], "rope_type": legacy["rope_type"], "factor": legacy["factor"]}}
    if plan.method == "yarn":
        check["readers"] = plan.parameters.get("readers")
    if not check["ok"]:
        problem = f"inverse frequencies off by {worst:.2e} (relative)" if worst >= tolerance else \
            ("attention scaling differs" if not attention_ok else "4.x would read it differently")
        raise SelfCheckFailed(
            f"self-check failed ({plan.method}): transformers computes {problem} from picli's own computation",
            hint="nothing was written; run with PICLI_DEBUG=1 and please report this")
    return check
