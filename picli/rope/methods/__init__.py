"""The methods picli writes, one file each, registered by name (as mergekit registers its merge methods).

  base.py    what every method shares: the format-neutral state, request and extension, and
             the `Method` base class whose hooks a method fills in
  linear.py  linear Position Interpolation (PI, the default)
  yarn.py    YaRN: NTK-by-parts plus an attention temperature
  ntk.py     static NTK-aware scaling: a larger theta

The rules every method obeys (stacking, the window, the target check, the factor) are in
rope/planner.py, once. Adding a method is a new file here with a `Method` subclass and one
line in METHODS below (docs/concepts.md shows one).
Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

from ...errors import CannotExtend
from .base import Current, Extension, Method, Names, Request, Start, inverse_frequencies
from .linear import Linear
from .ntk import Ntk, ntk_theta
from .yarn import (YARN_BETA_FAST, YARN_BETA_SLOW, Yarn, configured_yarn_attention, yarn_attention_factor,
                   yarn_correction_dim, yarn_inverse_frequencies, yarn_kept_fractions, yarn_min_transformers,
                   yarn_readers)

METHODS: dict[str, Method] = {method.name: method for method in (
    Linear(),
    Yarn(),
    Ntk(),
)}

# RoPE types picli reads but does not write: another scheme, so stacking a method on one of them
# is refused unless --force replaces it (from the pretraining window).
READ_ONLY_TYPES = {"llama3", "longrope", "dynamic", "su"}


def get_method(name: str) -> Method:
    """The registered method called `name`, or the one-line reason picli does not write it."""
    if name == "dynamic":
        raise CannotExtend("--method dynamic is not written: dynamic NTK has no GGUF form and vLLM computes it "
                           "once at load, so runtimes would not agree on it",
                           hint="use --method ntk: static NTK-aware scaling, a new rope_theta every runtime reads")
    if name not in METHODS:
        names = list(METHODS)
        raise CannotExtend(f"unknown --method {name!r}",
                           hint=f"choose {names[0]} (PI, the default), " + ", ".join(names[1:-1])
                           + (" or " if len(names) > 2 else "") + names[-1])
    return METHODS[name]


def by_rope_type(rope_type: str) -> Method | None:
    """The method whose config carries this scaling type (linear, yarn), or None."""
    return next((method for method in METHODS.values() if method.rope_type == rope_type), None)


__all__ = ["METHODS", "READ_ONLY_TYPES", "YARN_BETA_FAST", "YARN_BETA_SLOW", "Current", "Extension", "Method", "Names",
           "Request", "Start", "by_rope_type", "configured_yarn_attention", "get_method", "inverse_frequencies",
           "ntk_theta", "yarn_attention_factor", "yarn_correction_dim", "yarn_inverse_frequencies",
           "yarn_kept_fractions", "yarn_min_transformers", "yarn_readers"]
