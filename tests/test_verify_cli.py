"""`picli verify` through the CLI on the tiny Llama: the JSON report, the saved records, the default
MODEL, side by side with a baseline, and the errors that stop a run before or while it measures.
(The passkey and perplexity measurements themselves: test_passkey.py, test_perplexity.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from picli.cli import app
from picli.passkey import FILLER, QUESTION, TASK
from tests.helpers import assert_clean_error

runner = CliRunner()


def test_verify_cli_on_tiny_model(tiny_model_dir, tmp_path, workdir):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    result = runner.invoke(app, ["verify", str(model), "--passkey", "--quick", "--length", "256",
                                 "--length", "384", "--json", "--device", "cpu", "--save"])  # not picli's output
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
    saved = json.loads((model / "picli-verify.json").read_text())
    assert saved["model"]["passkey"]["results"][0]["ks"] == results[0]["ks"]
    summary = json.loads((model / "picli.json").read_text())["verification"]
    assert summary["model"]["passkey_k_max"] == {"256": results[0]["k_max"], "384": results[1]["k_max"]}


def test_verify_without_model_uses_last_extended(tiny_model_dir, workdir):
    assert runner.invoke(app, ["extend", str(tiny_model_dir), "--to", "1024", "-o", "ext"]).exit_code == 0
    result = runner.invoke(app, ["verify", "--quick", "--length", "256", "--baseline", str(tiny_model_dir)])
    assert result.exit_code == 0, result.stderr
    assert f"MODEL: {workdir / 'ext'}" in result.stderr
    header = [line for line in result.stdout.splitlines() if "baseline" in line and "delta" in line]
    assert header and "deepest" in header[0] and "…" not in result.stdout  # every header fits in 80 columns
    deepest = json.loads((workdir / "ext" / "picli-verify.json").read_text())["model"]["passkey"]["results"][0]["k_largest"]
    assert "k tested" in result.stdout and f" of deepest {deepest}" in result.stdout
    summary = json.loads((workdir / "ext" / "picli.json").read_text())
    assert summary["rope"]["factor"] == 2.0 and summary["verification"]["baseline"]["passkey_k_max"]
    assert not (tiny_model_dir / "picli-verify.json").exists()  # the baseline is only read


def test_verify_errors(tmp_path, workdir):
    result = runner.invoke(app, ["verify", "--passkey"])
    assert result.exit_code == 1 and "no MODEL given" in result.stderr
    result = runner.invoke(app, ["verify", str(tmp_path), "--perplexity"])
    assert result.exit_code == 1 and "--perplexity needs text" in result.stderr


def test_passkey_is_the_default_measure_decided_in_one_place(workdir):
    """Bare `picli verify` measures passkey, `--perplexity` alone does not: VerifySettings decides,
    for the CLI and a library caller alike, and --heatmap asks the same settings."""
    from picli.verify import VerifySettings

    assert VerifySettings().passkey is True and VerifySettings(perplexity=True, data="x").passkey is False
    assert VerifySettings(passkey=True, perplexity=True, data="x").passkey is True
    result = runner.invoke(app, ["verify", "some-model", "--perplexity", "--data", "x", "--heatmap", "grid.png"])
    assert_clean_error(result, "--heatmap draws the passkey grid")
    assert not (workdir / "grid.png").exists()


def test_verify_perplexity_cli_side_by_side(tiny_model_dir, tmp_path, workdir):
    text = tmp_path / "book.txt"
    text.write_text(" ".join([FILLER, TASK, QUESTION] * 40))
    result = runner.invoke(app, ["verify", str(tiny_model_dir), "--perplexity", "--data", str(text), "--length", "128",
                                 "--length", "256", "--stride", "64", "--baseline", str(tiny_model_dir), "--no-save",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    model_results = report["model"]["perplexity"]["results"]
    baseline_results = report["baseline"]["perplexity"]["results"]
    assert [r["length"] for r in model_results] == [128, 256]
    # Same weights, same text, same protocol: identical numbers side by side.
    assert [r["perplexity"] for r in model_results] == [r["perplexity"] for r in baseline_results]
    assert model_results[0]["tokens_scored"] == model_results[1]["tokens_scored"] > 1000
    assert report["model"]["passkey"] is None and not (tiny_model_dir / "picli-verify.json").exists()
    table = runner.invoke(app, ["verify", str(tiny_model_dir), "--perplexity", "--data", str(text), "--length", "128",
                                "--stride", "64", "--no-save"])
    assert "Perplexity" in table.stdout and "tokens scored" in table.stdout


def test_length_that_does_not_fit_is_a_clear_error(tiny_model_dir, workdir, monkeypatch):
    import picli.modeling

    monkeypatch.setattr(picli.modeling, "available_memory", lambda device: 1_000_000)
    result = runner.invoke(app, ["verify", str(tiny_model_dir), "--quick", "--length", "4096", "--no-save"])
    assert result.exit_code == 1
    assert "needs about" in result.stderr and "only 0.0 GiB is free" in result.stderr
    assert "smaller --length" in result.stderr and "Traceback" not in result.stderr


def test_cuda_oom_is_caught_at_the_boundary(tiny_model_dir, workdir, monkeypatch):
    import picli.verify

    class OutOfMemoryError(RuntimeError):
        pass

    def explode(*args, **kwargs):
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(picli.verify, "_measure", explode)
    result = runner.invoke(app, ["verify", str(tiny_model_dir), "--quick", "--no-save"])
    assert result.exit_code == 1 and "out of GPU memory" in result.stderr and "Hint:" in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["--passkey", "--doc-tokens", "32k"], "Error: --doc-tokens chooses the documents perplexity scores"),
    (["--perplexity", "--data", "x.txt", "--sample-docs", "0"], "Error: --sample-docs must be at least 1, got 0"),
])
def test_document_options_are_checked_before_loading(tiny_model_dir, workdir, args, needle):
    result = runner.invoke(app, ["verify", str(tiny_model_dir), "--no-save", *args])
    assert result.exit_code == 1 and result.stderr.splitlines()[0] == needle
