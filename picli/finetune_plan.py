"""`picli finetune --plan`: memory per device and time per step before committing to a run.

The memory model is deliberately simple (weights, gradients, AdamW states, activations with
and without checkpointing, one chunk of logits); the time comes from one measured
forward+backward on this machine, so the estimate reflects the hardware it will run on.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .events import Events
from .modeling import HEAD_ELEMENTS
from .training import TrainSettings, build_loss_module, mixed_precision


RUNTIME_BYTES = 2 ** 29  # Python, torch, transformers and the allocator's slack: ~0.5 GiB


def estimate_memory(parameters: int, layers: int, hidden: int, seq_len: int, micro_batch: int, lora: bool,
                    checkpointing: bool, bytes_per_value: int = 2) -> dict[str, float]:
    """Bytes per device, roughly: weights, gradients, AdamW states, activations, runtime.

    Activations follow Korthikanti et al. (34 x tokens x hidden values per layer without
    checkpointing, in 16-bit; bytes_per_value=4 for float32 runs). Against
    benchmarks/finetune.py (SmolLM2, 2048 tokens, fp32 CPU) this gives 7.9 GB without and
    3.4 GB with checkpointing, where the runs peaked at 7.0 and 4.2 GB.
    """
    weights = parameters * 4  # float32 master weights
    trainable = parameters * (0.02 if lora else 1.0)
    gradients = trainable * 4
    optimizer = trainable * 8
    tokens = seq_len * micro_batch
    if checkpointing:
        activations = layers * tokens * hidden * bytes_per_value + tokens * hidden * 34 * bytes_per_value
    else:
        activations = layers * tokens * hidden * 34 * bytes_per_value
    logits = HEAD_ELEMENTS * 4 * 3  # one chunk of float32 logits, its log-softmax and their gradient
    total = weights + gradients + optimizer + activations + logits + RUNTIME_BYTES
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
            "logits_chunk": logits, "runtime": RUNTIME_BYTES, "total": total}


def run_memory(config: dict, parameters: int, seq_len: int, settings: TrainSettings, lora: bool,
               checkpointing: bool) -> dict[str, float]:
    """estimate_memory for a run with these settings on this machine (16-bit activations under autocast)."""
    bytes_per_value = 2 if mixed_precision(settings) != "no" else 4
    return estimate_memory(parameters, config.get("num_hidden_layers") or 1, config.get("hidden_size") or 1, seq_len,
                           settings.micro_batch_size, lora, checkpointing, bytes_per_value)


def plan_memory(config: dict, parameters: int, seq_len: int, settings: TrainSettings) -> list[dict[str, Any]]:
    rows = []
    for lora in (False, True):
        for checkpointing in (False, True):
            estimate = run_memory(config, parameters, seq_len, settings, lora, checkpointing)
            rows.append({"mode": "lora" if lora else "full", "gradient_checkpointing": checkpointing,
                         "bytes": estimate["total"], "breakdown": estimate})
    return rows


def plan(model_path: Path, config: dict, parameters: int, seq_len: int, settings: TrainSettings,
         on_event: Events) -> dict:
    """Memory per device for full and LoRA, with and without checkpointing, and a timed probe."""
    rows = plan_memory(config, parameters, seq_len, settings)
    probe = probe_step(model_path, min(seq_len, 512), settings, on_event)
    # Cost per token grows with the window (attention); scaling linearly from the probe is a floor.
    seconds_per_sequence = probe * seq_len / min(seq_len, 512)
    return {"model": str(model_path), "parameters": parameters, "seq_len": seq_len, "batch_size": settings.batch_size,
            "micro_batch_size": settings.micro_batch_size, "memory": rows,
            "probe": {"tokens": min(seq_len, 512), "seconds": probe},
            "estimated_seconds_per_step": seconds_per_sequence * settings.batch_size,
            "estimated_hours": seconds_per_sequence * settings.batch_size * settings.steps / 3600,
            "suggestion": _suggest(rows, seq_len, settings)}


def probe_step(model_path: Path, tokens: int, settings: TrainSettings, on_event: Events) -> float:
    """Seconds for one forward+backward of one sequence of `tokens` on this machine."""
    import torch
    from transformers import AutoModelForCausalLM

    if on_event:
        on_event({"kind": "message", "text": f"Timing one training step of {tokens} tokens"})
    device = "cuda" if torch.cuda.is_available() and not settings.cpu else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).to(device)
    loss_module = build_loss_module(model).train()
    batch = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    # The run computes in bf16 where accelerate turns autocast on; time it the same way.
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(settings)) if device == "cuda" else None
    autocast = torch.autocast(device, dtype=half) if half else nullcontext()
    with autocast:
        loss_module(batch).backward()  # warm-up
    started = time.perf_counter()
    with autocast:
        loss_module(batch).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _suggest(rows: list[dict], seq_len: int, settings: TrainSettings) -> str:
    from .modeling import available_memory

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not settings.cpu else "cpu")
    free = available_memory(device)
    if free is None:
        return "free memory unknown"
    default_checkpointing = seq_len > 4096  # what --gradient-checkpointing auto picks
    for row in rows:
        if row["bytes"] < free * 0.9:
            flags = ["--lora"] if row["mode"] == "lora" else []
            if row["gradient_checkpointing"] != default_checkpointing:
                flags.append(f"--gradient-checkpointing {'on' if row['gradient_checkpointing'] else 'off'}")
            what = " ".join(flags) or "the defaults"
            return (f"fits with {what} (gradient checkpointing {'on' if row['gradient_checkpointing'] else 'off'}): "
                    f"~{row['bytes'] / 2**30:.1f} GiB of {free / 2**30:.1f} GiB free on {device.type}")
    return "nothing fits on one device: use several GPUs (accelerate launch with FSDP), --lora, or a shorter --seq-len"
