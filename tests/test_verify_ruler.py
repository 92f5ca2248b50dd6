"""`picli verify --ruler` through the CLI on the tiny Llama: the --json shape, every sample kept
(and re-scored, re-tokenized, re-run with plain transformers from the kept file), the records,
the model card's RULER section, the plot, and the bad input that stops a run before any model
work. (The engine itself: test_ruler.py.)"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys

import pytest

from picli.ruler import scoring
from picli.ruler.tasks import SYNTHETIC, TASKS
from tests.helpers import assert_clean_error, run

TASKS_RUN = "niah_single_1,fwe"


@pytest.fixture(scope="module")
def ruler_run(tiny_model_dir, tmp_path_factory):
    """One run for the tests below: picli's own extension of the tiny model (so the records are
    saved into it) beside the tiny model as the baseline, --json and --plot."""
    work = tmp_path_factory.mktemp("ruler-cli")
    ext = work / "ext"
    result = run("extend", str(tiny_model_dir), "--to", "1024", "-o", str(ext))
    assert result.exit_code == 0, result.stderr
    plot = work / "ruler.png"
    result = run("verify", str(ext), "--ruler", "--tasks", TASKS_RUN, "--samples", "2",
                 "--length", "512", "--length", "768", "--baseline", str(tiny_model_dir),
                 "--device", "cpu", "--plot", str(plot), "--json")
    assert result.exit_code == 0, result.stderr
    return {"report": json.loads(result.stdout), "ext": ext, "plot": plot, "stderr": result.stderr}


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


def test_ruler_json_shape_and_records(ruler_run):
    report, ext = ruler_run["report"], ruler_run["ext"]
    assert report["passkey_lengths"] == []  # --ruler alone: no passkey
    assert report["model"]["passkey"] is None and report["model"]["perplexity"] is None
    ruler = report["model"]["ruler"]
    assert ruler["protocol"]["tasks"] == ["niah_single_1", "fwe"] and ruler["protocol"]["samples"] == 2
    assert ruler["protocol"]["lengths"] == [512, 768]
    assert ruler["protocol"]["template"] == {"requested": "auto", "used": "plain"}  # no chat template: base model
    assert [(s["task"], s["length"], s["samples"]) for s in ruler["scores"]] == [
        ("niah_single_1", 512, 2), ("fwe", 512, 2), ("niah_single_1", 768, 2), ("fwe", 768, 2)]
    # The extension's window is 1024, the baseline's 512: 768 lies past the baseline's only.
    assert [a["beyond_window"] for a in ruler["averages"]] == [False, False]
    assert [a["beyond_window"] for a in report["baseline"]["ruler"]["averages"]] == [False, True]
    assert [e["rule"] for e in ruler["effective"]] == ["ruler", "relative"]
    # Saved into picli's own output: the samples went to the file the record names, not into --json.
    [companion] = ext.glob("picli-ruler-samples-*.jsonl.gz")
    digest = hashlib.sha256(companion.read_bytes()).hexdigest()
    assert companion.name == f"picli-ruler-samples-{digest[:12]}.jsonl.gz"  # one file per run, by content
    assert "samples" not in ruler and ruler["samples_file"] == str(companion) and ruler["samples_count"] == 8
    record = json.loads((ext / "picli-verify.json").read_text())["runs"][0]
    saved = record["model"]["ruler"]
    assert saved["samples_file"] == companion.name and saved["samples_count"] == 8
    assert saved["samples_sha256"] == digest
    assert saved["scores"] == ruler["scores"]
    summary = json.loads((ext / "picli.json").read_text())["verification"]["ruler"]
    assert summary["model"]["averages"] == {str(a["length"]): a["average"] for a in ruler["averages"]}
    assert summary["model"]["scores"]["fwe"]["768"] == ruler["scores"][3]["score"]
    assert summary["baseline"]["template"] == "plain" and summary["baseline_run"]["window"] == 512


def test_every_sample_is_kept_and_reproducible_with_plain_transformers(ruler_run, tiny_model_dir):
    """From the kept file alone: each input re-tokenizes to its recorded length and fits, each score
    re-scores from its prediction, the task scores are their means, and one input re-run with
    plain `generate` gives the recorded prediction."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    [companion] = ruler_run["ext"].glob("picli-ruler-samples-*.jsonl.gz")
    lines = _lines(companion)
    assert [line["run"] for line in lines] == ["model"] * 8 + ["baseline"] * 8
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for line in lines:
        assert len(tokenizer(line["input"]).input_ids) == line["prompt_tokens"]
        assert line["prompt_tokens"] + TASKS[line["task"]].budget <= line["length"]
        assert line["score"] == scoring.sample_score("string_match_all", line["prediction"], line["references"])
    # The same tokenizer: the model and the baseline read byte-identical prompts.
    assert [line["input"] for line in lines[:8]] == [line["input"] for line in lines[8:]]
    for score in ruler_run["report"]["model"]["ruler"]["scores"]:
        cell = [line["score"] for line in lines[:8] if (line["task"], line["length"]) == (score["task"], score["length"])]
        assert score["score"] == round(sum(cell) / len(cell), 2)
    first = lines[0]
    model = AutoModelForCausalLM.from_pretrained(ruler_run["ext"])
    ids = torch.tensor([tokenizer(first["input"]).input_ids])
    with torch.inference_mode():
        output = model.generate(ids, max_new_tokens=TASKS[first["task"]].budget, do_sample=False,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    new = output[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    assert tokenizer.decode(new, skip_special_tokens=True) == first["prediction"]
    assert len(new) == first["generated_tokens"]


def test_table_card_and_plot(ruler_run, tmp_path):
    from PIL import Image

    assert Image.open(ruler_run["plot"]).size[0] > 300
    result = run("card", str(ruler_run["ext"]), "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    card = json.loads(result.stdout)["card"]
    section = card[card.index("### RULER"):]
    assert "2 samples per task and length (seed 42), 2 tasks (niah_single_1, fwe), prompts in RULER's plain " \
           "template" in section and "essay haystack" not in section  # neither task reads the essay
    ruler = ruler_run["report"]["model"]["ruler"]
    base = ruler_run["report"]["baseline"]["ruler"]
    assert f"| 768 | {ruler['averages'][1]['average']:.1f} | {base['averages'][1]['average']:.1f} |" in section
    assert f"| fwe | {ruler['scores'][1]['score']:.1f} | {ruler['scores'][3]['score']:.1f} |" in section
    assert "This model's effective length:" in section and "by the relative rule" in section
    assert "above 85.6" in section
    # A later verification without RULER: the record keeps both runs, the card still shows RULER's
    # newest run whole, and its samples file stays named.
    later = tmp_path / "later"
    shutil.copytree(ruler_run["ext"], later)
    result = run("verify", str(later), "--passkey", "--quick", "--length", "256", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    runs = json.loads((later / "picli-verify.json").read_text())["runs"]
    assert runs[0]["model"]["ruler"] is None and runs[1]["model"]["ruler"]["samples_file"]
    assert (later / runs[1]["model"]["ruler"]["samples_file"]).is_file()
    result = run("card", str(later), "--dry-run", "--json")
    card = json.loads(result.stdout)["card"]
    assert "### Passkey retrieval" in card and card[card.index("### RULER"):].startswith(section[:400])
    # The human table: averages side by side, then each model's task x length grid.
    shutil.copytree(ruler_run["ext"], tmp_path / "again")
    result = run("verify", str(tmp_path / "again"), "--ruler", "--tasks", "fwe", "--samples", "1",
                 "--length", "512", "--device", "cpu", "--no-save", "-o", str(tmp_path / "v.json"))
    assert result.exit_code == 0, result.stderr
    assert "RULER" in result.stdout and "model: RULER score by task and length" in result.stdout
    assert "effective length" in result.stdout and "fwe" in result.stdout
    assert "1 task x 1 sample per length" in result.stdout and "beyond the model's trained window" not in result.stdout
    assert f"Every RULER sample (input, prediction, references, score): {tmp_path / 'v.ruler-samples.jsonl.gz'}" \
        in " ".join(result.stderr.split())


def test_without_saving_the_samples_are_in_the_json(tiny_model_dir, workdir):
    result = run("verify", str(tiny_model_dir), "--ruler", "--tasks", "fwe", "--samples", "1",
                 "--length", "512", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    ruler = json.loads(result.stdout)["model"]["ruler"]
    assert "samples_file" not in ruler and len(ruler["samples"]) == 1
    assert ruler["samples"][0]["input"].startswith("Read the following coded text")
    assert list(workdir.iterdir()) == []  # the user's own checkpoint: nothing written anywhere
    assert not list(tiny_model_dir.glob("*ruler-samples*"))


def test_o_file_keeps_the_samples_beside_it(tiny_model_dir, workdir):
    result = run("verify", str(tiny_model_dir), "--ruler", "--tasks", "fwe", "--samples", "1",
                 "--length", "512", "--device", "cpu", "-o", "v.json", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads((workdir / "v.json").read_text())
    assert record["model"]["ruler"]["samples_file"] == "v.ruler-samples.jsonl.gz"
    lines = _lines(workdir / "v.ruler-samples.jsonl.gz")
    assert len(lines) == 1 and lines[0]["task"] == "fwe" and lines[0]["run"] == "model"
    assert json.loads(result.stdout)["model"]["ruler"]["samples_file"] == str(workdir / "v.ruler-samples.jsonl.gz")
    # The next run rewrites both (picli wrote them); a file of the user's under the samples' name is refused.
    args = ["verify", str(tiny_model_dir), "--ruler", "--tasks", "fwe", "--samples", "1", "--length", "512",
            "--device", "cpu", "-o", "w.json"]
    (workdir / "w.ruler-samples.jsonl.gz").write_text("mine")
    assert_clean_error(run(*args), "w.ruler-samples.jsonl.gz exists and picli did not write it")
    assert (workdir / "w.ruler-samples.jsonl.gz").read_text() == "mine" and not (workdir / "w.json").exists()


# --- bad input: one line, nothing measured, nothing written -------------------------------------


def _refused(args: list[str], needle: str, workdir) -> None:
    result = run("verify", *args, "--device", "cpu")
    assert_clean_error(result, needle)
    assert "Loading model" not in result.stderr  # stopped before any weights loaded
    assert list(workdir.iterdir()) == []


def test_unknown_task_lists_the_valid_ones(tiny_model_dir, workdir):
    result = run("verify", str(tiny_model_dir), "--ruler", "--tasks", "niah_single_1,needle")
    assert_clean_error(result, "unknown RULER task 'needle'")
    assert ", ".join(SYNTHETIC) in result.stderr


@pytest.mark.parametrize("args, needle", [
    (["--samples", "0"], "--samples must be at least 1, got 0"),
    (["--tasks", "qa_1"], "qa_1 needs squad data"),
    (["--chat-template", "sometimes"], "--chat-template must be one of"),
    (["--tasks", "vt", "--length", "512"], "--length 512 is too short for RULER's vt: its smallest prompt has"),
])
def test_bad_ruler_input_stops_before_any_model_work(tiny_model_dir, workdir, args, needle):
    _refused([str(tiny_model_dir), "--ruler", "--samples", "1", *args], needle, workdir)


def test_ruler_options_without_ruler(tiny_model_dir, workdir):
    _refused([str(tiny_model_dir), "--passkey", "--samples", "3"], "--samples is a RULER option", workdir)
    _refused([str(tiny_model_dir), "--passkey", "--plot", "r.png"], "--plot draws RULER's scores", workdir)


def test_haystack_too_small_says_what_it_has_and_needs(tiny_model_dir, workdir, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("The cat sat on the mat. " * 200)
    result = run("verify", str(tiny_model_dir), "--ruler", "--tasks", "niah_single_2", "--samples",
                 "1", "--length", "2048", "--haystack", str(text), "--device", "cpu")
    assert_clean_error(result, f"the haystack {text} has ")
    assert "niah_single_2 at 2048 tokens needs about" in result.stderr and "Loading model" not in result.stderr


def test_chat_model_without_chat_template_under_auto(tiny_model_dir, workdir, tmp_path):
    """A tokenizer whose end-of-sequence token ends a chat turn, and no chat template: auto stops;
    none measures with RULER's plain template."""
    from transformers import AutoTokenizer

    chat = tmp_path / "chatty"
    shutil.copytree(tiny_model_dir, chat)
    tokenizer = AutoTokenizer.from_pretrained(chat)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>"})
    tokenizer.save_pretrained(chat)
    _refused([str(chat), "--ruler", "--tasks", "fwe", "--samples", "1", "--length", "512"],
             "looks like a chat model (its end-of-sequence token is <|im_end|>", workdir)
    result = run("verify", str(chat), "--ruler", "--tasks", "fwe", "--samples", "1", "--length",
                 "512", "--chat-template", "none", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["ruler"]["protocol"]["template"]["used"] == "plain"


def test_plot_without_matplotlib_fails_before_measuring(tiny_model_dir, workdir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    _refused([str(tiny_model_dir), "--ruler", "--samples", "1", "--length", "512", "--plot", "r.png"],
             "--plot needs matplotlib", workdir)
