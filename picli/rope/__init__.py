"""RoPE: the family table, the two config schemas, the methods, what each runtime reads.

  families.py  how each model_type stores RoPE; which architectures cannot take PI, and why
  schema.py    reading and writing config.json's rope_parameters (5.x) and legacy keys (4.x)
  methods.py   each method's math (linear PI, yarn, ntk) and the config plan
  runtimes.py  what transformers 4.x / 5.x, vLLM and llama.cpp will do with a config
  values.py    the checks every value passes before it is used (a damaged config is refused)

Everything here is pure: a config dict in, data out. No transformers, no torch, no files.
DESIGN.md §2 is the spec; the rules are the ones it states, with the reason beside each
one. `extend.py` applies the plan and then proves it with the installed transformers.
Callers use the names below as `rope.X`.
"""

from .families import (FAMILIES, GGUF_NO_ROPE, GGUF_PROJECTOR, LONGROPE_ONLY, MROPE, NO_HOOK, NO_ROPE,
                       SLIDING_ONLY_ROPE, WRAPPERS, Family, family_of, language_config, refusal)
from .methods import (METHODS, OTHER_SCHEMES, YARN_BETA_FAST, YARN_BETA_SLOW, ConfigPlan, check_method,
                      format_window, inverse_frequencies, linear_factor, linear_scaling, ntk_theta, plan_config,
                      plan_method_config, previous_method, yarn_attention_factor, yarn_inverse_frequencies,
                      yarn_kept_fractions, yarn_readers, yarn_scaling)
from .runtimes import (KNOWN_TYPES, RUNTIME_LABELS, check, configured_yarn_attention, effective_window, predict_all,
                       predict_gguf, predict_llama_cpp, predict_transformers4, predict_transformers5, predict_vllm,
                       rope_kind)
from .schema import (INTERPOLATED_LAYER_TYPES, RopeState, read_state, scaling_type_of, wrapper_conflict,
                     write_schemas)
from . import values
from .values import MAX_WINDOW

__all__ = [
    "FAMILIES", "GGUF_NO_ROPE", "GGUF_PROJECTOR", "INTERPOLATED_LAYER_TYPES", "KNOWN_TYPES", "LONGROPE_ONLY",
    "MAX_WINDOW", "METHODS", "MROPE", "NO_HOOK", "NO_ROPE", "RUNTIME_LABELS", "SLIDING_ONLY_ROPE", "WRAPPERS",
    "YARN_BETA_FAST", "YARN_BETA_SLOW", "check", "check_method", "configured_yarn_attention", "effective_window",
    "language_config", "ntk_theta", "plan_method_config", "predict_all", "predict_gguf", "previous_method",
    "rope_kind", "wrapper_conflict", "yarn_attention_factor", "yarn_inverse_frequencies", "yarn_kept_fractions",
    "yarn_readers", "yarn_scaling",
    "OTHER_SCHEMES", "ConfigPlan", "Family", "RopeState", "family_of", "format_window",
    "inverse_frequencies", "linear_factor", "linear_scaling", "plan_config",
    "predict_llama_cpp", "predict_transformers4", "predict_transformers5", "predict_vllm",
    "read_state", "refusal", "scaling_type_of", "values", "write_schemas",
]
