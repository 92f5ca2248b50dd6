"""Plain helpers that several test files share: builders of tiny inputs and the assertions every
"bad input" test makes. Fixtures live in conftest.py; a test file imports from here or from
conftest, never from another test file, so each test file can be read, moved or deleted alone.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from picli.passkey import LengthResult, PasskeyReport, Protocol, k_max, lowest_success
from picli.perplexity import PerplexityReport, PerplexityResult
from picli.verify import ModelRun, VerifyReport

ROOT = Path(__file__).resolve().parent.parent
# A Hub commit sha, as a cached snapshot directory is named.
REVISION = "0123456789abcdef0123456789abcdef01234567"
GGUF_TOKENS = [f"tok{i}" for i in range(300)]  # over the summary threshold


# --- running picli and judging its errors ---------------------------------------------------


def picli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (huggingface_hub reads HF_ENDPOINT and the offline flag at import);
    env is laid over this process's environment."""
    return subprocess.run([sys.executable, "-m", "picli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def assert_clean_error(result, needle: str) -> None:
    """A CliRunner result that failed as the project promises: one Error line, a Hint, exit 1."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and len([l for l in lines if l.startswith("Error")]) == 1
    assert any(line.startswith("Hint: ") for line in lines)
    assert "Traceback" not in result.stderr and result.stdout == ""


def assert_clean_failure(result: subprocess.CompletedProcess, needle: str) -> None:
    """The same promise for a subprocess run."""
    assert result.returncode == 1, result.stderr
    assert needle in result.stderr and "Hint:" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1


def side_python(version: str) -> Path:
    """The python of the side environment with transformers `version` (built by `make test`)."""
    python = ROOT / f".venv-tf{version}" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing: `make test` builds it")
        pytest.skip(f"side environment for transformers {version} not built (run `make test`)")
    return python


# --- a tiny GGUF file -----------------------------------------------------------------------


def make_gguf(path: Path, alignment: int | None = None, kv: dict | None = None,
              split_max_tensors: int = 0) -> dict[str, np.ndarray]:
    """A tiny llama GGUF (context 2048, theta 10000, three tensors). kv maps a metadata key to
    (GGUFWriter adder, value), replacing the default, or to None to leave it out.
    split_max_tensors > 0 writes gguf-py's split shards instead (PATH-00001-of-0000N.gguf, ...:
    split.* keys in every shard, the model's metadata in the first only, as llama.cpp splits)."""
    import gguf

    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": rng.standard_normal((4, 6)).astype(np.float32),
        # 7 float16 = 14 bytes: the next tensor's offset needs padding.
        "blk.0.attn_norm.weight": rng.standard_normal(7).astype(np.float16),
        "output.weight": rng.standard_normal((3, 5)).astype(np.float32),
    }
    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    metadata = {"llama.context_length": ("add_uint32", 2048), "llama.rope.freq_base": ("add_float32", 10000.0),
                **(kv or {})}
    for key, entry in metadata.items():
        if entry is not None:
            getattr(writer, entry[0])(key, entry[1])
    writer.add_string("general.name", "tiny test model")
    writer.add_array("general.tags", ["a", "bc", "déf"])
    writer.add_array("tokenizer.ggml.tokens", GGUF_TOKENS)
    writer.add_array("tokenizer.ggml.token_type", [1] * len(GGUF_TOKENS))
    writer.add_array("tokenizer.ggml.scores", [0.5, -1.0])
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


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


# --- the benchmark scripts ----------------------------------------------------------------


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, for its pure functions (tables, derived numbers); the
    scripts import their neighbours from benchmarks/ and benchmarks/data/."""
    for folder in (ROOT / "benchmarks", ROOT / "benchmarks" / "data"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
