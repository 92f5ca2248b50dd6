"""RoPE: the family table, the two config schemas, the methods, what each runtime reads.

  families.py     how each model_type stores RoPE; which architectures cannot take PI, and why
  schema.py       reading and writing config.json's rope_parameters (5.x) and legacy keys (4.x)
  methods/        one file per method (linear PI, yarn, ntk), registered by name in METHODS
  planner.py      the rules every method obeys, once: stacking, the window, the target, the factor
  config_plan.py  config.json in, the method's config.json out (read, plan, write both schemas)
  gguf.py         a GGUF's RoPE metadata as the methods see it, and the metadata a plan writes
  runtimes.py     what transformers 4.x / 5.x, vLLM and llama.cpp will do with a config
  values.py       the checks every value passes before it is used (a damaged config is refused)

Everything here is pure: a config dict (or GGUF metadata) in, data out. No transformers, no
torch, no files. docs/concepts.md says what each method does; `extend.py` applies the plan and
then proves it with the installed transformers. Callers use the names below as `rope.X`.
"""

from . import gguf, values
from .config_plan import ConfigPlan, current_of, edited_since_record, plan_config
from .families import (FAMILIES, GGUF_NO_ROPE, GGUF_PROJECTOR, LONGROPE_ONLY, MROPE, NO_HOOK, NO_ROPE,
                       SLIDING_ONLY_ROPE, WRAPPERS, Family, family_of, fill_defaults, language_config, refusal,
                       rope_layers)
from .methods import (METHODS, READ_ONLY_TYPES, YARN_BETA_FAST, YARN_BETA_SLOW, Current, Extension, Method, Names,
                      Request, by_rope_type, configured_yarn_attention, get_method, inverse_frequencies, ntk_theta,
                      yarn_attention_factor, yarn_correction_dim, yarn_inverse_frequencies, yarn_kept_fractions,
                      yarn_min_transformers, yarn_readers)
from .planner import format_window, plan, previous_method, stacking_refusal
from .runtimes import (KNOWN_TYPES, RUNTIME_LABELS, check, effective_window, predict_all, predict_gguf,
                       predict_llama_cpp, predict_transformers4, predict_transformers5, predict_vllm, rope_kind)
from .schema import (INTERPOLATED_LAYER_TYPES, RopeState, active_scaling, read_state, scaling_type_of,
                     wrapper_conflict, write_schemas)
from .values import MAX_WINDOW

__all__ = [
    "FAMILIES", "GGUF_NO_ROPE", "GGUF_PROJECTOR", "INTERPOLATED_LAYER_TYPES", "KNOWN_TYPES", "LONGROPE_ONLY",
    "MAX_WINDOW", "METHODS", "MROPE", "NO_HOOK", "NO_ROPE", "READ_ONLY_TYPES", "RUNTIME_LABELS", "SLIDING_ONLY_ROPE",
    "WRAPPERS", "YARN_BETA_FAST", "YARN_BETA_SLOW",
    "ConfigPlan", "Current", "Extension", "Family", "Method", "Names", "Request", "RopeState",
    "active_scaling", "by_rope_type", "check", "configured_yarn_attention", "current_of", "edited_since_record",
    "effective_window",
    "family_of", "fill_defaults", "format_window", "get_method", "gguf", "inverse_frequencies", "language_config",
    "ntk_theta", "plan", "plan_config", "predict_all", "predict_gguf", "predict_llama_cpp", "predict_transformers4",
    "predict_transformers5", "predict_vllm", "previous_method", "read_state", "refusal", "rope_kind", "rope_layers",
    "scaling_type_of", "stacking_refusal", "values", "wrapper_conflict", "write_schemas", "yarn_attention_factor",
    "yarn_correction_dim", "yarn_inverse_frequencies", "yarn_kept_fractions", "yarn_min_transformers",
    "yarn_readers",
]
