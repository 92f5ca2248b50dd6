"""What a fine-tune trains: its settings (resolved once), the LR schedule, the loss module,
LoRA, and the compute precision.

Shared by the run (finetune.py), its plan (finetune_plan.py) and its output
(finetune_output.py), which import from here and never from each other's internals:

    settings = TrainSettings(data="book.txt", lora=True).resolve(window=8192, parameters=7e9)
    loss = build_loss_module(apply_lora(model, settings))(input_ids)
    lr_of_step_12 = learning_rate(settings, 12)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import PicliError

NORM_NAMES = ("norm", "ln_", "layernorm")
# The attention projections LoRA adapts, by module name across the families picli trains.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "query_key_value", "dense", "qkv_proj", "Wqkv", "out_proj")


@dataclass(frozen=True)
class TrainSettings:
    data: str | None = None
    text_field: str = "text"
    steps: int = 1000
    seq_len: int | None = None  # default: the model's window
    lr: float | None = None  # default: 2e-5, or 1e-5 above 30B parameters
    warmup_steps: int | None = None  # default: default_warmup(steps), the paper's 20 from 200 steps on
    warmup_start: float = 0.1  # warmup begins at 10% of the LR
    batch_size: int | None = None  # global, in sequences; default: default_batch_size (the paper's)
    micro_batch_size: int = 1
    seed: int = 0
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    keep_adapter: bool = False
    gradient_checkpointing: str = "auto"  # auto: on above 4k tokens
    max_grad_norm: float | None = None  # the paper does not clip
    eval_every: int | None = None  # default: 50 with stop_when_verified
    stop_when_verified: bool = False
    save_every: int = 100  # 0: only the final model
    eval_fraction: float = 0.01
    dtype: str = "auto"
    attention: str = "sdpa"
    cpu: bool = False

    def validate(self) -> None:
        """Every option, before MODEL is resolved or loaded: a bad value costs a second, not a
        model load (the one place these rules live; finetune_command calls it first)."""
        import math

        from .modeling import check_options

        def whole(option: str, value, least: int, hint: str) -> None:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
                raise PicliError(f"{option} must be a whole number of at least {least}, got {value!r}", hint=hint)

        whole("--steps", self.steps, 1, "the paper trains 1000 steps; ~200 already reach the window")
        whole("--batch-size", self.batch_size, 1, "omit it for the paper's: 64 at 8192 tokens, 128 otherwise")
        whole("--micro-batch-size", self.micro_batch_size, 1, "1 fits the most memory")
        whole("--warmup-steps", self.warmup_steps, 0, "the paper uses 20; 0 means no warmup; omit it for the default")
        whole("--seq-len", self.seq_len, 2, "omit it to train at the model's window")
        whole("--lora-rank", self.lora_rank, 1, "e.g. --lora-rank 16")
        whole("--eval-every", self.eval_every, 1, "e.g. --eval-every 50, or omit it")
        whole("--save-every", self.save_every, 0, "e.g. --save-every 100; 0 saves only the final model")
        # `not lr > 0` is also true for NaN; an `lr or default` would turn 0 into the default.
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not math.isfinite(self.lr) or not self.lr > 0):
            raise PicliError(f"--lr must be a positive finite number, got {self.lr!r}",
                             hint="the paper uses 2e-5 (1e-5 above 30B parameters); omit it for that default")
        if self.batch_size is not None and self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise PicliError(f"--batch-size {self.batch_size} is not a multiple of --micro-batch-size "
                             f"{self.micro_batch_size}", hint="choose a batch size divisible by the micro-batch size")
        if self.gradient_checkpointing not in ("auto", "on", "off"):
            raise PicliError(f"--gradient-checkpointing must be auto, on or off, got {self.gradient_checkpointing!r}",
                             hint="auto turns it on above 4k tokens")
        if self.keep_adapter and not self.lora:
            raise PicliError("--keep-adapter only applies with --lora", hint="add --lora")
        if self.stop_when_verified and not self.eval_every:
            raise PicliError("--stop-when-verified needs --eval-every N", hint="e.g. --eval-every 50")
        check_options(dtype=self.dtype, attention=self.attention)

    def resolve(self, *, window: int | None, parameters: int, recorded: dict | None = None,
                given: frozenset[str] | set[str] = frozenset()) -> TrainSettings:
        """Every default filled in, once, for the run and its plan alike.

        `recorded`: the settings a resumed run started with (its checkpoint's). They win over
        these, except the keys in `given` that may change without changing the run
        (RESUME_MAY_CHANGE): resuming means continuing the run.
        """
        settings = self
        if recorded is not None:
            kept = {key: value for key, value in recorded.items()
                    if key in RECORDED and not (key in given and key in RESUME_MAY_CHANGE)}
            settings = replace(self, **kept)
        seq_len = settings.seq_len or window
        if not seq_len or seq_len < 2:
            raise PicliError("cannot tell the sequence length from config.json", hint="pass --seq-len N")
        batch_size = settings.batch_size or default_batch_size(seq_len, parameters)
        return replace(
            settings, seq_len=seq_len, batch_size=batch_size,
            lr=settings.lr if settings.lr is not None else default_lr(parameters),  # 0 is a value, not 'unset'
            warmup_steps=settings.warmup_steps if settings.warmup_steps is not None else default_warmup(settings.steps),
            eval_every=settings.eval_every or (DEFAULT_EVAL_EVERY if settings.stop_when_verified else None))

    def recorded(self) -> dict:
        """The settings a checkpoint keeps, so that --resume continues this run and no other."""
        return {key: value for key, value in asdict(self).items() if key in RECORDED}


DEFAULT_EVAL_EVERY = 50  # with --stop-when-verified and no --eval-every
# What fixes a run's data, order and arithmetic: a resume takes these from the checkpoint.
RECORDED = ("steps", "seed", "batch_size", "micro_batch_size", "seq_len", "lr", "warmup_steps", "warmup_start", "lora",
            "lora_rank", "lora_alpha", "keep_adapter", "data", "text_field", "eval_fraction", "dtype",
            "max_grad_norm")
# Given on a resume's command line, these win: more steps continue the same run (batch order
# and LR are functions of the step), and a smaller micro-batch changes neither the data nor the
# step's math (it is how one gets past an out-of-memory stop).
RESUME_MAY_CHANGE = ("steps", "micro_batch_size")


# ---------------------------------------------------------------------------------------
# The recipe's numbers: LR, warmup, schedule


def default_lr(parameters: int) -> float:
    """The paper (section 3.1): 2e-5 for 7B and 13B, 1e-5 for 33B and 65B."""
    return 1e-5 if parameters > 30e9 else 2e-5


# The paper warms up over 20 of its 1000 steps (2%). A run of 50 steps would spend 40% of its
# steps below the peak LR, so picli caps the warmup at a tenth of the run: the paper's 20 steps
# from 200 steps on, fewer below (5 of 50, 1 of 10; none under 10 steps). Fixed when the run
# starts and recorded, so `--resume --steps MORE` keeps the first round's schedule.
PAPER_WARMUP_STEPS = 20
WARMUP_SHARE = 10  # at most 1/10 of the run


def default_warmup(steps: int) -> int:
    return min(PAPER_WARMUP_STEPS, steps // WARMUP_SHARE)


def warmup_multiplier(step: int, warmup_steps: int, start: float) -> float:
    """Linear from `start` x LR to the full LR over warmup_steps, then constant (the paper)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


def learning_rate(settings: TrainSettings, step: int) -> float:
    """The LR of optimizer step `step` (0-based): a function of the step alone, whatever the
    number of processes (accelerate's prepared scheduler would step once per process)."""
    return settings.lr * warmup_multiplier(step, settings.warmup_steps, settings.warmup_start)


def schedule_text(settings: TrainSettings) -> str:
    """The effective schedule in words, for the plan and the settings printed at the start."""
    peak, warmup = settings.lr, settings.warmup_steps
    if not warmup:
        return f"constant LR {peak:.3g} for {settings.steps} steps (no warmup)"
    after = max(0, settings.steps - warmup)
    return (f"LR {peak * settings.warmup_start:.3g} -> {peak:.3g} over {warmup} warmup step{'s' * (warmup != 1)}"
            f" ({100 * warmup / settings.steps:.0f}% of {settings.steps}), then constant for {after}")


# PI paper, section 3.1: "For extending 7B, 13B and 33B models to the 8192 context window size,
# we use 32 A100 GPUs and 64 global batch size. For all other cases we use 128 A100 GPUs and 128
# global batch size." So 65B at 8192 used 128 too. Where between 33B and 65B the line falls the
# paper does not say: picli draws it at 40B parameters.
PAPER_SMALL_BATCH_WINDOW = 8192
PAPER_SMALL_BATCH_MAX_PARAMETERS = 40e9


def default_batch_size(seq_len: int, parameters: int) -> int:
    """The paper's global batch: 64 when training at 8192 tokens (models up to 33B), else 128."""
    if seq_len == PAPER_SMALL_BATCH_WINDOW and parameters <= PAPER_SMALL_BATCH_MAX_PARAMETERS:
        return 64
    return 128


def build_loss_module(model):
    """Mean next-token cross-entropy from the decoder's hidden states, head applied per chunk.

    A module of its own so that DDP/FSDP wrap one forward call that includes the loss.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from .modeling import head_chunk, split_model

    class LossModule(torch.nn.Module):
        def __init__(self, language_model):
            super().__init__()
            self.language_model = language_model
            # FSDP's TRANSFORMER_BASED_WRAP looks for the decoder layer classes here.
            self._no_split_modules = getattr(language_model, "_no_split_modules", None)

        def forward(self, input_ids):
            decoder, head, adjust = split_model(self.language_model)
            hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
            targets = input_ids[:, 1:]
            total = hidden.new_zeros((), dtype=torch.float32)

            def chunk_loss(rows, labels):
                logits = adjust(head(rows)).float()
                return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")

            size = head_chunk(head.weight.shape[0], hidden.shape[0])
            for start in range(0, hidden.shape[1], size):
                rows, labels = hidden[:, start:start + size], targets[:, start:start + size]
                # Recompute this chunk's logits in backward instead of keeping [chunk x vocab] floats.
                total = total + checkpoint(chunk_loss, rows, labels, use_reentrant=False)
            return total / targets.numel()

    return LossModule(model)


def apply_lora(model, settings: TrainSettings):
    """LoRA on the attention projections, plus trainable embeddings and norms (LongLoRA)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise PicliError("--lora needs the peft package", hint="pip install peft") from None
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    targets = [name for name in LORA_TARGETS if name in names]
    if not targets:
        raise PicliError(f"no attention projections found for LoRA in {type(model).__name__}",
                         hint="fine-tune without --lora")
    embeddings = [name for name, module in model.named_modules()
                  if module is model.get_input_embeddings() or module is model.get_output_embeddings()]
    peft_model = get_peft_model(model, LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                                                  target_modules=targets, lora_dropout=0.0, bias="none",
                                                  modules_to_save=None, task_type="CAUSAL_LM"))
    for name, parameter in peft_model.named_parameters():
        lowered = name.lower()
        if any(part in lowered for part in NORM_NAMES) or any(f"{embedding}." in name for embedding in embeddings):
            parameter.requires_grad = True
    return peft_model


def mixed_precision(settings: TrainSettings) -> str:
    import torch

    if settings.dtype in ("bfloat16", "float16"):
        return {"bfloat16": "bf16", "float16": "fp16"}[settings.dtype]
    if settings.dtype == "auto" and not settings.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"
