"""yarn: YaRN (Peng, Quesnelle, Fan, Shippole 2023, arXiv 2309.00071): "NTK-by-parts" plus an
attention temperature.

The dimensions whose wavelength fits more than beta_fast times into the original window L
keep their frequency, those that fit less than beta_slow times are interpolated by the factor
s (as PI), with a ramp linear in the dimension index between (paper §3.2); cos and sin are
multiplied by 0.1 ln s + 1 (eq. 22). Config: `rope_type: yarn`, factor, original window,
betas; GGUF: `rope.scaling.type yarn`, factor, original_context_length. Extending a yarn
checkpoint again multiplies the factors and keeps the original window. Which readers compute
it as written, per max_position_embeddings layout, is `yarn_readers`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ...errors import CannotExtend
from .. import values
from ..families import family_of
from .base import Current, Method, Request, Start, check_composable_factor, inverse_frequencies

# The YaRN paper's defaults (§3.2, alpha = 1 and beta = 32 for LLaMA); every runtime
# defaults to them too. Written as floats: transformers 4.44 warns on int betas.
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
# Keys that make a yarn attention factor other than 0.1 ln s + 1. vLLM and llama.cpp ignore
# them (docs/runtimes.md), so picli never writes them and does not stack on them.
YARN_CUSTOM_KEYS = ("attention_factor", "mscale", "mscale_all_dim")
# Keys of a yarn block that stacking yarn writes anew (the rest of the source's block is kept).
YARN_RECOMPUTED_KEYS = {"type", "rope_type", "factor", "original_max_position_embeddings", "rope_theta",
                        "partial_rotary_factor", *YARN_CUSTOM_KEYS}
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
# Config classes that store head_dim = None when config.json leaves it out (4.57's Mistral and
# Mixtral): their yarn function multiplies that None and fails, so picli writes head_dim out.
YARN_NEEDS_HEAD_DIM = {"mistral", "mixtral"}


# ---------------------------------------------------------------------------------------
# The math.


def yarn_attention_factor(factor: float) -> float:
    """YaRN's sqrt(1/t) = 0.1 ln s + 1 (paper eq. 22); runtimes multiply cos and sin by it."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def yarn_correction_dim(rotations: float, rotary_dim: int, theta: float, original_window: int) -> float:
    """The (fractional) dimension index d whose wavelength 2 pi theta^(2d/D) fits `rotations`
    times into the original window: r(d) = L / lambda_d solved for d (paper §3.2)."""
    return rotary_dim * math.log(original_window / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_kept_fractions(theta: float, rotary_dim: int, original_window: int,
                        beta_fast: float = YARN_BETA_FAST, beta_slow: float = YARN_BETA_SLOW,
                        truncate: bool = True) -> list[float]:
    """The paper's gamma per frequency index: 1 keeps the frequency (wavelength fits more than
    beta_fast times into L), 0 interpolates it by the factor (fits less than beta_slow times),
    a linear ramp in between. As in the paper's reference code, the ramp is linear in the
    index between the floor and ceiling of the two boundary dimensions, clamped to [0, D-1];
    `truncate: false` (gpt-oss) keeps the boundaries fractional (transformers'
    find_correction_range)."""
    low = yarn_correction_dim(beta_fast, rotary_dim, theta, original_window)
    high = yarn_correction_dim(beta_slow, rotary_dim, theta, original_window)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # the reference code's guard against a zero-width ramp
    return [1.0 - min(max((index - low) / (high - low), 0.0), 1.0) for index in range(rotary_dim // 2)]


def yarn_inverse_frequencies(theta: float, rotary_dim: int, factor: float, original_window: int,
                             beta_fast: float = YARN_BETA_FAST, beta_slow: float = YARN_BETA_SLOW,
                             truncate: bool = True) -> list[float]:
    """h(theta_d) = (1 - gamma) theta_d / s + gamma theta_d (YaRN eq. 18-19)."""
    kept = yarn_kept_fractions(theta, rotary_dim, original_window, beta_fast, beta_slow, truncate)
    return [frequency * (gamma + (1.0 - gamma) / factor)
            for frequency, gamma in zip(inverse_frequencies(theta, rotary_dim), kept)]


def _times(count: float) -> str:
    return "once" if count == 1 else f"{count:g} times"


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def is_default_attention_factor(value: Any, factor: float) -> bool:
    """An attention_factor that is YaRN's own 0.1 ln s + 1 for the config's factor, written out
    (OLMo 3 writes 1.2079441541679836 at factor 8): equal within half a unit of the last digit
    written, so 1.2079 counts as well as the full float."""
    number = values.positive_number(value, "attention_factor")
    text = repr(number)
    digits = len(text.split(".")[1]) if "." in text and "e" not in text else 15
    return abs(number - _mscale(factor)) <= 0.5 * 10 ** -digits + 1e-12


def custom_attention_keys(scaling: dict, factor: float) -> list[str]:
    """The keys of a yarn scaling that make its attention factor other than 0.1 ln s + 1; an
    attention_factor equal to that default is the default written out, not a custom value."""
    custom = [key for key in YARN_CUSTOM_KEYS if scaling.get(key) is not None]
    if "attention_factor" in custom and is_default_attention_factor(scaling["attention_factor"], factor):
        custom.remove("attention_factor")
    return custom


def configured_yarn_attention(active: dict, factor: float) -> tuple[float, str]:
    """transformers 5 / 4.57's YaRN attention factor of a config and where it came from."""
    if active.get("attention_factor") is not None:
        return values.positive_number(active["attention_factor"], "attention_factor"), "attention_factor"
    mscale, mscale_all_dim = active.get("mscale"), active.get("mscale_all_dim")
    for key, value in (("mscale", mscale), ("mscale_all_dim", mscale_all_dim)):
        if value is not None and value != 0:  # 0 means "not set" to transformers, as None does
            values.positive_number(value, key)
    if mscale and mscale_all_dim:
        return _mscale(factor, mscale) / _mscale(factor, mscale_all_dim), "mscale / mscale_all_dim"
    return _mscale(factor), "0.1 ln s + 1"


# ---------------------------------------------------------------------------------------
# Which transformers releases read a picli yarn config as written.


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def yarn_min_transformers(config: dict) -> str:
    """The first 4.x release that computes yarn for this config's family at all."""
    first = YARN_FIRST_4X.get(config.get("model_type", ""), YARN_FIRST_4X_DEFAULT)
    return max(family_of(config).min_transformers, first, key=_version)


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


# ---------------------------------------------------------------------------------------
# The method.


class Yarn(Method):
    name = "yarn"
    label = "yarn"
    title = "YaRN ([Peng et al. 2023](https://arxiv.org/abs/2309.00071))"
    summary = ("YaRN: fast RoPE dimensions kept, slow ones interpolated by {factor:g}, a ramp between; attention "
               "temperature 0.1 ln s + 1 (see Method)")
    rope_type = "yarn"

    def refuse(self, current: Current) -> None:
        if current.model_type in YARN_REJECTED_BY_4X:
            raise CannotExtend(f"--method yarn cannot be expressed for {current.model_type}: "
                               f"{YARN_REJECTED_BY_4X[current.model_type]} and fail to load a yarn config",
                               hint="use --method linear or --method ntk for this family")

    def compose(self, current: Current, request: Request, warnings: list[str]) -> Start:
        custom = custom_attention_keys(current.scaling, current.factor)
        if custom and not request.force:
            raise CannotExtend(f"this {current.names.what}'s yarn sets a custom attention factor ({', '.join(custom)}); "
                               "vLLM and llama.cpp ignore it, so stacking yarn on it would mean different models per "
                               "runtime", hint="extend the base model instead, or pass --force to replace it with plain yarn")
        stated = current.original_window
        original = stated or (round(request.from_window / current.factor) if request.from_window else current.window)
        if custom:
            base = request.from_window or original
            warnings.append(f"--force: replacing yarn with a custom attention factor ({', '.join(custom)}) by plain "
                            f"yarn from {base} tokens")
            return Start(base, base, 1.0, current.theta)
        check_composable_factor(current)
        if current.scaling.get("truncate") is False:
            warnings.append("kept truncate: false from the source's yarn block (transformers 4.57+ and 5.x read it); "
                            "GGUF has no key for it, so llama.cpp truncates the correction range of a converted GGUF")
        if stated:
            # The config states its window: pretraining window x factor (vLLM serves exactly
            # that). The new factor is relative to the pretraining window, never to --from.
            window = round(stated * current.factor)
            if request.from_window is not None and request.from_window != window:
                raise CannotExtend(f"--from {request.from_window} contradicts the {current.names.what}: yarn x"
                                   f"{current.factor:g} over {current.names.original} {stated} is a {window}-token "
                                   "window", hint=f"omit --from (the yarn config states its window), or fix "
                                                  f"{current.names.original} if {stated} is not the pretraining window")
            return Start(window, stated, current.factor, current.theta)
        window = request.from_window or request.recorded_window or round(original * current.factor)
        return Start(window, original, current.factor, current.theta)

    def kept(self, current: Current) -> dict:
        """Keys of the source's yarn block that stacking leaves as they are (gpt-oss's
        `truncate: false`, betas other than the paper's, keys picli does not model): all but
        the factor, the window, the type, theta and the attention factor, which yarn
        recomputes for the new factor. A custom attention factor is replaced (--force) by
        plain yarn, so nothing of its block is kept."""
        if custom_attention_keys(current.scaling, current.factor):
            return {}
        return {key: value for key, value in current.scaling.items() if key not in YARN_RECOMPUTED_KEYS}

    def scaling(self, factor: float, original_window: int) -> dict:
        """The defaults written out, no attention factor or mscale (runtimes other than
        transformers would ignore them)."""
        return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_window),
                "beta_fast": YARN_BETA_FAST, "beta_slow": YARN_BETA_SLOW}

    def parameters(self, plan: Any, current: Current, request: Request) -> dict:
        scaling = plan.scaling or {}
        kept = {key: value for key, value in scaling.items() if key not in YARN_RECOMPUTED_KEYS
                and key not in ("beta_fast", "beta_slow")}
        return {"factor": plan.factor, "original_max_position_embeddings": int(plan.original_window),
                "beta_fast": float(scaling.get("beta_fast", YARN_BETA_FAST)),
                "beta_slow": float(scaling.get("beta_slow", YARN_BETA_SLOW)),
                "attention_factor": yarn_attention_factor(plan.factor), "max_position_embeddings": request.layout,
                **({"kept": kept} if kept else {})}

    def schema_parameters(self, config: dict, request: Request) -> dict:
        return {"readers": yarn_readers(request.layout), "min_transformers": yarn_min_transformers(config)}

    def finish_config(self, before: dict, new: dict, head_dim: int) -> None:
        if before.get("model_type") in YARN_NEEDS_HEAD_DIM and before.get("head_dim") is None:
            new["head_dim"] = head_dim

    def expected_rope(self, plan: Any, rotary_dim: int, source: Sequence[float]) -> tuple[list[float], float, str]:
        # The frequencies the plan means: the source's kept keys (truncate, betas) included,
        # so a writer that dropped one is caught by transformers' reading of the file.
        parameters = getattr(plan, "parameters", None) or {}
        truncate = (parameters.get("kept") or {}).get("truncate", True) is not False
        beta_fast = parameters.get("beta_fast", YARN_BETA_FAST)
        beta_slow = parameters.get("beta_slow", YARN_BETA_SLOW)
        attention = yarn_attention_factor(plan.factor)
        return (yarn_inverse_frequencies(plan.theta, rotary_dim, plan.factor, plan.original_window, beta_fast,
                                         beta_slow, truncate), attention,
                f"yarn (factor {plan.factor:g}, ramp at the original {plan.original_window} tokens"
                + ("" if truncate else ", truncate false") + f", attention x{attention:.6g})")

    def plan_line(self, plan: dict) -> str:
        parameters = plan.get("parameters") or {}
        readers = parameters.get("readers") or {}
        return (f"yarn from {parameters.get('original_max_position_embeddings')} tokens, attention x"
                f"{parameters.get('attention_factor', 1.0):.4g}; read as meant by " + "; ".join(readers.get("right", []))
                + "".join(f"; NOT by {text}" for text in readers.get("wrong", [])))

    def untrained_hint(self) -> str:
        # docs/science.md, "The methods on SmolLM2 without fine-tuning" (docs/results/methods.json);
        # tests/test_methods.py holds these numbers to that file.
        return ("without fine-tuning, picli measured yarn x2 on SmolLM2-135M-Instruct (dequantized from Q4_1, "
                "8192 -> 16384 tokens) at 1.6-2.1% above the unmodified model's perplexity inside its window, and "
                "6/8 passkeys at 2048 and at 12288 tokens (docs/science.md). Measure this model before relying on "
                "it: picli verify --passkey --perplexity.")

    def card_method(self, record: dict, theta: float, rotary_dim: int, model_type: str, original: int, target: int,
                    factor: float) -> list[str]:
        parameters = record.get("parameters") or {}
        readers = parameters.get("readers") or {}
        attention = parameters.get("attention_factor") or yarn_attention_factor(factor)
        wrong = "; ".join(readers.get("wrong") or [])
        return [
            "## Method", "",
            f"YaRN divides each RoPE frequency by an amount that depends on its wavelength: dimensions whose "
            f"wavelength fits more than {_times(YARN_BETA_FAST)} into the original {original:,}-token window keep "
            f"their frequency, those that fit less than {_times(YARN_BETA_SLOW)} are interpolated by {factor:g} (like "
            f"PI), with a linear ramp between; cos and sin are multiplied by "
            f"0.1 ln {factor:g} + 1 = {attention:.4f}. The config says `rope_type: yarn`, `factor` {factor:g}, "
            f"`original_max_position_embeddings` {original}, `beta_fast` {YARN_BETA_FAST:g}, `beta_slow` "
            f"{YARN_BETA_SLOW:g} and no custom attention factor (vLLM and llama.cpp would ignore one).", "",
            f"- **transformers**: read as meant by {', '.join(readers.get('right') or ['transformers 4.56+ and 5.x'])}"
            + (f". Not by: {wrong}." if wrong else ".") + f" Older releases (before "
            f"{parameters.get('min_transformers', '4.45.0')}) ignore or reject yarn for this family.",
            f"- **vLLM** serves `original_max_position_embeddings` x factor = {round(original * factor):,} tokens; "
            f"`--max-model-len {target}` says it explicitly.",
            f"- **llama.cpp**: the converter writes `rope.scaling.type yarn`, the factor and the original context "
            f"into the GGUF; on a GGUF converted from the base model: `llama-cli -m model.gguf -c {target} "
            f"--rope-scaling yarn --rope-scale {factor:g} --yarn-orig-ctx {original}`.",
        ]

    def card_untrained(self) -> str:
        return ("The YaRN paper fitted its attention factor (0.1 ln s + 1, eq. 22) to the lowest perplexity of LLaMA "
                "models without fine-tuning (§3.4), but every number in its tables is of fine-tuned models. Unless "
                "the verification below measured this model at the new window, do not rely on the window yet; "
                "`picli finetune` trains at it.")

    def card_past_window(self, original: int, target: int, factor: float) -> str:
        return (f"**No extrapolation past {target:,} tokens.** YaRN divides the slowest RoPE dimensions (wavelength "
                f"longer than the original {original:,}-token window) by {factor:g}, as PI does (YaRN paper §3.2): up "
                f"to {target:,} tokens their angles stay within the trained range, beyond it they do not.")

    def card_short_range(self, original: int, factor: float, measured: str | None) -> str:
        return (f"**Short contexts may change.** YaRN keeps the frequencies of the fast RoPE dimensions (wavelength "
                f"fitting more than {_times(YARN_BETA_FAST)} into {original:,} tokens, YaRN paper §3.2), so "
                "neighbouring tokens stay as distinguishable as before, but it multiplies cos and sin by "
                f"0.1 ln {factor:g} + 1 = {yarn_attention_factor(factor):.4f} at every position (eq. 22), short "
                "ranges included. " + ("Not measured for this model by picli." if measured is None else f"{measured}."))

    def card_vllm(self) -> str:
        return "vLLM serves `original_max_position_embeddings` x the factor"

    def card_llama_cpp(self) -> str:
        return ("the converter writes yarn into the GGUF (`rope.scaling.type yarn`, `rope.scaling.factor`, "
                "`rope.scaling.original_context_length`)")

    def card_tgi(self, factor: float) -> str:
        return ("# TGI builds yarn from config.json's rope_scaling (server/text_generation_server/layers/rotary.py); "
                "its ROPE_SCALING override takes only linear or dynamic")

    # --- what each runtime reads from a yarn config --------------------------------------

    def served_window(self, state: Any, original: int | None) -> int:
        """YaRN configs often keep the pretraining value in max_position_embeddings (Qwen2.5:
        32768 with factor 4); their window is original x factor (vLLM's reading too)."""
        return max(state.window, int((original or state.window) * state.factor))

    def transformers5_notes(self, active: dict, state: Any, original: int | None) -> list[str]:
        attention, source = configured_yarn_attention(active, state.factor)
        ramp = original or state.window
        return [f"YaRN ramp at {ramp} tokens" + ("" if original else
                " (no original_max_position_embeddings: 5.x fills it with max_position_embeddings)")
                + f"; attention factor {attention:.4g} ({source})"
                + ("; truncate false" if active.get("truncate") is False else "")]

    def transformers4_differs(self, scaling: dict, state: Any) -> list[str]:
        differs = []
        original = scaling.get("original_max_position_embeddings")
        if original and int(original) != state.window:
            differs.append(f"4.44 builds the YaRN ramp at max_position_embeddings {state.window}, not "
                           f"original_max_position_embeddings {original} (4.57 reads it)")
        if scaling.get("attention_factor") is None and scaling.get("mscale") and scaling.get("mscale_all_dim"):
            differs.append("4.44 ignores mscale / mscale_all_dim (attention factor 0.1 ln s + 1; 4.57 reads them)")
        if scaling.get("truncate") is False:
            differs.append("4.44 ignores truncate: false (4.57 reads it)")
        return differs

    def vllm_reads(self, active: dict, state: Any, original: int | None) -> tuple[int, list[str]]:
        differs = []
        if original is None:
            differs.append("no original_max_position_embeddings: vLLM on transformers 4.x fails (get_rope reads it "
                           "without a default); on transformers 5 it gets 5.x's fill-in")
        attention, source = configured_yarn_attention(active, state.factor)
        if source != "0.1 ln s + 1" and abs(attention - _mscale(state.factor)) > 1e-9 and not (
                source == "attention_factor" and is_default_attention_factor(attention, state.factor)):
            differs.append(f"ignores {source} (attention factor {_mscale(state.factor):.4g} = 0.1 ln s + 1, "
                           f"not {attention:.4g})")
        return int((original or state.window) * state.factor), differs

    def llama_cpp_reads(self, active: dict, state: Any, original: int | None) -> tuple[str, list[str], list[str]]:
        notes, differs = [], []
        if original is None:
            differs.append("no original_max_position_embeddings: the converter fails on transformers 4.x "
                           "(set_gguf_parameters reads it without a default)")
        flags = f" --rope-scaling yarn --rope-scale {state.factor:g} --yarn-orig-ctx {original or state.window}"
        if active.get("mscale") or active.get("mscale_all_dim"):
            differs.append("the converter does not write mscale / mscale_all_dim for this path (only a few "
                           "architectures' own converters do)")
        if active.get("attention_factor") is not None:
            notes.append("attention_factor is written as rope.scaling.yarn_attn_factor; llama.cpp reads that key "
                         "only for a few architectures")
        if active.get("truncate") is False:
            differs.append("truncate: false has no GGUF key: llama.cpp truncates the correction range")
        return flags, notes, differs

    def gguf_notes(self, factor: float, original: int | None, attention: float | None) -> list[str]:
        return [f"YaRN x{factor:g} from {original} tokens; attention factor "
                + (f"{attention:g} (rope.scaling.yarn_attn_factor, read only by a few architectures)"
                   if attention is not None else "computed from the factor")]
