"""ntk: static NTK-aware scaling (bloc97 2023; YaRN paper, Peng et al. 2023, §3.1).

No scaling type at all: a larger base theta' = theta x s^(d/(d-2)) (d the rotary dimension),
so the lowest frequency theta^(-(d-2)/d) is divided by exactly s (interpolated like PI) while
the highest, 1, is kept. Every runtime reads a theta (GGUF: `rope.freq_base`), so every
runtime agrees. Because the config keeps no trace of it, picli.json is the only record that a
checkpoint is ntk: extending it again scales theta again, from the recorded first theta.
Dynamic NTK is not this method and is not written (it has no GGUF form and vLLM computes it
once at load).
"""

from __future__ import annotations

from typing import Any, Sequence

from ...errors import CannotExtend
from .base import Current, Method, Request, Start, inverse_frequencies


def ntk_theta(theta: float, scale: float, rotary_dim: int) -> float:
    """NTK-aware base: theta * s^(d/(d-2)), so the lowest frequency theta^(-(d-2)/d) is divided
    by exactly s (interpolated like PI) while the highest, 1, is kept (extrapolated)."""
    return float(theta * scale ** (rotary_dim / (rotary_dim - 2)))


class Ntk(Method):
    name = "ntk"
    label = "ntk"
    title = ("static NTK-aware RoPE scaling (a larger RoPE base; [Peng et al. 2023](https://arxiv.org/abs/2309.00071) "
             "§3.1)")
    summary = "NTK-aware: a larger RoPE theta, no scaling type (see Method)"

    def refuse(self, current: Current) -> None:
        if current.rotary_dim is None:
            raise CannotExtend(f"this {current.names.what} does not say its rotary dimension "
                               f"({current.names.rotary_dim}), which --method ntk needs",
                               hint="use --method linear or yarn, or extend the HF checkpoint")
        if current.rotary_dim <= 2:
            raise CannotExtend(f"--method ntk needs a rotary dimension above 2, this model rotates {current.rotary_dim}",
                               hint="use --method linear")

    def compose(self, current: Current, request: Request, warnings: list[str]) -> Start:
        """ntk again: theta scales again by the new step; the record keeps the first theta."""
        previous_scale = float(current.record.get("factor") or 1.0)
        window = request.from_window or request.recorded_window or current.window
        original = int(current.record.get("original_window") or round(window / previous_scale))
        return Start(window, original, previous_scale, current.theta)

    def new_theta(self, theta: float, step: float, current: Current) -> float:
        return ntk_theta(theta, step, current.rotary_dim)

    def scaling(self, factor: float, original_window: int) -> None:
        return None

    def parameters(self, plan: Any, current: Current, request: Request) -> dict:
        rotary_dim = current.rotary_dim
        theta_before = current.theta
        if current.scaling_type == "ntk":
            theta_before = float((current.record.get("parameters") or {}).get("theta_before") or current.theta)
        return {"scale": plan.factor, "rotary_dim": rotary_dim, "exponent": rotary_dim / (rotary_dim - 2),
                "theta_before": theta_before, "theta": plan.theta, "max_position_embeddings": request.layout}

    def expected_rope(self, plan: Any, rotary_dim: int, source: Sequence[float]) -> tuple[list[float], float, str]:
        return inverse_frequencies(plan.theta, rotary_dim), 1.0, f"plain RoPE at the ntk theta {plan.theta:.6g}"

    def plan_line(self, plan: dict) -> str:
        parameters = plan.get("parameters") or {}
        return (f"ntk: rope_theta {parameters.get('theta_before', plan['theta']):g} -> {plan['theta']:.6g} "
                f"(x s^(d/(d-2)), d = {parameters.get('rotary_dim')}); no scaling type")

    def untrained_hint(self) -> str:
        # docs/science.md, "The methods on SmolLM2 without fine-tuning" (docs/results/methods.json);
        # tests/test_methods.py holds these numbers to that file.
        return ("without fine-tuning, picli measured ntk x2 on SmolLM2-135M-Instruct (dequantized from Q4_1, "
                "8192 -> 16384 tokens) at 2.8-4.6% above the unmodified model's perplexity inside its window, and "
                "8/8 passkeys at 2048 and 7/8 at 12288 tokens (docs/science.md). Measure this model before relying "
                "on it: picli verify --passkey --perplexity.")

    def card_method(self, record: dict, theta: float, rotary_dim: int, model_type: str, original: int, target: int,
                    factor: float) -> list[str]:
        parameters = record.get("parameters") or {}
        theta_before = parameters.get("theta_before")
        dim = parameters.get("rotary_dim", rotary_dim)
        return [
            "## Method", "",
            f"NTK-aware scaling (static) raises the RoPE base instead of scaling positions: theta "
            f"{theta_before:g} -> {theta:.6g} = theta x {factor:g}^(d/(d-2)) with d = {dim} rotary dimensions, so the "
            f"lowest frequency is interpolated by {factor:g} (like PI), the highest is kept, and those between are "
            "stretched less the faster they turn. The config has no scaling type: every runtime reads it as plain RoPE "
            "with a larger `rope_theta`." if isinstance(theta_before, (int, float)) else
            "NTK-aware scaling (static) raises the RoPE base instead of scaling positions; the config has no scaling "
            "type.",
            "",
            "- **transformers** (every release that reads `rope_theta`"
            + (", or `rotary_emb_base` for GPT-NeoX in 4.x" if model_type == "gpt_neox" else "") + "), "
            f"**vLLM** (`--max-model-len {target}`; there is no factor to multiply) and **TGI** read the new theta.",
            f"- **llama.cpp**: the converter writes it as `rope.freq_base`; on a GGUF converted from the base model: "
            f"`llama-cli -m model.gguf -c {target} --rope-freq-base {theta:.6g}`.",
        ]

    def card_untrained(self) -> str:
        return ("The YaRN paper (§3.1) cites, and does not measure, that NTK-aware scaling \"performs much better at "
                "extending the context size of non-fine-tuned models compared to PI\". Unless the verification below "
                "measured this model at the new window, do not rely on the window yet; `picli finetune` trains at it.")

    def card_past_window(self, original: int, target: int, factor: float) -> str:
        return (f"**No extrapolation past {target:,} tokens.** The larger theta divides the lowest RoPE frequency by "
                f"exactly {factor:g}, so up to {target:,} tokens its angles stay within the trained range and beyond "
                "it they do not; the dimensions between the fastest and the slowest are extrapolated in part, which "
                "is why the YaRN paper (§3.1) says the scale \"has to be set higher than the expected scale\". This is "
                "the static form: not dynamic NTK, which rescales per sequence length in transformers but once at "
                "load in vLLM and has no GGUF form.")

    def card_short_range(self, original: int, factor: float, measured: str | None) -> str:
        return ("**Short contexts may change.** The highest RoPE frequency is kept and each lower one is slowed "
                "by a little more (dimension j by s^(2j/(d-2)), YaRN paper §3.1), so neighbouring tokens stay nearly "
                "as distinguishable as before, but every other frequency changes, at short range too. "
                + ("Not measured for this model by picli." if measured is None else f"{measured}."))

    def card_vllm(self) -> str:
        return "There is no factor for vLLM to multiply: it serves `max_position_embeddings`"

    def card_llama_cpp(self) -> str:
        return "the converter writes the larger theta into the GGUF (`rope.freq_base`; there is no scaling type)"

    def card_tgi(self, factor: float) -> str:
        return ("# no scaling type: TGI computes plain RoPE from config.json's rope_theta "
                "(server/text_generation_server/layers/rotary.py)")
