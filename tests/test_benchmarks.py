"""The benchmarks' --quick modes run end to end: every picli command they call works as they call it.

A --quick run measures nothing worth reporting (tiny lengths); these tests check the mechanics and
the values a broken pipeline would get wrong: that each method reached the config, that the
measurements come from the model they are labelled with, and that every model saw the same keys.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_benchmark


@pytest.mark.slow
def test_methods_quick(tmp_path):
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "methods.py"), "--quick", "--json",
                           "--keep", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["quick"] and result["target_window"] == 16384
    assert list(result["results"]) == ["base", "linear", "yarn", "ntk"]

    # Each method reached the config picli wrote: PI x2, YaRN x2 from 8192, NTK theta = 1e5 * 2^(d/(d-2)), d = 64.
    extended = result["extended"]
    assert extended["linear"]["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert extended["yarn"]["rope_scaling"]["type"] == "yarn"
    assert extended["yarn"]["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert math.isclose(extended["ntk"]["rope_theta"], 1e5 * 2 ** (64 / 62), rel_tol=1e-9)
    assert extended["ntk"]["rope_scaling"] is None
    assert {extended[m]["max_position_embeddings"] for m in extended} == {16384}

    keys = []
    for name, row in result["results"].items():
        assert row["window"] == (8192 if name == "base" else 16384)
        # --max-tokens 768, stride 256: at 512 every token but the first is scored once (2 windows);
        # at 256 = the stride, each of the 3 windows' first token has no predecessor in its window.
        assert (row["perplexity"]["512"]["tokens_scored"], row["perplexity"]["512"]["windows"]) == (767, 2)
        assert (row["perplexity"]["256"]["tokens_scored"], row["perplexity"]["256"]["windows"]) == (765, 3)
        for length in ("256", "512"):
            perplexity = row["perplexity"][length]
            assert 1 < perplexity["perplexity"] < 1000
            assert row["passkey"][length]["trials"] == 8  # --quick: 4 depths x 2 keys
        keys.append([record["model"]["passkey"]["results"][0]["keys"] for record in row["records"]])
    # The same seed gives every model the same prompts, so the columns compare like with like.
    assert all(model_keys == keys[0] for model_keys in keys)

    # Each row was measured on its own model: at 256 tokens every method changes some rotation
    # angle, so no extended model scores exactly the base model's perplexity (they would if the
    # script measured one model four times or the config did not reach the model).
    perplexities = [row["perplexity"]["256"]["nll"] for row in result["results"].values()]
    assert len({round(nll, 9) for nll in perplexities}) == 4, perplexities


def test_methods_tail_perplexities_subtract_single_windows():
    """The 'tokens a-b' columns: the mean loss of only the tokens a longer single window adds, from
    the two windows' means. Built from known per-token losses, so a wrong pairing or weighting fails."""
    methods = load_benchmark("methods")
    losses = [1.0 + (t % 7) / 10 for t in range(1, 12)]  # per-token loss of tokens 1..11 (token 0: none)

    def one_window(length):  # a window of `length` tokens from the first scores tokens 1..length-1
        scored = losses[:length - 1]
        return {"windows": 1, "tokens_scored": len(scored), "nll": sum(scored) / len(scored)}

    perplexity = {"4": one_window(4), "8": one_window(8), "12": one_window(12),
                  "2": {"windows": 3, "tokens_scored": 11, "nll": 9.0}}  # sliding: never a tail
    tails = methods.tail_perplexities(perplexity)
    assert [(tail["from"], tail["to"], tail["tokens"]) for tail in tails] == [(4, 8, 4), (8, 12, 4)]
    assert math.isclose(tails[0]["nll"], sum(losses[3:7]) / 4)
    assert math.isclose(tails[1]["nll"], sum(losses[7:11]) / 4)
    assert math.isclose(tails[1]["perplexity"], math.exp(sum(losses[7:11]) / 4))


@pytest.mark.slow
def test_ruler_quick(tmp_path, smollm2):
    """benchmarks/ruler.py --quick through every step: extend x3, the timing, the pilot, picli verify --ruler
    on four models, the merged samples file, and the table from the JSON."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    samples_out = tmp_path / "samples.jsonl.gz"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ruler.py"), "--quick", "--json", "--threads", "1",
                           "--keep", str(tmp_path / "work"), "--samples-out", str(samples_out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["quick"] and list(result["results"]) == ["base", "linear", "yarn", "ntk"]
    assert result["extended"]["linear"]["rope_scaling"] == {"type": "linear", "factor": 2.0}
    assert math.isclose(result["extended"]["ntk"]["rope_theta"], 1e5 * 2 ** (64 / 62), rel_tol=1e-9)
    assert result["samples"] == 1 and result["pilot"]["samples"] >= 1 and result["pilot"]["seconds_per_sample"] > 0
    for name, row in result["results"].items():
        assert row["window"] == (8192 if name == "base" else 16384)
        assert row["protocol"]["tasks"] == ["niah_single_1", "fwe"] and row["protocol"]["lengths"] == [512, 768]
        assert row["protocol"]["template"]["used"] == "chat"  # SmolLM2-Instruct's own chat template
        assert set(row["scores"]) == {"niah_single_1", "fwe"} and set(row["averages"]) == {"512", "768"}
        for length, average in row["averages"].items():
            assert average == pytest.approx(sum(row["scores"][task][length] for task in row["scores"]) / 2)
    # Every model read the same four inputs: one line each, with four models' predictions, re-scorable.
    import gzip
    import hashlib

    from picli.ruler import scoring

    assert result["samples_file"]["sha256"] == hashlib.sha256(samples_out.read_bytes()).hexdigest()
    lines = [json.loads(line) for line in gzip.decompress(samples_out.read_bytes()).decode().splitlines()]
    assert [(line["task"], line["length"]) for line in lines] == [("niah_single_1", 512), ("fwe", 512),
                                                                  ("niah_single_1", 768), ("fwe", 768)]
    for line in lines:
        assert set(line["models"]) == {"base", "linear", "yarn", "ntk"}
        for name, measured in line["models"].items():
            assert measured["score"] == scoring.sample_score("string_match_all", measured["prediction"],
                                                             line["references"])
            # one sample a cell: the task score is its score, rounded to two decimals as RULER's
            assert result["results"][name]["scores"][line["task"]][str(line["length"])] == round(measured["score"], 2)
    timing = result["timing"]
    assert timing["all_identical"] and timing["predictions"] == 1 and timing["speedup"] > 0
    assert timing["picli"]["peak_rss_mb"] >= timing["picli"]["loaded_rss_mb"] > 0
    assert {"torch", "transformers", "cpu", "picli"} <= set(result["machine"])
    (tmp_path / "r.json").write_text(done.stdout)
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ruler.py"), "--table", str(tmp_path / "r.json")],
                           capture_output=True, text=True, env=env)
    assert table.returncode == 0 and "--quick: mechanics only" in table.stdout
    assert "plain generate / picli" in table.stdout and "identical predictions 1/1" in table.stdout


def test_ruler_pilot_sizes_the_run_to_the_budget():
    """N = (budget left / 4 models - the per-call overhead) / (seconds per sample x the margin)."""
    ruler = load_benchmark("ruler")

    class Stub:
        def ruler(self, model, name, lengths, tasks, samples):
            assert (model, samples) == ("smollm2-135m", 1)
            scores = [{"seconds": 30.0}, {"seconds": 20.0}]
            return {"model": {"ruler": {"scores": scores, "averages": [{"length": 1024, "average": 50.0}]}}}, 60.0

        def say(self, text):
            pass

    pilot = ruler.size_by_pilot(Stub(), {"lengths": [1024], "tasks": "all"}, budget=7200, spent=140)
    # 7000 s left: 1750 s a model, 10 s of it the call's overhead, then 65 s a sample -> 26
    assert pilot["samples"] == int((7000 / 4 - 10) / (50 * 1.3)) == 26
    assert pilot["overhead_seconds"] == 10 and pilot["seconds_per_sample"] == 50
    assert ruler.size_by_pilot(Stub(), {"lengths": [1024], "tasks": "all"}, budget=100, spent=90)["samples"] == 1


def test_every_benchmark_script_imports_only_modules_that_exist():
    """A script that imports a module the repository no longer has (picli_runner.py, absorbed by
    _common.py) fails only when someone runs it, maybe hours into a GPU session: every import of
    every script and helper in benchmarks/ must resolve, its own neighbours included."""
    import ast
    import importlib.util

    folders = [ROOT / "benchmarks", ROOT / "benchmarks" / "data"]
    sys.path[:0] = [str(folder) for folder in folders if str(folder) not in sys.path]
    scripts = sorted(path for folder in folders for path in folder.glob("*.py"))
    assert {"_common.py", "recovery.py", "methods.py"} <= {path.name for path in scripts}  # the glob found them
    unresolved = []
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            unresolved += [f"{script.relative_to(ROOT)}: import {name}" for name in names
                           if importlib.util.find_spec(name.split(".")[0]) is None]
    assert unresolved == []
