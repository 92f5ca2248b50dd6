"""The plan for a config.json: read it (schema.py), plan the method (planner.py), write both
schemas (schema.py).

`plan_config` is what `picli extend` calls for an HF checkpoint: the config as the checkpoint
means it becomes a format-neutral `Current`, the planner returns the `Extension` every format
shares, and the schema writer renders it, with the family's quirks and the method's own
config-only numbers. A multimodal wrapper is planned through its language model (text_config).
Pure: a config dict in, data out. No transformers, no torch, no files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import CannotExtend
from . import planner, values
from .families import ROPE_KEYS, Family, family_of, language_config, refusal
from .methods import METHODS, Current, Extension, Method, Names, Request, get_method
from .schema import (RopeState, active_scaling, read_state, theta_split, wrapper_conflict, write_schemas,
                     write_unscaled)

CONFIG_NAMES = Names(what="checkpoint", window="max_position_embeddings", original="original_max_position_embeddings",
                     factor="the factor in config.json", scaling="rope_scaling / rope_parameters",
                     rotary_dim="head_dim, partial_rotary_factor")


@dataclass(frozen=True)
class ConfigPlan(Extension):
    """The new config.json and why: the extension, rendered."""

    config: dict = field(default_factory=dict)
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, before, after), top-level keys


def plan_config(
    config: dict,
    target_window: int,
    method: str = "linear",
    from_window: int | None = None,
    keep_max_position: bool = False,
    force: bool = False,
    recorded_window: int | None = None,
    recorded_rope: dict | None = None,
) -> ConfigPlan:
    """The config.json that gives `target_window` by `method`, with every reader agreeing.

    from_window overrides the current window (a wrong max_position_embeddings);
    recorded_window is the window picli.json recorded for a checkpoint picli wrote, and
    recorded_rope its "rope" record (ntk is known only from it).
    """
    chosen = get_method(method)
    reason = refusal(config, chosen.name)
    if reason:
        raise reason
    if isinstance(config.get("text_config"), dict):
        return _plan_wrapper(config, lambda text: plan_config(
            text, target_window, method, from_window=from_window, keep_max_position=keep_max_position, force=force,
            recorded_window=recorded_window, recorded_rope=recorded_rope))
    state = read_state(config)
    split = theta_split(config, state.nested)
    if split:
        # Writing either theta into both keys would silently change the model for the
        # readers of the other: the user says which one the model was trained with.
        raise CannotExtend(split, hint="set rope_theta and rope_parameters' rope_theta both to the theta the model "
                                       "was trained with (its model card or training config says), then run again")
    family = family_of(config)
    request = Request(target_window, from_window=from_window, recorded_window=recorded_window,
                      keep_window=keep_max_position, force=force)
    extension = planner.plan(current_of(config, state, recorded_rope), method, request)
    new = write_config(config, family, state, extension, chosen)
    return ConfigPlan(**{**vars(extension),
                         "parameters": {**extension.parameters, **chosen.schema_parameters(config, request)},
                         "warnings": _reading_warnings(config, family, state) + extension.warnings},
                      config=new, changes=_changes(config, new))


def current_of(config: dict, state: RopeState, recorded_rope: dict | None = None) -> Current:
    """A config's RoPE, format-neutral (see methods/base.py)."""
    record = recorded_rope or {}
    previous = planner.previous_method(state.scaling_type, record)
    top = config.get("original_max_position_embeddings")
    family = family_of(config)
    return Current(
        scaling_type=previous,
        factor=planner.carried_factor(previous, record, state.factor),
        theta=state.theta, rotary_dim=state.rotary_dim, window=state.window,
        window_from_default=state.window_from_default,
        # transformers 5 takes it from the top level first (Phi-3's layout), then the RoPE dict.
        original_window=(values.window(top, "original_max_position_embeddings") if top is not None
                         else state.original_window_hint),
        window_includes_factor=(f"{state.model_type}'s max_position_embeddings ({state.window}) is its window after "
                                "that factor (the family's convention)" if family.window_includes_factor else None),
        scaling=active_scaling(config, state), names=CONFIG_NAMES, model_type=state.model_type, record=record)


def write_config(config: dict, family: Family, state: RopeState, extension: Extension, method: Method) -> dict:
    """The extension written into both schemas (a new dict; `config` is left as it is)."""
    state = replace(state, theta=extension.theta)
    if extension.scaling is None:
        new = write_unscaled(config, family, state)
    else:
        new = write_schemas(config, family, state, extension.scaling)
        # transformers 5 prefers a top-level original_max_position_embeddings (Phi-3's layout).
        if "original_max_position_embeddings" in extension.scaling and "original_max_position_embeddings" in config:
            new["original_max_position_embeddings"] = extension.scaling["original_max_position_embeddings"]
    new["max_position_embeddings"] = extension.window_after
    method.finish_config(config, new, state.head_dim)
    return new


def _reading_warnings(config: dict, family: Family, state: RopeState) -> list[str]:
    """What a plan says about how the config was read, whatever the method."""
    warnings = []
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
    return warnings


def _changes(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    keys = list(after) + [key for key in before if key not in after]
    return [(key, before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)]


def _plan_wrapper(config: dict, plan_text) -> ConfigPlan:
    """A multimodal wrapper: the language model's config (text_config) gets the plan that
    `plan_text` makes for it; the vision tower's config is left as it is."""
    conflict = wrapper_conflict(config)
    if conflict:
        raise CannotExtend(conflict, hint="make the top-level RoPE keys match text_config, or remove them")
    inner = plan_text(language_config(config))
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


def edited_since_record(state: RopeState, recorded_rope: dict) -> str | None:
    """How config.json (read as `state`) no longer says what picli.json's "rope" record says
    picli wrote, or None. The recorded method says what its config must carry: its scaling
    type and factor, or (ntk: no scaling type) its theta."""
    factor, named = recorded_rope.get("factor"), recorded_rope.get("type", "linear")
    if not factor or named not in METHODS:
        return None
    scaling = METHODS[named].scaling(factor, recorded_rope.get("original_window") or 0)
    expected_type = scaling["rope_type"] if scaling else "default"
    if scaling is None:
        theta = recorded_rope.get("theta")
        if not theta or state.scaling_type == expected_type and abs(theta - state.theta) <= 1e-9 * theta:
            return None
        found = f"theta {state.theta:g}" if state.scaling_type == expected_type else f"{state.scaling_type} RoPE"
        return f"config.json says {found} but picli.json recorded {named} theta {theta:g}"
    if state.scaling_type == expected_type and abs(factor - state.factor) <= 1e-9 * factor:
        return None
    found = f"factor {state.factor:g}" if state.scaling_type == expected_type else f"{state.scaling_type} RoPE"
    return f"config.json says {found} but picli.json recorded {named} factor {factor:g}"
