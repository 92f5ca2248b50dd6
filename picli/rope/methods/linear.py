"""linear: Position Interpolation (Chen, Wong, Chen, Tian 2023, arXiv 2306.15595), picli's default.

Position m is read as m * L / L' (L the trained window, L' the target): every inverse
frequency is divided by the factor F = L'/L. In transformers this is `rope_type: linear`
with `factor` F; llama.cpp's GGUF says `rope.scaling.type linear`. Extending a linear
checkpoint again multiplies the factors: F_new = F_old * L' / L_now.
"""

from __future__ import annotations

from typing import Any, Sequence

from ...errors import CannotExtend
from .base import Current, Method, Request, Start, check_composable_factor, inverse_frequencies

# What the PI paper reports for a model that was not fine-tuned (a card cites it as the paper's;
# measurements of the card's own model come only from its picli-verify.json).
UNTRAINED_PAPER = ("in the PI paper (Chen et al. 2023), its models at step 0, before any fine-tuning, have a "
                   "worse PG-19 perplexity than after fine-tuning, degraded but not broken (Table 3), and its passkey "
                   "results (Table 4) start at 200 fine-tuning steps")
# The paper's Table 5 (LLaMA 7B, original-window benchmarks), as it reports it.
TABLE5 = ("the PI paper's Table 5 (LLaMA 7B): within about 2% of the original model on most original-window "
          "benchmarks at 8k, but BoolQ drops 2.9 points at 8k, 6.3 at 16k and 11.4 at 32k")


class Linear(Method):
    name = "linear"
    label = "linear PI"
    title = "linear Position Interpolation (PI, [Chen et al. 2023](https://arxiv.org/abs/2306.15595))"
    summary = "linear RoPE scaling (Position Interpolation): position m is read as m / {factor:g}"
    divides_every_frequency = True
    rope_type = "linear"

    def compose(self, current: Current, request: Request, warnings: list[str]) -> Start:
        check_composable_factor(current)
        if request.from_window is not None or request.recorded_window is not None:
            window = next(value for value in (request.from_window, request.recorded_window) if value is not None)
        else:
            window = _window_from_file(current, warnings)
        return Start(window, round(window / current.factor), current.factor, current.theta)

    def pretraining_window(self, current: Current) -> int:
        return round(current.window / current.factor)  # transformers' convention: the window as extended

    def scaling(self, factor: float, original_window: int) -> dict:
        return {"rope_type": "linear", "factor": factor}

    def expected_rope(self, plan: Any, rotary_dim: int, source: Sequence[float]) -> tuple[list[float], float, str]:
        if plan.previous_type not in ("default", "linear"):  # --force replaced another scheme: plain PI
            return inverse_frequencies(plan.theta, rotary_dim, plan.factor), 1.0, f"plain RoPE / {plan.factor:g}"
        step = plan.factor / plan.previous_factor
        return [frequency / step for frequency in source], 1.0, f"the source's / {step:g}"

    def self_check_line(self, check: dict, plan: dict) -> str:
        legacy = check["transformers4_reads"]
        return (f"transformers {check.get('transformers')} computes inverse frequencies = source / "
                f"{plan['factor'] / plan['previous_factor']:g} (max relative error {check['max_relative_error']:.1e}); "
                f"4.x reads theta {legacy['theta']:g}, linear x{legacy['factor']:g}")

    def untrained_hint(self) -> str:
        # docs/science.md, "The methods on SmolLM2 without fine-tuning" (docs/results/methods.json);
        # tests/test_methods.py holds these numbers to that file.
        return ("PI needs a short fine-tune at the new window (picli finetune). Without one, picli measured linear x2 "
                "on SmolLM2-135M-Instruct (dequantized from Q4_1, 8192 -> 16384 tokens): perplexity 18.89 -> 39.80 "
                "at 1024 tokens, and 0/8 passkeys at 2048 tokens where the unmodified model retrieved 8/8 "
                "(docs/science.md). If you do not plan to fine-tune, use --method yarn (1.6-2.1% above the unmodified "
                "model's perplexity there).")

    def card_self_check(self, check: dict) -> str:
        return "transformers reloaded the config and computed the source's inverse frequencies divided by the factor"

    def card_untrained(self) -> str:
        return ("Interpolation keeps attention scores bounded (the PI paper's bound), but the paper fine-tunes every "
                f"model it extends (1000 steps): {UNTRAINED_PAPER}. Unless the verification below measured this model "
                "at the new window, treat it as the starting point for that fine-tune (`picli finetune`), not as a "
                "long-context model.")

    def card_past_window(self, original: int, target: int, factor: float) -> str:
        return (f"**No extrapolation past {target:,} tokens.** PI maps positions 0..{target:,} into the trained "
                f"range 0..{original:,}; beyond {target:,} the model sees angles it never saw and fails as the "
                "base model does past its window.")

    def card_short_range(self, original: int, factor: float, measured: str | None) -> str:
        lead = (f"**Short contexts may get worse.** PI compresses every RoPE frequency by {factor:g}, so "
                "neighbouring tokens are harder to tell apart.")
        if measured is None:
            return f"{lead} Not measured for this model by picli; from {TABLE5}."
        return f"{lead} {measured}. On other models: {TABLE5}."

    def card_vllm(self) -> str:
        return ("vLLM multiplies `max_position_embeddings` by the factor (it assumes the field holds the pretraining "
                "window)")

    def card_llama_cpp(self) -> str:
        return "the converter writes the linear factor into the GGUF (`rope.scaling.type`, `rope.scaling.factor`)"

    def card_tgi(self, factor: float) -> str:
        return f"# where TGI does not apply the config's scaling, set it: -e ROPE_SCALING=linear -e ROPE_FACTOR={factor:g}"

    # --- what each runtime reads from a linear config ------------------------------------

    def served_window(self, state: Any, original: int | None) -> int:
        return state.window  # transformers' convention: max_position_embeddings is the window as extended

    def vllm_reads(self, active: dict, state: Any, original: int | None) -> tuple[int, list[str]]:
        return int(state.window * state.factor), []  # vLLM takes the field as the pretraining window

    def transformers5_notes(self, active: dict, state: Any, original: int | None) -> list[str]:
        return []

    def transformers4_differs(self, scaling: dict, state: Any) -> list[str]:
        return []

    def llama_cpp_reads(self, active: dict, state: Any, original: int | None) -> tuple[str, list[str], list[str]]:
        return f" --rope-scaling linear --rope-scale {state.factor:g}", [], []

    def gguf_notes(self, factor: float, original: int | None, attention: float | None) -> list[str]:
        return []


def _window_from_file(current: Current, warnings: list[str]) -> int:
    """The window an existing linear factor already gives, when neither --from nor picli.json says.

    With the original window (original_max_position_embeddings, top level or in the RoPE dict;
    a GGUF's original_context_length) it is that window times the factor. Without it, a
    config's max_position_embeddings can be read two ways (transformers' convention: the
    window as extended; vLLM's: the pretraining window, to be multiplied) and the new factor
    differs by the old one: refuse rather than guess, unless a convention settles it.
    """
    if current.original_window:
        window = round(current.original_window * current.factor)
        warnings.append(f"existing linear factor {current.factor:g}: composing from {current.names.original} "
                        f"{current.original_window}, so the current window is {window} tokens")
        return window
    if current.window_includes_factor:
        warnings.append(f"existing linear factor {current.factor:g}: {current.window_includes_factor}")
        return current.window
    as_written, multiplied = current.window, round(current.window * current.factor)
    raise CannotExtend(
        f"existing linear factor {current.factor:g} with max_position_embeddings {as_written} and no "
        "original_max_position_embeddings or picli.json: the current window is ambiguous",
        hint=f"pass --from {as_written} if {as_written} is the window as extended (transformers' convention: "
             f"pretraining window {round(as_written / current.factor)}), or --from {multiplied} if {as_written} is "
             f"the pretraining window (vLLM's convention: {as_written} x {current.factor:g})",
    )
