"""`picli finetune`: the PI paper's short fine-tune at the new window (docs/design.md §1, §4).

Read top to bottom: settings (training.py) -> data (textdata.py: tokenize, join with EOS,
pack, shuffle by seed) -> model (full, or LoRA + trainable embeddings and norms: training.py)
-> the loop -> the output (finetune_output.py).

Defaults are the paper's: AdamW (0.9, 0.95), no weight decay, LR 2e-5 (1e-5 above 30B
parameters), 20 warmup steps from 10% of the LR, global batch 64 sequences at 8192 tokens and
128 otherwise (section 3.1), 1000 steps, sequence length = the model's (extended) window.
A corpus smaller than steps x batch x seq-len is cycled; the record says how often. The loop runs through accelerate, so the
same code runs on one CPU, one GPU, or many under `accelerate launch` / `torchrun` (DDP or
FSDP). The loss never materialises full-vocabulary logits for a whole sequence: the head
runs on chunks of ~128 MiB of float32 logits (682 positions at a 49k vocabulary), each
recomputed in backward (activation checkpointing).

Every `save_every` steps (and on Ctrl-C / SIGTERM) a checkpoint is written atomically
(finetune_output.py, with the final export); `--resume` continues exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import PicliError
from .events import Events
from .files import atomic_write_json
from .finetune_output import (CHECKPOINTS, METRICS, export_model, latest_checkpoint, save_checkpoint,
                              trim_metrics)
from .provenance import now
from .textdata import batch_indices, data_reuse, load_sequences, split_and_order
from .training import TrainSettings, apply_lora, build_loss_module, default_batch_size, mixed_precision


@dataclass(frozen=True)
class TrainResult:
    output: str
    steps_done: int
    stopped_early_at: int | None
    interrupted: bool
    final_loss: float | None
    eval_loss: float | None
    tokens: int  # processed, repeats included
    seconds: float
    record: dict = field(default_factory=dict)
    unique_tokens: int | None = None  # distinct training tokens among `tokens`
    epochs: float | None = None  # passes over the training sequences


# ---------------------------------------------------------------------------------------
# Model size and learning-rate schedule


def parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def default_lr(parameters: int) -> float:
    return 1e-5 if parameters > 30e9 else 2e-5


def warmup_multiplier(step: int, warmup_steps: int, start: float) -> float:
    """Linear from `start` x LR to the full LR over warmup_steps, then constant (the paper)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


# ---------------------------------------------------------------------------------------
# The run


def run_finetune(model_path: Path, output: Path, settings: TrainSettings, resume: bool = False,
                 command: str = "picli finetune", on_event: Events = None,
                 given: set[str] = frozenset()) -> TrainResult:
    """Train; on resume the checkpoint's settings win except the keys in `given` (only
    micro_batch_size may change: it alters neither the data order nor the step's math).

    Long because it is still the whole run in one piece: resume merging, data, model, optimizer,
    the loop with its signals and checkpoints, the record and the export. Issue 18 ("a fine-tune
    loop with seams") splits it into settings resolved once, setup, one step, evaluate, save and
    export; until then, read it top to bottom.
    """
    import torch
    import transformers
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from .modeling import from_pretrained, load_tokenizer

    transformers.logging.set_verbosity_error()
    checkpoint_dir = latest_checkpoint(output) if resume else None
    if resume and checkpoint_dir is None:
        raise PicliError(f"nothing to resume: {output / CHECKPOINTS} holds no checkpoint",
                         hint="start without --resume, or point -o at the interrupted run's output")
    if checkpoint_dir:
        # The interrupted run's data, batch and schedule win: resuming means continuing it.
        saved = json.loads((checkpoint_dir / "trainer_state.json").read_text())["settings"]
        kept = {key: value for key, value in saved.items() if key not in given}
        settings = TrainSettings(**{**asdict(settings), **kept, "steps": settings.steps})
    from .checkpoint import effective_window

    config = json.loads((model_path / "config.json").read_text())
    seq_len = settings.seq_len or effective_window(model_path)
    if seq_len < 2:
        raise PicliError("cannot tell the sequence length from config.json", hint="pass --seq-len N")
    if settings.batch_size is None:
        from .checkpoint import tensor_summary

        settings = replace(settings, batch_size=default_batch_size(
            seq_len, tensor_summary(model_path).parameter_count or 0))
    accelerator = Accelerator(cpu=settings.cpu, mixed_precision=mixed_precision(settings))
    main = accelerator.is_main_process
    events = on_event if main else None
    world = accelerator.num_processes
    sharded = accelerator.distributed_type.name == "FSDP"
    if sharded and settings.lora and not settings.keep_adapter:
        raise PicliError("--lora cannot merge the adapter under FSDP (each process holds a shard of the weights)",
                         hint="LoRA fits without sharding: launch with DDP (examples/ddp.yaml), or add --keep-adapter")
    if sharded and settings.eval_every:
        raise PicliError("--eval-every / --stop-when-verified run the passkey on one process, which FSDP's "
                         "sharded weights do not allow", hint="launch with DDP, or run picli verify on the output")
    per_step = settings.micro_batch_size * world
    if settings.batch_size % per_step:
        raise PicliError(f"--batch-size {settings.batch_size} is not a multiple of --micro-batch-size x processes "
                         f"({settings.micro_batch_size} x {world})", hint="choose a batch size divisible by that")
    accumulation = settings.batch_size // per_step

    tokenizer = load_tokenizer(model_path)
    sequences = load_sequences(tokenizer, settings.data, settings.text_field, seq_len, events)
    train_ids, eval_ids = split_and_order(len(sequences), settings.seed, settings.eval_fraction)
    planned = data_reuse(len(train_ids), settings.steps, settings.batch_size, seq_len)
    if events and planned["epochs"] > 1:
        # Cycling is silent in the loop (batch_indices wraps around); say it once, before training.
        events({"kind": "warning", "text": f"the training data holds {len(train_ids)} sequences of {seq_len} tokens "
                f"({planned['unique_tokens']:,} tokens); {settings.steps} steps x batch {settings.batch_size} need "
                f"{settings.steps * settings.batch_size}, so picli cycles through it {planned['epochs']:.2f} times. "
                "Repeats are not new data: the record counts unique tokens and epochs"})

    torch.manual_seed(settings.seed)
    # Master weights stay float32; accelerate's autocast gives bf16 compute where supported.
    model, attention = from_pretrained(AutoModelForCausalLM, model_path, settings.attention, dtype=torch.float32)
    checkpointing = settings.gradient_checkpointing == "on" or (
        settings.gradient_checkpointing == "auto" and seq_len > 4096)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    parameters = parameter_count(model)
    lr = settings.lr if settings.lr is not None else default_lr(parameters)  # 0 is a value, not 'unset'
    if settings.lora:
        model = apply_lora(model, settings)
    settings = replace(settings, lr=lr, seq_len=seq_len, attention=attention)
    # from_pretrained returns eval mode, where transformers skips gradient checkpointing (and dropout).
    loss_module = build_loss_module(model).train()
    trainable = [parameter for parameter in loss_module.parameters() if parameter.requires_grad]
    # On CPU torch's default AdamW is a per-tensor loop, ~5x slower than the fused kernel; on GPU
    # the default (foreach) is right and stays compatible with every FSDP version.
    cpu_fused = accelerator.device.type == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)
    fused = {"fused": True} if cpu_fused else {}
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=0.0, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_multiplier(step, settings.warmup_steps, settings.warmup_start))
    loss_module, optimizer, scheduler = accelerator.prepare(loss_module, optimizer, scheduler)
    # FSDP swaps parameters for sharded ones in prepare; clip what the optimizer now holds.
    trainable = [parameter for parameter in loss_module.parameters() if parameter.requires_grad]

    start_step, tokens_done = 0, 0
    if checkpoint_dir:
        accelerator.load_state(str(checkpoint_dir))
        state = json.loads((checkpoint_dir / "trainer_state.json").read_text())
        start_step, tokens_done = state["step"], state["tokens"]
        if events:
            events({"kind": "message", "text": f"Resuming from {checkpoint_dir.name} (step {start_step})"})
    if main:
        output.mkdir(parents=True, exist_ok=True)
        trim_metrics(output / METRICS, start_step)
        atomic_write_json(output / "training_args.json", {**asdict(settings), "parameters": parameters,
                                                          "processes": world, "accumulation": accumulation,
                                                          "gradient_checkpointing": checkpointing})
        if events:
            events({"kind": "settings", "settings": asdict(settings), "processes": world,
                    "accumulation": accumulation, "gradient_checkpointing": checkpointing,
                    "sequences": len(train_ids), "held_out": len(eval_ids), "parameters": parameters})

    stop = {"signal": None}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(signal="SIGTERM"))
    started, completed, last_loss, eval_loss, verified_at = time.perf_counter(), start_step, None, None, None
    eval_history = []
    try:
        for step in range(start_step, settings.steps):
            step_started = time.perf_counter()
            indices = batch_indices(train_ids, step, settings.batch_size)
            loss_sum = torch.zeros((), device=accelerator.device)
            for micro in range(accumulation):
                start = (micro * world + accelerator.process_index) * settings.micro_batch_size
                chunk = [sequences[index] for index in indices[start:start + settings.micro_batch_size]]
                batch = torch.tensor(chunk, device=accelerator.device)
                sync = micro == accumulation - 1
                context = nullcontext() if sync or world == 1 else accelerator.no_sync(loss_module)
                with context:
                    loss = loss_module(batch) / accumulation
                    accelerator.backward(loss)
                loss_sum += loss.detach()
            if settings.max_grad_norm:
                accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
            step_lr = scheduler.get_last_lr()[0]  # the rate this step used
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = accelerator.reduce(loss_sum, reduction="mean").item()
            tokens_done += settings.batch_size * seq_len
            seconds = time.perf_counter() - step_started
            metric = {"step": step + 1, "loss": last_loss, "lr": step_lr,
                      "tokens": tokens_done, "tokens_per_second": settings.batch_size * seq_len / seconds,
                      "seconds": seconds, "memory_bytes": _memory_bytes(accelerator.device)}
            if settings.eval_every and (step + 1) % settings.eval_every == 0:
                eval_loss, k_max, target = _evaluate(accelerator, loss_module, model, tokenizer, sequences, eval_ids,
                                                     seq_len, settings)
                metric.update({"eval_loss": eval_loss, "passkey_k_max": k_max, "passkey_target": target})
                eval_history.append({"step": step + 1, "eval_loss": eval_loss, "passkey_k_max": k_max})
                if settings.stop_when_verified and k_max is not None and k_max >= target:
                    verified_at = step + 1
            if main:
                with open(output / METRICS, "a") as handle:
                    handle.write(json.dumps(metric) + "\n")
            if events:
                events({"kind": "step", **metric, "total_steps": settings.steps})
            completed = step + 1
            # Also at the last step when it falls on the interval: `--resume --steps MORE` continues it.
            if settings.save_every and completed % settings.save_every == 0:
                save_checkpoint(accelerator, output, completed, tokens_done, settings)
            if world > 1:
                # A signal reaches each process at its own moment; stopping at different steps
                # would leave the others waiting in a collective forever. Agree every step.
                flag = torch.tensor(1 if stop["signal"] else 0, device=accelerator.device)
                if accelerator.reduce(flag, reduction="sum").item() and not stop["signal"]:
                    stop["signal"] = "SIGTERM (another process)"
            if verified_at or stop["signal"]:
                break
    except KeyboardInterrupt:
        stop["signal"] = "SIGINT"
    except torch.cuda.OutOfMemoryError as exc:
        raise _out_of_memory(config, parameters, seq_len, settings, checkpointing, accelerator.device,
                             completed + 1) from exc
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if stop["signal"]:
        # Interrupted mid-step, the partial gradients are dropped: the checkpoint is the
        # state after the last completed step, which is where --resume continues.
        tokens_done = completed * settings.batch_size * seq_len
        if completed > start_step:
            save_checkpoint(accelerator, output, completed, tokens_done, settings)
        accelerator.wait_for_everyone()
        reuse = data_reuse(len(train_ids), completed, settings.batch_size, seq_len)
        return TrainResult(str(output), completed, None, True, last_loss, eval_loss, tokens_done,
                           time.perf_counter() - started, unique_tokens=reuse["unique_tokens"],
                           epochs=reuse["epochs"])
    steps_done = completed
    reuse = data_reuse(len(train_ids), steps_done, settings.batch_size, seq_len)

    if settings.eval_every is None and eval_ids:
        eval_loss = _eval_loss(accelerator, loss_module, sequences, eval_ids)
    seconds = time.perf_counter() - started
    record = {
        "data": settings.data, "text_field": settings.text_field, "steps": steps_done, "planned_steps": settings.steps,
        "tokens": tokens_done, **reuse, "seq_len": seq_len, "batch_size": settings.batch_size,
        "micro_batch_size": settings.micro_batch_size, "processes": world, "lr": lr,
        "warmup_steps": settings.warmup_steps, "optimizer": "AdamW(0.9, 0.95), weight decay 0",
        "lora": {"rank": settings.lora_rank, "alpha": settings.lora_alpha, "merged": not settings.keep_adapter}
        if settings.lora else None,
        "final_loss": last_loss, "eval_loss": eval_loss, "eval_history": eval_history,
        "stopped_when_verified_at": verified_at, "wall_seconds": seconds, "hardware": _hardware(accelerator),
        "seed": settings.seed, "finished": now(),
    }
    # Under FSDP every process holds a shard: gathering the full weights is a collective.
    state_dict = accelerator.get_state_dict(loss_module) if sharded else None
    if main:
        export_model(accelerator, loss_module, model_path, output, settings, record, command, parameters, state_dict)
    accelerator.wait_for_everyone()
    return TrainResult(str(output), steps_done, verified_at, False, last_loss, eval_loss, tokens_done, seconds,
                       record, unique_tokens=reuse["unique_tokens"], epochs=reuse["epochs"])


def _out_of_memory(config: dict, parameters: int, seq_len: int, settings: TrainSettings, checkpointing: bool, device,
                   step: int):
    """The OOM as the issue wants it: this run's estimate, and the settings that would shrink it."""
    import torch

    from .finetune_plan import run_memory
    from .modeling import OutOfMemory

    needed = run_memory(config, parameters, seq_len, settings, settings.lora, checkpointing)["total"]
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    have = f"; the GPU has {total / 2**30:.1f} GiB" if total else ""
    tries = [flag for flag, useful in (("--gradient-checkpointing on", not checkpointing),
                                       ("--micro-batch-size 1", settings.micro_batch_size > 1),
                                       ("--lora", not settings.lora),
                                       ("a shorter --seq-len", True),
                                       ("more GPUs with accelerate launch (FSDP shards the weights)", True)) if useful]
    return OutOfMemory(f"out of memory at step {step}: this run needs about {needed / 2**30:.1f} GiB per device "
                       f"(estimate{have})", hint="try " + ", ".join(tries) + "; picli finetune --plan estimates each")


def _memory_bytes(device) -> int:
    import resource

    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _hardware(accelerator) -> dict:
    import platform

    import torch

    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": device.type, "name": name, "processes": accelerator.num_processes,
            "cpu_threads": torch.get_num_threads()}


def _eval_loss(accelerator, loss_module, sequences, eval_ids) -> float | None:
    import torch

    if not eval_ids:
        return None
    loss_module.eval()
    total = 0.0
    with torch.no_grad():
        for index in eval_ids:
            total += loss_module(torch.tensor([sequences[index]], device=accelerator.device)).item()
    loss_module.train()
    return total / len(eval_ids)


def _evaluate(accelerator, loss_module, model, tokenizer, sequences, eval_ids, seq_len, settings):
    """Held-out loss and a quick passkey at the training length (main process; others wait)."""
    from .modeling import LoadedModel
    from .passkey import QUICK, Protocol, evaluate_passkey

    from accelerate.utils import broadcast_object_list

    eval_loss = _eval_loss(accelerator, loss_module, sequences, eval_ids)
    verdict = [None, None]
    if accelerator.is_main_process:
        language_model = accelerator.unwrap_model(loss_module).language_model
        language_model.eval()
        loaded = LoadedModel(language_model, tokenizer, accelerator.device, next(language_model.parameters()).dtype,
                             settings.attention, Path("."))
        result = evaluate_passkey(loaded, [seq_len], Protocol(positions=QUICK[0], trials=QUICK[1],
                                                              seed=settings.seed)).results[0]
        language_model.train()
        verdict = [result.k_max, result.ks[-1]]
    # Every process must agree on whether to stop.
    k_max, target = broadcast_object_list(verdict) if accelerator.num_processes > 1 else verdict
    return eval_loss, k_max, target


# ---------------------------------------------------------------------------------------
# The command: resolve MODEL and the output, then plan or train.


def finetune_command(model: str | None, output: Path | None, settings: TrainSettings, resume: bool = False,
                     plan_only: bool = False, force: bool = False, command: str = "picli finetune",
                     on_event: Events = None, given: set[str] = frozenset()) -> dict:
    from .checkpoint import effective_window, read_config, resolve, tensor_summary
    from .modeling import check_loadable
    from .provenance import check_state_dir, read_record, remember_last

    settings.validate()
    checkpoint = resolve(model, on_event=on_event)
    if checkpoint.kind == "gguf":
        raise PicliError("finetune trains transformers checkpoints, not GGUF files",
                         hint="fine-tune the safetensors checkpoint the GGUF was made from")
    check_loadable(checkpoint.path)  # safetensors (never a pickle) and a tokenizer, before any loading
    read_record(checkpoint.path)  # a broken record fails here, not at export after the training
    output = Path(output) if output else Path.cwd() / f"{checkpoint.name}-ft"
    output = output.resolve()
    if output.exists() and not output.is_dir():
        raise PicliError(f"the output {output} is a file, not a directory",
                         hint="choose a directory for the fine-tuned model with -o/--output")
    if output == checkpoint.path or output.is_relative_to(checkpoint.path) or checkpoint.path.is_relative_to(output):
        raise PicliError("the output overlaps the source checkpoint", hint="choose another -o/--output")
    config = read_config(checkpoint.path)
    parameters = tensor_summary(checkpoint.path).parameter_count or 0
    seq_len = settings.seq_len or effective_window(checkpoint.path)
    if settings.batch_size is None and seq_len:
        settings = replace(settings, batch_size=default_batch_size(seq_len, parameters))
    if plan_only:
        from .finetune_plan import plan

        return plan(checkpoint.path, config, parameters, seq_len, settings, on_event)
    check_state_dir()  # the output is remembered there after training: refused now, not then
    if not resume:
        if not settings.data:
            raise PicliError("no training data given", hint="pass --data FILE|DIR|JSONL|hf:NAME")
        if output.exists() and any(output.iterdir()) and not force:
            raise PicliError(f"output {output} already exists",
                             hint="pass --resume to continue it, --force to train into it, or choose -o")
    created = not output.exists()
    try:
        result = run_finetune(checkpoint.path, output, settings, resume=resume, command=command, on_event=on_event,
                              given=given & {"micro_batch_size"})
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing worth keeping (and would
        # make the retry ask for --force); one with a checkpoint is kept for --resume.
        if created and latest_checkpoint(output) is None and os.environ.get("RANK", "0") == "0":
            shutil.rmtree(output, ignore_errors=True)
        raise
    if not result.interrupted:
        remember_last(output, "finetune")
    return asdict(result)
