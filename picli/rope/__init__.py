"""RoPE: the family table, the two config schemas, the methods, what each runtime reads.

  families.py  how each model_type stores RoPE; which architectures cannot take PI, and why
  schema.py    reading and writing config.json's rope_parameters (5.x) and legacy keys (4.x)
  methods.py   each method's math (linear PI, yarn, ntk) and the config plan
  runtimes.py  what transformers 4.x / 5.x, vLLM and llama.cpp will do with a config

Everything here is pure: a config dict in, data out. No transformers, no torch, no files.
DESIGN.md §2 is the spec; the rules are the ones it states, with the reason beside each
one. `extend.py` applies the plan and then proves it with the installed transformers.
Callers use the names below as `rope.X`.
"""

from .families import (FAMILIES, GGUF_NO_ROPE, LONGROPE_ONLY, NO_HOOK, NO_ROPE, Family, family_of,
                       refusal)
from .methods import (METHODS, OTHER_SCHEMES, YARN_BETA_FAST, YARN_BETA_SLOW, ConfigPlan, check_method,
                      format_window, inverse_frequencies, linear_factor, linear_scaling, ntk_theta, plan_config,
                      plan_method_config, previous_method, yarn_attention_factor, yarn_inverse_frequencies,
                      yarn_kept_fractions, yarn_readers, yarn_scaling)
from .runtimes import predict_llama_cpp, predict_transformers4, predict_transformers5, predict_vllm
from .schema import INTERPOLATED_LAYER_TYPES, RopeState, read_state, scaling_type_of, write_schemas

__all__ = [
    "FAMILIES", "GGUF_NO_ROPE", "INTERPOLATED_LAYER_TYPES", "LONGROPE_ONLY", "METHODS", "NO_HOOK", "NO_ROPE",
    "OTHER_SCHEMES", "YARN_BETA_FAST", "YARN_BETA_SLOW", "ConfigPlan", "Family", "check_method", "RopeState", "family_of",
    "format_window", "inverse_frequencies", "linear_factor", "linear_scaling", "ntk_theta", "plan_config",
    "plan_method_config", "previous_method", "yarn_attention_factor", "yarn_inverse_frequencies",
    "yarn_kept_fractions", "yarn_readers", "yarn_scaling",
    "predict_llama_cpp", "predict_transformers4", "predict_transformers5", "predict_vllm",
    "read_state", "refusal", "scaling_type_of", "write_schemas",
]
