"""The KV cache layer by layer: global layers grow with the sequence, sliding ones stop at their
window, chunked ones at their chunk, layers without attention hold none. Expected bytes are
computed by hand from the official config.json files (tests/data/official) and from the
layer patterns transformers' config classes derive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picli.errors import NotACheckpoint
from picli.kv_cache import kv_cache_bytes, layer_pattern
from tests.helpers import run

OFFICIAL = Path(__file__).parent / "data" / "official"


def official(name: str) -> dict:
    return json.loads((OFFICIAL / f"{name}.json").read_text())


def counts(config: dict) -> tuple[int, int, int, int]:
    summary = layer_pattern(config).summary()
    return summary["global"], summary["sliding"], summary["chunked"], summary["none"]


# K and V x kv heads x head_dim x 2 bytes: one position of one layer.
GEMMA3_27B_POSITION = 2 * 16 * 128 * 2  # 8 KiB
GPT_OSS_POSITION = 2 * 8 * 64 * 2  # 2 KiB


def test_gemma3_27b_official_config():
    """62 layers, every 6th global (the class default: the Hub file does not say), window 1024.
    At 128k: 10 layers x 131072 + 52 layers x 1024 positions, not 62 x 131072 (66.6 GB)."""
    config = official("gemma-3-27b-it")
    assert counts(config) == (10, 52, 0, 0)
    assert [i for i, kind in enumerate(layer_pattern(config).kinds) if kind == "global"] == list(range(5, 62, 6))
    expected = (10 * 131072 + 52 * 1024) * GEMMA3_27B_POSITION
    assert kv_cache_bytes(config, 131072) == expected == 11_173_625_856
    # Below the window every layer holds every position.
    assert kv_cache_bytes(config, 512) == 62 * 512 * GEMMA3_27B_POSITION


def test_gemma3_pattern_as_written_by_older_and_newer_transformers():
    text = official("gemma-3-27b-it")["text_config"]
    for key in ("sliding_window_pattern", "_sliding_window_pattern"):  # the Hub files / 4.5x's save_pretrained
        assert counts({**text, key: 2}) == (31, 31, 0, 0)
    layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 60
    assert counts({**text, "layer_types": layer_types, "sliding_window_pattern": 6}) == (2, 60, 0, 0)


def test_gpt_oss_official_config():
    """24 layers alternating sliding (window 128) and global, from layer_types or, without it,
    from the class's own derivation: the same bytes."""
    config = official("gpt-oss-20b")
    expected = (12 * 131072 + 12 * 128) * GPT_OSS_POSITION
    assert kv_cache_bytes(config, 131072) == expected == 3_224_371_200
    bare = {key: value for key, value in config.items() if key not in ("layer_types", "sliding_window")}
    assert layer_pattern(bare).kinds == layer_pattern(config).kinds
    assert kv_cache_bytes(bare, 131072) == expected  # the class default window is 128 too


QWEN = {"model_type": "qwen2", "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "sliding_window": 32, "max_window_layers": 2}
POSITION = 2 * 2 * 16 * 2


@pytest.mark.parametrize("config,expected", [
    # Qwen2.5's files say sliding_window but use_sliding_window false: every layer global.
    ({**QWEN, "use_sliding_window": False}, (4, 0, 0, 0)),
    ({**QWEN}, (4, 0, 0, 0)),  # the class default is false too
    # With it, layers from max_window_layers on slide.
    ({**QWEN, "use_sliding_window": True}, (2, 2, 0, 0)),
    # Mistral v0.1: one window for every layer; v0.2 on: none.
    ({**QWEN, "model_type": "mistral"}, (0, 4, 0, 0)),
    ({**QWEN, "model_type": "mistral", "sliding_window": None}, (4, 0, 0, 0)),
    # Llama 4: every 4th layer global without RoPE, the rest chunked (attention_chunk_size).
    ({**QWEN, "model_type": "llama4_text", "attention_chunk_size": 32}, (1, 0, 3, 0)),
    ({**QWEN, "model_type": "llama4_text", "attention_chunk_size": 32, "no_rope_layers": [1, 0, 1, 0]},
     (2, 0, 2, 0)),
    # Qwen3-Next: every full_attention_interval-th layer attends, the rest are linear attention.
    ({**QWEN, "model_type": "qwen3_next", "full_attention_interval": 2}, (2, 0, 0, 2)),
    ({**QWEN, "model_type": "qwen3_next"}, (1, 0, 0, 3)),
    # Hybrid Mamba models, however they list their layers.
    ({**QWEN, "layer_types": ["mamba", "attention", "mamba", "mamba"]}, (1, 0, 0, 3)),
    ({**QWEN, "layers_block_type": ["mamba", "attention", "mamba", "mamba"]}, (1, 0, 0, 3)),
    ({**QWEN, "model_type": "jamba", "attn_layer_period": 2, "attn_layer_offset": 1}, (2, 0, 0, 2)),
    ({**QWEN, "model_type": "bamba", "attn_layer_indices": [3]}, (1, 0, 0, 3)),
    ({**QWEN, "model_type": "nemotron_h", "hybrid_override_pattern": "M*M-"}, (1, 0, 0, 3)),
], ids=["qwen2 off", "qwen2 default", "qwen2 on", "mistral v0.1", "mistral v0.2", "llama4 default",
        "llama4 no_rope_layers", "qwen3_next", "qwen3_next default", "layer_types mamba", "layers_block_type",
        "jamba", "bamba", "nemotron_h"])
def test_layer_patterns(config, expected):
    assert counts(config) == expected
    global_, sliding, chunked, _ = expected
    assert kv_cache_bytes(config, 1024) == (global_ * 1024 + (sliding + chunked) * 32) * POSITION


def test_llama4_default_chunk():
    """The class default chunk, 8192, when attention_chunk_size is not written."""
    config = {**QWEN, "model_type": "llama4_text"}
    assert kv_cache_bytes(config, 65536) == (1 * 65536 + 3 * 8192) * POSITION


def test_layer_types_that_do_not_match_the_layers_are_refused():
    with pytest.raises(NotACheckpoint, match="layer_types lists 3 layers but num_hidden_layers is 4"):
        layer_pattern({**QWEN, "layer_types": ["full_attention"] * 3})


def test_inspect_says_which_layers_grow(tmp_path):
    """The official Gemma 3 27B config.json alone: the table's bytes and the layers line."""
    (tmp_path / "config.json").write_text((OFFICIAL / "gemma-3-27b-it.json").read_text())
    result = run("inspect", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kv_cache_bytes"]["131072"] == 11_173_625_856
    assert report["kv_layers"]["global"] == 10 and report["kv_layers"]["sliding"] == 52
    text = run("inspect", str(tmp_path), terminal_width=200)
    assert text.exit_code == 0, text.stderr
    assert "128k: 11.2 GB" in text.stdout
    assert "10 global, 52 sliding (window 1024)" in text.stdout


def test_gguf_with_sliding_layers_says_its_estimate_is_an_upper_bound(tmp_path):
    """llama.cpp fixes which layers slide in its code per architecture: picli counts every layer
    and says so rather than claim they are all global."""
    from tests.helpers import make_gguf

    shape = {"llama.block_count": ("add_uint32", 2), "llama.embedding_length": ("add_uint32", 64),
             "llama.attention.head_count": ("add_uint32", 4), "llama.attention.head_count_kv": ("add_uint32", 2)}
    make_gguf(tmp_path / "plain.gguf", kv=shape)
    make_gguf(tmp_path / "swa.gguf", kv={**shape, "llama.attention.sliding_window": ("add_uint32", 16)})
    plain, swa = (json.loads(run("inspect", str(tmp_path / name), "--json").stdout)
                  for name in ("plain.gguf", "swa.gguf"))
    # 2 layers x 2 kv heads x 16 dims x (k, v) x 2 bytes x 2048 positions, in both.
    assert plain["kv_cache_bytes"]["2048"] == swa["kv_cache_bytes"]["2048"] == 2 * 2 * 16 * 2 * 2 * 2048
    assert plain["kv_layers"]["source"] == "every layer global"
    assert "upper bound" in swa["kv_layers"]["source"]
