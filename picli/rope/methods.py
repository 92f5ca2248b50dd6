"""The methods: what each one computes, and the plan that writes it into a config.

- linear Position Interpolation (Chen et al. 2023, arXiv 2306.15595; the default): position
  m is replaced by m * L / L' (L trained window, L' target). In transformers this is
  `rope_type: linear` with `factor = L'/L`, i.e. every inverse frequency divided by the
  factor. `plan_config`.
- yarn (Peng et al. 2023, arXiv 2309.00071, "NTK-by-parts" + attention temperature): the
  dimensions whose wavelength fits many times into L keep their frequency, those whose
  wavelength is longer than L are interpolated by the factor, a linear ramp in between; cos
  and sin are multiplied by 0.1 ln s + 1. `yarn_inverse_frequencies`, `yarn_attention_factor`.
- ntk (NTK-aware scaling, static; bloc97 2023, YaRN paper §3.1): no scaling type at all, a
  larger base theta x s^(d/(d-2)), so the lowest frequency is interpolated by s and the
  highest is kept. `ntk_theta`.

`plan_method_config` dispatches on the method and applies the stacking rules; reading and
writing the schemas stays in schema.py. Pure: a config dict in, data out. No transformers,
no torch, no files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import CannotExtend
from . import values
from .families import ROPE_KEYS, family_of, language_config, refusal
from .schema import RopeState, read_state, wrapper_conflict, write_schemas

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
    method: str = "linear"
    # The method's own numbers, as picli.json records them (methods.method_parameters).
    parameters: dict = field(default_factory=dict)


def linear_factor(previous_factor: float, current_window: int, target_window: int) -> float:
    """PI's factor L'/L, composed with an existing linear one: F_new = F_old * L' / L.

    Always a float: old transformers 4.x rejects an int factor."""
    return float(previous_factor * target_window / current_window)


def linear_scaling(factor: float) -> dict:
    """Linear PI's part of both schemas (schema.write_schemas adds theta and the legacy key)."""
    return {"rope_type": "linear", "factor": factor}


def _reading_warnings(state) -> list[str]:
    """What every method's plan says about how the config was read (an unknown family, two keys
    that disagree), in one wording."""
    warnings = []
    if not state.known_family:
        warnings.append(f"{state.model_type} is not in picli's family table: writing the common form; "
                        "the self-check with transformers decides")
    if state.disagreement:
        warnings.append(state.disagreement + " - picli writes both consistently")
    return warnings


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
        return _plan_wrapper(config, lambda text: plan_config(
            text, target_window, from_window=from_window, keep_max_position=keep_max_position, force=force,
            recorded_window=recorded_window))
    family = family_of(config)
    state = read_state(config)
    warnings: list[str] = []
    if state.theta_from_default and family.theta_default_4x is not None:
        warnings.append(f"config.json gives no rope_theta: transformers 5 reads {family.theta_default:g}, 4.x reads "
                        f"{family.theta_default_4x:g}; picli uses {state.theta:g} and writes it explicitly")
    if family.shared_sliding and (config.get("sliding_window") or state.model_type == "gemma2"):
        warnings.append(f"{state.model_type} has one RoPE config for its sliding-window and global layers, "
                        "so the sliding layers are interpolated too")
    warnings += _reading_warnings(state)

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


def inverse_frequencies(theta: float, rotary_dim: int, factor: float = 1.0) -> list[float]:
    """The plain RoPE reference: theta^(-2j/d) for j < d/2, divided by the PI factor."""
    return [1.0 / (theta ** (2 * j / rotary_dim)) / factor for j in range(rotary_dim // 2)]


def format_window(tokens: int) -> str:
    """16384 -> '16k', 12000 -> '12000'."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)



# ---------------------------------------------------------------------------------------
# yarn and ntk, and the plan for any method.

METHODS = ("linear", "yarn", "ntk")
# The YaRN paper's defaults (§3.2, alpha = 1 and beta = 32 for LLaMA); every runtime
# defaults to them too. Written as floats: transformers 4.44 warns on int betas.
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
# Keys that make a yarn attention factor other than 0.1 ln s + 1. vLLM and llama.cpp ignore
# them (DESIGN.md §7), so picli never writes them and does not stack on them.
YARN_CUSTOM_KEYS = ("attention_factor", "mscale", "mscale_all_dim")
# Families whose 4.x config classes still validate rope_scaling with the old rule (only
# linear and dynamic): a yarn config fails to load in every 4.x release (4.44.2 and 4.57.1
# raise ValueError), so yarn cannot be expressed for their 4.x readers.
YARN_REJECTED_BY_4X = {"olmo": "4.x OLMo configs accept only linear and dynamic rope_scaling",
                       "olmo2": "4.x OLMo 2 configs accept only linear and dynamic rope_scaling"}
# The generic RoPE functions (with yarn) reached llama in 4.43 (4.44.2 is tested) and gpt_neox,
# phi, stablelm, persimmon and falcon in 4.45 (their 4.44 configs reject yarn); the other
# families' own first release that applies rope_scaling is later still.
YARN_FIRST_4X = {"llama": "4.44.0"}
YARN_FIRST_4X_DEFAULT = "4.45.0"


def yarn_min_transformers(config: dict) -> str:
    """The first 4.x release that computes yarn for this config's family at all."""
    first = YARN_FIRST_4X.get(config.get("model_type", ""), YARN_FIRST_4X_DEFAULT)
    return max(family_of(config).min_transformers, first, key=_version)


# Config classes that store head_dim = None when config.json leaves it out (4.57's Mistral and
# Mixtral): their yarn function multiplies that None and fails, so picli writes head_dim out.
YARN_NEEDS_HEAD_DIM = {"mistral", "mixtral"}


def yarn_attention_factor(factor: float) -> float:
    """YaRN's sqrt(1/t) = 0.1 ln s + 1 (paper eq. 22); runtimes multiply cos and sin by it."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def yarn_correction_dim(rotations: float, rotary_dim: int, theta: float, original_window: int) -> float:
    """The (fractional) dimension index d whose wavelength 2 pi theta^(2d/D) fits `rotations`
    times into the original window: r(d) = L / lambda_d solved for d (paper §3.2)."""
    return rotary_dim * math.log(original_window / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_kept_fractions(theta: float, rotary_dim: int, original_window: int,
                        beta_fast: float = YARN_BETA_FAST, beta_slow: float = YARN_BETA_SLOW) -> list[float]:
    """The paper's gamma per frequency index: 1 keeps the frequency (wavelength fits more than
    beta_fast times into L), 0 interpolates it by the factor (fits less than beta_slow times),
    a linear ramp in between. As in the paper's reference code, the ramp is linear in the
    index between the floor and ceiling of the two boundary dimensions, clamped to [0, D-1]."""
    low = max(math.floor(yarn_correction_dim(beta_fast, rotary_dim, theta, original_window)), 0)
    high = min(math.ceil(yarn_correction_dim(beta_slow, rotary_dim, theta, original_window)), rotary_dim - 1)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    return [1.0 - min(max((index - low) / (high - low), 0.0), 1.0) for index in range(rotary_dim // 2)]


def yarn_inverse_frequencies(theta: float, rotary_dim: int, factor: float, original_window: int,
                             beta_fast: float = YARN_BETA_FAST, beta_slow: float = YARN_BETA_SLOW) -> list[float]:
    """h(theta_d) = (1 - gamma) theta_d / s + gamma theta_d (YaRN eq. 18-19)."""
    kept = yarn_kept_fractions(theta, rotary_dim, original_window, beta_fast, beta_slow)
    return [frequency * (gamma + (1.0 - gamma) / factor)
            for frequency, gamma in zip(inverse_frequencies(theta, rotary_dim), kept)]


def yarn_scaling(factor: float, original_window: int) -> dict:
    """yarn's part of both schemas: the defaults written out, no attention factor or mscale."""
    return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_window),
            "beta_fast": YARN_BETA_FAST, "beta_slow": YARN_BETA_SLOW}


def ntk_theta(theta: float, scale: float, rotary_dim: int) -> float:
    """NTK-aware base: theta * s^(d/(d-2)), so the lowest frequency theta^(-(d-2)/d) is divided
    by exactly s (interpolated like PI) while the highest, 1, is kept (extrapolated)."""
    return float(theta * scale ** (rotary_dim / (rotary_dim - 2)))


def yarn_readers(max_position: str) -> dict[str, list[str]]:
    """Which readers compute a picli yarn config as meant, per max_position_embeddings layout.

    Read from transformers' _compute_yarn_parameters: 4.44-4.50 build the ramp at
    max_position_embeddings and ignore original_max_position_embeddings; 4.51-4.55 take the
    factor as max_position_embeddings / original_max_position_embeddings when the latter is
    given; 4.56+ and 5.x use the factor and build the ramp at the original window. vLLM
    serves original x factor; the GGUF converter's context_length is max_position_embeddings.
    """
    if max_position == "target":
        return {"right": ["transformers 4.51+ and 5.x", "vLLM (serves original x factor)",
                          "llama.cpp's converter (context_length = the target)"],
                "wrong": ["transformers 4.45-4.50 (they build the yarn ramp at max_position_embeddings, the "
                          "target, instead of the original window: fewer dimensions are interpolated)"]}
    return {"right": ["transformers 4.45-4.50 and 4.56+, 5.x", "vLLM (serves original x factor)"],
            "wrong": ["transformers 4.51-4.55 (they take the factor as max_position_embeddings / "
                      "original_max_position_embeddings = 1: no scaling at all)",
                      "llama.cpp's converter's default context (context_length = the original window: pass -c)"]}


def check_method(method: str) -> None:
    """A method picli writes, or the one-line reason it does not."""
    if method == "dynamic":
        raise CannotExtend("--method dynamic is not written: dynamic NTK has no GGUF form and vLLM computes it "
                           "once at load, so runtimes would not agree on it",
                           hint="use --method ntk: static NTK-aware scaling, a new rope_theta every runtime reads")
    if method not in METHODS:
        raise CannotExtend(f"unknown --method {method!r}", hint="choose linear (PI, the default), yarn or ntk")


def previous_method(state: RopeState, recorded_rope: dict | None) -> str:
    """The method a checkpoint already carries: its scaling type, or ntk when picli.json says so
    (ntk leaves no scaling type in the config, only a larger theta)."""
    if state.scaling_type == "default":
        return "ntk" if (recorded_rope or {}).get("type") == "ntk" else "default"
    return state.scaling_type


def _active_scaling(config: dict, state: RopeState) -> dict:
    """The scaling dict transformers 5 acts on (legacy dict wins; nested: full attention)."""
    if state.nested:
        full = dict((config.get("rope_parameters") or {}).get("full_attention") or {})
        full.update(config.get("rope_scaling") or {})
        return full
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def plan_method_config(
    config: dict,
    target_window: int,
    method: str = "linear",
    from_window: int | None = None,
    keep_max_position: bool = False,
    force: bool = False,
    recorded_window: int | None = None,
    recorded_rope: dict | None = None,
) -> ConfigPlan:
    """The config.json that gives `target_window` by `method`, with the stacking rules.

    Same method again composes (linear and yarn: factors multiply, yarn keeps its original
    window; ntk: theta scales again). Across methods is refused unless `force`, which
    replaces the old method with the new one from the pretraining window (and theta).
    recorded_rope is the source's picli.json rope record: ntk is known only from it.
    """
    check_method(method)
    reason = refusal(config)
    if reason:
        raise reason
    if isinstance(config.get("text_config"), dict):
        return _plan_wrapper(config, lambda text: plan_method_config(
            text, target_window, method, from_window=from_window, keep_max_position=keep_max_position, force=force,
            recorded_window=recorded_window, recorded_rope=recorded_rope))
    state = read_state(config)
    previous = previous_method(state, recorded_rope)
    if method == "linear":
        if previous != "ntk":
            plan = plan_config(config, target_window, from_window=from_window, keep_max_position=keep_max_position,
                               force=force, recorded_window=recorded_window)
            return dataclasses.replace(plan, parameters={"factor": plan.factor})
        _refuse_stacking("linear", "ntk", force)
        theta0, window0 = _before_ntk(recorded_rope, from_window)
        base = _unscaled(config, dataclasses.replace(state, theta=theta0))
        plan = plan_config(base, target_window, from_window=window0, keep_max_position=keep_max_position)
        return dataclasses.replace(
            plan, changes=_changes(config, plan.config), previous_type="ntk", parameters={"factor": plan.factor},
            warnings=[f"--force: replacing ntk (theta {state.theta:g}) with linear PI from {window0} tokens "
                      f"and theta {theta0:g}", *plan.warnings])
    values.check_target(target_window)
    if from_window is not None:
        values.check_target(from_window, "--from")
    family = family_of(config)
    warnings = _reading_warnings(state)
    if method == "yarn":
        return _plan_yarn(config, state, family, target_window, previous, from_window, keep_max_position, force,
                          recorded_window, recorded_rope, warnings)
    return _plan_ntk(config, state, family, target_window, previous, from_window, keep_max_position, force,
                     recorded_window, recorded_rope, warnings)


def _refuse_stacking(method: str, previous: str, force: bool) -> None:
    if not force:
        raise CannotExtend(f"this checkpoint already uses {previous} RoPE scaling; {method} on top of it mixes two "
                           "methods that no runtime composes",
                           hint=f"extend the base model instead, or pass --force to replace {previous} with {method} "
                                "from the pretraining window")


def _before_ntk(recorded_rope: dict | None, from_window: int | None) -> tuple[float, int]:
    """The theta and window an ntk checkpoint had before picli scaled it, from its picli.json."""
    parameters = (recorded_rope or {}).get("parameters") or {}
    theta0, window0 = parameters.get("theta_before"), from_window or (recorded_rope or {}).get("original_window")
    if not isinstance(theta0, (int, float)) or isinstance(theta0, bool) or theta0 <= 0 or not window0:
        raise CannotExtend("picli.json says ntk but not the theta and window before it, so ntk cannot be replaced",
                           hint="extend the base model instead")
    return float(theta0), int(window0)


def _unscaled(config: dict, state: RopeState) -> dict:
    """config with no scaling type and state's theta in both schemas (ntk's form)."""
    new = write_schemas(config, family_of(config), state, {"rope_type": "default"})
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


def _changes(before: dict, after: dict) -> list[tuple[str, Any, Any]]:
    keys = list(after) + [key for key in before if key not in after]
    return [(key, before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)]


def _replaced_window(state: RopeState, previous: str, from_window: int | None, recorded_rope: dict | None) -> int:
    """The pretraining window a replaced method started from (--force)."""
    if from_window:
        return from_window
    recorded = (recorded_rope or {}).get("original_window")
    if recorded:
        return int(recorded)
    if state.original_window_hint:
        return state.original_window_hint
    return round(state.window / state.factor) if previous == "linear" else state.window


def _check_target(target_window: int, current_window: int) -> None:
    if target_window <= current_window:
        raise CannotExtend(
            f"--to {target_window} is not larger than the current window of {current_window} tokens",
            hint=f"pass a target above {current_window}, or --from N if the config's window is wrong",
        )


def _window_after(config: dict, keep_max_position: bool, target_window: int, current_window: int) -> int:
    if not keep_max_position:
        return int(target_window)
    return int(config.get("max_position_embeddings") or current_window)


def _plan_yarn(config, state, family, target_window, previous, from_window, keep_max_position, force,
               recorded_window, recorded_rope, warnings) -> ConfigPlan:
    if state.model_type in YARN_REJECTED_BY_4X:
        raise CannotExtend(f"--method yarn cannot be expressed for {state.model_type}: "
                           f"{YARN_REJECTED_BY_4X[state.model_type]} and fail to load a yarn config",
                           hint="use --method linear or --method ntk for this family")
    theta, previous_factor = state.theta, 1.0
    if previous == "yarn":
        custom = [key for key in YARN_CUSTOM_KEYS if _active_scaling(config, state).get(key) is not None]
        if custom and not force:
            raise CannotExtend(f"this checkpoint's yarn sets a custom attention factor ({', '.join(custom)}); vLLM "
                               "and llama.cpp ignore it, so stacking yarn on it would mean different models per runtime",
                               hint="extend the base model instead, or pass --force to replace it with plain yarn")
        original_window = from_window or state.original_window_hint or state.window
        if custom:
            warnings.append(f"--force: replacing yarn with a custom attention factor ({', '.join(custom)}) by plain "
                            f"yarn from {original_window} tokens")
            current_window = original_window
        else:
            previous_factor = state.factor
            current_window = recorded_window or round(original_window * previous_factor)
    elif previous == "default":
        original_window = current_window = from_window or recorded_window or state.window
    else:
        _refuse_stacking("yarn", previous, force)
        original_window = current_window = _replaced_window(state, previous, from_window, recorded_rope)
        if previous == "ntk":
            theta, original_window = _before_ntk(recorded_rope, from_window)
            current_window = original_window
        warnings.append(f"--force: replacing {previous} scaling with yarn from {original_window} tokens")
    _check_target(target_window, current_window)
    factor = float(previous_factor * target_window / current_window)
    scaling = yarn_scaling(factor, original_window)
    new = write_schemas(config, family, dataclasses.replace(state, theta=theta), scaling)
    # transformers 5 prefers a top-level original_max_position_embeddings (Phi-3's layout).
    if "original_max_position_embeddings" in config:
        new["original_max_position_embeddings"] = int(original_window)
    new["max_position_embeddings"] = _window_after(config, keep_max_position, target_window, current_window)
    if state.model_type in YARN_NEEDS_HEAD_DIM and config.get("head_dim") is None:
        new["head_dim"] = state.head_dim
    layout = "original" if keep_max_position else "target"
    parameters = {"factor": factor, "original_max_position_embeddings": int(original_window),
                  "beta_fast": YARN_BETA_FAST, "beta_slow": YARN_BETA_SLOW,
                  "attention_factor": yarn_attention_factor(factor), "max_position_embeddings": layout,
                  "readers": yarn_readers(layout),
                  "min_transformers": yarn_min_transformers(config)}
    return ConfigPlan(config=new, factor=factor, previous_factor=previous_factor, previous_type=previous,
                      current_window=current_window, target_window=target_window, original_window=int(original_window),
                      theta=theta, changes=_changes(config, new), warnings=warnings, method="yarn",
                      parameters=parameters)


def _plan_ntk(config, state, family, target_window, previous, from_window, keep_max_position, force,
              recorded_window, recorded_rope, warnings) -> ConfigPlan:
    rotary_dim = state.rotary_dim
    if rotary_dim <= 2:
        raise CannotExtend(f"--method ntk needs a rotary dimension above 2, this model rotates {rotary_dim}",
                           hint="use --method linear")
    theta0, previous_scale = state.theta, 1.0
    if previous == "ntk":
        # Stacking ntk: theta scales again by the new step; the record keeps the first theta.
        parameters0 = (recorded_rope or {}).get("parameters") or {}
        theta0 = float(parameters0.get("theta_before") or state.theta)
        previous_scale = float((recorded_rope or {}).get("factor") or 1.0)
        current_window = from_window or recorded_window or state.window
        original_window = int((recorded_rope or {}).get("original_window") or round(current_window / previous_scale))
    elif previous == "default":
        original_window = current_window = from_window or recorded_window or state.window
    else:
        _refuse_stacking("ntk", previous, force)
        original_window = current_window = _replaced_window(state, previous, from_window, recorded_rope)
        warnings.append(f"--force: replacing {previous} scaling with ntk from {original_window} tokens")
    if target_window < current_window:
        raise CannotExtend(f"--method ntk with --to {target_window} below the current window of {current_window} "
                           f"tokens is a factor {target_window / current_window:.3g} < 1: it would shrink the window",
                           hint=f"pass a target above {current_window}")
    _check_target(target_window, current_window)
    step = target_window / current_window
    theta = ntk_theta(state.theta, step, rotary_dim)
    scale = float(previous_scale * step)
    new = _unscaled(config, dataclasses.replace(state, theta=theta))
    new["max_position_embeddings"] = _window_after(config, keep_max_position, target_window, current_window)
    parameters = {"scale": scale, "rotary_dim": rotary_dim, "exponent": rotary_dim / (rotary_dim - 2),
                  "theta_before": theta0, "theta": theta, "max_position_embeddings":
                  "original" if keep_max_position else "target"}
    return ConfigPlan(config=new, factor=scale, previous_factor=previous_scale, previous_type=previous,
                      current_window=current_window, target_window=target_window, original_window=original_window,
                      theta=theta, changes=_changes(config, new), warnings=warnings, method="ntk",
                      parameters=parameters)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())
