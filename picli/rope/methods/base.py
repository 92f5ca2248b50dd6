"""What every method shares: the format-neutral state it plans from, the request, the
extension it plans, and the `Method` base class each method file fills in.

The state (`Current`) is what a checkpoint's RoPE is, whichever file holds it: config.json
(read by rope/config_plan.py) or GGUF metadata (rope/gguf.py). The planner (rope/planner.py)
turns it and a `Request` into an `Extension`, with the rules every method obeys written once;
a method adds only what is its own (its scaling, its theta, its numbers, how it composes with
itself). The HF schema writer and the GGUF writer both render the same `Extension`.
Pure: no transformers, no torch, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ...errors import CannotExtend


def inverse_frequencies(theta: float, rotary_dim: int, factor: float = 1.0) -> list[float]:
    """The plain RoPE reference: theta^(-2j/d) for j < d/2, divided by the PI factor."""
    return [1.0 / (theta ** (2 * j / rotary_dim)) / factor for j in range(rotary_dim // 2)]


@dataclass(frozen=True)
class Names:
    """How a format names what error messages and warnings mention."""

    what: str  # "checkpoint" / "GGUF"
    window: str  # the key holding the window
    original: str  # the key holding the pretraining window of a scaled model
    factor: str  # where the scaling factor is fixed, for a hint
    scaling: str  # where the scaling type is fixed, for a hint
    rotary_dim: str  # the key a format states the rotary dimension in


@dataclass(frozen=True)
class Current:
    """A checkpoint's RoPE now, format-neutral: what every method plans from."""

    # "default" when unscaled; "ntk" when picli.json says so (ntk leaves no scaling type).
    scaling_type: str
    factor: float  # of the current scaling; ntk's recorded scale; 1.0 when unscaled
    theta: float
    rotary_dim: int | None  # None: the file does not say (only ntk needs it)
    window: int | None  # max_position_embeddings / context_length; None: absent with no default
    window_from_default: bool  # the file leaves the window out (a default was filled in)
    original_window: int | None  # the pretraining window the file states for its scaling
    # Why `window` is known to include the current factor (a family's or a format's
    # convention); None: the file alone does not say (linear PI's ambiguity).
    window_includes_factor: str | None
    scaling: dict  # the active scaling in transformers' rope_parameters words ({} when unscaled)
    names: Names
    model_type: str = ""  # the config's model_type (family rules); "" for GGUF
    record: dict = field(default_factory=dict)  # picli.json's "rope" record, {} when none


@dataclass(frozen=True)
class Request:
    """What the user asked for: `picli extend --to ... [--from] [--force] [--max-position-embeddings]`."""

    target_window: int
    from_window: int | None = None
    recorded_window: int | None = None  # picli.json's target_window, for a checkpoint picli wrote
    keep_window: bool = False  # --max-position-embeddings original: the window key is left as it is
    force: bool = False

    @property
    def layout(self) -> str:
        return "original" if self.keep_window else "target"


@dataclass(frozen=True)
class Start:
    """Where a method starts from: the window the checkpoint gives now, its pretraining window,
    the factor already applied, and the theta the method acts on."""

    current_window: int
    original_window: int
    previous_factor: float
    theta: float


@dataclass(frozen=True)
class Extension:
    """A method's plan, format-neutral: the HF schema writer and the GGUF writer render it."""

    method: str
    factor: float
    previous_factor: float
    previous_type: str
    current_window: int
    target_window: int
    original_window: int  # the pretraining window
    theta: float  # the theta written
    window_after: int  # the window key written (max_position_embeddings / context_length)
    # The method's scaling in transformers' rope_parameters words, without rope_theta;
    # None: plain RoPE at `theta` (no scaling type at all).
    scaling: dict | None
    parameters: dict  # the method's own numbers, as picli.json records them
    warnings: list[str]


class Method:
    """One way of extending RoPE. A subclass sets the names and fills in the hooks; the
    registry in methods/__init__.py lists it by `name`. Every method gives `compose`,
    `scaling` and `expected_rope`; the other hooks default to what is true of any method
    (theta kept, the factor recorded, words that claim nothing, runtimes.py's rules)."""

    name: str = ""
    label: str = ""  # how warnings name it ("linear PI")
    title: str = ""  # the model card's name for it, with its paper
    summary: str = ""  # the model card's one-line "method" row; {factor} is filled in
    # Every frequency divided by the same factor (so "factor applied" can be measured).
    divides_every_frequency: bool = False

    # --- planning -------------------------------------------------------------------------

    def refuse(self, current: Current) -> None:
        """Raise CannotExtend when the method cannot be written for this checkpoint at all."""

    def compose(self, current: Current, request: Request, warnings: list[str]) -> Start:
        """Where the method starts when the checkpoint already carries it (stacking)."""
        raise NotImplementedError

    def kept(self, current: Current) -> dict:
        """Keys of the source's scaling that stacking this method on itself leaves as they are
        (written beside the method's own scaling); {}: the method writes its block anew."""
        return {}

    def pretraining_window(self, current: Current) -> int | None:
        """The pretraining window of a checkpoint carrying this method, when neither the file nor
        picli.json states it (for --force replacing it); None: the window as written."""
        return None

    def new_theta(self, theta: float, step: float, current: Current) -> float:
        """The theta written, from the starting theta and this step's factor target / current."""
        return theta

    def scaling(self, factor: float, original_window: int) -> dict | None:
        """The scaling written, in transformers' rope_parameters words; None: plain RoPE."""
        raise NotImplementedError

    def parameters(self, plan: Extension, current: Current, request: Request) -> dict:
        """The method's own numbers, as picli.json records them."""
        return {"factor": plan.factor}

    # --- config.json only -----------------------------------------------------------------

    def schema_parameters(self, config: dict, request: Request) -> dict:
        """Numbers that hold only for the config.json form (which transformers releases read it)."""
        return {}

    def finish_config(self, before: dict, new: dict, head_dim: int) -> None:
        """Fix up a written config.json for a family quirk of this method (in place)."""

    # --- the self-check -------------------------------------------------------------------

    def expected_rope(self, plan: Any, rotary_dim: int, source: Sequence[float]) -> tuple[list[float], float, str]:
        """(inverse frequencies, attention scaling, how) that transformers must compute for an
        interpolated layer of the output; `source` is what it computes for the source."""
        raise NotImplementedError

    # --- words ----------------------------------------------------------------------------
    # Every default below is true of any method; a method replaces it with what its paper says.

    def plan_line(self, plan: dict) -> str | None:
        """The "method" row of `picli extend`'s table; None: no row (the factor says it all)."""
        return None

    def self_check_line(self, check: dict, plan: dict) -> str:
        """What the passed self-check proved, in one line."""
        legacy = check["transformers4_reads"]
        return (f"transformers {check.get('transformers')} computes the {self.name} inverse frequencies and attention "
                f"scaling picli computes (max relative error {check['max_relative_error']:.1e}); 4.x reads theta "
                f"{legacy['theta']:.6g}, {legacy['rope_type']} x{legacy['factor']:g}")

    def untrained_hint(self) -> str:
        """What `picli extend` says last about a checkpoint that was not fine-tuned."""
        return ("measure the new window (picli verify --passkey --perplexity) before relying on it "
                "(see docs/concepts.md).")

    def card_self_check(self, check: dict) -> str:
        return (f"transformers {check.get('transformers', '')} reloaded the config and computed the inverse frequencies "
                f"and attention scaling picli computes for {self.name} from the paper's formulas").replace("  ", " ")

    def card_method(self, record: dict, theta: float, rotary_dim: int, model_type: str, original: int, target: int,
                    factor: float) -> list[str]:
        """The model card's "Method" section; [] when the headline says it all."""
        return []

    def card_untrained(self) -> str:
        """What the model card says, after "only its RoPE configuration changed.", about a
        checkpoint of this method that was not fine-tuned."""
        return ("Unless the verification below measured this model at the new window, do not rely on the window "
                "yet; `picli finetune` trains at it.")

    def card_past_window(self, original: int, target: int, factor: float) -> str:
        """The model card's limitation past the new window."""
        return (f"**Nothing past {target:,} tokens.** The configuration is written for {target:,} tokens; picli "
                "measured nothing beyond them.")

    def card_short_range(self, original: int, factor: float, measured: str | None) -> str:
        """The model card's limitation inside the old window; `measured` says what
        picli-verify.json measured there (None: nothing)."""
        return ("**Short contexts may change.** "
                + ("Not measured for this model by picli." if measured is None else f"{measured}."))

    def card_vllm(self) -> str:
        """Why vLLM needs --max-model-len for this method (the card's How to run)."""
        return "vLLM derives its own maximum length from the config"

    def card_llama_cpp(self) -> str:
        """What llama.cpp's converter writes for this method (the card's How to run)."""
        return "convert the checkpoint with llama.cpp's converter"

    def card_tgi(self, factor: float) -> str:
        """The card's TGI line for this method (How to run)."""
        return "# TGI reads rope_scaling from config.json"

    # --- what each runtime reads from a config of this method's type (rope/runtimes.py) --------
    # `active` is the scaling dict transformers 5 acts on, `state` the schema's RopeState,
    # `original` the original_max_position_embeddings transformers 5 finds (None: absent).
    # None: the method has no rule of its own and runtimes.py's rule for the type applies.

    rope_type: str | None = None  # the scaling type its config carries; None: none (plain RoPE)

    def served_window(self, state: Any, original: int | None) -> int | None:
        """The window a config of this type is meant for (transformers' reading)."""
        return None

    def transformers5_notes(self, active: dict, state: Any, original: int | None) -> list[str] | None:
        return None

    def transformers4_differs(self, scaling: dict, state: Any) -> list[str] | None:
        """Where transformers 4.x computes a config of this type differently from 5.x."""
        return None

    def vllm_reads(self, active: dict, state: Any, original: int | None) -> tuple[int, list[str]] | None:
        """(vLLM's derived max model len, where vLLM reads it differently from transformers 5)."""
        return None

    def llama_cpp_reads(self, active: dict, state: Any,
                        original: int | None) -> tuple[str, list[str], list[str]] | None:
        """(llama-cli flags after -c, notes, differences) for a GGUF converted from this config."""
        return None

    def gguf_notes(self, factor: float, original: int | None, attention: float | None) -> list[str] | None:
        """What llama.cpp does with a GGUF whose rope.scaling.type is this method's."""
        return None


def check_composable_factor(current: Current) -> None:
    """An existing factor below 1 stretches positions past the trained range (extrapolation):
    there is no interpolation to compose with (and old 4.x configs refuse a linear factor <= 1)."""
    if current.factor < 1:
        raise CannotExtend(f"the existing {current.scaling_type} factor {current.factor:g} is below 1, which is "
                           "extrapolation, not interpolation",
                           hint=f"fix {current.names.factor}, or extend the base model")
