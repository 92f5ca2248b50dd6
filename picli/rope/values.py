"""The checks every RoPE value passes before picli computes with it.

A config.json (or GGUF metadata) is user input: a value may be 0, negative, NaN, Infinity
(Python's json reads `NaN`, `Infinity` and `1e999` as floats), a string, or fractional where
an integer is meant. Each would either crash the arithmetic or, worse, flow silently into a
written checkpoint (a negative factor, theta 0 read as "missing"). So every value is read
through one of these functions, which return it typed or raise `NotACheckpoint` naming the
key and the value. Absent keys are the caller's business (`is None`, then the family
default), never `x or default`: 0 is a value, not a missing key. docs/safety.md lists them.
Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import CannotExtend, NotACheckpoint

# The longest window picli writes or accepts: llama.cpp addresses positions as int32
# (`typedef int32_t llama_pos` in llama.h) and GGUF stores context_length as a uint32, so no
# runtime picli writes for can serve a position past 2^31 - 1. (transformers has no such
# limit, but a KV cache of 2^31 tokens is terabytes even for a 135M model.)
MAX_WINDOW = 2**31 - 1
WINDOW_LIMIT_REASON = "llama.cpp positions are int32 and GGUF's context_length is uint32"

# A model_type is a short identifier ("llama", "gpt-sw3", "qwen2_moe"); anything else is junk
# that would otherwise reach a family lookup, an error message or transformers' registry.
_MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def show(value: Any, limit: int = 60) -> str:
    """A value for a one-line error: repr, cut short (a 10k-character string stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _invalid(key: str, value: Any, wanted: str, where: str) -> NotACheckpoint:
    return NotACheckpoint(f"{where}: {key} must be {wanted}, got {show(value)}",
                          hint=f"fix {key} in {where} (or restore the original file), then run again")


def _finite(value: Any) -> float | None:
    """value as a finite float, or None (bools, strings, NaN, inf and ints past float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def positive_number(value: Any, key: str, where: str = "config.json") -> float:
    """A finite number > 0 (theta, a scaling factor): returned as a float."""
    number = _finite(value)
    if number is None or number <= 0:
        raise _invalid(key, value, "a finite number > 0", where)
    return number


def positive_int(value: Any, key: str, where: str = "config.json", maximum: int | None = None) -> int:
    """An integer > 0 (head_dim, hidden_size, a layer count). 2048.0 is refused like 2048.5:
    transformers' typed configs take the field as written, and picli does not guess."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _invalid(key, value, "an integer > 0", where)
    if maximum is not None and value > maximum:
        raise _invalid(key, value, f"an integer from 1 to {maximum:,}", where)
    return value


def window(value: Any, key: str, where: str = "config.json") -> int:
    """A context window in tokens: an integer from 1 to MAX_WINDOW."""
    return positive_int(value, key, where, maximum=MAX_WINDOW)


def fraction(value: Any, key: str, where: str = "config.json") -> float:
    """A share of the head dimension in (0, 1] (partial_rotary_factor, rotary_pct)."""
    number = _finite(value)
    if number is None or not 0 < number <= 1:
        raise _invalid(key, value, "a number in (0, 1]", where)
    return number


def model_type(value: Any, where: str = "config.json") -> str:
    """A model_type string as transformers registers them; junk is refused before any lookup."""
    if not isinstance(value, str) or not _MODEL_TYPE.fullmatch(value):
        raise _invalid("model_type", value, "a short identifier such as \"llama\"", where)
    return value


def check_target(target_window: Any, option: str = "--to") -> int:
    """A window picli is asked to write: a positive integer no runtime refuses to address."""
    if isinstance(target_window, bool) or not isinstance(target_window, int) or target_window <= 0:
        raise CannotExtend(f"{option} must be a positive integer number of tokens, got {show(target_window)}",
                           hint=f"e.g. {option} 16384")
    if target_window > MAX_WINDOW:
        raise CannotExtend(window_limit_message(option, str(target_window)), hint=f"pass {option} {MAX_WINDOW} or less")
    return target_window


def window_limit_message(option: str, text: str) -> str:
    return (f"{option} {show(text, 30)} is past the longest window any runtime can serve, {MAX_WINDOW:,} tokens "
            f"(2^31 - 1: {WINDOW_LIMIT_REASON})")
