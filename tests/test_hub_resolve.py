"""MODEL as a Hub id or alias: served from the local cache offline, clear errors otherwise.

Online behaviour is tested against a stub server on loopback (HF_ENDPOINT), in a
subprocess because huggingface_hub reads its endpoint and offline flag at import.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from tests.helpers import FAMILY_CONFIGS, REVISION, assert_clean_error, picli, write_checkpoint


def fill_cache(hf_home: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<sha>/ (files are plain here)."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    return write_checkpoint(repo_dir / "snapshots" / REVISION, FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048)


@pytest.mark.slow
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


@pytest.mark.slow
def test_hub_id_not_cached_offline_names_the_download(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty-hf"), "HF_HUB_OFFLINE": "1"}
    result = picli("extend", "meta-llama/Llama-2-7b-hf", "--to", "8192", cwd=tmp_path, env=env)
    assert_clean_error(result, "not in the local Hugging Face cache")
    assert "hf download meta-llama/Llama-2-7b-hf" in result.stderr


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


@pytest.mark.slow
@pytest.mark.parametrize("repo, needle", [("org/missing", "was not found on the Hub"), ("org/gated", "is gated")])
def test_online_errors(tmp_path, stub_hub, repo, needle):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": stub_hub,
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    result = picli("extend", repo, "--to", "8192", cwd=tmp_path, env=env)
    assert_clean_error(result, needle)


# ---------------------------------------------------------------------------------------
# One repo-id rule and one error table, shared by downloads (MODEL) and push.

# Where picli's two old patterns disagreed with each other or with huggingface_hub's
# validate_repo_id (the rule the client itself enforces): MODEL's accepted a leading `-`,
# `..`, `.git` and any length; push's refused a leading `_` in the name; both accepted a
# trailing `-`/`.`, `--` and non-ASCII letters.
@pytest.mark.parametrize("text, valid", [
    ("org/model-16k", True),
    ("org/_model", True), ("_org/model", True),
    ("org/" + "a" * 96, True), ("org/" + "a" * 97, False),
    ("org/-model", False), ("org/model-", False), ("org./model", False), ("org/model.", False),
    ("org/a--b", False), ("org/a..b", False), ("org/model.git", False),
    ("org/café", False), ("model", False), ("a/b/c", False), ("/model", False), ("org/", False),
])
def test_one_repo_id_rule(text, valid):
    from picli.hub_errors import is_repo_id

    assert is_repo_id(text) is valid


@pytest.mark.slow
@pytest.mark.parametrize("model", ["org/a--b", "org/-model", "org/café"])
def test_invalid_repo_id_is_a_clean_error(tmp_path, model):
    # huggingface_hub used to refuse these inside snapshot_download, with a traceback.
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = picli("inspect", model, cwd=tmp_path, env=env)
    assert_clean_error(result, "not an alias or Hub id")


def test_one_error_table_for_downloads_and_push():
    import httpx2
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    from picli.hub_errors import HubCall, translate

    def http_error(cls, status):
        return cls(f"{status} Client Error",
                   response=httpx2.Response(status, request=httpx2.Request("GET", "http://hub/api/models/org/m")))

    download = HubCall("org/m", "download", None, "http://hub")
    push = HubCall("org/m", "push", None, "http://hub")
    for error in (http_error(GatedRepoError, 403), http_error(RepositoryNotFoundError, 404),
                  http_error(HfHubHTTPError, 401), http_error(HfHubHTTPError, 503)):
        fetched, pushed = translate(error, download), translate(error, push)
        assert fetched.message.split(" during the push")[0] == pushed.message.split(" during the push")[0]
        assert "\n" not in fetched.message and fetched.hint != pushed.hint
    gated = translate(http_error(GatedRepoError, 403), download)
    # The configured endpoint (HF_ENDPOINT), not a hard-coded huggingface.co.
    assert gated.hint == "request access at http://hub/org/m, then `hf auth login`"
    assert translate(http_error(HfHubHTTPError, 503), download).hint == "try again later, or: hf download org/m"
    assert translate(ValueError("a bug"), download) is None
