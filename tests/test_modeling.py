"""modeling.py's pure formulas: the KV-cache size every command quotes, checked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from picli.modeling import kv_bytes_per_token, kv_cache_bytes
from tests.helpers import FAMILY_CONFIGS

# Mistral-Nemo's shape: GQA (8 of 32 heads keep keys and values) and a head_dim of 128 that is
# not hidden_size / heads (160), so a formula that ignores either gets a different number.
NEMO = {"num_hidden_layers": 40, "hidden_size": 5120, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128}
# Phi-2's shape: no head_dim key (2560 / 32 = 80), every head keeps K and V, and only 40% of
# each head is rotated, which must not shrink the cache: keys are stored whole.
PHI2 = {"num_hidden_layers": 32, "hidden_size": 2560, "num_attention_heads": 32, "partial_rotary_factor": 0.4}


def test_kv_cache_of_a_gqa_config_with_its_own_head_dim():
    # 40 layers x 8 kv heads x 128 dims x (k, v) x 2 bytes = 160 KiB per token; 128k tokens = 20 GiB.
    assert kv_cache_bytes(NEMO, 1) == 40 * 8 * 128 * 2 * 2 == 163_840
    assert kv_cache_bytes(NEMO, 131_072) == 20 * 2 ** 30


def test_kv_cache_without_head_dim_under_partial_rotary():
    # 32 layers x 32 heads x 80 dims x (k, v) x 2 bytes = 320 KiB per token; 2048 tokens = 640 MiB.
    assert kv_cache_bytes(PHI2, 2048) == 640 * 2 ** 20
    assert kv_cache_bytes(PHI2, 2048, bytes_per_value=4) == 1280 * 2 ** 20


def test_kv_cache_counts_sliding_layers_at_their_window():
    config = FAMILY_CONFIGS["gemma3_text"]
    # 2 layers x 2 kv heads x 16 dims x 2 (k, v) x 2 bytes; the sliding layer holds 16 positions.
    assert kv_cache_bytes(config, 1024) == 2 * 2 * 16 * 2 * (1024 + 16)


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float32", 4)])
def test_memory_checks_use_the_same_formula(dtype, size):
    """The per-token rate of a loaded model's config (nested text_config as in multimodal
    classes) is the formula's, at the dtype's element size."""
    import torch

    config = SimpleNamespace(text_config=SimpleNamespace(**NEMO))
    assert kv_bytes_per_token(config, getattr(torch, dtype)) == 40 * 8 * 128 * 2 * size
    assert kv_bytes_per_token(SimpleNamespace(**PHI2, head_dim=None), getattr(torch, dtype)) == 32 * 32 * 80 * 2 * size
