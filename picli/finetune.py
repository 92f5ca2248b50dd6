"""`picli finetune`: the PI paper's short fine-tune at the new window (docs/finetune.md).

Read top to bottom, as litgpt's and torchtune's recipes read:

    settings = resolve_settings(model_path, TrainSettings(data="books/"))   # every default, once
    result = run_finetune(model_path, output, settings)                     # the loop

`run_finetune` runs the pieces of finetune_steps.py (setup, one step, evaluate, save, export)
with interruption, metrics and resume around them; `finetune_command` resolves MODEL, the
output (locked, as extend locks its own) and, for --resume, the run's own source and data.

Defaults are the paper's: AdamW (0.9, 0.95), no weight decay, LR 2e-5 (1e-5 above 30B
parameters), linear warmup from 10% of the LR over 20 steps (at most a tenth of a short run:
training.default_warmup), global batch 64 sequences at 8192 tokens and 128 otherwise (section
3.1), 1000 steps, sequence length = the model's (extended) window. A corpus smaller than
steps x batch x seq-len is cycled; the record says how often. The loop runs through
accelerate, so the same code runs on one CPU, one GPU, or many under `accelerate launch` /
`torchrun` (DDP or FSDP); the batch is global and the LR a function of the optimizer step,
whatever the number of processes. The loss never materialises full-vocabulary logits for a
whole sequence: the head runs on chunks of ~128 MiB of float32 logits (682 positions at a 49k
vocabulary), each recomputed in backward (activation checkpointing).

Every `save_every` steps (and on Ctrl-C / SIGTERM, after the step under way) a checkpoint is
written atomically; `--resume` continues exactly, from the run's own source and data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import PicliError
from .events import Events
from .files import atomic_write_json
from .finetune_output import (METRICS, ResumePoint, data_location, find_resume_point, has_checkpoint,
                              source_fingerprint, trim_metrics)
from .finetune_steps import Run, eval_loss, evaluate, export, save, setup, train_step
from .provenance import now
from .textdata import data_reuse
from .training import TrainSettings, learning_rate

# The exit status a shell gives a process killed by the signal (128 + its number), which picli
# returns after saving the checkpoint: scripts see the interruption, and can --resume.
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


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
    signal: str | None = None  # SIGINT or SIGTERM when interrupted


# ---------------------------------------------------------------------------------------
# Settings


def resolve_settings(model_path: Path, settings: TrainSettings, point: ResumePoint | None = None,
                     given: frozenset[str] | set[str] = frozenset()) -> TrainSettings:
    """The run's settings, every default filled in: the one resolution both the run and
    training_args.json see. A resume continues its checkpoint's settings and data."""
    from .checkpoint import effective_window, tensor_summary

    resolved = settings.resolve(window=settings.seq_len or effective_window(model_path),
                                parameters=tensor_summary(model_path).parameter_count or 0,
                                recorded=point.state["settings"] if point else None, given=given)
    if point:
        return replace(resolved, data=point.state["data"]["path"])
    return replace(resolved, data=data_location(resolved.data)) if resolved.data else resolved


# ---------------------------------------------------------------------------------------
# The run


def run_finetune(model_path: Path, output: Path, settings: TrainSettings, point: ResumePoint | None = None,
                 command: str = "picli finetune", on_event: Events = None) -> TrainResult:
    """Train `settings` (resolved: resolve_settings) into `output`, from `point` when resuming."""
    import torch

    run = setup(model_path, settings, point, on_event)
    settings, main = run.settings, run.accelerator.is_main_process
    events = on_event if main else None
    start_step, tokens = (point.step, point.state["tokens"]) if point else (0, 0)
    _start_output(run, output, start_step, events)
    started, completed, saved, last_loss, held_out, verified_at, history = (
        time.perf_counter(), start_step, start_step, None, None, None, [])
    with _stop_signals() as stop:
        try:
            for step in range(start_step, settings.steps):
                step_started = time.perf_counter()
                last_loss = train_step(run, step)
                tokens += settings.batch_size * settings.seq_len
                metric = _step_metric(run, step, last_loss, tokens, time.perf_counter() - step_started)
                if settings.eval_every and (step + 1) % settings.eval_every == 0:
                    metric.update(evaluate(run))
                    held_out = metric["eval_loss"]
                    history.append({key: metric[key] for key in ("step", "eval_loss", "passkey_k_max")})
                    if settings.stop_when_verified and metric["passkey_k_max"] is not None and \
                            metric["passkey_k_max"] >= metric["passkey_target"]:
                        verified_at = step + 1
                completed = step + 1
                if main:
                    with open(output / METRICS, "a") as handle:
                        handle.write(json.dumps(metric) + "\n")
                if events:
                    events({"kind": "step", **metric, "total_steps": settings.steps})
                # Also at the last step when it falls on the interval: `--resume --steps MORE` continues it.
                if settings.save_every and completed % settings.save_every == 0:
                    save(run, output, completed, tokens)
                    saved = completed
                if verified_at or _agreed_stop(run, stop):
                    break
        except KeyboardInterrupt:  # a second Ctrl-C, or one before the handlers were in place
            stop["signal"] = "SIGINT"
        except torch.cuda.OutOfMemoryError as exc:
            raise _out_of_memory(run, completed + 1) from exc
    reuse = data_reuse(len(run.train_ids), completed, settings.batch_size, settings.seq_len)
    if stop["signal"]:
        # Interrupted mid-step, the partial gradients are dropped: the checkpoint is the
        # state after the last completed step, which is where --resume continues.
        tokens = completed * settings.batch_size * settings.seq_len
        if completed > saved:
            save(run, output, completed, tokens)
        run.accelerator.wait_for_everyone()
        return TrainResult(str(output), completed, None, True, last_loss, held_out, tokens,
                           time.perf_counter() - started, unique_tokens=reuse["unique_tokens"],
                           epochs=reuse["epochs"], signal=stop["signal"])
    if settings.eval_every is None:
        held_out = eval_loss(run)
    seconds = time.perf_counter() - started
    record = _record(run, completed, tokens, reuse, last_loss, held_out, history, verified_at, seconds)
    export(run, output, record, command)
    return TrainResult(str(output), completed, verified_at, False, last_loss, held_out, tokens, seconds,
                       record, unique_tokens=reuse["unique_tokens"], epochs=reuse["epochs"])


def _start_output(run: Run, output: Path, start_step: int, events: Events) -> None:
    """The output as the run begins: metrics past the resumed step dropped, the settings written."""
    if not run.accelerator.is_main_process:
        return
    output.mkdir(parents=True, exist_ok=True)
    trim_metrics(output / METRICS, start_step)
    facts = {"processes": run.world, "distributed": run.accelerator.distributed_type.name,
             "accumulation": run.accumulation, "gradient_checkpointing": run.checkpointing}
    atomic_write_json(output / "training_args.json", {**asdict(run.settings), "parameters": run.parameters, **facts})
    if events:
        events({"kind": "settings", "settings": asdict(run.settings), **facts, "sequences": len(run.train_ids),
                "held_out": len(run.eval_ids), "parameters": run.parameters})


def _step_metric(run: Run, step: int, loss: float, tokens: int, seconds: float) -> dict:
    settings = run.settings
    return {"step": step + 1, "loss": loss, "lr": learning_rate(settings, step), "tokens": tokens,
            "tokens_per_second": settings.batch_size * settings.seq_len / seconds, "seconds": seconds,
            "memory_bytes": _memory_bytes(run.accelerator.device)}


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM and Ctrl-C ask the loop to stop after the step under way (so that several
    processes stop at the same step); a second Ctrl-C stops at once, as KeyboardInterrupt."""
    stop: dict[str, str | None] = {"signal": None}

    def on_term(*_):
        stop["signal"] = stop["signal"] or "SIGTERM"

    def on_interrupt(*_):
        if stop["signal"] == "SIGINT":
            raise KeyboardInterrupt
        stop["signal"] = "SIGINT"

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term),
                signal.SIGINT: signal.signal(signal.SIGINT, on_interrupt)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _agreed_stop(run: Run, stop: dict) -> bool:
    """Whether any process was signalled. A signal reaches each process at its own moment;
    stopping at different steps would leave the others waiting in a collective forever."""
    if run.world == 1:
        return stop["signal"] is not None
    import torch

    codes = {None: 0, "SIGTERM": 1, "SIGINT": 2}
    flag = torch.tensor(codes[stop["signal"]], device=run.accelerator.device)
    agreed = int(run.accelerator.reduce(flag, reduction="sum").item())
    if agreed and stop["signal"] is None:
        stop["signal"] = "SIGINT" if agreed >= 2 else "SIGTERM"
    return bool(agreed)


def _record(run: Run, steps: int, tokens: int, reuse: dict, last_loss, held_out, history, verified_at,
            seconds: float) -> dict:
    """The `finetune` record of picli.json."""
    settings = run.settings
    return {
        "data": settings.data, "text_field": settings.text_field, "steps": steps, "planned_steps": settings.steps,
        "tokens": tokens, **reuse, "seq_len": settings.seq_len, "batch_size": settings.batch_size,
        "micro_batch_size": settings.micro_batch_size, "processes": run.world,
        "distributed": run.accelerator.distributed_type.name, "lr": settings.lr,
        "warmup_steps": settings.warmup_steps, "optimizer": "AdamW(0.9, 0.95), weight decay 0",
        "lora": {"rank": settings.lora_rank, "alpha": settings.lora_alpha, "merged": not settings.keep_adapter}
        if settings.lora else None,
        "final_loss": last_loss, "eval_loss": held_out, "eval_history": history,
        "stopped_when_verified_at": verified_at, "wall_seconds": seconds, "hardware": _hardware(run.accelerator),
        "seed": settings.seed, "finished": now(),
    }


def _out_of_memory(run: Run, step: int):
    """The OOM as the issue wants it: this run's estimate, and the settings that would shrink it."""
    import torch

    from .finetune_plan import run_memory
    from .modeling import OutOfMemory

    settings, device = run.settings, run.accelerator.device
    needed = run_memory(run.model_path, run.parameters, settings, run.checkpointing, run.world, run.sharded)["total"]
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    have = f"; the GPU has {total / 2**30:.1f} GiB" if total else ""
    tries = [flag for flag, useful in (("--gradient-checkpointing on", not run.checkpointing),
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


# ---------------------------------------------------------------------------------------
# The command: resolve MODEL, the output and what a resume continues; then plan or train.


def finetune_command(model: str | None, output: Path | None, settings: TrainSettings, resume: bool = False,
                     plan_only: bool = False, force: bool = False, command: str = "picli finetune",
                     on_event: Events = None, given: frozenset[str] | set[str] | None = None) -> dict:
    """`given`: the settings named on the command line (default: those that differ from
    TrainSettings' defaults); on --resume those of them that may change without changing the
    run (training.RESUME_MAY_CHANGE: the steps, the micro-batch) win over the checkpoint's."""
    from .modeling import check_loadable
    from .files import check_output
    from .provenance import check_state_dir, is_picli_output, read_record, remember_last

    settings.validate()
    if given is None:
        given = {key for key, value in asdict(settings).items() if value != asdict(TrainSettings())[key]}
    if plan_only:
        from .finetune_plan import plan

        return plan(_checkpoint(model, on_event, need_weights=False).path, settings, on_event)
    check_state_dir()  # the output is remembered there after training: refused now, not then
    checkpoint = None if resume and model is None and output else _checkpoint(model, on_event)
    output = Path(output or Path.cwd() / f"{checkpoint.name}-ft").resolve()
    if output.exists() and not output.is_dir():
        raise PicliError(f"the output {output} is a file, not a directory",
                         hint="choose a directory for the fine-tuned model with -o/--output")
    # A run's own folder (its picli.json, or the checkpoints an interrupted run left) may be
    # trained into again; anything else that is not empty is not picli's to write over, and a
    # home, the current folder or a source never is (checked before the lock sits beside it).
    check_output(output, force=force or resume, sources=[checkpoint.path] if checkpoint else [], empty_ok=True,
                 ours=lambda path: is_picli_output(path) or has_checkpoint(path),
                 mark="picli.json or checkpoints/ of a picli run",
                 exists_hint="pass --resume to continue it, --force to train into it, or choose -o")
    with _output_lock(output):
        point = _resume_point(output, on_event) if resume else None
        # Without MODEL a resume trains from the run's own source, never from .picli/last.json's.
        model_path = _resume_source(point, checkpoint if model is not None else None, settings, on_event) \
            if point else checkpoint.path
        if model_path == output or output.is_relative_to(model_path) or model_path.is_relative_to(output):
            raise PicliError("the output overlaps the source checkpoint", hint="choose another -o/--output")
        check_loadable(model_path)  # safetensors (never a pickle) and a tokenizer, before any loading
        read_record(model_path)  # a broken record fails here, not at export after the training
        if not point:
            if not settings.data:
                raise PicliError("no training data given", hint="pass --data FILE|DIR|JSONL|hf:NAME")
        settings = resolve_settings(model_path, settings, point, given)
        created = not output.exists()
        try:
            result = run_finetune(model_path, output, settings, point, command=command, on_event=on_event)
        except BaseException:
            # A run that fails before its first checkpoint leaves nothing worth keeping (and would
            # make the retry ask for --force); one with a checkpoint is kept for --resume.
            if created and not has_checkpoint(output) and os.environ.get("RANK", "0") == "0":
                shutil.rmtree(output, ignore_errors=True)
            raise
    if not result.interrupted:
        remember_last(output, "finetune")
    return asdict(result)


def _checkpoint(model: str | None, on_event: Events, need_weights: bool = True):
    from .checkpoint import resolve

    checkpoint = resolve(model, need_weights=need_weights, on_event=on_event)
    if checkpoint.kind == "gguf":
        raise PicliError("finetune trains transformers checkpoints, not GGUF files",
                         hint="fine-tune the safetensors checkpoint the GGUF was made from")
    return checkpoint


@contextlib.contextmanager
def _output_lock(output: Path):
    """One run writes an output at a time (metrics.jsonl of two would interleave). Only the main
    process locks: under torchrun the others share its output, and die with it if it fails."""
    from .files import target_lock

    if os.environ.get("RANK", "0") != "0":
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(output):
        yield


def _resume_point(output: Path, on_event: Events) -> ResumePoint:
    point = find_resume_point(output)
    if point is None:
        raise PicliError(f"nothing to resume: {output / 'checkpoints'} holds no checkpoint",
                         hint="start without --resume, or point -o at the interrupted run's output")
    if on_event and os.environ.get("RANK", "0") == "0":
        for skipped in point.skipped:
            on_event({"kind": "warning", "text": f"checkpoint {skipped} is damaged: resuming from {point.folder.name}"})
    return point


def _resume_source(point: ResumePoint, checkpoint, settings: TrainSettings, on_event: Events) -> Path:
    """The checkpoint the run trained from (its record's), or MODEL when MODEL is that same
    checkpoint (moved or copied); anything else is refused, in one line, with the difference."""
    recorded = point.state["source"]
    recorded_path = Path(recorded["path"])
    if settings.data and data_location(settings.data) != point.state["data"]["path"]:
        raise PicliError(f"--resume continues the run on its own data ({point.state['data']['path']}); "
                         f"--data {settings.data} names another", hint="drop --data, or start a new run with --force")
    path = checkpoint.path if checkpoint else recorded_path
    if not (path / "config.json").is_file():
        raise PicliError(f"the run's source {recorded_path} no longer exists",
                         hint="if it moved, pass it as MODEL (it must be the same checkpoint)")
    if source_fingerprint(path) != recorded["fingerprint"]:
        if path == recorded_path:
            raise PicliError(f"the run's source {path} changed since the run started (config.json or weights differ)",
                             hint="restore it, or start a new run (-o elsewhere, or --force)")
        raise PicliError(f"the run in this output was trained from {recorded_path}, not {path} (config.json or "
                         "weights differ)", hint="omit MODEL to resume from the run's own source")
    if path != recorded_path and on_event:
        on_event({"kind": "message",
                  "text": f"{path} is the run's source (same config and weights as {recorded_path})"})
    return path
