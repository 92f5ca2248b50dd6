"""`picli inspect`: the report, from config files and headers only."""

from __future__ import annotations

import json

from tests.helpers import FAMILY_CONFIGS, REFUSED_CONFIGS, make_gguf, run, write_checkpoint


def inspect_json(path) -> dict:
    result = run("inspect", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_inspect_llama(family_checkpoints):
    report = inspect_json(family_checkpoints["llama_v4"])
    assert report["model_type"] == "llama" and report["architecture"] == "LlamaForCausalLM"
    assert report["parameters"] == 16 * 8 * 2  # the two tensors of the fixture's safetensors file
    assert report["dtypes"] == {"F32": 1, "F16": 1}
    assert report["rope"]["window"] == 2048 and report["rope"]["theta"] == 10000.0
    assert report["rope"]["type"] == "default" and report["can_extend"] is True
    assert report["tokenizer_max_length"] == 2048
    # 2 layers x 2 kv heads x head_dim 16 x (k, v) x 2 bytes per position.
    assert report["kv_cache_bytes"]["2048"] == 2 * 2 * 16 * 2 * 2 * 2048
    assert report["kv_cache_bytes"]["16384"] == 8 * report["kv_cache_bytes"]["2048"]
    assert report["runtimes"]["vllm"]["derived_max_model_len"] == 2048


def test_inspect_extended_output_predicts_runtimes(family_checkpoints, workdir):
    assert run("extend", str(family_checkpoints["llama_v5"]), "--to", "16k", "-o", "out").exit_code == 0
    report = inspect_json(workdir / "out")
    assert report["rope"]["type"] == "linear" and report["rope"]["factor"] == 4.0
    runtimes = report["runtimes"]
    assert runtimes["transformers5"]["theta"] == 500000.0 and runtimes["transformers5"]["factor"] == 4.0
    assert runtimes["transformers4"]["theta"] == 500000.0 and runtimes["transformers4"]["rope_type"] == "linear"
    assert runtimes["vllm"]["derived_max_model_len"] == 65536  # vLLM multiplies by the factor ...
    assert runtimes["vllm"]["flag"] == "--max-model-len 16384"  # ... so picli says what to pass
    assert runtimes["llama_cpp"]["context_length"] == 16384 and runtimes["llama_cpp"]["factor"] == 4.0
    assert report["provenance"]["rope"]["target_window"] == 16384


def test_inspect_flags_disagreement(tmp_path):
    config = dict(FAMILY_CONFIGS["llama_v5"], rope_scaling={"type": "linear", "factor": 2.0})
    report = inspect_json(write_checkpoint(tmp_path / "stale", config))
    assert "disagree" in report["rope"]["disagreement"]
    assert report["runtimes"]["transformers4"]["theta"] == 10000.0


def test_inspect_partial_rotary_and_nested(family_checkpoints):
    neox = inspect_json(family_checkpoints["gpt_neox"])
    assert neox["rope"]["rotary_dim"] == 4 and neox["rope"]["partial_rotary_factor"] == 0.25
    gemma = inspect_json(family_checkpoints["gemma3_text"])
    assert gemma["rope"]["nested"] is True and gemma["rope"]["local_theta"] == 10000.0


def test_inspect_says_why_not(tmp_path):
    config, reason = REFUSED_CONFIGS["gpt2"]
    report = inspect_json(write_checkpoint(tmp_path / "gpt2", config))
    assert report["can_extend"] is False and reason in report["cannot_extend_reason"]
    config, _ = REFUSED_CONFIGS["llama3_scaled"]
    report = inspect_json(write_checkpoint(tmp_path / "l31", config))
    assert report["can_extend"] is False and "llama3" in report["cannot_extend_reason"]


def test_inspect_table_output(family_checkpoints):
    result = run("inspect", str(family_checkpoints["mistral"]))
    assert result.exit_code == 0
    for text in ("RoPE", "32768 tokens", "transformers 4.x", "vLLM", "llama.cpp"):
        assert text in result.stdout
    assert result.stderr == ""


def test_inspect_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    make_gguf(path)
    report = inspect_json(path)
    assert report["format"] == "gguf" and report["architecture"] == "llama"
    assert report["rope"]["window"] == 2048 and report["rope"]["theta"] == 10000.0
    assert report["parameters"] == 4 * 6 + 7 + 3 * 5
    assert report["runtimes"]["llama_cpp"]["context_length"] == 2048


def test_inspect_gguf_kv_cache_from_its_attention_metadata(tmp_path):
    """GGUF has no config.json: the KV table comes from block_count, head_count_kv and key_length."""
    import gguf
    import numpy as np

    path = tmp_path / "gqa.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(1024)
    writer.add_rope_freq_base(10000.0)
    writer.add_block_count(3)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_key_length(32)  # not 64 / 4: the metadata's head size wins
    writer.add_tensor("token_embd.weight", np.zeros((4, 6), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    kv = inspect_json(path)["kv_cache_bytes"]
    # 3 layers x 2 kv heads x 32 dims x (k, v) x 2 bytes per position.
    assert kv == {str(1024 * m): 3 * 2 * 32 * 2 * 2 * 1024 * m for m in (1, 2, 4, 8)}


def test_inspect_original_mode_uses_recorded_window(family_checkpoints, workdir):
    result = run("extend", str(family_checkpoints["llama_v4"]), "--to", "8192", "-o", "orig",
                 "--max-position-embeddings", "original")
    assert result.exit_code == 0, result.stderr
    runtimes = inspect_json(workdir / "orig")["runtimes"]
    assert runtimes["vllm"]["derived_max_model_len"] == 8192  # 2048 x 4: right for vLLM
    assert runtimes["vllm"]["over_claims"] is False and runtimes["vllm"]["flag"] == "--max-model-len 8192"
    assert runtimes["llama_cpp"]["flags"].startswith("-c 8192 ")
