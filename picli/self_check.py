"""The self-check of `picli extend`: what the installed transformers computes from the written
config, against picli's own computation of the method.

transformers itself reads the new config.json (that is where the schema traps are:
rope_scaling winning, top-level theta, partial rotary, nested layer types) and computes the
inverse frequencies and attention scaling of every layer type; on interpolated layers they
must equal what the method says they must be (`expected_rope` in picli/rope/methods/), on the
others the source's. transformers 4.x's reading of the same file is checked from the config
(rope.predict_transformers4). Anything else is a SelfCheckFailed, and nothing is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import rope
from .errors import SelfCheckFailed
from .provenance import versions

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


def self_check(new_dir: Path, source_dir: Path, plan: Any) -> dict:
    """On interpolated layers, transformers' inverse frequencies and attention scaling equal
    picli's own computation of the method; elsewhere they equal the source's. `plan` is
    extend's ExtendPlan (new_files["config.json"], method, factor, theta, ...)."""
    import torch

    new_attention, source_attention = effective_attention_scaling(new_dir), effective_attention_scaling(source_dir)
    new = {name: (frequencies, new_attention[name]) for name, frequencies in effective_inv_freqs(new_dir).items()}
    source = {name: (frequencies, source_attention[name])
              for name, frequencies in effective_inv_freqs(source_dir).items()}
    state = rope.read_state(plan.new_files["config.json"])
    method = rope.get_method(plan.method)
    layers, worst, attention_ok = {}, 0.0, True
    for layer_type, (frequencies, attention) in new.items():
        interpolated = layer_type == "all" or layer_type in rope.INTERPOLATED_LAYER_TYPES
        if interpolated:
            frequencies_list, expected_attention, how = method.expected_rope(plan, state.rotary_dim,
                                                                             source[layer_type][0].tolist())
            expected = torch.tensor(frequencies_list, dtype=torch.float64)
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
        if interpolated and method.divides_every_frequency:
            layers[layer_type]["factor_applied"] = float((source[layer_type][0] / frequencies).mean())
        worst = max(worst, error)
        attention_ok = attention_ok and same_attention
    tolerance = 1e-5  # float32 buffers: relative rounding ~1e-7, far below a wrong factor or theta
    legacy = rope.predict_transformers4(rope.language_config(plan.new_files["config.json"]))
    if not (math.isfinite(legacy["theta"]) and math.isfinite(legacy["factor"])):
        raise SelfCheckFailed(f"self-check: transformers 4.x would read theta {legacy['theta']} and factor "
                              f"{legacy['factor']} from the output, which are not finite",
                              hint="nothing was written; check rope_theta and the scaling factor in config.json")
    scaling = method.scaling(plan.factor, plan.original_window)
    legacy_type, legacy_factor = (scaling["rope_type"], scaling["factor"]) if scaling else ("default", 1.0)
    legacy_ok = abs(legacy["factor"] - legacy_factor) < 1e-9 and legacy["rope_type"] == legacy_type \
        and abs(legacy["theta"] - plan.theta) <= 1e-6 * plan.theta
    _check_windows(plan, source_dir)
    check = {"ok": worst < tolerance and legacy_ok and attention_ok,
             "method": "transformers reads source and output; its inverse frequencies and attention scaling are "
                       "compared with picli's own computation of the method",
             "extension_method": plan.method,
             "transformers": versions().get("transformers"), "max_relative_error": worst, "layers": layers,
             "transformers4_reads": {"theta": legacy["theta"], "rope_type": legacy["rope_type"], "factor": legacy["factor"]}}
    if "readers" in plan.parameters:
        check["readers"] = plan.parameters["readers"]
    if not check["ok"]:
        problem = f"inverse frequencies off by {worst:.2e} (relative)" if worst >= tolerance else \
            ("attention scaling differs" if not attention_ok else "4.x would read it differently")
        raise SelfCheckFailed(
            f"self-check failed ({plan.method}): transformers computes {problem} from picli's own computation",
            hint="nothing was written; run with PICLI_DEBUG=1 and please report this")
    return check


def _check_windows(plan: Any, source_dir: Path) -> None:
    """What the written config means as a window, from its own keys, not from picli's plan:
    a method whose config states the window (yarn: original x factor, vLLM's reading) must
    state the target, over the pretraining window the source stated. Comparing frequencies
    with picli's own computation cannot see a plan that starts from the wrong window (both
    sides would share it); these keys can."""
    from .checkpoint import read_config

    written = rope.language_config(plan.new_files["config.json"])
    state = rope.read_state(written)
    owner = rope.by_rope_type(state.scaling_type)
    if owner is None or owner.name != plan.method:
        return
    original = written.get("original_max_position_embeddings") or state.original_window_hint
    if original is None:
        return
    served = original * state.factor
    if abs(served - plan.target_window) >= 1:
        raise SelfCheckFailed(f"self-check failed ({plan.method}): the written config means original_max_position_"
                              f"embeddings {original} x factor {state.factor:g} = {served:g} tokens (what vLLM serves), "
                              f"not the target {plan.target_window}", hint="nothing was written; please report this")
    source = rope.read_state(rope.language_config(read_config(source_dir)))
    if source.scaling_type == state.scaling_type and source.original_window_hint \
            and source.original_window_hint != original:
        raise SelfCheckFailed(f"self-check failed ({plan.method}): the source was trained over {source.original_window_hint} "
                              f"tokens (its original_max_position_embeddings) but the output says {original}",
                              hint="nothing was written; please report this")
