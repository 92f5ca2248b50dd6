"""Reading and writing RoPE in config.json's two schemas.

transformers 5 reads `rope_parameters` ({"rope_type", "factor", "rope_theta", ...}, or one
such dict per layer type for nested RoPE such as Gemma 3); transformers 4.x reads the legacy
form: top-level `rope_theta` (or the family's own key) and `rope_scaling` ({"type" or
"rope_type", "factor", ...}). `read_state` says what a file means the way transformers 5
resolves the two (the legacy dict wins, theta from the top level); `write_schemas` writes
both so that every reader agrees (docs/design.md §2). Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import NotACheckpoint
from . import values
from .families import FAMILIES, ROPE_KEYS, Family, family_of, fill_defaults, language_config

# The layer types of nested RoPE that get interpolated; the rest keep their settings.
INTERPOLATED_LAYER_TYPES = {"full_attention"}
# Keys of a flat rope_parameters that survive a rewrite (others belong to the replaced type).
_FLAT_LINEAR_KEYS = {"rope_type", "factor", "rope_theta", "partial_rotary_factor", "mrope_section"}


@dataclass(frozen=True)
class RopeState:
    """What a config says about RoPE, with the family defaults filled in."""

    model_type: str
    known_family: bool
    theta: float
    head_dim: int
    partial_rotary_factor: float
    window: int
    window_from_default: bool
    scaling_type: str  # "default" when unscaled
    factor: float  # 1.0 when unscaled
    nested: bool
    local_theta: float | None
    rope_scaling: dict | None  # as stored in the file
    rope_parameters: dict | None
    disagreement: str | None  # why rope_scaling and rope_parameters do not say the same
    original_window_hint: int | None  # original_max_position_embeddings when the config gives it
    # The multimodal wrapper's model_type when the language model sits in text_config.
    wrapper: str | None = None
    theta_from_default: bool = False
    # M-RoPE's sections of the position ids (Qwen2-VL), when the config has them.
    mrope_section: list | None = None
    # Values the file leaves out, as transformers fills them: {key: {"value", "source"}}.
    defaults: dict = field(default_factory=dict)

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def _is_nested(rope_parameters: Any) -> bool:
    return isinstance(rope_parameters, dict) and bool(rope_parameters) and all(
        isinstance(value, dict) or value is None for value in rope_parameters.values()
    ) and any(key.endswith("_attention") for key in rope_parameters)


def scaling_type_of(params: dict | None) -> str:
    """The scaling type a rope_scaling / rope_parameters dict names; "default" when unscaled."""
    if not params:
        return "default"
    value = params.get("rope_type")
    if value is None:
        value = params.get("type")
    if value is None:
        return "default"
    if not isinstance(value, str) or not value:
        raise NotACheckpoint(f"config.json: the RoPE type must be a string such as \"linear\", got {values.show(value)}",
                             hint="fix rope_scaling / rope_parameters in config.json, then run again")
    return value


def _first(*candidates: tuple[str, Any]) -> tuple[str, Any]:
    """The first (key, value) whose value is present: None means absent, 0 does not."""
    return next(((key, value) for key, value in candidates if value is not None), candidates[-1])


def _check_every_copy(config: dict, family: Family, rope_scaling: dict | None, rope_parameters: dict | None) -> None:
    """Every RoPE value the file holds must be valid, not only the one transformers reads:
    picli rewrites the others from it, and a stale junk copy is a sign of a damaged file."""
    layer_dicts = [("rope_scaling", rope_scaling or {})]
    for key, value in (rope_parameters or {}).items():
        if key.endswith("_attention"):
            if value is not None and not isinstance(value, dict):
                raise NotACheckpoint(f"config.json: rope_parameters.{key} must be an object or null, "
                                     f"got {values.show(value)}", hint="fix rope_parameters in config.json")
            layer_dicts.append((f"rope_parameters.{key}", value or {}))
    layer_dicts.append(("rope_parameters", rope_parameters or {}))
    for name, params in layer_dicts:
        scaling_type_of(params)
        for key, check in (("rope_theta", values.positive_number), ("factor", values.positive_number),
                           ("partial_rotary_factor", values.fraction)):
            if params.get(key) is not None:
                check(params[key], f"{name}.{key}")
        if params.get("original_max_position_embeddings") is not None:
            values.window(params["original_max_position_embeddings"], f"{name}.original_max_position_embeddings")
    for key in ("rope_theta", family.legacy_theta_key, family.local_theta_key):
        if key and config.get(key) is not None:
            values.positive_number(config[key], key)
    for key in ("partial_rotary_factor", family.partial_key):
        if key and config.get(key) is not None:
            values.fraction(config[key], key)
    for key in ("hidden_size", "num_attention_heads", "head_dim", "num_key_value_heads", "num_hidden_layers"):
        if config.get(key) is not None:
            values.positive_int(config[key], key)


def read_state(config: dict) -> RopeState:
    """Read RoPE from config.json as the checkpoint means it (legacy dict wins, as in 5.x).

    A multimodal wrapper is read through its language model (text_config), with the text
    class's defaults; RoPE keys at the wrapper's top level must agree with it. Every value is
    validated (rope/values.py): a damaged file is refused with the key and value named, never
    read as a default or carried into the output."""
    if not isinstance(config.get("text_config"), dict):
        return _read_text(config)
    text = language_config(config)
    state = _read_text(text)
    top = {key: config[key] for key in (*ROPE_KEYS, "max_position_embeddings") if config.get(key) is not None}
    problems = [state.disagreement] if state.disagreement else []
    if top:
        as_top = _read_text({**text, **top})
        differ = [f"{name} {getattr(as_top, name)!r} vs {getattr(state, name)!r}"
                  for name in ("theta", "scaling_type", "factor", "window") if getattr(as_top, name) != getattr(state, name)]
        if differ:
            problems.append("the top level and text_config disagree on RoPE (" + "; ".join(differ)
                            + "); transformers reads text_config")
    return replace(state, wrapper=config.get("model_type") or None, disagreement="; ".join(problems) or None)


def wrapper_conflict(config: dict) -> str | None:
    """Why a wrapper's top-level RoPE keys contradict its text_config, or None."""
    if not isinstance(config.get("text_config"), dict):
        return None
    disagreement = read_state(config).disagreement or ""
    return disagreement[disagreement.index("the top level"):] if "the top level" in disagreement else None


def _read_text(config: dict) -> RopeState:
    model_type = config.get("model_type", "")
    if model_type not in (None, ""):
        values.model_type(model_type)
    model_type = model_type or ""
    family = family_of(config)
    rope_parameters = config.get("rope_parameters")
    rope_scaling = config.get("rope_scaling")
    if rope_scaling is not None and not isinstance(rope_scaling, dict):
        raise NotACheckpoint("config.json: rope_scaling must be an object or null", hint="fix config.json")
    if rope_parameters is not None and not isinstance(rope_parameters, dict):
        raise NotACheckpoint("config.json: rope_parameters must be an object or null", hint="fix config.json")
    _check_every_copy(config, family, rope_scaling, rope_parameters)
    config, defaults = fill_defaults(config)
    nested = family.nested or _is_nested(rope_parameters)

    head_dim = _head_dim(config)
    active, active_name, theta_key, theta, theta_from_default, local_theta = _active_and_theta(
        config, family, rope_scaling, rope_parameters, nested)
    theta = values.positive_number(theta, theta_key)
    theta_from_default = theta_from_default or "rope_theta" in defaults

    partial_key, partial = _first(
        (f"{active_name}.partial_rotary_factor", (active or {}).get("partial_rotary_factor")),
        ("partial_rotary_factor", config.get("partial_rotary_factor")),
        (family.partial_key or "", config.get(family.partial_key) if family.partial_key else None),
        ("partial_rotary_factor", family.partial_default))
    partial = values.fraction(partial, partial_key)

    window = config.get("max_position_embeddings")
    window_from_default = window is None or "max_position_embeddings" in defaults
    if window is None:
        window = family.window_default or 2048
    window = values.window(window, "max_position_embeddings")

    scaling_type = scaling_type_of(active)
    factor = 1.0
    if scaling_type != "default":
        factor = values.positive_number(active.get("factor", 1.0), f"{active_name}.factor")
    original_hint = active.get("original_max_position_embeddings") if active else None
    mrope = next((params.get("mrope_section") for params in (rope_scaling, rope_parameters)
                  if isinstance(params, dict) and params.get("mrope_section") is not None), None)

    return RopeState(
        model_type=model_type, known_family=model_type in FAMILIES, theta=theta,
        head_dim=head_dim, partial_rotary_factor=partial, window=window,
        window_from_default=window_from_default, scaling_type=scaling_type, factor=factor,
        nested=nested, local_theta=local_theta, rope_scaling=rope_scaling,
        rope_parameters=rope_parameters, disagreement=_disagreement(config, nested),
        original_window_hint=(values.window(original_hint, "original_max_position_embeddings")
                              if original_hint is not None else None),
        theta_from_default=theta_from_default, mrope_section=list(mrope) if isinstance(mrope, list) else None,
        defaults=_table_defaults(defaults, family, model_type, theta, theta_from_default, window, window_from_default),
    )


def _table_defaults(defaults: dict, family: Family, model_type: str, theta: float, theta_from_default: bool,
                    window: int, window_from_default: bool) -> dict:
    """The class defaults filled in, plus theta and the window where picli's family table gave them."""
    source = f"{model_type}'s class default (picli's family table)" if model_type in FAMILIES \
        else "picli's generic default (no config class for this model_type)"
    table = {}
    if theta_from_default:
        table["rope_theta"] = {"value": theta, "source": source}
    if window_from_default:
        table["max_position_embeddings"] = {"value": window, "source": source}
    return {**table, **defaults}


def _head_dim(config: dict) -> int:
    if config.get("head_dim") is not None:
        return config["head_dim"]
    if config.get("hidden_size") is not None and config.get("num_attention_heads") is not None:
        head_dim = config["hidden_size"] // config["num_attention_heads"]
        if head_dim == 0:
            raise NotACheckpoint(f"config.json: hidden_size {config['hidden_size']} is smaller than "
                                 f"num_attention_heads {config['num_attention_heads']}", hint="fix config.json")
        return head_dim
    # Only where the installed transformers has no class for the model_type (fill_defaults).
    raise NotACheckpoint(f"config.json gives neither head_dim nor hidden_size and num_attention_heads, and the installed "
                         f"transformers has no config class for model_type {config.get('model_type')!r} to fill them in",
                         hint="upgrade transformers (pip install -U transformers) if the model is new")


def _active_and_theta(config: dict, family: Family, rope_scaling: dict | None, rope_parameters: dict | None,
                      nested: bool) -> tuple[dict, str, str, Any, bool, float | None]:
    """(the RoPE dict transformers 5 acts on, its name, theta's key, theta as found or the family
    default, whether it was the default, the sliding layers' theta for nested RoPE)."""
    local_theta = None
    if nested:
        full = dict((rope_parameters or {}).get("full_attention") or {})
        full_name = "rope_parameters.full_attention"
        if rope_scaling:
            full.update(rope_scaling)  # what Gemma 3's / OLMo 3's 5.x config does with a legacy dict
            full_name = "rope_scaling"
        active, active_name = full, full_name
        theta_key, theta = _first((f"{full_name}.rope_theta", full.get("rope_theta")),
                                  ("rope_theta", config.get("rope_theta")))
        theta_from_default = theta is None
        if theta_from_default:
            theta_key, theta = "rope_theta", family.theta_default
        sliding = (rope_parameters or {}).get("sliding_attention") or {}
        local_key, local_theta = _first(
            ("rope_parameters.sliding_attention.rope_theta", sliding.get("rope_theta")),
            (family.local_theta_key or "", config.get(family.local_theta_key) if family.local_theta_key else None),
            ("rope_local_base_freq", family.local_theta_default))
        local_theta = float(theta) if local_theta is None else values.positive_number(local_theta, local_key)
    else:
        # transformers 5 lets rope_scaling win over rope_parameters and then takes theta from
        # the top-level key, so a file's effective settings follow the same order here.
        active = rope_scaling if rope_scaling else (rope_parameters or {})
        active_name = "rope_scaling" if rope_scaling else "rope_parameters"
        theta_key, theta = _first(
            ("rope_theta", config.get("rope_theta") if rope_scaling else None),
            (f"{active_name}.rope_theta", active.get("rope_theta")),
            ("rope_theta", config.get("rope_theta")),
            (family.legacy_theta_key or "", config.get(family.legacy_theta_key) if family.legacy_theta_key else None))
        theta_from_default = theta is None
        if theta_from_default:
            theta_key, theta = "rope_theta", family.theta_default
    return active, active_name, theta_key, theta, theta_from_default, local_theta


def theta_split(config: dict, nested: bool) -> str | None:
    """Where the top-level rope_theta and rope_parameters' theta differ while no rope_scaling
    is present: transformers 5 then reads rope_parameters (standardize_rope_params keeps it),
    4.x reads only the top-level key (4.44.2 and 4.57.1 build their rotary classes from
    config.rope_theta), so the two read different models. picli cannot tell which theta the
    model was trained with; the user can (the model card, the training config)."""
    rope_parameters, top = config.get("rope_parameters"), config.get("rope_theta")
    if config.get("rope_scaling") or not isinstance(rope_parameters, dict) or top is None:
        return None
    params = (rope_parameters.get("full_attention") or {}) if nested else rope_parameters
    inner = params.get("rope_theta") if isinstance(params, dict) else None
    if inner is None or values.positive_number(top, "rope_theta") == values.positive_number(
            inner, "rope_parameters.rope_theta"):
        return None
    where = "rope_parameters.full_attention.rope_theta" if nested else "rope_parameters.rope_theta"
    return (f"the top-level rope_theta {float(top):g} (read by transformers 4.x) disagrees with {where} "
            f"{float(inner):g} (read by transformers 5.x): the two releases run different models")


def _disagreement(config: dict, nested: bool) -> str | None:
    """Where rope_scaling and rope_parameters (or the two thetas) would make readers do different things."""
    rope_scaling, rope_parameters = config.get("rope_scaling"), config.get("rope_parameters")
    split = theta_split(config, nested)
    if split:
        return split
    if not rope_scaling or not rope_parameters:
        return None
    params = (rope_parameters.get("full_attention") or {}) if nested else rope_parameters
    problems = []
    if scaling_type_of(rope_scaling) != scaling_type_of(params):
        problems.append(f"type {scaling_type_of(rope_scaling)} vs {scaling_type_of(params)}")
    if rope_scaling.get("factor") != params.get("factor"):
        problems.append(f"factor {rope_scaling.get('factor')} vs {params.get('factor')}")
    top_theta = config.get("rope_theta")
    if not nested and params.get("rope_theta") is not None and top_theta is not None \
            and float(top_theta) != float(params["rope_theta"]):
        problems.append(f"theta {top_theta} (top level) vs {params['rope_theta']}")
    if not nested and params.get("rope_theta") is not None and top_theta is None:
        problems.append(f"no top-level rope_theta, so transformers ignores theta {params['rope_theta']}")
    if not problems:
        return None
    return "rope_scaling and rope_parameters disagree (" + "; ".join(problems) + "); rope_scaling wins in transformers 4.x and 5.x"


def active_scaling(config: dict, state: RopeState) -> dict:
    """The RoPE dict transformers 5 acts on: rope_scaling wins; nested RoPE's full_attention."""
    config = language_config(config)
    rope_scaling, rope_parameters = config.get("rope_scaling"), config.get("rope_parameters")
    if state.nested:
        full = dict((rope_parameters or {}).get("full_attention") or {})
        full.update(rope_scaling or {})
        return full
    return dict(rope_scaling or rope_parameters or {})


def write_schemas(config: dict, family: Family, state: RopeState, scaling: dict) -> dict:
    """Both schemas, agreeing: rope_parameters for 5.x, top-level keys + rope_scaling for 4.x.

    scaling is the method's part, {"rope_type": ..., "factor": ..., ...} (methods/*.scaling);
    theta comes from the state. Nested RoPE gets the scaling on INTERPOLATED_LAYER_TYPES only.
    """
    new = copy.deepcopy(config)
    scaled = {**scaling, "rope_theta": state.theta}
    if state.nested:
        params = copy.deepcopy(config.get("rope_parameters") or {})
        params["full_attention"] = scaled
        sliding = dict(params.get("sliding_attention") or {"rope_type": "default"})
        sliding.setdefault("rope_theta", state.local_theta)
        # Always explicit: OLMo 3's 5.x config fills a missing sliding theta with its class
        # default (500000), not with the file's rope_theta.
        params["sliding_attention"] = sliding
        for layer_type, layer_params in params.items():
            if layer_type not in INTERPOLATED_LAYER_TYPES and isinstance(layer_params, dict):
                layer_params.pop("factor", None)
        if family.local_theta_key:
            new[family.local_theta_key] = float(sliding["rope_theta"])
    else:
        params = {key: value for key, value in (config.get("rope_parameters") or {}).items()
                  if key in _FLAT_LINEAR_KEYS}
        params.update(scaled)
        if state.partial_rotary_factor != 1.0:
            params["partial_rotary_factor"] = state.partial_rotary_factor
            # transformers 5 takes partial rotary from the top-level key when rope_scaling exists.
            if family.partial_key in (None, "partial_rotary_factor"):
                new["partial_rotary_factor"] = state.partial_rotary_factor
    # transformers 5 saves none of the family's own 4.x keys (GPT-NeoX rotary_pct and
    # rotary_emb_base, top-level partial_rotary_factor, Gemma 3's rope_local_base_freq): a
    # 4.x reader of a 5.x-saved file would silently take class defaults, so write them all.
    if family.partial_key:
        new[family.partial_key] = state.partial_rotary_factor
    new["rope_parameters"] = params
    # Without a top-level theta, 4.x falls back to the class default (often 10000) and so
    # does 5.x whenever rope_scaling is present: always write it, as a float.
    new["rope_theta"] = state.theta
    if family.legacy_theta_key:
        new[family.legacy_theta_key] = state.theta
    legacy = {key: value for key, value in scaling.items() if key != "rope_type"}
    # A family outside picli's table is newer than the legacy "type" key: newer config
    # classes (gpt-oss, SmolLM3) index rope_scaling["rope_type"] directly.
    type_key = family.legacy_type_key if state.known_family else "rope_type"
    new["rope_scaling"] = {type_key: scaling["rope_type"], **legacy}
    return new



def write_unscaled(config: dict, family: Family, state: RopeState) -> dict:
    """Both schemas with no scaling type and the state's theta (ntk's form: plain RoPE)."""
    new = write_schemas(config, family, state, {"rope_type": "default"})
    if state.nested:
        new["rope_parameters"]["full_attention"].pop("factor", None)
    else:
        new["rope_parameters"].pop("factor", None)
    # No scaling type: every reader then takes the plain theta. A key the file did not have stays out.
    if "rope_scaling" in config:
        new["rope_scaling"] = None
    else:
        new.pop("rope_scaling", None)
    if "original_max_position_embeddings" in new and "original_max_position_embeddings" not in config:
        new.pop("original_max_position_embeddings")
    return new
