"""Every RoPE type diagnosed per runtime (issue 9), `inspect --check`, one window for every
command, and an existing linear factor composed or refused.

The configs are the RoPE parts of public checkpoints as their config.json files ship them
(Llama-3.1's llama3 block, Qwen2.5's YaRN block from its model card, Phi-3-mini-128k's
longrope with per-dimension factor lists and a top-level original window, Qwen2-VL's M-RoPE
sections) on a tiny llama-shaped body. The transformers rules are held against the
installed transformers 5; the vLLM and llama.cpp rules are the ones docs/runtimes.md cites.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from picli import rope
from picli.errors import CannotExtend
from tests.helpers import assert_clean_error, run, write_checkpoint

BODY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128}


def llama(**keys) -> dict:
    return {"model_type": "llama", **BODY, **keys}


CONFIGS = {
    # meta-llama/Llama-3.1-8B
    "llama3": llama(max_position_embeddings=131072, rope_theta=500000.0,
                    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    # Qwen/Qwen2.5-7B-Instruct, with the YaRN block its model card tells users to add
    "yarn": {**llama(max_position_embeddings=32768, rope_theta=1000000.0,
                     rope_scaling={"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}),
             "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
    "yarn_no_original": llama(max_position_embeddings=4096, rope_scaling={"type": "yarn", "factor": 4.0}),
    "yarn_attention_factor": llama(max_position_embeddings=16384, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "attention_factor": 1.5}),
    "yarn_mscale": llama(max_position_embeddings=16384, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "mscale": 0.707,
        "mscale_all_dim": 1.0}),
    "yarn_untruncated": llama(max_position_embeddings=16384, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "truncate": False}),
    "dynamic": llama(max_position_embeddings=4096, rope_scaling={"type": "dynamic", "factor": 2.0}),
    # microsoft/Phi-3-mini-128k-instruct: head_dim 16 here, so 8 factors per list (48 in the real file)
    "longrope": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], **BODY,
                 "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                 "rope_theta": 10000.0,
                 "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8],
                                  "long_factor": [1.0, 1.2, 1.9, 3.5, 8.0, 16.0, 24.0, 32.0]}},
    "unknown": llama(max_position_embeddings=4096, rope_scaling={"type": "stretch", "factor": 2.0}),
}


def runtimes(name: str) -> dict[str, dict]:
    return rope.predict_all(copy.deepcopy(CONFIGS[name]))


def lines(view: dict) -> str:
    """Everything a runtime's row says: flags, notes, disagreements."""
    return " | ".join([view.get("flags") or view.get("flag") or ""] + (view.get("notes") or [])
                      + (view.get("differs") or []))


# --- the per-runtime rules, table-driven ---------------------------------------------

# name -> (vLLM's max model len, runtimes that disagree with transformers 5, text on a runtime's line)
EXPECTED = {
    "llama3": (131072, set(), {"llama_cpp": "rope_freqs tensor", "vllm": "not multiplied"}),
    "yarn": (131072, set(), {"transformers5": "YaRN ramp at 32768", "llama_cpp": "--yarn-orig-ctx 32768"}),
    "yarn_no_original": (16384, {"vllm", "llama_cpp"},
                         {"transformers5": "fills it with max_position_embeddings",
                          "vllm": "fails", "llama_cpp": "converter fails"}),
    "yarn_attention_factor": (16384, {"vllm", "transformers4"},
                              {"vllm": "ignores attention_factor", "llama_cpp": "yarn_attn_factor",
                               "transformers4": "4.44 builds the YaRN ramp at max_position_embeddings 16384"}),
    "yarn_mscale": (16384, {"vllm", "llama_cpp", "transformers4"},
                    {"vllm": "ignores mscale", "transformers4": "4.44 ignores mscale"}),
    "yarn_untruncated": (16384, {"llama_cpp", "transformers4"}, {"llama_cpp": "truncate: false has no GGUF key"}),
    "dynamic": (8192, {"vllm", "llama_cpp"}, {"vllm": "once at load (static)", "llama_cpp": "no GGUF form"}),
    "longrope": (131072, {"vllm"}, {"vllm": "original_max_position_embeddings 4096",
                                    "llama_cpp": "rope_factors_long",
                                    "transformers5": "short factors (8) up to 4096"}),
    "unknown": (4096, {"transformers5", "transformers4", "vllm", "llama_cpp"},
                {"vllm": "ValueError", "llama_cpp": "writes no scaling"}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_type_per_runtime(name):
    max_model_len, disagreeing, texts = EXPECTED[name]
    views = runtimes(name)
    assert views["vllm"]["derived_max_model_len"] == max_model_len
    assert {runtime for runtime, view in views.items() if view["differs"]} == disagreeing
    for runtime, text in texts.items():
        assert text in lines(views[runtime]), (runtime, lines(views[runtime]))
    check = rope.check(views)
    assert check["ok"] is (not disagreeing)
    assert all(text.split(":")[0] in set(rope.RUNTIME_LABELS.values()) for text in check["disagreements"])


def test_linear_picli_output_agrees_everywhere():
    config = rope.plan_config(llama(max_position_embeddings=2048, rope_theta=10000.0), 8192).config
    views = rope.predict_all(config)
    assert rope.check(views) == {"ok": True, "disagreements": []}
    assert views["vllm"]["derived_max_model_len"] == 32768  # mpe x factor: the flag says 8192
    assert views["vllm"]["flag"] == "--max-model-len 8192"


def test_mrope_sections_explained():
    qwen2_vl = {"model_type": "qwen2_vl", **BODY, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    assert rope.rope_kind(qwen2_vl) == "mrope"
    views = rope.predict_all(qwen2_vl)
    assert "sections [2, 3, 3]" in lines(views["transformers5"])
    assert "rope.dimension_sections" in lines(views["llama_cpp"])
    assert views["vllm"]["derived_max_model_len"] == 32768 and rope.check(views)["ok"]
    # transformers 5's own spelling: type default with the sections
    five = dict(qwen2_vl, rope_scaling=None, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                              "rope_theta": 1000000.0})
    assert rope.rope_kind(five) == "mrope"


def test_su_is_longrope_only_for_phi3():
    phi3 = copy.deepcopy(CONFIGS["longrope"])
    phi3["rope_scaling"]["type"] = "su"
    assert not rope.predict_transformers5(phi3)["differs"]
    assert rope.predict_llama_cpp(phi3)["rope_scaling"] == "longrope"
    other = dict(phi3, model_type="llama")
    assert "only by Phi-3" in lines(rope.predict_transformers5(other))


# --- the transformers rules against the installed transformers 5 ---------------------

def test_transformers5_fills_yarn_original_window_with_max_position_embeddings():
    from transformers import AutoConfig

    loaded = AutoConfig.for_model(**copy.deepcopy(CONFIGS["yarn_no_original"]))
    assert loaded.rope_parameters["original_max_position_embeddings"] == 4096


@pytest.mark.parametrize("name", ["yarn", "yarn_attention_factor", "yarn_mscale"])
def test_yarn_attention_factor_matches_transformers(name):
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = copy.deepcopy(CONFIGS[name])
    _, attention = ROPE_INIT_FUNCTIONS["yarn"](AutoConfig.for_model(**config), "cpu")
    predicted, _ = rope.configured_yarn_attention(config["rope_scaling"], config["rope_scaling"]["factor"])
    assert predicted == pytest.approx(attention, rel=1e-12)
    if name == "yarn":
        assert predicted == pytest.approx(0.1 * math.log(4.0) + 1.0)  # what vLLM always uses


def test_transformers5_reads_phi3_original_window_from_the_top_level():
    from transformers import AutoConfig

    loaded = AutoConfig.for_model(**copy.deepcopy(CONFIGS["longrope"]))
    assert loaded.rope_parameters["original_max_position_embeddings"] == 4096
    assert "up to 4096 tokens" in lines(rope.predict_transformers5(CONFIGS["longrope"]))


# --- inspect and --check through the CLI ---------------------------------------------

def test_inspect_check_exit_codes(tmp_path):
    consistent = write_checkpoint(tmp_path / "l31", CONFIGS["llama3"])
    result = run("inspect", str(consistent), "--check")
    assert result.exit_code == 0, result.stderr
    assert "every runtime reads" in result.stderr and "rope_freqs" in result.stdout

    disagreeing = write_checkpoint(tmp_path / "ntk", CONFIGS["dynamic"])
    result = run("inspect", str(disagreeing), "--check")
    assert result.exit_code == 1
    assert "check failed" in result.stderr and "vLLM: computes dynamic NTK once" in result.stderr
    assert "differs:" in result.stdout  # on the runtime's own line too

    result = run("inspect", str(disagreeing), "--check", "--json")
    assert result.exit_code == 1
    check = json.loads(result.stdout)["check"]
    assert check["ok"] is False and any(text.startswith("llama.cpp: dynamic NTK has no GGUF form")
                                        for text in check["disagreements"])
    # without --check the same report exits 0: inspect reports, --check decides
    assert run("inspect", str(disagreeing)).exit_code == 0


def test_inspect_check_fails_on_schema_disagreement(tmp_path):
    config = llama(max_position_embeddings=4096, rope_theta=10000.0,
                   rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                   rope_scaling={"type": "linear", "factor": 2.0})
    result = run("inspect", str(write_checkpoint(tmp_path / "m", config)), "--check", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["check"]["disagreements"][0].startswith("config.json: rope_scaling and")


def test_inspect_reads_each_type(tmp_path):
    report = json.loads(run("inspect", str(write_checkpoint(tmp_path / "q", CONFIGS["yarn"])),
                            "--json").stdout)
    assert report["rope"]["type"] == "yarn" and report["rope"]["effective_window"] == 131072
    assert report["can_extend"] is False
    unknown = json.loads(run("inspect", str(write_checkpoint(tmp_path / "u", CONFIGS["unknown"])),
                             "--json").stdout)
    assert "unknown RoPE scaling type 'stretch'" in unknown["cannot_extend_reason"]


def test_inspect_gguf_yarn_and_rope_tensors(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "yarn.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(131072)
    writer.add_rope_freq_base(1000000.0)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(4.0)
    writer.add_rope_scaling_orig_ctx_len(32768)
    writer.add_tensor("token_embd.weight", np.zeros((4, 6), dtype=np.float32))
    writer.add_tensor("rope_freqs.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run("inspect", str(path), "--check", "--json")
    report = json.loads(result.stdout)
    assert report["rope"]["type"] == "yarn" and report["rope"]["original_context_length"] == 32768
    assert report["rope"]["rope_tensors"] == ["rope_freqs.weight"]
    llama_cpp = report["runtimes"]["llama_cpp"]
    assert "YaRN x4 from 32768 tokens" in lines(llama_cpp) and "rope_freqs tensor" in lines(llama_cpp)
    assert result.exit_code == 1  # transformers' GGUF loader ignores all of it
    assert "ignores rope.scaling" in report["check"]["disagreements"][0]


# --- an existing linear factor --------------------------------------------------------

def test_linear_factor_composes_from_original_window():
    config = llama(max_position_embeddings=4096, rope_theta=10000.0,
                   rope_scaling={"type": "linear", "factor": 2.0, "original_max_position_embeddings": 2048})
    plan = rope.plan_config(config, 16384)
    assert plan.current_window == 4096 and plan.factor == 8.0 and plan.original_window == 2048
    # max_position_embeddings written the vLLM way (the pretraining value): the original window decides
    config["max_position_embeddings"] = 2048
    assert rope.plan_config(config, 16384).factor == 8.0
    top_level = llama(max_position_embeddings=2048, original_max_position_embeddings=2048, rope_theta=10000.0,
                      rope_scaling={"type": "linear", "factor": 2.0})
    assert rope.plan_config(top_level, 16384).factor == 8.0


def test_ambiguous_linear_factor_asks_for_from_with_both_readings(tmp_path, workdir):
    config = llama(max_position_embeddings=4096, rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(CannotExtend, match="ambiguous") as caught:
        rope.plan_config(config, 16384)
    assert "--from 4096" in caught.value.hint and "--from 8192" in caught.value.hint
    assert rope.plan_config(config, 16384, from_window=4096).factor == 8.0  # 4096 as written
    assert rope.plan_config(config, 16384, from_window=8192).factor == 4.0  # 4096 x 2
    source = write_checkpoint(tmp_path / "ambiguous", config)
    result = run("extend", str(source), "--to", "16384", "-o", "out")
    assert_clean_error(result, "ambiguous")
    assert "--from 8192" in result.stderr
    assert not (workdir / "out").exists()


# --- one window for every command ------------------------------------------------------

def test_original_mode_window_reaches_verify_and_finetune(tiny_model_dir, workdir):
    from picli.checkpoint import effective_window

    result = run("extend", str(tiny_model_dir), "--to", "1024", "-o", "ext",
                 "--max-position-embeddings", "original")
    assert result.exit_code == 0, result.stderr
    extended = workdir / "ext"
    assert json.loads((extended / "config.json").read_text())["max_position_embeddings"] == 512
    assert effective_window(extended) == 1024

    inspected = json.loads(run("inspect", str(extended), "--json").stdout)
    assert inspected["rope"]["effective_window"] == 1024

    plan = run("finetune", str(extended), "--plan", "--cpu", "--json")
    assert plan.exit_code == 0, plan.stderr
    assert json.loads(plan.stdout)["seq_len"] == 1024  # not the config's 512

    verified = run("verify", str(extended), "--passkey", "--quick", "--device", "cpu", "--json",
                   "--no-save")
    assert verified.exit_code == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["passkey_lengths"] == [1024] and report["model"]["window"] == 1024
    assert report["model"]["passkey"]["results"][0]["beyond_window"] is False
    assert report["notes"] == []  # 1024 is not "beyond the trained window"
