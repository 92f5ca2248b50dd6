"""The pieces of a fine-tune run, each usable and testable alone (finetune.py runs them in a loop):

    run = setup(model_path, settings)        # accelerator, data, model (full or LoRA), optimizer
    loss = train_step(run, step)             # one optimizer step of the step's global batch, at its LR
    evaluate(run)                            # held-out loss and a quick passkey
    save(run, output, step, tokens)          # a resumable checkpoint (finetune_output.py)
    export(run, output, record, command)     # the final model and its picli.json

`settings` are resolved (finetune.resolve_settings). Everything runs through accelerate, so
the same pieces run on one CPU, one GPU, or many processes under DDP or FSDP.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import PicliError
from .events import Events
from .finetune_output import (ResumePoint, check_same_data, export_model, load_checkpoint, run_identity,
                              save_checkpoint)
from .textdata import batch_indices, data_reuse, load_sequences, sequences_fingerprint, split_and_order
from .training import TrainSettings, apply_lora, build_loss_module, learning_rate, mixed_precision


@dataclass(frozen=True)
class Run:
    """What setup builds once and every step reads."""
    accelerator: Any
    loss_module: Any  # prepared by accelerate (DDP / FSDP wrapped where launched so)
    optimizer: Any
    trainable: list  # the parameters the optimizer holds, as prepared (FSDP swaps them for shards)
    tokenizer: Any
    sequences: list[list[int]]
    train_ids: list[int]
    eval_ids: list[int]
    settings: TrainSettings  # resolved; attention as the model loaded
    accumulation: int
    checkpointing: bool
    parameters: int
    identity: dict  # the source and data, as checkpoints record them
    model_path: Path

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def sharded(self) -> bool:
        return self.accelerator.distributed_type.name == "FSDP"


def parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------------------------------
# What holds before anything loads


def check_sharding(settings: TrainSettings, sharded: bool) -> None:
    """What FSDP's sharded weights cannot do, refused before a collective that one process would
    join alone hangs the others."""
    if sharded and settings.lora and not settings.keep_adapter:
        raise PicliError("--lora cannot merge the adapter under FSDP (each process holds a shard of the weights)",
                         hint="LoRA fits without sharding: launch with DDP (examples/ddp.yaml), or add --keep-adapter")
    if sharded and settings.eval_every:
        raise PicliError("--eval-every / --stop-when-verified run the passkey on one process, which FSDP's "
                         "sharded weights do not allow", hint="launch with DDP, or run picli verify on the output")


def accumulation_steps(settings: TrainSettings, processes: int) -> int:
    """Micro-batches per process per optimizer step: --batch-size is global, whatever the processes."""
    per_step = settings.micro_batch_size * processes
    if settings.batch_size % per_step:
        raise PicliError(f"--batch-size {settings.batch_size} is not a multiple of --micro-batch-size x processes "
                         f"({settings.micro_batch_size} x {processes})", hint="choose a batch size divisible by that")
    return settings.batch_size // per_step


# ---------------------------------------------------------------------------------------
# Setup, one step, evaluation, checkpoints, export


def setup(model_path: Path, settings: TrainSettings, point: ResumePoint | None = None,
          on_event: Events = None) -> Run:
    """Accelerator, data, model (full or LoRA), optimizer; with `point`, the resumed state."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=settings.cpu, mixed_precision=mixed_precision(settings))
    check_sharding(settings, accelerator.distributed_type.name == "FSDP")
    accumulation = accumulation_steps(settings, accelerator.num_processes)
    events = on_event if accelerator.is_main_process else None
    tokenizer, sequences, train_ids, eval_ids, identity = _load_data(model_path, settings, point, events)
    loss_module, optimizer, parameters, settings, checkpointing = _load_model(model_path, settings, accelerator)
    # FSDP swaps parameters for sharded ones in prepare; clip what the optimizer now holds.
    trainable = [parameter for parameter in loss_module.parameters() if parameter.requires_grad]
    run = Run(accelerator, loss_module, optimizer, trainable, tokenizer, sequences, train_ids, eval_ids, settings,
              accumulation, checkpointing, parameters, identity, model_path)
    if point:
        load_checkpoint(accelerator, loss_module, optimizer, point)
        if events:
            events({"kind": "message", "text": f"Resuming from {point.folder.name} (step {point.step})"})
    return run


def _load_data(model_path: Path, settings: TrainSettings, point: ResumePoint | None, events: Events):
    from .modeling import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    sequences = load_sequences(tokenizer, settings.data, settings.text_field, settings.seq_len, events)
    identity = run_identity(model_path, settings.data, sequences_fingerprint(sequences), len(sequences))
    if point:
        check_same_data(point, identity)
    train_ids, eval_ids = split_and_order(len(sequences), settings.seed, settings.eval_fraction)
    planned = data_reuse(len(train_ids), settings.steps, settings.batch_size, settings.seq_len)
    if events and planned["epochs"] > 1:
        # Cycling is silent in the loop (batch_indices wraps around); say it once, before training.
        events({"kind": "warning", "text": f"the training data holds {len(train_ids)} sequences of "
                f"{settings.seq_len} tokens ({planned['unique_tokens']:,} tokens); {settings.steps} steps x batch "
                f"{settings.batch_size} need {settings.steps * settings.batch_size}, so picli cycles through it "
                f"{planned['epochs']:.2f} times. Repeats are not new data: the record counts unique tokens and epochs"})
    return tokenizer, sequences, train_ids, eval_ids, identity


def _load_model(model_path: Path, settings: TrainSettings, accelerator):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from .modeling import from_pretrained

    transformers.logging.set_verbosity_error()
    torch.manual_seed(settings.seed)
    # Master weights stay float32; accelerate's autocast gives bf16 compute where supported.
    model, attention = from_pretrained(AutoModelForCausalLM, model_path, settings.attention, dtype=torch.float32)
    checkpointing = settings.gradient_checkpointing == "on" or (
        settings.gradient_checkpointing == "auto" and settings.seq_len > 4096)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    parameters = parameter_count(model)
    if settings.lora:
        model = apply_lora(model, settings)
    # from_pretrained returns eval mode, where transformers skips gradient checkpointing (and dropout).
    loss_module = build_loss_module(model).train()
    trainable = [parameter for parameter in loss_module.parameters() if parameter.requires_grad]
    # On CPU torch's default AdamW is a per-tensor loop, ~5x slower than the fused kernel; on GPU
    # the default (foreach) is right and stays compatible with every FSDP version.
    cpu_fused = accelerator.device.type == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0,
                                  **({"fused": True} if cpu_fused else {}))
    # No LR scheduler is prepared: accelerate's wrapper would step it once per process for every
    # optimizer step (split_batches=False), ending a 20-step warmup after 3 steps on 8 processes.
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    return loss_module, optimizer, parameters, replace(settings, attention=attention), checkpointing


def train_step(run: Run, step: int) -> float:
    """One optimizer step (0-based `step`): the step's global batch over every process and
    micro-batch, at the step's LR. Returns the batch's mean loss, the same on every process."""
    import torch

    accelerator, settings = run.accelerator, run.settings
    indices = batch_indices(run.train_ids, step, settings.batch_size)
    loss_sum = torch.zeros((), device=accelerator.device)
    for micro in range(run.accumulation):
        start = (micro * run.world + accelerator.process_index) * settings.micro_batch_size
        chunk = [run.sequences[index] for index in indices[start:start + settings.micro_batch_size]]
        batch = torch.tensor(chunk, device=accelerator.device)
        sync = micro == run.accumulation - 1
        with nullcontext() if sync or run.world == 1 else accelerator.no_sync(run.loss_module):
            loss = run.loss_module(batch) / run.accumulation
            accelerator.backward(loss)
        loss_sum += loss.detach()
    if settings.max_grad_norm:
        accelerator.clip_grad_norm_(run.trainable, settings.max_grad_norm)
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(settings, step)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss_sum, reduction="mean").item()


def eval_loss(run: Run) -> float | None:
    """Mean loss over the held-out sequences (every process computes it: no collective)."""
    import torch

    if not run.eval_ids:
        return None
    run.loss_module.eval()
    total = 0.0
    with torch.no_grad():
        for index in run.eval_ids:
            total += run.loss_module(torch.tensor([run.sequences[index]], device=run.accelerator.device)).item()
    run.loss_module.train()
    return total / len(run.eval_ids)


def evaluate(run: Run) -> dict:
    """Held-out loss and a quick passkey at the training length (main process; others wait)."""
    from accelerate.utils import broadcast_object_list

    from .modeling import LoadedModel
    from .passkey import QUICK, Protocol, evaluate_passkey

    accelerator = run.accelerator
    held_out = eval_loss(run)
    verdict = [None, None]
    if accelerator.is_main_process:
        language_model = accelerator.unwrap_model(run.loss_module).language_model
        language_model.eval()
        loaded = LoadedModel(language_model, run.tokenizer, accelerator.device,
                             next(language_model.parameters()).dtype, run.settings.attention, Path("."))
        result = evaluate_passkey(loaded, [run.settings.seq_len], Protocol(
            positions=QUICK[0], trials=QUICK[1], seed=run.settings.seed)).results[0]
        language_model.train()
        verdict = [result.k_max, result.ks[-1]]
    # Every process must agree on whether to stop.
    k_max, target = broadcast_object_list(verdict) if run.world > 1 else verdict
    return {"eval_loss": held_out, "passkey_k_max": k_max, "passkey_target": target}


def save(run: Run, output: Path, step: int, tokens: int) -> None:
    save_checkpoint(run.accelerator, run.loss_module, run.optimizer, output, step, tokens, run.settings, run.identity)


def export(run: Run, output: Path, record: dict, command: str) -> None:
    """The final model into `output` (every process takes part: under FSDP the weights are gathered)."""
    state_dict = run.accelerator.get_state_dict(run.loss_module) if run.sharded else None
    if run.accelerator.is_main_process:
        export_model(run.accelerator, run.loss_module, run.model_path, output, run.settings, record, command,
                     run.parameters, state_dict)
    run.accelerator.wait_for_everyone()
