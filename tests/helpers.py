"""Plain helpers that the test files share: the tiny checkpoints of each RoPE family and the
builders of other small inputs, running picli and judging its errors, the reference formulas,
and the records picli writes. Fixtures (and the session's offline setup) live in conftest.py and
nothing else does; a test file imports from here, never from conftest or another test file, so
each test file can be read, moved or deleted alone (tests/test_architecture.py checks both).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from picli.cli import app
from picli.passkey import LengthResult, PasskeyReport, Protocol, k_max, lowest_success
from picli.perplexity import PerplexityReport, PerplexityResult
from picli.verify import ModelRun, VerifyReport

ROOT = Path(__file__).resolve().parent.parent
# A Hub commit sha, as a cached snapshot directory is named.
REVISION = "0123456789abcdef0123456789abcdef01234567"


# --- tiny checkpoints: config.json of each family, written as real checkpoints write it --------

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


# --- reading a written config in a transformers 4.x side environment ---------------------------

# What a config class of the side environment's transformers makes of a written config.json.
READER = """
import json, sys
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
config = getattr(config, "text_config", None) or config
scaling = getattr(config, "rope_scaling", None) or {}
neox = config.model_type == "gpt_neox"
print(json.dumps({
    "theta": float(config.rotary_emb_base if neox else config.rope_theta),
    "partial": float(config.rotary_pct if neox else getattr(config, "partial_rotary_factor", 1.0) or 1.0),
    "type": scaling.get("rope_type", scaling.get("type")),
    "factor": scaling.get("factor"),
    "window": config.max_position_embeddings,
    "local_theta": getattr(config, "rope_local_base_freq", None),
}))
"""


def read_in(version: str, directory: Path) -> dict:
    """READER's answer for the config in `directory`, in the side environment of `version`."""
    result = subprocess.run([str(side_python(version)), "-c", READER, str(directory)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- running picli and judging its errors ---------------------------------------------------


def run(*args, **invoke):
    """picli in this process (typer's CliRunner), each argument str()-ed: how every test that needs
    no real process calls it (a test file constructs no CliRunner of its own: test_architecture
    checks). `invoke` goes to CliRunner.invoke (terminal_width=..., input=...)."""
    return CliRunner().invoke(app, [str(arg) for arg in args], **invoke)


def picli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (huggingface_hub reads HF_ENDPOINT and the offline flag at import);
    env is laid over this process's environment."""
    return subprocess.run([sys.executable, "-m", "picli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def assert_clean_error(result, *needles: str, exit_code: int = 1) -> str:
    """picli failed the way it promises, through its one error boundary: exit code `exit_code` (1,
    or 2 for a usage error), nothing on stdout, no traceback, exactly one line that starts with
    `Error`, and it is `Error: ...` naming every needle, and a `Hint: ` line. `result` is a
    CliRunner result or a CompletedProcess (`picli(...)`). Returns the Error line."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    exception = getattr(result, "exception", None)
    assert code == exit_code, (code, result.stdout, result.stderr, exception)
    assert exception is None or isinstance(exception, SystemExit), repr(exception)  # not an uncaught bug
    assert "Traceback" not in result.stderr and result.stdout == "", (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.stderr
    assert any(line.startswith("Hint: ") for line in lines), result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, result.stderr)
    return errors[0]


def missing_environment(message: str):
    """A test needs something `make test` installs (a side environment, the embedded SmolLM2, the
    Austen text) and it is not there. On a developer's machine that skips the test; under CI
    (CI=true, as .ci/run runs `make test`) it is a broken install and fails, so a suite whose
    environment did not build cannot pass by skipping."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI=true: a missing environment fails under CI)", pytrace=False)
    pytest.skip(message)


def side_python(version: str) -> Path:
    """The python of the side environment with transformers `version` (built by `make test`)."""
    python = ROOT / f".venv-tf{version}" / "bin" / "python"
    if not python.exists():
        missing_environment(f"{python} is missing: `make test` builds the side environment for transformers "
                            f"{version}")
    return python


# --- references written out here from the papers ---------------------------------------------


def reference_inv_freq(theta: float, rotary_dim: int, factor: float = 1.0):
    """RoPE's inverse frequencies theta^(-2j/d) (RoFormer, Su et al. 2021), divided by PI's factor
    (Chen et al. 2023): float64, to compare with what transformers builds."""
    import torch

    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return 1.0 / (theta ** exponents) / factor


# --- a tiny GGUF file -----------------------------------------------------------------------

GGUF_TOKENS = [f"tok{i}" for i in range(300)]  # over the summary threshold
# The metadata of make_gguf's file: key -> (GGUFWriter method, value).
GGUF_METADATA = {
    "llama.context_length": ("add_uint32", 2048),
    "llama.rope.freq_base": ("add_float32", 10000.0),
    "general.name": ("add_string", "tiny test model"),
    "general.tags": ("add_array", ["a", "bc", "déf"]),
    "tokenizer.ggml.tokens": ("add_array", GGUF_TOKENS),
    "tokenizer.ggml.token_type": ("add_array", [1] * len(GGUF_TOKENS)),
    "tokenizer.ggml.scores": ("add_array", [0.5, -1.0]),
    "tokenizer.ggml.add_bos_token": ("add_bool", True),
}


def gguf_tensors() -> dict[str, np.ndarray]:
    """The tensors make_gguf writes (the same every call)."""
    rng = np.random.default_rng(0)
    return {
        "token_embd.weight": rng.standard_normal((4, 6)).astype(np.float32),
        # 7 float16 = 14 bytes: the next tensor's offset needs padding.
        "blk.0.attn_norm.weight": rng.standard_normal(7).astype(np.float16),
        "output.weight": rng.standard_normal((3, 5)).astype(np.float32),
    }


def make_gguf(path: Path, kv: dict | None = None, alignment: int | None = None, split_max_tensors: int = 0) -> Path:
    """A tiny llama GGUF: window 2048, theta 10000, a tokenizer long enough to be summarised, and
    gguf_tensors(). kv maps a key to (GGUFWriter method, value), replacing a default or adding one,
    or to None to leave a default out. split_max_tensors > 0 writes gguf-py's split shards instead
    (PATH-00001-of-0000N.gguf, ...: split.* keys in every shard, the model's metadata in the first
    only, as llama.cpp splits)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    for key, entry in {**GGUF_METADATA, **(kv or {})}.items():
        if entry is not None:
            getattr(writer, entry[0])(key, entry[1])
    for name, array in gguf_tensors().items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path




# --- the project's own Hub on loopback (tests/hub_server.py): its accounts and what is never uploaded

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

# --- verification records in the exact shapes picli writes ---------------------------------


def length_result(length: int, success: list[float]) -> LengthResult:
    """As passkey.evaluate_passkey builds it: the deepest k is the length less the task line and answer."""
    ks = [(length - 40) * (index + 1) // len(success) for index in range(len(success))]
    found = k_max(ks, success)
    return LengthResult(length=length, ks=ks, success=success, outcomes=[[rate >= 0.5] for rate in success],
                        keys=[[12345] for _ in success], k_max=found, k_largest=ks[-1],
                        lowest_success=lowest_success(ks, success, found), beyond_window=False, seconds=1.0)


def perplexity_result(length: int, value: float) -> PerplexityResult:
    return PerplexityResult(length=length, perplexity=value, nll=1.0, tokens_scored=5000, documents=1, windows=3,
                            seconds=1.0, tokens_per_second=100.0)


def verify_report() -> VerifyReport:
    protocol = Protocol().describe()
    model = ModelRun(model="model", path="/abs/m", window=8192,
                     passkey=PasskeyReport(protocol, 8192, [length_result(4096, [1.0, 1.0, 1.0, 1.0]),
                                                            length_result(8192, [1.0, 1.0, 0.5, 0.0])]).to_dict(),
                     perplexity=PerplexityReport(256, [perplexity_result(4096, 7.123),
                                                       perplexity_result(8192, 6.877)]).to_dict())
    baseline = ModelRun(model="baseline", path="/abs/base", window=2048,
                        passkey=PasskeyReport(protocol, 2048, [length_result(4096, [1.0, 0.0, 0.0, 0.0]),
                                                               length_result(8192, [0.0, 0.0, 0.0, 0.0])]).to_dict(),
                        perplexity=PerplexityReport(256, [perplexity_result(4096, 7.5),
                                                          perplexity_result(8192, 812.25)]).to_dict())
    return VerifyReport(model=model, baseline=baseline, passkey_lengths=[4096, 8192],
                        perplexity_lengths=[4096, 8192], settings={}, notes=["baseline: 4096, 8192 lie beyond"])


def verify_file(report: VerifyReport) -> dict:
    """picli-verify.json as verify writes it (provenance.verify_record)."""
    return {"created": "2025-01-02T00:00:00+00:00", "command": "picli verify --passkey", "data": "/data/pg19_book.txt",
            "versions": {}, **report.to_dict()}


# --- the repository's scripts (benchmarks/, docs/card_example.py) ---------------------------------


def load_script(path: Path, name: str):
    """A script of the repository (not a package module) as a module, for its functions."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, for its pure functions (tables, derived numbers); the
    scripts import their neighbours from benchmarks/ and benchmarks/data/."""
    for folder in (ROOT / "benchmarks", ROOT / "benchmarks" / "data"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return load_script(ROOT / "benchmarks" / f"{name}.py", f"benchmark_{name}")
