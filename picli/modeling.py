"""A model as picli runs it: loading (device, dtype and attention choices), memory checks
with the one KV-cache formula (kv_cache.py), and the anatomy (decoder body, output head, the family's
logit transform) that lets the loss and perplexity apply the head a chunk at a time.

Shared by `verify` (passkey, perplexity), `finetune` (its loss and plan), and `inspect` and
the model card (the KV-cache size). torch is imported inside the functions that need it, so
the pure formulas cost nothing to import. `--device-map auto` hands placement to
accelerate's big-model inference; picli never splits a model itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PicliError
from .files import refuse_broken_links
from .kv_cache import kv_cache_bytes

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTIONS = ("sdpa", "flash_attention_2", "eager")
HEAD_ELEMENTS = 2 ** 25  # float32 logits per lm_head call: 128 MiB, whatever the vocabulary
# Weight files torch reads with pickle: picli never loads them (docs/safety.md).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Any of these lets AutoTokenizer build a tokenizer without a network call or remote code.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "tiktoken.model", "vocab.json",
                   "vocab.txt")
CONVERT_HINT = ("convert it once, where you trust the file: python -c \"from transformers import "
                "AutoModelForCausalLM as M, AutoTokenizer as T; d={path!r}; o=d.rstrip('/')+'-safetensors'; "
                "M.from_pretrained(d).save_pretrained(o, safe_serialization=True); "
                "T.from_pretrained(d).save_pretrained(o)\" (docs/safety.md)")


class OutOfMemory(PicliError):
    """The requested length or batch does not fit; the message carries the estimate."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: Any  # torch.device of the inputs (the first device under --device-map auto)
    dtype: Any
    attention: str
    path: Path

    @property
    def config(self):
        return self.model.config


def check_options(device: str | None = None, dtype: str | None = None, attention: str | None = None,
                  device_map: str | None = None) -> None:
    """The names verify and finetune accept for how a model runs, checked before anything loads
    (None: not an option of the caller). The one place each rule lives; load_model repeats it."""
    if device is not None and device not in DEVICES:
        raise PicliError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}", hint="e.g. --device cpu")
    if dtype is not None and dtype not in DTYPES:
        raise PicliError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", hint="e.g. --dtype bfloat16")
    if attention is not None and attention not in ATTENTIONS:
        raise PicliError(f"--attn must be one of {', '.join(ATTENTIONS)}, got {attention!r}", hint="sdpa works everywhere")
    if attention == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise PicliError("--attn flash_attention_2 needs the flash-attn package", hint="pip install flash-attn, or use --attn sdpa")
    if device_map not in (None, "auto"):
        raise PicliError(f"--device-map must be auto, got {device_map!r}", hint="omit it to use one device")


def check_loadable(path: Path) -> None:
    """Before a weight is read: safetensors weights (picli never unpickles a .bin) and a tokenizer.

    transformers would load pytorch_model.bin with torch.load (weights_only, but pickle all the
    same) and fail with an UnpicklingError traceback on a hostile file; without a tokenizer it
    fails only after the weights are loaded. Both are said here, in one line, first.
    """
    path = Path(path)
    refuse_broken_links(path)
    names = {child.name for child in path.iterdir()} if path.is_dir() else set()
    if not any(name.endswith(".safetensors") for name in names):
        pickled = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES) and name != "training_args.bin")
        if pickled:
            raise PicliError(f"{path.name} has only pickle weights ({', '.join(pickled[:3])}"
                             f"{', ...' if len(pickled) > 3 else ''}); picli loads safetensors only and never "
                             "unpickles a file", hint=CONVERT_HINT.format(path=str(path)))
        raise PicliError(f"{path.name} has no weight files (*.safetensors)",
                         hint="download the complete checkpoint, or pass the directory that holds the weights")
    if not names.intersection(TOKENIZER_FILES):
        raise PicliError(f"{path.name} has no tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...), so no text can be "
                         "scored", hint="copy the tokenizer files of the base model into it (AutoTokenizer.from_pretrained"
                         "(BASE).save_pretrained(DIR))")


def load_tokenizer(path: Path):
    """AutoTokenizer from the checkpoint's own files (or a GGUF's metadata); a broken or missing
    tokenizer is one line."""
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PicliError(f"cannot load the tokenizer of {Path(path).name}: {detail}",
                         hint="copy the tokenizer files of the base model into it") from exc


def pick_device(device: str) -> str:
    import torch

    check_options(device=device)
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PicliError("--device cuda was asked for but torch sees no CUDA GPU", hint="use --device cpu or auto")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    check_options(dtype=dtype)
    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU kernels for half types are slow or missing; float32 is the safe default there.
    return torch.float32


def from_pretrained(auto_class, path, attention: str, **kwargs):
    """(model, the attention it runs): `attention`, or eager where the family has no SDPA.

    SDPA is picli's default because it works for nearly every family at long lengths; a few
    (gemma2 in transformers 5) refuse it at load time, and eager is then the only choice.
    Weights are read from safetensors only (use_safetensors): never a pickle (check_loadable).
    """
    if "gguf_file" not in kwargs:  # a GGUF is read by transformers' own parser, not unpickled either
        kwargs["use_safetensors"] = True
    try:
        return auto_class.from_pretrained(path, attn_implementation=attention, **kwargs), attention
    except ValueError as exc:
        if attention != "sdpa" or "scaled_dot_product_attention" not in str(exc):
            raise
    return auto_class.from_pretrained(path, attn_implementation="eager", **kwargs), "eager"


def load_model(path: Path, device: str = "auto", dtype: str = "auto", attention: str = "sdpa",
               device_map: str | None = None) -> LoadedModel:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        transformers.utils.logging.disable_progress_bar()
    check_options(device, dtype, attention, device_map)
    check_loadable(path)
    # The tokenizer first: a broken one fails in a second, not after the weights have loaded.
    tokenizer = load_tokenizer(path)
    chosen_device = pick_device(device) if device_map is None else "cuda"
    torch_dtype = pick_dtype(dtype, chosen_device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device_map:
        kwargs["device_map"] = "auto"
    try:
        model, attention = from_pretrained(AutoModelForCausalLM, path, attention, **kwargs)
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfMemory(f"the model's weights do not fit on {chosen_device}",
                          hint="try --dtype bfloat16, or --device-map auto to shard across GPUs") from exc
    if not device_map:
        model.to(chosen_device)
    model.eval()
    input_device = next(model.parameters()).device
    return LoadedModel(model, tokenizer, input_device, torch_dtype, attention, Path(path))


def load_gguf_model(path: Path, device: str = "auto", dtype: str = "auto", attention: str = "sdpa",
                    scaling: dict | None = None) -> LoadedModel:
    """A GGUF as the embedded model is loaded (gguf_io.import_gguf): transformers' GGUF import,
    dequantized to `dtype`, in memory; with `scaling`, the RoPE scaling its metadata asks for
    (gguf_io.transformers_rope), which the import itself ignores for llama-family files."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    check_options(device, dtype, attention)
    path = Path(path)
    tokenizer = load_tokenizer(path)
    chosen_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, chosen_device)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if scaling:
        if hasattr(config, "rope_parameters"):  # transformers 5
            theta = (config.rope_parameters or {}).get("rope_theta", getattr(config, "rope_theta", None))
            config.rope_parameters = {**scaling, "rope_theta": theta}
        else:
            config.rope_scaling = {**scaling, "type": scaling["rope_type"]}
    model, attention = from_pretrained(AutoModelForCausalLM, path.parent, attention, gguf_file=path.name,
                                       config=config, dtype=torch_dtype)
    model.to(chosen_device)
    model.eval()
    return LoadedModel(model, tokenizer, next(model.parameters()).device, torch_dtype, attention, path)


def available_memory(device) -> int | None:
    """Bytes free for activations and KV cache on `device`, or None when unknown."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def kv_bytes_per_token(config, dtype) -> int:
    """kv_cache_bytes per token of a loaded model's config, every layer counted at full length:
    a rate that holds at any length, and never below what sliding layers really keep."""
    text = getattr(config, "text_config", None) or config
    keys = ("num_hidden_layers", "num_key_value_heads", "num_attention_heads", "head_dim", "hidden_size")
    return kv_cache_bytes({key: getattr(text, key, None) for key in keys}, 1, element_size(dtype))


def element_size(dtype) -> int:
    import torch

    return torch.tensor([], dtype=dtype).element_size()


def working_bytes(config, dtype, tokens: int) -> int:
    """Working set of one forward pass besides the KV cache: one layer's activations (hidden
    states, MLP), a few copies of each."""
    text = getattr(config, "text_config", None) or config
    element = element_size(dtype)
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    return tokens * (text.hidden_size * 8 + intermediate * 3) * element


def check_fits(loaded: LoadedModel, tokens: int, batch: int = 1, what: str = "this length") -> None:
    """Fail before a long run when the KV cache plus working memory clearly cannot fit."""
    free = available_memory(loaded.device)
    if free is None:
        return
    per_token = kv_bytes_per_token(loaded.config, loaded.dtype)
    needed = per_token * tokens * batch + working_bytes(loaded.config, loaded.dtype, tokens * batch)
    if loaded.attention == "eager":
        # Eager attention materialises one layer's [heads x L x L] scores (and their softmax);
        # SDPA and FlashAttention never do. At 32k that alone is tens of GB.
        text = getattr(loaded.config, "text_config", None) or loaded.config
        element = element_size(loaded.dtype)
        needed += 2 * batch * text.num_attention_heads * tokens * tokens * element
    if needed > free:
        gib = 1024 ** 3
        raise OutOfMemory(
            f"{what} ({tokens} tokens x batch {batch}) needs about {needed / gib:.1f} GiB on {loaded.device} "
            f"(KV cache {per_token * tokens * batch / gib:.1f} GiB), but only {free / gib:.1f} GiB is free",
            hint="try a smaller --length, --batch-size 1, --dtype bfloat16, or --device-map auto across GPUs",
        )


# ---------------------------------------------------------------------------------------
# Anatomy: the decoder body and the output head, applied apart so logits are made in chunks


def head_chunk(vocab_size: int, batch: int = 1) -> int:
    """Positions per lm_head call so that one call's float32 logits stay near HEAD_ELEMENTS.

    A fixed row count would cost 3x the memory on a 152k vocabulary (Qwen) as on a 49k one.
    """
    return max(64, HEAD_ELEMENTS // max(1, vocab_size * batch))


def split_model(model):
    """The decoder body, the output head, and the family's post-head logit transform."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    if head is None:
        raise PicliError(f"{type(model).__name__} has no output head, so it cannot be scored",
                         hint="give a causal language model (…ForCausalLM)")
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    model_type = getattr(config, "model_type", "") or ""
    softcap = getattr(config, "final_logit_softcapping", None)  # gemma2, gemma3
    # Each family's forward() scales its logits after lm_head; skipping that would change every score.
    scale = getattr(config, "logit_scale", None) if model_type.startswith("cohere") else None
    divisor = getattr(config, "logits_scaling", None) if model_type.startswith("granite") else None

    def adjust(logits):
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if softcap is not None:
            logits = (logits / softcap).tanh() * softcap
        return logits

    return decoder, head, adjust
