"""The real model: SmolLM2-135M-Instruct (the embedded default), extended and checked for
what PI means — the extended model at position m computes exactly what the source model
computes at position m / factor."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import run, tree_hash

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extended(smollm2, tmp_path_factory):
    output = tmp_path_factory.mktemp("smol") / "smollm2-135m-16k"
    before = tree_hash(smollm2)
    result = run("extend", "smollm2-135m", "--to", "16384", "-o", str(output), "--json")
    assert result.exit_code == 0, result.stderr
    assert tree_hash(smollm2) == before  # the source files are byte-identical afterwards
    return output


def test_embedded_model_is_a_dual_schema_checkpoint(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["rope_theta"] == 100000.0 and config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["max_position_embeddings"] == 8192
    assert json.loads((smollm2 / "tokenizer_config.json").read_text())["model_max_length"] == 8192


def test_inspect_embedded(smollm2):
    result = run("inspect", "smollm2-135m", "--json")
    report = json.loads(result.stdout)
    assert report["parameters"] == 134_515_008 and report["rope"]["theta"] == 100000.0
    assert report["rope"]["head_dim"] == 64 and report["rope"]["window"] == 8192


def test_extended_logits_equal_source_at_divided_positions(smollm2, extended):
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    target = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32).eval()
    assert target.config.rope_parameters["factor"] == 2.0
    tokens = torch.randint(100, 40000, (1, 48), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(tokens.shape[1]).unsqueeze(0)
    with torch.no_grad():
        extended_logits = target(tokens, position_ids=positions).logits
        source_at_half = source(tokens, position_ids=positions.float() / 2.0).logits
        source_plain = source(tokens, position_ids=positions).logits
    torch.testing.assert_close(extended_logits, source_at_half, rtol=1e-4, atol=1e-4)
    # ... and PI really changed something: at integer positions the two models differ.
    assert (extended_logits - source_plain).abs().max() > 1e-2
