"""The methods: what each one computes, and the plan that writes it into a config.

Today one method, linear Position Interpolation (Chen et al. 2023, arXiv 2306.15595):
position m is replaced by m * L / L' (L trained window, L' target). In transformers this is
`rope_type: linear` with `factor = L'/L`, i.e. every inverse frequency divided by the
factor. A new method (yarn, ntk) adds its own factor / scaling functions beside the linear
ones and its branch in `plan_config`; reading and writing the schemas stays in schema.py.
Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import CannotExtend
from . import values
from .families import ROPE_KEYS, family_of, language_config, refusal
from .schema import read_state, wrapper_conflict, write_schemas

# Schemes that are not PI; stacking linear on them would be a different method.
OTHER_SCHEMES = {"llama3", "yarn", "longrope", "dynamic", "su", "ntk"}


@dataclass(frozen=True)
class ConfigPlan:
    """The new config.json and why: the output of `plan_config`."""

    config: dict
    factor: float
    previous_factor: float
    previous_type: str
    current_window: int
    target_window: int
    original_window: int  # the pretraining window: current_window / previous_factor
    theta: float
    changes: list[tuple[str, Any, Any]]  # (key, before, after), top-level keys of config.json
    warnings: list[str] = field(default_factory=list)


def linear_factor(previous_factor: float, current_window: int, target_window: int) -> float:
    """PI's factor L'/L, composed with an existing linear one: F_new = F_old * L' / L.

    Always a float: old transformers 4.x rejects an int factor."""
    return float(previous_factor * target_window / current_window)


def linear_scaling(factor: float) -> dict:
    """Linear PI's part of both schemas (schema.write_schemas adds theta and the legacy key)."""
    return {"rope_type": "linear", "factor": factor}


def plan_config(
    config: dict,
    target_window: int,
    from_window: int | None = None,
    keep_max_position: bool = False,
    force: bool = False,
    recorded_window: int | None = None,
) -> ConfigPlan:
    """The config.json that gives `target_window` by linear PI, with every reader agreeing.

    from_window overrides the current window (a wrong max_position_embeddings);
    recorded_window is the window picli.json recorded for a checkpoint picli wrote.
    """
    reason = refusal(config)
    if reason:
        raise reason
    values.check_target(target_window)
    if from_window is not None:
        values.check_target(from_window, "--from")
    if recorded_window is not None:
        recorded_window = values.window(recorded_window, "rope.target_window", where="picli.json")
    if isinstance(config.get("text_config"), dict):
        return _plan_wrapper(config, target_window, from_window, keep_max_position, force, recorded_window)
    family = family_of(config)
    state = read_state(config)
    warnings: list[str] = []
    if state.theta_from_default and family.theta_default_4x is not None:
        warnings.append(f"config.json gives no rope_theta: transformers 5 reads {family.theta_default:g}, 4.x reads "
                        f"{family.theta_default_4x:g}; picli uses {state.theta:g} and writes it explicitly")
    if family.shared_sliding and (config.get("sliding_window") or state.model_type == "gemma2"):
        warnings.append(f"{state.model_type} has one RoPE config for its sliding-window and global layers, "
                        "so the sliding layers are interpolated too")
    if not state.known_family:
        warnings.append(f"{state.model_type} is not in picli's family table: writing the common form; "
                        "the self-check with transformers decides")
    if state.disagreement:
        warnings.append(state.disagreement + " - picli writes both consistently")

    previous_factor, previous_type = state.factor, state.scaling_type
    if previous_type in OTHER_SCHEMES:
        if not force:
            raise CannotExtend(
                f"this checkpoint already uses {previous_type} RoPE scaling (factor {previous_factor:g}); "
                "linear PI on top of it is a different scheme",
                hint="extend the base model instead, or pass --force to replace the scheme with linear PI",
            )
        # Replacing the scheme: interpolate from the pretraining window, not the extended one.
        base_window = next(window for window in (from_window, state.original_window_hint, state.window)
                           if window is not None)
        warnings.append(f"--force: replacing {previous_type} scaling with linear PI from {base_window} tokens")
        current_window, previous_factor = base_window, 1.0
    elif previous_type not in ("default", "linear"):
        raise CannotExtend(f"unknown RoPE scaling type {previous_type!r} in config.json, so the current positions "
                           "cannot be read", hint="picli reads linear, " + ", ".join(sorted(OTHER_SCHEMES))
                           + " or no scaling; fix rope_scaling / rope_parameters")
    else:
        if previous_type == "linear" and previous_factor < 1:
            # Old 4.x configs refuse a linear factor <= 1, and below 1 it stretches positions
            # past the trained range (extrapolation), so there is no PI to compose with.
            raise CannotExtend(f"the existing linear factor {previous_factor:g} is below 1, which is extrapolation, "
                               "not interpolation", hint="fix the factor in config.json, or extend the base model")
        if previous_type == "linear" and from_window is None and recorded_window is None:
            current_window = _linear_current_window(config, state, warnings)
        else:
            current_window = next(window for window in (from_window, recorded_window, state.window)
                                  if window is not None)
    if target_window <= current_window:
        raise CannotExtend(
            f"--to {target_window} is not larger than the current window of {current_window} tokens",
            hint=f"pass a target above {current_window}, or --from N if the config's window is wrong",
        )

    factor = linear_factor(previous_factor, current_window, target_window)
    new = write_schemas(config, family, state, linear_scaling(factor))
    window_after = config.get("max_position_embeddings") if keep_max_position else target_window
    if window_after is None and keep_max_position:
        window_after = current_window
    new["max_position_embeddings"] = int(window_after)

    changes = [(key, config.get(key), new.get(key)) for key in new if config.get(key) != new.get(key)]
    return ConfigPlan(
        config=new, factor=factor, previous_factor=previous_factor, previous_type=previous_type,
        current_window=current_window, target_window=target_window,
        original_window=round(current_window / previous_factor), theta=state.theta,
        changes=changes, warnings=warnings,
    )


def _linear_current_window(config: dict, state, warnings: list[str]) -> int:
    """The window an existing linear factor already gives, when neither --from nor picli.json says.

    With original_max_position_embeddings (top level or in the RoPE dict) it is that window
    times the factor. Without it, max_position_embeddings can be read two ways (transformers'
    convention: the window as extended; vLLM's: the pretraining window, to be multiplied) and
    the new factor differs by the old one: refuse rather than guess (DESIGN.md §2).
    """
    original = config.get("original_max_position_embeddings") or state.original_window_hint
    if original:
        current = round(int(original) * state.factor)
        warnings.append(f"existing linear factor {state.factor:g}: composing from original_max_position_embeddings "
                        f"{int(original)}, so the current window is {current} tokens")
        return current
    if family_of(config).window_includes_factor:
        warnings.append(f"existing linear factor {state.factor:g}: {state.model_type}'s max_position_embeddings "
                        f"({state.window}) is its window after that factor (the family's convention)")
        return state.window
    as_written, multiplied = state.window, round(state.window * state.factor)
    raise CannotExtend(
        f"existing linear factor {state.factor:g} with max_position_embeddings {as_written} and no "
        "original_max_position_embeddings or picli.json: the current window is ambiguous",
        hint=f"pass --from {as_written} if {as_written} is the window as extended (transformers' convention: "
             f"pretraining window {round(as_written / state.factor)}), or --from {multiplied} if {as_written} is the "
             f"pretraining window (vLLM's convention: {as_written} x {state.factor:g})",
    )


def _plan_wrapper(config: dict, target_window: int, from_window: int | None, keep_max_position: bool,
                  force: bool, recorded_window: int | None) -> ConfigPlan:
    """A multimodal wrapper: the language model's config (text_config) gets the plan; the
    vision tower's config is left as it is."""
    conflict = wrapper_conflict(config)
    if conflict:
        raise CannotExtend(conflict, hint="make the top-level RoPE keys match text_config, or remove them")
    text = language_config(config)
    inner = plan_config(text, target_window, from_window=from_window, keep_max_position=keep_max_position,
                        force=force, recorded_window=recorded_window)
    new = copy.deepcopy(config)
    new["text_config"] = inner.config
    # RoPE keys repeated at the wrapper's top level (agreeing, or conflict above) stay agreeing.
    for key in (*ROPE_KEYS, "max_position_embeddings"):
        if config.get(key) is not None:
            new[key] = inner.config.get(key)
    before_text = config["text_config"]
    changes = [(f"text_config.{key}", before_text.get(key), value) for key, value in inner.config.items()
               if before_text.get(key) != value]
    changes += [(key, config.get(key), new.get(key)) for key in new
                if key != "text_config" and config.get(key) != new.get(key)]
    note = (f"{config['model_type']}: RoPE is written in text_config ({inner.config['model_type']}); "
            "the vision tower is untouched")
    return replace(inner, config=new, changes=changes, warnings=[note, *inner.warnings])


def inverse_frequencies(theta: float, rotary_dim: int, factor: float = 1.0) -> list[float]:
    """The plain RoPE reference: theta^(-2j/d) for j < d/2, divided by the PI factor."""
    return [1.0 / (theta ** (2 * j / rotary_dim)) / factor for j in range(rotary_dim // 2)]


def format_window(tokens: int) -> str:
    """16384 -> '16k', 12000 -> '12000'."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)

