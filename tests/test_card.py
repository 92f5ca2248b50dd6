"""The model card: front matter the Hub accepts, numbers from the records, the user's text kept.

Pure and fast: records are built here and in tests/helpers.py in the exact shapes picli writes (picli.json as
extend._record lays it out, picli-verify.json from verify.VerifyReport.to_dict and the
summary from provenance.verification_summary), so no model is loaded.
"""

from __future__ import annotations

import copy
import json

import pytest
from huggingface_hub import ModelCard

from picli import rope
from picli.card import BEGIN, END, TAGS, CardError, render_card, verification_summary
from picli.provenance import shown_summary as summarise_runs
from picli.provenance import verification_summary as summarise
from tests.helpers import FAMILY_CONFIGS, run, verify_file, verify_report, write_checkpoint

BASE = "huggyllama/llama-7b"


def picli_record(plan, base_model: str | None = BASE, finetune: dict | None = None, verification=None) -> dict:
    """picli.json as extend._record writes it."""
    return {
        "picli_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "command": "picli extend llama-7b --to 8192", "operation": "position_interpolation",
        "source": {"repo": base_model, "revision": "0" * 40} if base_model else {"path": "/home/someone/models/x"},
        "base_model": base_model,
        "rope": {"type": "linear", "factor": plan.factor, "previous_factor": 1.0, "original_window": 2048,
                 "current_window": 2048, "target_window": 8192, "theta": plan.theta, "max_position_embeddings": "target"},
        "changes": {}, "weights": "copy", "self_check": {"ok": True}, "versions": {"picli": "0.1.0", "transformers": "5.0"},
        "history": [], "finetune": finetune, "verification": verification,
    }


@pytest.fixture
def extended(tmp_path):
    config = copy.deepcopy(FAMILY_CONFIGS["llama_v4"])
    plan = rope.plan_config(config, 8192)
    directory = write_checkpoint(tmp_path / "llama-7b-8k", plan.config, tokenizer_max=8192)
    (directory / "README.md").unlink()
    return directory, plan


def test_front_matter_parses_as_a_hub_model_card(extended):
    directory, plan = extended
    existing = "---\nlicense: llama2\n---\n# the base model's card\n"
    text = render_card(directory, picli_record(plan), None, existing, "org/llama-7b-8k", overwrite=True)
    data = ModelCard(text).data.to_dict()
    assert data["base_model"] == BASE and data["base_model_relation"] == "finetune"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert set(TAGS) <= set(data["tags"]) and "position-interpolation" in data["tags"]
    # --overwrite-card drops the text but the base model's license is still carried.
    assert data["license"] == "llama2" and "the base model's card" not in text


def test_card_carries_the_verification_numbers_from_either_record(extended):
    directory, plan = extended
    report = verify_report()
    from_file = render_card(directory, picli_record(plan), verify_file(report), None, "org/m", False)
    from_summary = render_card(directory, picli_record(plan, verification=summarise(verify_file(report))),
                               None, None, "org/m", False)
    for text in (from_file, from_summary):
        body = ModelCard(text).text
        # passkey: model k_max beside the deepest depth tested (never the length), the lowest
        # success up to k_max, the mean; baseline beside it
        assert "| 8,192 | 6,114 | 8,152 | 50% | 62% | 0 | 0% |" in body
        assert "| 4,096 | 4,056 | 4,056 | 100% | 100% | 1,014 | 25% |" in body
        assert "means retrieval works everywhere" not in body and "cannot equal the length" in body
        # perplexity with the baseline and the delta
        assert "| 8,192 | 6.877 | 812.250 | -805.373 |" in body
        assert "`pg19_book.txt`" in body and "/data/" not in body  # no local paths on the Hub
        assert "32 key depths x 10 random 5-digit keys" in body
        assert "Not verified" not in body
    assert from_file == from_summary  # one summary: the card reads the same from either record
    summary = summarise(verify_file(report))
    for key in ("passkey_k_max", "passkey_k_largest", "passkey_lowest_success"):
        assert verification_summary(picli_record(plan), verify_file(report))["model"][key] == summary["model"][key]
    assert summary["model"]["passkey_lowest_success"] == {"4096": 1.0, "8192": 0.5}
    assert summary["baseline"]["passkey_lowest_success"] == {"4096": 1.0, "8192": None}


def test_unverified_and_not_fine_tuned_are_said_plainly(extended):
    directory, plan = extended
    text = render_card(directory, picli_record(plan), None, None, "org/m", False)
    assert "**Not verified.**" in text
    # No measurement of another model is carried as if general: the paper, labelled as such.
    assert "**Not fine-tuned.**" in text and "SmolLM2" not in text and "0/3" not in text
    assert "in the PI paper (Chen et al. 2023)" in text and "(Table 3)" in text and "start at 200" in text
    assert "2,048 to 8,192 tokens" in text and "factor **4**" in text


def test_short_context_cost_quotes_table_5_as_it_is(extended):
    directory, plan = extended
    text = render_card(directory, picli_record(plan), None, None, "org/m", False)
    assert ("the PI paper's Table 5 (LLaMA 7B): within about 2% of the original model on most original-window "
            "benchmarks at 8k, but BoolQ drops 2.9 points at 8k, 6.3 at 16k and 11.4 at 32k") in text
    assert "Not measured for this model by picli" in text and "feel it more" not in text


@pytest.mark.parametrize("record_source, baseline, expected", [
    # the recorded source, measured by repo and revision
    ({"repo": BASE, "revision": "0" * 40}, {"source": {"repo": BASE, "revision": "0" * 40}},
     f"Baseline: the model before interpolation (`{BASE}`, window 2,048 tokens)"),
    # another revision of the same repo is not the source
    ({"repo": BASE, "revision": "0" * 40}, {"source": {"repo": BASE, "revision": "1" * 40}},
     f"Baseline: `{BASE}` (window 2,048 tokens; not the source recorded in picli.json)"),
    # a record written before baselines kept their source: the Hub snapshot path names both
    ({"repo": BASE, "revision": "0" * 40},
     {"path": "/cache/hub/models--huggyllama--llama-7b/snapshots/" + "0" * 40},
     "Baseline: the model before interpolation ("),
    # a local directory: the same path is the source, another one is named (by its name only)
    ({"path": "/models/llama-7b"}, {"source": {"path": "/models/llama-7b"}},
     "Baseline: the model before interpolation (`llama-7b`, window 2,048 tokens)"),
    ({"path": "/models/llama-7b"}, {"path": "/abs/other-base"},
     "Baseline: `other-base` (window 2,048 tokens; not the source recorded in picli.json)"),
])
def test_baseline_label_names_what_was_measured(extended, record_source, baseline, expected):
    directory, plan = extended
    record = {**picli_record(plan), "source": record_source}
    measured = verify_file(verify_report())
    measured["baseline"] = {**measured["baseline"], "path": "/abs/base", "source": None, **baseline}
    text = render_card(directory, record, measured, None, "org/m", False)
    assert expected in text
    assert ("the model before interpolation" in text) == expected.startswith("Baseline: the model before")
    assert "/abs/base" not in text and "/abs/other" not in text and "/models/" not in text and "/cache/" not in text


def test_fine_tune_record_replaces_the_warning(extended):
    directory, plan = extended
    # finetune.py's record, as it lands in picli.json
    finetune = {"data": "/data/pg19.jsonl", "text_field": "text", "steps": 200, "planned_steps": 1000,
                "tokens": 3276800, "seq_len": 8192, "batch_size": 2, "micro_batch_size": 1, "processes": 1,
                "lr": 2e-5, "warmup_steps": 20, "optimizer": "AdamW(0.9, 0.95), weight decay 0", "lora": None,
                "final_loss": 2.1234, "eval_loss": 2.2, "eval_history": [{"step": 100, "eval_loss": 2.3}],
                "stopped_when_verified_at": 200, "wall_seconds": 600.0, "seed": 0,
                "hardware": {"device": "cuda", "name": "NVIDIA H100", "processes": 1, "cpu_threads": 16},
                "finished": "2025-01-03T00:00:00+00:00"}
    text = render_card(directory, picli_record(plan, finetune=finetune), verify_file(verify_report()), None, "org/m",
                       False)
    assert "Not fine-tuned" not in text and "### Fine-tune" in text
    assert "| steps | 200 of 1000 planned |" in text and "| data | pg19.jsonl |" in text and "/data/" not in text
    assert "| weights trained | all (full fine-tune) |" in text and "| learning rate | 2e-05 |" in text
    assert ("| stopped early at step | 200 (passkey retrieved at every depth tested by the quick protocol, "
            "4 depths x 2 keys) |") in text and "target window" not in text
    assert "| LR after warmup | constant: picli's choice (the paper does not say) |" in text
    assert "| gradient clipping | none: picli's choice (the paper does not say) |" in text
    assert "| hardware | 1 x NVIDIA H100 |" in text and "fine-tuned at the new window" in text
    lora = render_card(directory, picli_record(plan, finetune={**finetune, "lora": {"rank": 8, "alpha": 16,
                                                                                     "merged": True}}),
                       None, None, "org/m", False)
    assert "| weights trained | LoRA rank 8, alpha 16, merged into the weights |" in lora
    # the verification was recorded before the fine-tune: the card says it measured the old weights
    assert "predates the fine-tune" in text


def test_without_a_base_model_there_is_no_relation(extended):
    directory, plan = extended
    text = render_card(directory, picli_record(plan, base_model=None), None, None, None, False)
    data = ModelCard(text).data.to_dict()
    assert "base_model" not in data and "base_model_relation" not in data
    assert "`x`" in text and "/home/someone" not in text  # the local source by name only


def test_runtime_snippets_use_the_target_window(extended):
    directory, plan = extended
    text = render_card(directory, picli_record(plan), None, None, "org/llama-7b-8k", False)
    # vLLM would multiply max_position_embeddings (8192) by 4 on its own.
    assert "vllm serve org/llama-7b-8k --max-model-len 8192" in text and "32,768" in text
    assert "llama-cli -m model.gguf -c 8192 --rope-scaling linear --rope-scale 4" in text
    assert "--max-input-tokens 8191 --max-total-tokens 8192" in text and "ROPE_FACTOR=4" in text
    assert 'AutoModelForCausalLM.from_pretrained("org/llama-7b-8k"' in text
    assert "needs >= 4.31.0 for `llama`" in text
    assert "No extrapolation past 8,192 tokens" in text and "RULER" in text


def test_min_transformers_follows_the_family(tmp_path):
    plan = rope.plan_config(copy.deepcopy(FAMILY_CONFIGS["mistral"]), 65536)
    directory = write_checkpoint(tmp_path / "mistral-64k", plan.config)
    text = render_card(directory, picli_record(plan), None, None, "org/m", False)
    assert "needs >= 4.48.0 for `mistral`" in text


def test_user_readme_is_kept_and_a_refresh_replaces_only_picli_section(extended):
    directory, plan = extended
    user = ("---\nlicense: mit\nlanguage: en\ntags:\n- my-tag\nbase_model: meta/grandparent\n---\n"
            "# My model\n\nWritten by me.\n")
    first = render_card(directory, picli_record(plan), None, user, "org/m", False)
    data = ModelCard(first).data.to_dict()
    assert data["license"] == "mit" and data["language"] == "en"
    assert data["tags"][0] == "my-tag" and set(TAGS) <= set(data["tags"])
    # A README copied from the source names the source's own parent: picli.json knows better.
    assert data["base_model"] == BASE
    assert first.index("Written by me.") < first.index(BEGIN) < first.index(END)

    edited = first.replace(END, END + "\n\nA note I added below picli's section.\n")
    second = render_card(directory, picli_record(plan), verify_file(verify_report()), edited, "org/m", False)
    assert second.count(BEGIN) == 1 and second.count(END) == 1
    assert "Written by me." in second and "A note I added below picli's section." in second
    assert "**Not verified.**" in first and "**Not verified.**" not in second and "6,114" in second
    # Refreshing with the same records gives the same text: `picli card` twice is stable.
    assert render_card(directory, picli_record(plan), verify_file(verify_report()), second, "org/m", False) == second


def test_invalid_front_matter_is_a_clear_error(extended):
    directory, plan = extended
    with pytest.raises(CardError, match="not valid YAML"):
        render_card(directory, picli_record(plan), None, "---\nlicense: [mit\n---\nbody\n", "org/m", False)


def test_card_command_writes_refreshes_and_previews(extended):
    directory, plan = extended
    (directory / "picli.json").write_text(json.dumps(picli_record(plan)))
    (directory / "README.md").write_text("# notes of mine\n")
    preview = run("card", str(directory), "--repo", "org/m", "--dry-run")
    assert preview.exit_code == 0, preview.output
    assert (directory / "README.md").read_text() == "# notes of mine\n" and BEGIN in preview.stdout
    result = run("card", str(directory), "--repo", "org/m", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["action"] == "append" and payload["written"]
    written = (directory / "README.md").read_text()
    assert written == payload["card"] and written.startswith("---\n") and "# notes of mine" in written
    again = json.loads(run("card", str(directory), "--repo", "org/m", "--json").stdout)
    assert again["action"] == "refresh" and (directory / "README.md").read_text() == written


def test_card_without_picli_json_says_it_has_no_provenance(extended):
    directory, _ = extended
    result = run("card", str(directory), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "no provenance" in result.stdout and "no picli.json" in result.stderr


def two_runs() -> dict:
    """picli-verify.json after two runs: the first measured passkey and perplexity at 4k and 8k
    beside the baseline, the second (newer) only passkey at 8k, with the quick protocol."""
    from picli.passkey import QUICK, PasskeyReport, Protocol
    from picli.verify import ModelRun, VerifyReport
    from tests.helpers import length_result

    first = verify_file(verify_report())
    quick = Protocol(*QUICK).describe()
    newer = ModelRun(model="model", path="/abs/m", window=8192, perplexity=None,
                     passkey=PasskeyReport(quick, 8192, [length_result(8192, [1.0, 1.0, 1.0, 1.0])]).to_dict())
    second = {**verify_file(VerifyReport(model=newer, baseline=None, passkey_lengths=[8192], perplexity_lengths=[],
                                         settings={})),
              "created": "2025-03-04T00:00:00+00:00", "command": "picli verify --passkey --quick --length 8192"}
    return {"format": 2, "runs": [second, first]}


def test_card_shows_the_newest_measurement_per_protocol_and_length(extended):
    directory, plan = extended
    history = two_runs()
    from_file = render_card(directory, picli_record(plan), history, None, "org/m", False)
    from_summary = render_card(directory, picli_record(plan, verification=summarise_runs(history["runs"])),
                               None, None, "org/m", False)
    assert from_file == from_summary
    body = ModelCard(from_file).text
    # passkey at 8k: the newer quick run (no baseline beside it); at 4k the first run, dated so
    assert "| 8,192 | 8,152 | 8,152 | 100% | 100% | - | - | 2025-03-04 |" in body
    assert "| 4,096 | 4,056 | 4,056 | 100% | 100% | 1,014 | 25% | 2025-01-02 |" in body
    # the first run's perplexity and baseline did not vanish
    assert "| 8,192 | 6.877 | 812.250 | -805.373 | 2025-01-02 |" in body
    assert "newest `picli verify` measurement at that length" in body
    # the text above the table describes the newest row; the older row's protocol is named
    assert "4 key depths x 2 random 5-digit keys (seed 0); the *quick* smoke test" in body
    assert "Rows measured with other settings: 4,096 tokens (2025-01-02): 32 key depths x 10" in body
    assert "Baseline" in body and "/abs/base" not in body


def test_a_single_run_file_is_read_as_one_run():
    from picli import provenance

    old = verify_file(verify_report())
    assert provenance.verify_runs(old) == [old]
    shown = provenance.shown_summary([old])
    assert {key: shown[key] for key in ("model", "baseline")} == {key: summarise(old)[key] for key in ("model", "baseline")}
    assert shown["measured"]["passkey"]["8192"]["created"] == "2025-01-02T00:00:00+00:00"
    assert shown["measured"]["perplexity"]["4096"]["settings"]["stride"] == 256
