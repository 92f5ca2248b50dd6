"""`picli finetune --plan`: memory per device and the schedule before committing to a run,
from config.json alone; the time of a step where a probe could run.

The model's shape comes from transformers itself: the config read by AutoConfig (class
defaults included) and the model built on the meta device, which allocates nothing, so a 70B
plan costs a second and no download of weights. Its parameters are counted there (or read
from safetensors headers where the weights are present). The memory model is deliberately
simple and labelled an estimate everywhere it is shown:

- float32 master weights (4 bytes a parameter), gradients (4) and AdamW's two moments (8) for
  what trains; DDP adds its gradient buckets (4 a trainable parameter, accelerate's default
  gradient_as_bucket_view=False); FSDP divides weights, gradients and moments by the devices
  and adds the units it gathers (two decoder layers and the embeddings, at the compute width);
- under bf16 autocast, the 16-bit copies of the weights autocast keeps during a forward;
- activations after Korthikanti et al. (2022): 34 values per token and hidden unit per layer
  without checkpointing, of which the keys and values (2 under full multi-head attention)
  come from modeling.kv_bytes_per_token, so grouped-query attention counts its smaller K/V;
  with checkpointing, one hidden state per layer plus one layer recomputed;
- one chunk of float32 logits, and ~0.5 GiB of runtime.

Against benchmarks/finetune.py (SmolLM2, 2048 tokens, fp32 CPU) it gives 7.7 GB without and
3.4 GB with checkpointing, where the runs peaked at 7.0 and 4.2 GB.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import PicliError
from .events import Events
from .modeling import HEAD_ELEMENTS
from .training import NORM_NAMES, LORA_TARGETS, TrainSettings, build_loss_module, mixed_precision, schedule_text

RUNTIME_BYTES = 2 ** 29  # Python, torch, transformers and the allocator's slack: ~0.5 GiB
DEVICE_COUNTS = (1, 2, 4, 8, 16, 32, 64)
ACTIVATION_VALUES = 34  # per token, hidden unit and layer, without checkpointing (Korthikanti et al.)
MHA_KV_VALUES = 2  # of those, K and V under full multi-head attention


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a model, read from transformers' own build of it."""
    parameters: int
    layers: int
    hidden: int
    layer_parameters: int  # one decoder layer: FSDP's unit
    kv_values_per_token: int  # keys and values of every layer, per token (modeling.kv_bytes_per_token)
    embeddings_and_norms: int  # what LoRA trains besides its adapters (LongLoRA)
    lora_values_per_rank: int  # in + out features of every LoRA-targeted projection


def model_shape(model_path: Path, parameters: int | None = None) -> ModelShape:
    """The shape of the model config.json describes (transformers builds it on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling import kv_bytes_per_token

    try:
        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise PicliError(f"transformers cannot build the model {model_path / 'config.json'} describes: "
                         f"{' '.join(str(exc).split())[:200]}", hint="check config.json's model_type") from exc
    text = config.get_text_config()
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layer_sizes = [sum(parameter.numel() for parameter in module.parameters())
                   for module in model.modules() if type(module).__name__ in layer_classes]
    # By parameter, not module: tied embeddings are one weight in two modules.
    embeddings = {id(parameter): parameter.numel() for module in (model.get_input_embeddings(),
                                                                  model.get_output_embeddings())
                  if module is not None for parameter in module.parameters()}
    norms = sum(parameter.numel() for name, parameter in model.named_parameters()
                if any(part in name.lower() for part in NORM_NAMES))
    adapters = sum(module.in_features + module.out_features for name, module in model.named_modules()
                   if name.split(".")[-1] in LORA_TARGETS and isinstance(module, torch.nn.Linear))
    return ModelShape(
        parameters=parameters or sum(parameter.numel() for parameter in model.parameters()),
        layers=text.num_hidden_layers, hidden=text.hidden_size, layer_parameters=max(layer_sizes, default=0),
        # At one byte a value, the formula's bytes are the count of values.
        kv_values_per_token=kv_bytes_per_token(text, torch.int8),
        embeddings_and_norms=sum(embeddings.values()) + norms, lora_values_per_rank=adapters)


def estimate_memory(shape: ModelShape, seq_len: int, micro_batch: int = 1, *, lora: bool = False,
                    lora_rank: int = 16, checkpointing: bool = False, bytes_per_value: int = 2,
                    strategy: str = "one", devices: int = 1) -> dict[str, float]:
    """Bytes per device, roughly, for one of: strategy "one" (a single device), "ddp" or "fsdp"
    on `devices` devices. See the module docstring for each term."""
    sharding = devices if strategy == "fsdp" else 1
    trainable = shape.embeddings_and_norms + lora_rank * shape.lora_values_per_rank if lora else shape.parameters
    tokens = seq_len * micro_batch
    layer_values = (ACTIVATION_VALUES - MHA_KV_VALUES) * shape.hidden + shape.kv_values_per_token / shape.layers
    if checkpointing:
        activations = tokens * (shape.layers * shape.hidden + layer_values) * bytes_per_value
    else:
        activations = tokens * shape.layers * layer_values * bytes_per_value
    estimate = {"weights": shape.parameters * 4 / sharding, "gradients": trainable * 4 / sharding,
                "optimizer": trainable * 8 / sharding, "activations": activations}
    if strategy == "ddp" and devices > 1:
        estimate["ddp_buckets"] = trainable * 4
    if strategy == "fsdp":
        outside_layers = shape.parameters - shape.layers * shape.layer_parameters
        gathered = 2 * shape.layer_parameters + outside_layers
        estimate["fsdp_gathered"] = gathered * bytes_per_value + (shape.layer_parameters + outside_layers) * 4
    elif bytes_per_value == 2:
        # autocast caches the 16-bit copy of every trainable weight for the whole forward; a frozen
        # weight's copy lives while backward needs it: every layer's, or one under checkpointing.
        frozen_copies = 0 if not lora else (shape.parameters / shape.layers if checkpointing else shape.parameters)
        estimate["autocast_copies"] = 2 * (shape.parameters if not lora else frozen_copies)
    estimate["logits_chunk"] = HEAD_ELEMENTS * 4 * 3  # one chunk of float32 logits, its log-softmax, its gradient
    estimate["runtime"] = RUNTIME_BYTES
    estimate["total"] = sum(estimate.values())
    return estimate


def bytes_per_value(settings: TrainSettings) -> int:
    """16-bit activations under autocast, 32-bit otherwise."""
    return 2 if mixed_precision(settings) != "no" else 4


def run_memory(model_path: Path, parameters: int, settings: TrainSettings, checkpointing: bool,
               processes: int = 1, sharded: bool = False) -> dict[str, float]:
    """estimate_memory for a run with these settings on these processes."""
    strategy = "fsdp" if sharded else ("ddp" if processes > 1 else "one")
    return estimate_memory(model_shape(model_path, parameters), settings.seq_len, settings.micro_batch_size,
                           lora=settings.lora, lora_rank=settings.lora_rank, checkpointing=checkpointing,
                           bytes_per_value=bytes_per_value(settings), strategy=strategy, devices=processes)


def plan_memory(shape: ModelShape, settings: TrainSettings) -> list[dict[str, Any]]:
    """Every row: full and LoRA, checkpointing off and on; per device on one device, under DDP
    (the same on any number) and under FSDP on 2..64 devices."""
    rows = []
    for lora in (False, True):
        for checkpointing in (False, True):
            def per_device(strategy: str, devices: int) -> dict[str, float]:
                return estimate_memory(shape, settings.seq_len, settings.micro_batch_size, lora=lora,
                                       lora_rank=settings.lora_rank, checkpointing=checkpointing,
                                       bytes_per_value=bytes_per_value(settings), strategy=strategy, devices=devices)

            one = per_device("one", 1)
            rows.append({"mode": "lora" if lora else "full", "gradient_checkpointing": checkpointing,
                         "bytes": one["total"], "ddp": per_device("ddp", 2)["total"],
                         "fsdp": {str(count): per_device("fsdp", count)["total"] for count in DEVICE_COUNTS[1:]},
                         "breakdown": one})
    return rows


def plan(model_path: Path, settings: TrainSettings, on_event: Events) -> dict:
    """Memory per device for full and LoRA, with and without checkpointing, on 1..64 devices,
    the effective schedule, and a timed probe where the weights are here and fit."""
    from .checkpoint import effective_window, tensor_summary, weight_files

    has_weights = any(path.suffix == ".safetensors" for path in weight_files(model_path))
    counted = tensor_summary(model_path).parameter_count if has_weights else None
    shape = model_shape(model_path, counted)
    settings = settings.resolve(window=settings.seq_len or effective_window(model_path), parameters=shape.parameters)
    rows = plan_memory(shape, settings)
    probe, skipped = None, _probe_skipped(has_weights, shape, settings)
    if skipped is None:
        probe = {"tokens": min(settings.seq_len, 512),
                 "seconds": probe_step(model_path, min(settings.seq_len, 512), settings, on_event)}
    # Cost per token grows with the window (attention); scaling linearly from the probe is a floor.
    per_step = probe["seconds"] * settings.seq_len / probe["tokens"] * settings.batch_size if probe else None
    return {"model": str(model_path), "parameters": shape.parameters,
            "parameters_from": "safetensors headers" if counted else "config.json (transformers, meta device)",
            "seq_len": settings.seq_len, "batch_size": settings.batch_size,
            "micro_batch_size": settings.micro_batch_size, "bytes_per_value": bytes_per_value(settings),
            "schedule": {"lr": settings.lr, "warmup_steps": settings.warmup_steps,
                         "warmup_start": settings.warmup_start, "steps": settings.steps,
                         "text": schedule_text(settings)},
            "shape": asdict(shape), "memory": rows, "probe": probe, "probe_skipped": skipped,
            "estimated_seconds_per_step": per_step,
            "estimated_hours": per_step * settings.steps / 3600 if per_step else None,
            "suggestion": _suggest(rows, settings)}


def _probe_skipped(has_weights: bool, shape: ModelShape, settings: TrainSettings) -> str | None:
    """Why no step is timed here, or None when one can be."""
    import torch

    from .modeling import available_memory

    if not has_weights:
        return "no weights here (config.json only)"
    device = torch.device("cuda" if torch.cuda.is_available() and not settings.cpu else "cpu")
    needed = estimate_memory(shape, min(settings.seq_len, 512), 1, bytes_per_value=4)["total"]
    free = available_memory(device)
    if free is not None and needed > free * 0.9:
        return f"one float32 step needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device.type}"
    return None


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


def _suggest(rows: list[dict], settings: TrainSettings) -> str:
    from .modeling import available_memory

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not settings.cpu else "cpu")
    free = available_memory(device)
    if free is None:
        return "free memory unknown"
    default_checkpointing = settings.seq_len > 4096  # what --gradient-checkpointing auto picks
    for row in rows:
        if row["bytes"] < free * 0.9:
            flags = ["--lora"] if row["mode"] == "lora" else []
            if row["gradient_checkpointing"] != default_checkpointing:
                flags.append(f"--gradient-checkpointing {'on' if row['gradient_checkpointing'] else 'off'}")
            what = " ".join(flags) or "the defaults"
            return (f"fits on this {device.type} with {what} (gradient checkpointing "
                    f"{'on' if row['gradient_checkpointing'] else 'off'}): ~{row['bytes'] / 2**30:.1f} GiB of "
                    f"{free / 2**30:.1f} GiB free")
    return (f"nothing fits on this {device.type}: the FSDP columns say how many devices would hold each mode; "
            "--lora and a shorter --seq-len shrink it too")
