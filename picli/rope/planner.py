"""The rules every method obeys, written once: from a format-neutral `Current` and a `Request`
to an `Extension` that the config.json writer (config_plan.py) and the GGUF writer (gguf.py)
both render.

- Stacking: the same method again composes (the method says how: methods/*.compose);
  another scheme is refused unless --force, which replaces it from the pretraining window
  (and, for ntk, the theta before it); an unknown type is refused. ntk leaves no scaling
  type, so it is known only from picli.json's record.
- The window: --from, else picli.json's recorded window, else the file's own.
- The target must be larger than the current window.
- The factor composes: F_new = F_old * target / current.
Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import CannotExtend
from . import values
from .methods import METHODS, READ_ONLY_TYPES, Current, Extension, Method, Request, Start, get_method


def previous_method(scaling_type: str, record: dict | None) -> str:
    """The method a checkpoint already carries: its scaling type, or the method picli.json names
    when that method leaves no scaling type (ntk: only a larger theta)."""
    recorded = (record or {}).get("type")
    if scaling_type == "default" and recorded in METHODS and METHODS[recorded].rope_type is None:
        return recorded
    return scaling_type


def carried_factor(previous: str, record: dict | None, file_factor: float) -> float:
    """The factor a checkpoint carries: its file's, or picli.json's for a method the file cannot show."""
    if previous in METHODS and METHODS[previous].rope_type is None:
        return float((record or {}).get("factor") or 1.0)
    return file_factor


def plan(current: Current, method_name: str, request: Request) -> Extension:
    """The extension `method_name` makes of `current`, with the stacking rules."""
    method = get_method(method_name)
    values.check_target(request.target_window)
    if request.from_window is not None:
        values.check_target(request.from_window, "--from")
    if request.recorded_window is not None:
        values.window(request.recorded_window, "rope.target_window", where="picli.json")
    method.refuse(current)
    if current.window is None and request.from_window is None:
        raise CannotExtend(f"this {current.names.what} has no {current.names.window}",
                           hint="pass --from N with the model's trained window")
    warnings: list[str] = []
    start = _start(current, method, request, warnings)
    if request.target_window <= start.current_window:
        raise CannotExtend(_not_larger(request.target_window, start.current_window),
                           hint=f"pass a target above {start.current_window}, or --from N if the checkpoint's "
                                "window is wrong")
    step = request.target_window / start.current_window
    factor = float(start.previous_factor * request.target_window / start.current_window)
    kept = current.window if current.window is not None and not current.window_from_default else start.current_window
    extension = Extension(
        method=method.name, factor=factor, previous_factor=start.previous_factor,
        previous_type=current.scaling_type, current_window=start.current_window,
        target_window=request.target_window, original_window=start.original_window,
        theta=method.new_theta(start.theta, step, current),
        window_after=int(kept if request.keep_window else request.target_window),
        scaling=_scaling(method, current, factor, start.original_window), parameters={}, warnings=warnings)
    return replace(extension, parameters=method.parameters(extension, current, request))


def _scaling(method: Method, current: Current, factor: float, original_window: int) -> dict | None:
    """The method's scaling; stacked on itself, with every key of the source's block that the
    method does not recompute kept as it was (a key picli does not model still means something
    to the runtimes that read it)."""
    scaling = method.scaling(factor, original_window)
    if scaling is None or current.scaling_type != method.name:
        return scaling
    return {**scaling, **method.kept(current)}


def _not_larger(target_window: int, current_window: int) -> str:
    """Why a target at or below the current window is refused, in one wording for every method."""
    text = f"--to {target_window} is not larger than the current window of {current_window} tokens"
    if target_window < current_window:
        text += f": a factor {target_window / current_window:.3g} < 1 would shrink the window"
    return text


def _start(current: Current, method: Method, request: Request, warnings: list[str]) -> Start:
    """Where `method` starts from on `current`: nothing to compose, itself again, or a replaced scheme."""
    previous = current.scaling_type
    if previous == "default":
        window = next(value for value in (request.from_window, request.recorded_window, current.window)
                      if value is not None)
        return Start(window, window, 1.0, current.theta)
    if previous == method.name:
        return method.compose(current, request, warnings)
    if not (request.force and (previous in METHODS or previous in READ_ONLY_TYPES)):
        raise stacking_refusal(previous, method.name, current.names.what, current.names.scaling)
    window, theta = _pretraining(current, request)
    warnings.append(f"--force: replacing {previous} scaling with {method.label} from {window} tokens"
                    + (f" and theta {theta:g}" if theta != current.theta else ""))
    return Start(window, window, 1.0, theta)


def stacking_refusal(previous: str, method_name: str, what: str = "checkpoint",
                     scaling_key: str = "rope_scaling / rope_parameters") -> CannotExtend | None:
    """Why `method_name` cannot go on a checkpoint that carries `previous`, or None when it can
    (unscaled, or the same method: it composes). --force lifts the refusal for a scheme picli knows."""
    if previous in ("default", method_name):
        return None
    if previous in METHODS or previous in READ_ONLY_TYPES:
        label = METHODS[method_name].label if method_name in METHODS else method_name
        return CannotExtend(f"this {what} already uses {previous} RoPE scaling; {label} on top of it mixes two "
                            "methods that no runtime composes",
                            hint=f"extend the base model instead, or pass --force to replace {previous} with "
                                 f"{label} from the pretraining window")
    known = sorted(set(METHODS) | READ_ONLY_TYPES)
    return CannotExtend(f"unknown RoPE scaling type {previous!r}, so the current positions cannot be read",
                        hint=f"picli reads {', '.join(known)} or no scaling; fix {scaling_key}")


def _pretraining(current: Current, request: Request) -> tuple[int, float]:
    """The window and theta a replaced scheme started from (--force): --from, else picli.json,
    else the file's original window, else what the replaced method says its window hides.
    The theta before a method that changed it (ntk) is known only from picli.json."""
    record, previous = current.record, METHODS.get(current.scaling_type)
    if previous is not None and previous.rope_type is None:
        theta = (record.get("parameters") or {}).get("theta_before")
        window = request.from_window or record.get("original_window")
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0 or not window:
            raise CannotExtend(f"picli.json says {previous.name} but not the theta and window before it, so "
                               f"{previous.name} cannot be replaced", hint="extend the base model instead")
        return int(window), float(theta)
    if request.from_window:
        return request.from_window, current.theta
    if record.get("original_window"):
        return int(record["original_window"]), current.theta
    if current.original_window:
        return current.original_window, current.theta
    guess = previous.pretraining_window(current) if previous is not None else None
    return (current.window if guess is None else guess), current.theta


def format_window(tokens: int) -> str:
    """16384 -> '16k', 12000 -> '12000'."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)
