"""Print what each RoPE config class of the running transformers fills in when config.json
leaves a key out: theta, rotary fraction, window, local (sliding-layer) theta.

    python tests/data/class_defaults.py > tests/data/class_defaults-<version>.json

Run once per transformers release (the main .venv and the .venv-tf* side environments) and
checked in; tests/test_families.py holds picli's family table against these files and, where
the environment is present, the files against the live classes. Needs no torch.
"""

import json
import sys

MODEL_TYPES = [
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen3_next", "gemma", "gemma2",
    "gemma3_text", "gemma3n_text", "starcoder2", "cohere", "cohere2", "granite", "granitemoe", "granitemoeshared",
    "olmo", "olmo2", "olmo3", "gpt_neox", "phi", "stablelm", "persimmon", "falcon",
]
# Wrappers: the text config each builds from a text_config dict that names no model_type.
WRAPPERS = ["gemma3", "gemma3n", "mistral3", "llava", "llava_next", "idefics3", "smolvlm", "paligemma",
            "llava_onevision", "qwen2_vl", "qwen2_5_vl"]


def defaults(config) -> dict:
    values = config.to_dict()
    params = values.get("rope_parameters") or {}
    full = params.get("full_attention", params) if isinstance(params, dict) else {}
    sliding = params.get("sliding_attention") if isinstance(params, dict) else None
    theta = full.get("rope_theta", values.get("rope_theta", values.get("rotary_emb_base")))
    partial = full.get("partial_rotary_factor", values.get("partial_rotary_factor", values.get("rotary_pct", 1.0)))
    local = (sliding or {}).get("rope_theta", values.get("rope_local_base_freq"))
    return {"theta": float(theta) if theta is not None else None, "partial_rotary_factor": float(partial),
            "max_position_embeddings": values.get("max_position_embeddings"),
            "local_theta": float(local) if local is not None else None,
            "nested": bool(sliding)}


def main() -> None:
    import transformers
    from transformers import AutoConfig

    transformers.logging.set_verbosity_error()
    result = {"transformers": transformers.__version__, "families": {}, "wrappers": {}}
    for model_type in MODEL_TYPES:
        try:
            result["families"][model_type] = defaults(AutoConfig.for_model(model_type))
        except (ValueError, KeyError):
            result["families"][model_type] = None  # this release does not know the family
    for model_type in WRAPPERS:
        try:
            text = AutoConfig.for_model(model_type, text_config={}).text_config
        except (ValueError, KeyError):
            result["wrappers"][model_type] = None
            continue
        result["wrappers"][model_type] = {"text_model_type": text.model_type, **defaults(text)}
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
