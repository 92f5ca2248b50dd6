"""MODEL as a Hub id or alias: served from the local cache offline, clear errors otherwise.

Online behaviour is tested against a stub server on loopback (HF_ENDPOINT), in a
subprocess because huggingface_hub reads its endpoint and offline flag at import.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import FAMILY_CONFIGS, write_checkpoint

REVISION = "0123456789abcdef0123456789abcdef01234567"


def picli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "picli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def fill_cache(hf_home: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<sha>/ (files are plain here)."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    return write_checkpoint(repo_dir / "snapshots" / REVISION, FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048)


def test_hub_id_from_offline_cache(tmp_path):
    hf_home = tmp_path / "hf"
    fill_cache(hf_home, "huggyllama/llama-7b")
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    result = picli("extend", "huggyllama/llama-7b", "--to", "4096", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "llama-7b-4k" / "picli.json").read_text())
    assert record["source"] == {"repo": "huggyllama/llama-7b", "revision": REVISION}
    assert record["base_model"] == "huggyllama/llama-7b"
    # The alias resolves to the same cached repo.
    result = picli("inspect", "llama-7b", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resolved_from"] == "alias llama-7b -> huggyllama/llama-7b"


def test_hub_id_not_cached_offline_names_the_download(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    result = picli("extend", "meta-llama/Llama-2-7b-hf", "--to", "8192", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "not in the local Hugging Face cache" in result.stderr
    assert "hf download meta-llama/Llama-2-7b-hf" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


class StubHub(http.server.BaseHTTPRequestHandler):
    """Answers like the Hub does for a missing and for a gated repository."""

    def do_GET(self):  # noqa: N802
        if "gated" in self.path:
            self.send_response(403)
            self.send_header("X-Error-Code", "GatedRepo")
            self.send_header("X-Error-Message", "Access to model org/gated is restricted.")
        else:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Type", "application/json")
        body = b'{"error": "no"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("repo, needle", [("org/missing", "was not found on the Hub"), ("org/gated", "is gated")])
def test_online_errors(tmp_path, stub_hub, repo, needle):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": stub_hub,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    result = picli("extend", repo, "--to", "8192", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    assert needle in result.stderr and "Hint:" in result.stderr
    assert "Traceback" not in result.stderr
