"""`picli push` end to end, against the project's own Hub on loopback (tests/hub_server.py).

The real CLI runs in a subprocess (huggingface_hub reads HF_ENDPOINT and the offline flag
at import) with HF_ENDPOINT pointing at the fake Hub and a `sitecustomize` network guard on
its path: every connection is logged, non-loopback ones are refused, and in strict mode
every one is, which is how `--dry-run` proves it made no network call.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from picli.hub import PushPlan, plan_push, preflight
from picli.hub_errors import HubCall, translate
from picli.provenance import remember_last
from tests.helpers import JUNK, READ_TOKEN, REPO, STRANGER_TOKEN, TOKEN, TOKENS, assert_clean_error, picli, run
from tests.hub_server import FakeHub


def network_log(env: dict) -> list[str]:
    path = Path(env["PICLI_NETGUARD_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def download(hub: FakeHub, repo: str, revision: str, path: str) -> bytes:
    """Through the server's resolve endpoint, as `hf download` would fetch it."""
    request = urllib.request.Request(f"{hub.url}/{repo}/resolve/{revision}/{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def assert_no_token_anywhere(env: dict, outputs: list[str], *roots: Path) -> None:
    for text in outputs:
        assert not any(token in text for token in TOKENS)
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.name != "token":  # HF_HOME/token is the stored login itself
                data = path.read_bytes()
                assert not any(token.encode() in data for token in TOKENS), path


@pytest.mark.slow
def test_push_uploads_byte_identical_files_and_an_honest_card(model, hub, env, tmp_path):
    result = picli("push", REPO, str(model), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["url"] == f"{hub.url}/{REPO}" and payload["created"] and payload["changed"]
    assert hub.load(REPO)["private"] is True  # private unless --public

    remote = hub.files(REPO)
    local = {entry["path"] for entry in payload["files"]}
    assert set(remote) == local | {".gitattributes"}
    for path in local:
        assert download(hub, REPO, "main", path) == (model / path).read_bytes(), path
    for junk in JUNK:
        assert junk not in remote  # training state and picli's bookkeeping stay home

    card = ModelCard(remote["README.md"].decode())
    data = card.data.to_dict()
    assert data["base_model"] == "huggyllama/llama-7b" and data["base_model_relation"] == "finetune"
    assert "position-interpolation" in data["tags"]
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert "| 8,192 | 6,114 | 8,152 | 50% | 62% | 0 | 0% |" in card.text and "| 8,192 | 6.877 | 812.250 | -805.373 |" in card.text
    assert "**Not fine-tuned.**" in card.text and f"vllm serve {REPO} --max-model-len 8192" in card.text
    assert "# a model card the user wrote" in card.text  # the README extend carried over is kept
    assert remote["README.md"] == (model / "README.md").read_bytes()  # the card written locally is the one pushed

    assert sorted(set(network_log(env))) == ["connect 127.0.0.1"]
    assert_no_token_anywhere(env, [result.stdout, result.stderr], model, hub.root, Path(env["HF_HOME"]))


@pytest.mark.slow
def test_default_model_public_and_stored_login(model, hub, env, tmp_path):
    """`picli push REPO` publishes the last checkpoint picli wrote here; auth falls back to `hf auth login`."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    remember_last(model, "extend", cwd=workdir)
    (Path(env["HF_HOME"])).mkdir(parents=True, exist_ok=True)
    (Path(env["HF_HOME"]) / "token").write_text(TOKEN)
    stored = {key: value for key, value in env.items() if key != "HF_TOKEN"}
    result = picli("push", "org/public-8k", "--public", env=stored, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert f"MODEL: {model}" in result.stderr and "token from stored login" in result.stderr
    assert result.stdout.strip() == f"{hub.url}/org/public-8k"
    assert hub.load("org/public-8k")["private"] is False
    assert_no_token_anywhere(env, [result.stdout, result.stderr], model)


@pytest.mark.slow
def test_existing_repo_is_refused_unless_exist_ok(model, hub, env, tmp_path):
    assert picli("push", REPO, str(model), env=env, cwd=tmp_path).returncode == 0
    commits = len(hub.load(REPO)["commits"])
    refused = picli("push", REPO, str(model), env=env, cwd=tmp_path)
    assert_clean_error(refused, "already exists")
    assert "--exist-ok" in refused.stderr and len(hub.load(REPO)["commits"]) == commits

    # New measurements: --exist-ok adds a commit whose card carries them.
    record = json.loads((model / "picli-verify.json").read_text())
    record["model"]["passkey"]["results"][1]["k_max"] = 8192
    (model / "picli-verify.json").write_text(json.dumps(record))
    result = picli("push", REPO, str(model), "--exist-ok", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] and len(hub.load(REPO)["commits"]) == commits + 1
    assert "| 8,192 | 8,192 | 8,152 |" in hub.files(REPO)["README.md"].decode()  # k_max beside the deepest k
    assert hub.head_message(REPO) == "PI x4: 2048 -> 8192 tokens, not fine-tuned"


@pytest.mark.slow
def test_new_revision_is_created_from_main(model, hub, env, tmp_path):
    assert picli("push", REPO, str(model), env=env, cwd=tmp_path).returncode == 0
    main_head = hub.load(REPO)["refs"]["main"]
    (model / "notes.txt").write_text("200 steps at 8k\n")
    result = picli("push", REPO, str(model), "--revision", "pi-8k", "--commit-message", "PI x4, 200 steps",
                   env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{hub.url}/{REPO}/tree/pi-8k"
    meta = hub.load(REPO)
    assert meta["refs"]["main"] == main_head and meta["commits"][meta["refs"]["pi-8k"]]["parent"] == main_head
    assert hub.head_message(REPO, "pi-8k") == "PI x4, 200 steps"
    assert "notes.txt" in hub.files(REPO, "pi-8k") and "notes.txt" not in hub.files(REPO, "main")
    # The branch now has a commit of its own: pushing to it again needs --exist-ok.
    assert_clean_error(picli("push", REPO, str(model), "--revision", "pi-8k", env=env, cwd=tmp_path),
                       "already exists and has commits")


@pytest.mark.slow
def test_create_pr_leaves_main_alone(model, hub, env, tmp_path):
    missing = picli("push", REPO, str(model), "--create-pr", env=env, cwd=tmp_path)
    assert_clean_error(missing, "does not exist")
    assert picli("push", REPO, str(model), env=env, cwd=tmp_path).returncode == 0
    main_head = hub.load(REPO)["refs"]["main"]
    (model / "notes.txt").write_text("proposed\n")
    result = picli("push", REPO, str(model), "--create-pr", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["pr_url"] == f"{hub.url}/{REPO}/discussions/1" == payload["url"]
    assert hub.load(REPO)["refs"]["main"] == main_head
    assert "notes.txt" in hub.files(REPO, "refs/pr/1")


@pytest.mark.slow
def test_wrong_missing_and_read_only_tokens_are_clean_errors(model, hub, env, tmp_path):
    wrong_token = "hf_" + secrets.token_hex(16)
    wrong = picli("push", REPO, str(model), "--token", wrong_token, env=env, cwd=tmp_path)
    assert_clean_error(wrong, "rejected the token")
    assert wrong_token not in wrong.stderr + wrong.stdout
    assert [path for _, path in hub.requests if path != "/api/agent-harnesses"] == ["/api/whoami-v2"]

    no_login = {key: value for key, value in env.items() if key != "HF_TOKEN"}
    assert_clean_error(picli("push", REPO, str(model), env=no_login, cwd=tmp_path), "not logged in")
    assert_clean_error(picli("push", REPO, str(model), "--token", READ_TOKEN, env=env, cwd=tmp_path), "read-only")
    forbidden = picli("push", REPO, str(model), "--token", STRANGER_TOKEN, env=env, cwd=tmp_path)
    assert_clean_error(forbidden, "forbidden")
    assert hub.load(REPO) is None
    assert_no_token_anywhere(env, [wrong.stderr, forbidden.stderr], model)


@pytest.mark.slow
def test_rerun_after_an_interrupted_upload_completes_it(model, hub, env, tmp_path):
    hub.fail_commits = 1  # the weights go up, then the commit fails
    first = picli("push", REPO, str(model), env=env, cwd=tmp_path)
    assert_clean_error(first, "failed with 500")
    assert "run the same command again" in first.stderr
    assert set(hub.files(REPO)) == {".gitattributes"}
    weights_oid = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert hub.lfs_puts == [weights_oid]

    second = picli("push", REPO, str(model), env=env, cwd=tmp_path)  # the same command, no --exist-ok
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr
    assert hub.lfs_puts == [weights_oid]  # already stored: not sent again
    remote = hub.files(REPO)
    for path in ("model.safetensors", "config.json", "tokenizer.json", "picli.json", "README.md"):
        assert remote[path] == (model / path).read_bytes()


@pytest.mark.slow
def test_dry_run_makes_no_network_call(model, hub, env, tmp_path):
    before = {path: path.read_bytes() for path in model.rglob("*") if path.is_file()}
    strict = {**env, "PICLI_NETGUARD_STRICT": "1"}  # any connection at all would fail
    result = picli("push", REPO, str(model), "--dry-run", env=strict, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model.safetensors" in result.stdout and "config.json" in result.stdout
    assert "----- README.md -----" in result.stdout and "<!-- picli:begin -->" in result.stdout
    assert "optimizer.pt" not in result.stdout.split("Left out")[0]
    assert "auth        HF_TOKEN" in result.stdout
    as_json = picli("push", REPO, str(model), "--dry-run", "--json", "--public", "--revision", "pi-8k", env=strict,
                    cwd=tmp_path)
    plan = json.loads(as_json.stdout)["plan"]
    assert plan["revision"] == "pi-8k" and plan["private"] is False
    assert {entry["path"] for entry in plan["files"]} >= {"README.md", "model.safetensors", "picli.json"}
    assert not set(JUNK) & {entry["path"] for entry in plan["files"]} and set(JUNK) <= set(plan["ignored"])
    assert network_log(env) == [] and hub.requests == []
    assert {path: path.read_bytes() for path in model.rglob("*") if path.is_file()} == before
    assert_no_token_anywhere(env, [result.stdout, result.stderr, as_json.stdout])


@pytest.mark.slow
def test_offline_and_unreachable_hub(model, hub, env, tmp_path):
    offline = picli("push", REPO, str(model), env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert_clean_error(offline, "offline mode is on")
    assert hub.requests == [] and network_log(env) == []
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    unreachable = picli("push", REPO, str(model), env={**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed}"},
                        cwd=tmp_path)
    assert_clean_error(unreachable, "could not reach")


@pytest.mark.slow
def test_old_argument_order_is_refused_before_anything_is_sent(model, hub, env, tmp_path):
    """`picli push ./model org/name`, the order picli once took: one line that shows the new
    order, exit 1, not one connection, and nothing written into the model (not even the card)."""
    before = {path: path.read_bytes() for path in model.rglob("*") if path.is_file()}
    result = picli("push", str(model), REPO, env=env, cwd=tmp_path)
    assert_clean_error(result, f"`picli push {REPO} {model}`")
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 2  # Error: and Hint:
    assert hub.requests == [] and network_log(env) == []
    assert {path: path.read_bytes() for path in model.rglob("*") if path.is_file()} == before


@pytest.mark.slow
def test_subprocess_guard_refuses_other_hosts(env, tmp_path):
    code = ("import socket\n"
            "for attempt in (lambda: socket.socket().connect(('192.0.2.1', 80)),\n"
            "                lambda: socket.getaddrinfo('huggingface.co', 443)):\n"
            "    try:\n"
            "        attempt()\n"
            "    except OSError as exc:\n"
            "        print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.count("network guard") == 2, result.stdout + result.stderr
    assert network_log(env) == ["connect 192.0.2.1", "resolve huggingface.co"]


# ---------------------------------------------------------------------------------------
# In-process: pre-flight and the error table.


def test_preflight_lists_every_problem_at_once(model):
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    (model / "model-00001-of-00002.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:-10])
    config = json.loads((model / "config.json").read_text())
    config["rope_scaling"]["factor"] = 2.0  # rope_parameters still says 4
    (model / "config.json").write_text(json.dumps(config))
    (model / "tokenizer.json").unlink()
    problems, _ = preflight(model)
    joined = " | ".join(problems)
    assert "model-00002-of-00002.safetensors, which is missing" in joined
    assert "model-00001-of-00002.safetensors is" in joined and "header implies" in joined
    assert "disagree" in joined and "no tokenizer" in joined
    assert "config.json says factor 2 but picli.json recorded linear factor 4" in joined  # the card would state the wrong factor
    result = run("push", REPO, str(model), "--dry-run")
    assert_clean_error(result, "5 problems", "(5)")  # every problem on the one Error line, numbered


def test_preflight_warns_without_picli_json(model):
    (model / "picli.json").unlink()
    problems, warnings = preflight(model)
    assert problems == [] and any("no provenance" in text for text in warnings)


def test_plan_refuses_bad_repo_ids_and_pr_on_a_branch(model):
    from picli.errors import PicliError

    with pytest.raises(PicliError, match="Hub repo id"):
        plan_push("just-a-name", model)
    with pytest.raises(PicliError, match="create-pr"):
        plan_push(REPO, model, revision="pi-8k", create_pr=True)


def test_swapped_order_is_told_apart_from_the_new_one(model, tmp_path, monkeypatch):
    """Refused only when REPO is a directory and MODEL a repo id that names none: a local folder
    spelled like the repo id, or a REPO that is no repo id at all, keeps its own outcome."""
    from picli.errors import PicliError

    with pytest.raises(PicliError, match="REPO comes first"):
        plan_push(str(model), REPO)
    monkeypatch.chdir(tmp_path)
    (tmp_path / REPO).mkdir(parents=True)  # e.g. `picli extend ... -o org/model-8k` wrote here once
    assert plan_push(REPO, model).checkpoint == model.resolve()
    with pytest.raises(PicliError, match="REPO must be a Hub repo id"):
        plan_push(str(model), "./not-a-repo-id")


def _http_error(cls, status: int, url: str):
    response = httpx2.Response(status, request=httpx2.Request("POST", url))
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize("error, needle, hint", [
    (lambda url: _http_error(GatedRepoError, 403, url), "is gated", "request access"),
    (lambda url: _http_error(RepositoryNotFoundError, 404, url), "was not found", "check the name"),
    (lambda url: _http_error(HfHubHTTPError, 403, url), "forbidden", "write access to org"),
    (lambda url: _http_error(HfHubHTTPError, 502, url), "failed with 502", "run the same command again"),
    (lambda url: httpx2.ConnectError("connection refused"), "could not reach", "check the network"),
    (lambda url: httpx2.ReadTimeout("timed out"), "timed out", "run the same command again"),
])
def test_hub_errors_map_to_one_line_with_the_next_step(model, error, needle, hint):
    plan = plan_push(REPO, model)
    assert isinstance(plan, PushPlan)
    mapped = translate(error(f"{plan.endpoint}/api/models/{REPO}/commit/main"),
                       HubCall(plan.repo_id, "push", plan.revision, plan.endpoint))
    assert mapped is not None and needle in mapped.message and hint in mapped.hint
    assert "\n" not in mapped.message
