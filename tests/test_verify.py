"""`picli verify MODEL [MODEL...]`: several models side by side, with one protocol.

Three copies of the tiny Llama: `ext` (picli extended it to 1024 tokens, so it is picli's
output and gets records), `own` (a plain copy, window 512, the user's own: only read) and the
fixture itself as the baseline. Each model's numbers must equal what a single-model run of
that model gives with the same lengths.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct

import pytest

from picli.passkey import FILLER, QUESTION, TASK
from tests.helpers import assert_clean_error, missing_environment, run, tree_hash

SINGLE_KEYS = {"model", "baseline", "passkey_lengths", "perplexity_lengths", "settings", "notes", "saved_to"}


@pytest.fixture
def models(tiny_model_dir, tmp_path, workdir):
    """ext (window 1024, picli's output), own (window 512, the user's), and the text to score."""
    assert run("extend", str(tiny_model_dir), "--to", "1024", "-o", "ext").exit_code == 0
    shutil.copytree(tiny_model_dir, workdir / "own")
    text = tmp_path / "book.txt"
    text.write_text(" ".join([FILLER, TASK, QUESTION] * 40))
    return workdir / "ext", workdir / "own", text


def without_timings(value):
    """Reports minus wall-clock times (the only numbers two identical runs may differ in)."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in ("seconds", "tokens_per_second", "saved_to")}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def test_side_by_side_equals_single_runs(models, tiny_model_dir):
    ext, own, text = models
    source = tree_hash(tiny_model_dir)
    common = ["--quick", "--length", "256", "--length", "384", "--perplexity", "--passkey", "--data", str(text),
              "--stride", "64", "--baseline", str(tiny_model_dir), "--device", "cpu", "--json"]
    result = run("verify", "ext", "own", *common, "-o", "all.json")
    assert result.exit_code == 0, result.stderr
    both = json.loads(result.stdout)
    assert both["models"] == ["ext", "own"] and both["baseline"] == "tiny-llama"
    assert both["passkey_lengths"] == both["perplexity_lengths"] == [256, 384]
    assert [entry["name"] for entry in both["reports"]] == ["ext", "own"]
    # Each entry is a single-model report (its shape, plus the name) ...
    assert all(set(entry) == SINGLE_KEYS | {"name"} for entry in both["reports"])
    # ... with the same numbers a single-model run of that model gives.
    for index, model in enumerate(("ext", "own")):
        alone = run("verify", model, *common, "--no-save")
        assert alone.exit_code == 0, alone.stderr
        single = json.loads(alone.stdout)
        assert set(single) == SINGLE_KEYS  # one MODEL: the shape scripts already read
        entry = {key: value for key, value in both["reports"][index].items() if key != "name"}
        assert without_timings(entry) == without_timings(single)
    # The extension and its copy differ in RoPE, so their perplexities differ; the baseline
    # is the same weights as `own`, so its numbers equal own's.
    perplexities = [[r["perplexity"] for r in entry["model"]["perplexity"]["results"]] for entry in both["reports"]]
    assert perplexities[0] != perplexities[1]
    baseline = [r["perplexity"] for r in both["reports"][0]["baseline"]["perplexity"]["results"]]
    assert baseline == perplexities[1]
    # Records: ext is picli's output and gets its own picli-verify.json (its report, the shared
    # baseline beside it); own is the user's and is only read; the source is untouched.
    saved = json.loads((ext / "picli-verify.json").read_text())["runs"][0]
    assert without_timings({key: saved[key] for key in SINGLE_KEYS - {"saved_to"}}) == \
        without_timings({key: both["reports"][0][key] for key in SINGLE_KEYS - {"saved_to"}})
    assert both["reports"][0]["saved_to"] == str(ext / "picli-verify.json") and both["reports"][1]["saved_to"] is None
    assert json.loads((ext / "picli.json").read_text())["verification"]["baseline"]["perplexity"]
    assert not (own / "picli-verify.json").exists() and tree_hash(tiny_model_dir) == source
    # -o FILE with several models: one record holding every report.
    record = json.loads(open("all.json").read())
    assert record["created"] and record["data"] == str(text) and record["models"] == ["ext", "own"]
    assert [entry["name"] for entry in record["reports"]] == ["ext", "own"]


def test_table_has_a_column_group_per_model(models, tiny_model_dir):
    ext, own, text = models
    result = run("verify", "ext", "own", "--baseline", str(tiny_model_dir), "--quick", "--length",
                 "256", "--passkey", "--perplexity", "--data", str(text), "--stride", "64",
                 "--no-save", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Models: #1 ext  #2 own  base tiny-llama (baseline)" in lines
    header = next(index for index, line in enumerate(lines) if "deepest" in line)
    labels, measures = lines[header].split(), lines[header + 1].split()
    assert [word for word in labels if word in ("#1", "#2", "base")] == ["#1", "#1", "#2", "#2", "base", "base"]
    assert [word for word in measures if word in ("k_max", "ok")] == ["k_max", "ok"] * 3
    assert "delta" not in result.stdout  # side by side: the numbers stand next to each other
    ppl_header = next(line for line in lines if "ppl" in line)
    assert ppl_header.index("#1 ppl") < ppl_header.index("#2 ppl") < ppl_header.index("base ppl")
    # The terminal heatmap: one block per model, named, baseline last.
    blocks = [line.split(" success by k")[0] for line in lines if " success by k" in line]
    assert blocks == ["ext", "own", "tiny-llama"]
    assert "…" not in result.stdout  # every header fits in 80 columns


def test_default_lengths_are_every_models_window(models):
    ext, own, _ = models
    result = run("verify", "ext", "own", "--quick", "--no-save", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    both = json.loads(result.stdout)
    assert both["passkey_lengths"] == [512, 1024]  # own's window, ext's window
    beyond = {entry["name"]: [r["beyond_window"] for r in entry["model"]["passkey"]["results"]]
              for entry in both["reports"]}
    assert beyond == {"ext": [False, False], "own": [False, True]}
    assert any(note.startswith("own: 1024 tokens lie beyond its window of 512") for note in both["notes"])
    table = run("verify", "ext", "own", "--quick", "--no-save", "--device", "cpu")
    row = next(line for line in table.stdout.splitlines() if line.lstrip("│┃ ").startswith("1024"))
    assert row.count("*") == 1  # own's k_max at 1024 is marked, ext's is not


def test_one_model_keeps_its_shape_and_its_window(models):
    result = run("verify", "own", "--quick", "--no-save", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == SINGLE_KEYS and report["model"]["model"] == "model"
    assert report["passkey_lengths"] == [512]
    # No MODEL: the last output, as before.
    result = run("verify", "--quick", "--no-save", "--json", "--device", "cpu")
    assert result.exit_code == 0 and json.loads(result.stdout)["passkey_lengths"] == [1024]


def test_heatmap_has_a_panel_per_model(models, tiny_model_dir):
    if importlib.util.find_spec("matplotlib") is None:
        missing_environment("matplotlib (picli's test extra) is not installed: `make install` installs it")
    result = run("verify", "ext", "own", "--baseline", str(tiny_model_dir), "--quick", "--length",
                 "256", "--no-save", "--heatmap", "grid.png", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    png = open("grid.png", "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The figure is 1.2 + 0.6 x lengths x panels inches tall at 120 dpi: three panels, one length.
    assert struct.unpack(">I", png[20:24])[0] == round((1.2 + 0.6 * 1 * 3) * 120)


@pytest.mark.parametrize("arguments, message", [
    (["ext", "./ext/"], "ext and ./ext/ are the same model"),
    (["ext", "ext"], "ext is given twice"),
    (["ext", "missing-dir/"], "missing-dir/: no such file or directory"),
    (["ext", "model.gguf"], "model.gguf is not a valid GGUF file"),  # a GGUF is verified, when it is whole
    (["ext", "own", "--baseline", "own"], "own is both a MODEL and the --baseline"),
])
def test_bad_models_stop_before_anything_loads(models, arguments, message, monkeypatch):
    import picli.verify

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(picli.verify, "_measure", never)
    (models[0].parent / "model.gguf").write_bytes(b"GGUF")
    result = run("verify", *arguments, "--quick", "--device", "cpu")
    assert_clean_error(result, message)
    assert not (models[0] / "picli-verify.json").exists()


@pytest.mark.parametrize("arguments, message", [
    # a cut-off download as the second MODEL or as the baseline: found before the first model is measured
    (["ext", "cut"], "cut/model.safetensors is"),
    (["ext", "--baseline", "cut"], "cut/model.safetensors is"),
    (["cut", "ext"], "(truncated, or still being written)"),
    # the baseline is the MODEL itself (one MODEL too): refused, not measured twice
    (["ext", "--baseline", "./ext/"], "ext is both a MODEL and the --baseline"),
    # -o into a measured checkpoint would overwrite its own files
    (["ext", "-o", "ext/config.json"], "lies inside the checkpoint"),
    (["ext", "--baseline", "own", "-o", "own/model.safetensors"], "lies inside the checkpoint"),
    (["ext", "-o", "ext/picli-verify.json"], "lies inside the checkpoint"),
    (["ext", "-o", "ext/new.json"], "lies inside the checkpoint"),
    # options the model is not needed for
    (["ext", "--length", "1"], "--length 1 is too short for a passkey prompt"),
    (["ext", "own", "--length", "20"], "--length 20 is too short for a passkey prompt"),
])
def test_every_model_and_option_is_checked_before_any_is_measured(models, arguments, message, monkeypatch):
    import picli.verify

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(picli.verify, "_measure", never)
    monkeypatch.setattr(picli.verify, "load_model", never, raising=False)
    cut = models[0].parent / "cut"
    shutil.copytree(models[1], cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    before = tree_hash(models[0]), tree_hash(models[1])
    result = run("verify", *arguments, "--quick", "--device", "cpu")
    assert_clean_error(result, message)
    assert (tree_hash(models[0]), tree_hash(models[1])) == before
