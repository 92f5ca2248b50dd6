"""`picli extend --method linear|yarn|ntk`: each method against transformers' own computation
(every family picli extends), picli's formulas against plain references written here, the
stacking rules, the GGUF path, picli.json, the card and fine-tuning keeping the method."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from picli import rope
from picli.errors import CannotExtend
from picli.gguf_io import read_gguf
from tests.helpers import (FAMILY_CONFIGS, TINY, assert_clean_error, family_rotary, make_gguf, run, tree_hash,
                           write_checkpoint)

# Every family fixture without a scaling of its own.
UNSCALED = sorted(name for name, config in FAMILY_CONFIGS.items() if not config.get("rope_scaling"))


def rotary_truth(checkpoint_dir) -> dict[str, tuple[torch.Tensor, float]]:
    """The family's own rotary embedding class, built by transformers from the written config:
    {layer type: (inverse frequencies, attention_scaling)}, what the model multiplies into cos/sin."""
    rotary = family_rotary(checkpoint_dir)
    found = {}
    for buffer_name, buffer in rotary.named_buffers():
        if not buffer_name.endswith("inv_freq") or "original" in buffer_name:
            continue
        layer = buffer_name.removesuffix("inv_freq").removesuffix("_")
        attention = getattr(rotary, f"{layer}_attention_scaling" if layer else "attention_scaling")
        found[layer or "all"] = (buffer.to(torch.float64), float(attention))
    return found


# ---------------------------------------------------------------------------------------
# picli's formulas against references written out here from the papers.


def plain(theta, dim):
    return [theta ** (-2 * j / dim) for j in range(dim // 2)]


def test_yarn_formula_matches_the_paper_by_hand():
    theta, dim, factor, window = 10000.0, 64, 8.0, 2048
    # d(r) = D ln(L / (2 pi r)) / (2 ln theta): the index whose wavelength fits r times into L.
    d_fast = dim * math.log(window / (32 * 2 * math.pi)) / (2 * math.log(theta))
    d_slow = dim * math.log(window / (1 * 2 * math.pi)) / (2 * math.log(theta))
    low, high = math.floor(d_fast), math.ceil(d_slow)
    assert (low, high) == (8, 21)
    got = rope.yarn_inverse_frequencies(theta, dim, factor, window)
    base = plain(theta, dim)
    for j in range(dim // 2):
        interpolated_share = min(max((j - low) / (high - low), 0.0), 1.0)
        expected = base[j] * (1 - interpolated_share) + base[j] / factor * interpolated_share
        assert got[j] == pytest.approx(expected, rel=1e-12)
    assert got[0] == base[0] and got[low] == base[low]  # fast dimensions: kept
    assert got[-1] == pytest.approx(base[-1] / factor)  # slow dimensions: interpolated like PI
    assert rope.yarn_attention_factor(factor) == pytest.approx(0.1 * math.log(8) + 1)
    assert rope.yarn_attention_factor(1.0) == 1.0


def test_ntk_theta_interpolates_the_lowest_frequency_by_s():
    theta, dim, scale = 10000.0, 64, 4.0
    new_theta = rope.ntk_theta(theta, scale, dim)
    assert new_theta == pytest.approx(theta * 4 ** (64 / 62))
    before, after = plain(theta, dim), plain(new_theta, dim)
    assert after[0] == before[0] == 1.0  # highest frequency kept
    assert after[-1] == pytest.approx(before[-1] / scale, rel=1e-12)  # lowest: divided by s, like PI


# ---------------------------------------------------------------------------------------
# Each method, every family: transformers' own rotary class == picli's computation.


@pytest.mark.parametrize("method", ["yarn", "ntk"])
@pytest.mark.parametrize("name", UNSCALED)
def test_method_every_family_matches_transformers(name, method, family_checkpoints, workdir):
    source = family_checkpoints[name]
    before = tree_hash(source)
    config = json.loads((source / "config.json").read_text())
    state = rope.read_state(config)
    window = state.window
    output = workdir / "out"
    result = run("extend", source, "--to", window * 4, "-o", output, "--method", method, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["self_check"]["ok"] is True and payload["self_check"]["extension_method"] == method

    written = json.loads((output / "config.json").read_text())
    truth = rotary_truth(output)
    full = truth.get("all", truth.get("full_attention"))
    if method == "yarn":
        expected = rope.yarn_inverse_frequencies(state.theta, state.rotary_dim, 4.0, window)
        assert full[1] == pytest.approx(0.1 * math.log(4.0) + 1, rel=1e-6)
        legacy = written["rope_scaling"]
        assert (legacy.get("type") or legacy.get("rope_type")) == "yarn"
        assert legacy["factor"] == 4.0 and legacy["original_max_position_embeddings"] == window
        assert legacy["beta_fast"] == 32.0 and legacy["beta_slow"] == 1.0
        assert not set(legacy) & {"attention_factor", "mscale", "mscale_all_dim"}
        params = written["rope_parameters"].get("full_attention", written["rope_parameters"])
        assert params["rope_type"] == "yarn" and params["factor"] == 4.0
        assert params["original_max_position_embeddings"] == window
    else:
        new_theta = state.theta * 4 ** (state.rotary_dim / (state.rotary_dim - 2))
        expected = plain(new_theta, state.rotary_dim)
        assert full[1] == 1.0
        assert not written.get("rope_scaling")
        assert written["rope_theta"] == pytest.approx(new_theta, rel=1e-12)
        params = written["rope_parameters"].get("full_attention", written["rope_parameters"])
        assert params["rope_type"] == "default" and params["rope_theta"] == written["rope_theta"]
        if config["model_type"] == "gpt_neox" and "rotary_emb_base" in config:
            assert written["rotary_emb_base"] == written["rope_theta"]
    torch.testing.assert_close(full[0], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    if "sliding_attention" in truth:  # Gemma 3's local layers: untouched by either method
        torch.testing.assert_close(truth["sliding_attention"][0], torch.tensor(plain(10000.0, 16),
                                                                               dtype=torch.float64), rtol=1e-6, atol=0)
        assert truth["sliding_attention"][1] == 1.0
    assert written["max_position_embeddings"] == window * 4
    assert json.loads((output / "tokenizer_config.json").read_text())["model_max_length"] == window * 4
    assert tree_hash(source) == before


def test_default_method_is_linear_byte_for_byte(family_checkpoints, workdir):
    source = family_checkpoints["llama_v4"]
    assert run("extend", source, "--to", 8192, "-o", workdir / "a").exit_code == 0
    assert run("extend", source, "--to", 8192, "-o", workdir / "b", "--method", "linear").exit_code == 0
    assert (workdir / "a" / "config.json").read_bytes() == (workdir / "b" / "config.json").read_bytes()
    assert json.loads((workdir / "a" / "config.json").read_text())["rope_scaling"] == {"type": "linear", "factor": 4.0}


def test_yarn_layout_original_keeps_max_position(family_checkpoints, workdir):
    result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "o", "--method", "yarn",
                 "--max-position-embeddings", "original", "--json")
    assert result.exit_code == 0, result.stderr
    written = json.loads((workdir / "o" / "config.json").read_text())
    assert written["max_position_embeddings"] == 2048
    assert written["rope_scaling"]["original_max_position_embeddings"] == 2048
    readers = json.loads(result.stdout)["plan"]["parameters"]["readers"]
    assert any("4.51-4.55" in text for text in readers["wrong"])


# ---------------------------------------------------------------------------------------
# picli.json, stacking.


def test_record_has_method_and_parameters(family_checkpoints, workdir):
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "y", "--method", "yarn").exit_code == 0
    record = json.loads((workdir / "y" / "picli.json").read_text())["rope"]
    assert record["type"] == "yarn" and record["factor"] == 4.0 and record["original_window"] == 2048
    parameters = record["parameters"]
    assert parameters["original_max_position_embeddings"] == 2048 and parameters["beta_fast"] == 32.0
    assert parameters["attention_factor"] == pytest.approx(0.1 * math.log(4) + 1)
    assert parameters["max_position_embeddings"] == "target" and parameters["readers"]["right"]

    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "n", "--method", "ntk").exit_code == 0
    record = json.loads((workdir / "n" / "picli.json").read_text())["rope"]
    assert record["type"] == "ntk" and record["factor"] == 4.0
    assert record["parameters"]["theta_before"] == 10000.0 and record["parameters"]["rotary_dim"] == 16
    assert record["theta"] == pytest.approx(10000.0 * 4 ** (16 / 14))


def test_yarn_over_yarn_multiplies_and_keeps_the_original_window(family_checkpoints, workdir):
    assert run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", workdir / "y2", "--method", "yarn").exit_code == 0
    result = run("extend", workdir / "y2", "--to", 16384, "-o", workdir / "y8", "--method", "yarn", "--json")
    assert result.exit_code == 0, result.stderr
    written = json.loads((workdir / "y8" / "config.json").read_text())
    assert written["rope_scaling"]["factor"] == 8.0  # 2 x 16384 / 4096
    assert written["rope_scaling"]["original_max_position_embeddings"] == 2048
    truth = rotary_truth(workdir / "y8")["all"]
    torch.testing.assert_close(truth[0], torch.tensor(rope.yarn_inverse_frequencies(10000.0, 16, 8.0, 2048),
                                                      dtype=torch.float64), rtol=1e-6, atol=0)


def test_ntk_over_ntk_scales_theta_again(family_checkpoints, workdir):
    assert run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", workdir / "n2", "--method", "ntk").exit_code == 0
    result = run("extend", workdir / "n2", "--to", 16384, "-o", workdir / "n8", "--method", "ntk")
    assert result.exit_code == 0, result.stderr
    written = json.loads((workdir / "n8" / "config.json").read_text())
    assert written["rope_theta"] == pytest.approx(10000.0 * 8 ** (16 / 14), rel=1e-12)
    record = json.loads((workdir / "n8" / "picli.json").read_text())["rope"]
    assert record["factor"] == 8.0 and record["parameters"]["theta_before"] == 10000.0
    assert record["original_window"] == 2048


@pytest.mark.parametrize("first, second", [("linear", "yarn"), ("yarn", "linear"), ("ntk", "linear"),
                                           ("ntk", "yarn"), ("linear", "ntk"), ("yarn", "ntk")])
def test_across_methods_needs_force(first, second, family_checkpoints, workdir):
    assert run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", workdir / "one", "--method", first).exit_code == 0
    refused = run("extend", workdir / "one", "--to", 8192, "-o", workdir / "two", "--method", second)
    assert_clean_error(refused, f"already uses {first}")
    assert not (workdir / "two").exists()
    forced = run("extend", workdir / "one", "--to", 8192, "-o", workdir / "two", "--method", second, "--force",
                 "--json")
    assert forced.exit_code == 0, forced.stderr
    assert f"replacing {first}" in forced.stderr
    # Replaced from the pretraining window and theta: the same as the method on the base model.
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "direct", "--method",
               second).exit_code == 0
    replaced = json.loads((workdir / "two" / "config.json").read_text())
    direct = json.loads((workdir / "direct" / "config.json").read_text())
    for key in ("rope_scaling", "rope_theta", "max_position_embeddings"):
        assert replaced.get(key) == pytest.approx(direct.get(key)) if isinstance(direct.get(key), float) \
            else replaced.get(key) == direct.get(key), key


# ---------------------------------------------------------------------------------------
# Bad input: one line each, nothing written.


def test_unknown_and_dynamic_methods_are_refused(family_checkpoints, workdir):
    result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "x", "--method", "rope2")
    assert_clean_error(result, "unknown --method 'rope2'")
    result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "x", "--method", "dynamic")
    assert_clean_error(result, "--method dynamic is not written")
    assert "--method ntk" in result.stderr
    assert not (workdir / "x").exists()


def test_yarn_on_olmo_is_refused(tmp_path, workdir):
    source = write_checkpoint(tmp_path / "olmo", {"model_type": "olmo", **TINY, "max_position_embeddings": 2048,
                                                  "rope_theta": 10000.0})
    result = run("extend", source, "--to", 8192, "-o", workdir / "x", "--method", "yarn")
    assert_clean_error(result, "cannot be expressed for olmo")
    assert not (workdir / "x").exists()


def test_yarn_with_custom_attention_factor_is_refused(tmp_path, workdir):
    config = {"model_type": "llama", **TINY, "max_position_embeddings": 8192, "rope_theta": 10000.0,
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
                               "attention_factor": 1.0}}
    source = write_checkpoint(tmp_path / "custom", config)
    result = run("extend", source, "--to", 16384, "-o", workdir / "x", "--method", "yarn")
    assert_clean_error(result, "custom attention factor (attention_factor)")
    assert not (workdir / "x").exists()


def test_ntk_factor_below_one_is_refused(family_checkpoints, workdir):
    result = run("extend", family_checkpoints["llama_v4"], "--to", 1024, "-o", workdir / "x", "--method", "ntk")
    assert_clean_error(result, "factor 0.5 < 1")
    assert not (workdir / "x").exists()


def test_plan_config_defaults_to_linear_and_leaves_its_input_alone():
    config = copy.deepcopy(FAMILY_CONFIGS["llama_v4"])
    assert rope.plan_config(config, 8192, "linear").config == rope.plan_config(config, 8192).config
    assert rope.plan_config(config, 8192).config["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert config == FAMILY_CONFIGS["llama_v4"]


# ---------------------------------------------------------------------------------------
# GGUF in, GGUF out.


# A rotary dimension of 64: ntk's theta depends on it.
ROTARY_64 = {"llama.rope.dimension_count": ("add_uint32", 64)}
# Already linear x2 from a 1024-token pretraining window.
LINEAR_X2_FROM_1024 = {"llama.rope.scaling.type": ("add_string", "linear"),
                       "llama.rope.scaling.factor": ("add_float32", 2.0),
                       "llama.rope.scaling.original_context_length": ("add_uint32", 1024)}


def test_gguf_yarn(tmp_path, workdir):
    source = make_gguf(tmp_path / "m.gguf", ROTARY_64)
    result = run("extend", source, "--to", 8192, "-o", "y.gguf", "--method", "yarn")
    assert result.exit_code == 0, result.stderr
    meta = read_gguf(workdir / "y.gguf").metadata
    assert meta["llama.rope.scaling.type"] == "yarn" and meta["llama.rope.scaling.factor"] == 4.0
    assert meta["llama.rope.scaling.original_context_length"] == 2048 and meta["llama.context_length"] == 8192
    assert meta["llama.rope.freq_base"] == 10000.0
    # yarn over yarn: factors multiply, the original window stays.
    assert run("extend", "y.gguf", "--to", 16384, "-o", "y8.gguf", "--method", "yarn").exit_code == 0
    meta = read_gguf(workdir / "y8.gguf").metadata
    assert meta["llama.rope.scaling.factor"] == 8.0 and meta["llama.rope.scaling.original_context_length"] == 2048
    record = json.loads((workdir / "y8.gguf.picli.json").read_text())["rope"]
    assert record["type"] == "yarn" and record["parameters"]["original_max_position_embeddings"] == 2048
    assert_clean_error(run("extend", "y.gguf", "--to", 16384, "-o", "l.gguf"), "already uses yarn")


def test_gguf_ntk(tmp_path, workdir):
    source = make_gguf(tmp_path / "m.gguf", ROTARY_64)
    result = run("extend", source, "--to", 8192, "-o", "n.gguf", "--method", "ntk")
    assert result.exit_code == 0, result.stderr
    meta = read_gguf(workdir / "n.gguf").metadata
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0 * 4 ** (64 / 62), rel=1e-6)
    assert "llama.rope.scaling.type" not in meta and meta["llama.context_length"] == 8192
    # ntk over ntk: known from the sidecar picli.json; theta scales again.
    assert run("extend", "n.gguf", "--to", 16384, "-o", "n8.gguf", "--method", "ntk").exit_code == 0
    meta = read_gguf(workdir / "n8.gguf").metadata
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0 * 8 ** (64 / 62), rel=1e-6)
    assert_clean_error(run("extend", "n.gguf", "--to", 16384, "-o", "l.gguf"), "already uses ntk")
    assert_clean_error(run("extend", source, "--to", 1024, "-o", "s.gguf", "--method", "ntk"), "< 1")


# ---------------------------------------------------------------------------------------
# The card follows the method; fine-tuning keeps it in both schemas.


def test_card_method_paragraph(family_checkpoints, workdir):
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "y", "--method", "yarn").exit_code == 0
    card = run("card", workdir / "y", "--dry-run")
    assert card.exit_code == 0, card.stderr
    text = card.stdout
    assert "by YaRN ([Peng et al. 2023](https://arxiv.org/abs/2309.00071)), factor **4**" in text
    assert "## Method" in text and "0.1 ln 4 + 1 = 1.1386" in text
    assert "--rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 2048" in text
    assert "--max-model-len 8192" in text and "transformers 4.45-4.50" in text
    assert "linear Position Interpolation (PI" not in text.split("## What was done")[0]

    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "n", "--method", "ntk").exit_code == 0
    text = run("card", workdir / "n", "--dry-run").stdout
    theta = 10000.0 * 4 ** (16 / 14)
    assert "static NTK-aware RoPE scaling" in text and f"theta 10000 -> {theta:.6g}" in text
    assert f"--rope-freq-base {theta:.6g}" in text and "d = 16 rotary dimensions" in text

    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "l").exit_code == 0
    assert "## Method" not in run("card", workdir / "l", "--dry-run").stdout


def test_finetune_keeps_yarn_in_both_schemas(tiny_model_dir, tmp_path):
    extended = tmp_path / "yarn"
    assert run("extend", tiny_model_dir, "--to", 1024, "-o", extended, "--method", "yarn").exit_code == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The grass is green. The sky is blue. " * 400)
    tuned = tmp_path / "ft"
    result = run("finetune", extended, "--data", corpus, "--seq-len", 64, "--steps", 1, "--batch-size", 2, "--cpu",
                 "-o", tuned)
    assert result.exit_code == 0, result.stderr
    config = json.loads((tuned / "config.json").read_text())
    assert config["rope_scaling"] == {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 512,
                                      "beta_fast": 32.0, "beta_slow": 1.0}
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_parameters"]["factor"] == 2.0
    assert config["rope_parameters"]["original_max_position_embeddings"] == 512
    assert json.loads((tuned / "picli.json").read_text())["rope"]["type"] == "yarn"
    truth = rotary_truth(tuned)["all"]
    assert truth[1] == pytest.approx(0.1 * math.log(2) + 1)
    torch.testing.assert_close(truth[0], torch.tensor(rope.yarn_inverse_frequencies(10000.0, 8, 2.0, 512),
                                                      dtype=torch.float64), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------
# One home per method: the registry, the planner both formats share, each method's words.


def test_the_registry_lists_exactly_the_methods_each_in_its_own_file():
    assert list(rope.METHODS) == ["linear", "yarn", "ntk"]
    folder = Path(rope.__file__).parent / "methods"
    for name, method in rope.METHODS.items():
        assert method.name == name and isinstance(method, rope.Method)
        assert Path(sys.modules[type(method).__module__].__file__) == folder / f"{name}.py"


def test_each_methods_self_check_expectation_is_the_papers_formula():
    theta, dim, factor, window = 10000.0, 16, 4.0, 2048
    base = plain(theta, dim)

    def planned(**fields):
        return SimpleNamespace(**{"theta": theta, "factor": factor, "previous_factor": 1.0, "previous_type": "default",
                                  "original_window": window, **fields})

    # linear: the source's frequencies divided by this step's factor (PI), composing with an earlier x2 ...
    frequencies, attention, _ = rope.METHODS["linear"].expected_rope(planned(), dim, base)
    assert frequencies == pytest.approx([value / 4 for value in base], rel=1e-15) and attention == 1.0
    frequencies, _, _ = rope.METHODS["linear"].expected_rope(planned(previous_factor=2.0, previous_type="linear"),
                                                              dim, [value / 2 for value in base])
    assert frequencies == pytest.approx([value / 4 for value in base], rel=1e-15)
    # ... or, replacing another scheme (--force), plain RoPE divided by the factor whatever the source says.
    frequencies, _, _ = rope.METHODS["linear"].expected_rope(planned(previous_type="llama3"), dim, [1.0] * 8)
    assert frequencies == pytest.approx([value / 4 for value in base], rel=1e-15)

    # yarn: kept below the boundary dimension of 32 turns, divided by s past the one of 1 turn, a ramp between.
    low = max(math.floor(dim * math.log(window / (32 * 2 * math.pi)) / (2 * math.log(theta))), 0)
    high = min(math.ceil(dim * math.log(window / (1 * 2 * math.pi)) / (2 * math.log(theta))), dim - 1)
    assert (low, high) == (2, 6)
    expected = [value * (1 - min(max((j - low) / (high - low), 0.0), 1.0))
                + value / factor * min(max((j - low) / (high - low), 0.0), 1.0) for j, value in enumerate(base)]
    frequencies, attention, _ = rope.METHODS["yarn"].expected_rope(planned(), dim, base)
    assert frequencies == pytest.approx(expected, rel=1e-12)
    assert attention == pytest.approx(0.1 * math.log(4) + 1, rel=1e-15)

    # ntk: plain RoPE at theta x s^(d/(d-2)), attention untouched.
    theta_ntk = theta * 4 ** (16 / 14)
    frequencies, attention, _ = rope.METHODS["ntk"].expected_rope(planned(theta=theta_ntk), dim, base)
    assert frequencies == pytest.approx(plain(theta_ntk, dim), rel=1e-12) and attention == 1.0


def test_config_json_and_gguf_plan_through_the_same_planner(tmp_path):
    """The same RoPE in both formats (linear x2 from 1024 tokens) gives the same extension."""
    from picli.gguf_io import rope_settings

    config = {"model_type": "llama", **TINY, "head_dim": 64, "max_position_embeddings": 2048, "rope_theta": 10000.0,
              "rope_scaling": {"type": "linear", "factor": 2.0, "original_max_position_embeddings": 1024}}
    info = read_gguf(make_gguf(tmp_path / "m.gguf", {**ROTARY_64, **LINEAR_X2_FROM_1024}))
    from_config = rope.current_of(config, rope.read_state(config))
    from_gguf = rope.gguf.current_of("llama", info.metadata, rope_settings(info), None)
    for method in ("linear", "yarn", "ntk"):
        for force in (False, True):
            request = rope.Request(8192, force=force)
            outcomes = []
            for current in (from_config, from_gguf):
                try:
                    outcomes.append(rope.plan(current, method, request))
                except CannotExtend as exc:
                    outcomes.append(exc.message.replace("GGUF", "checkpoint"))
            assert outcomes[0] == outcomes[1] if isinstance(outcomes[0], str) else \
                {key: value for key, value in vars(outcomes[0]).items() if key != "warnings"} == \
                {key: value for key, value in vars(outcomes[1]).items() if key != "warnings"}, (method, force)
            if method == "linear":
                assert outcomes[0].factor == 8.0 and outcomes[0].current_window == 2048  # 2 x 8192 / 2048
            else:
                assert isinstance(outcomes[0], str) != force  # refused unless --force replaces linear
                if not force:
                    assert "this checkpoint already uses linear RoPE scaling" in outcomes[0]


@pytest.mark.parametrize("method", ["linear", "yarn", "ntk"])
def test_card_limitations_follow_the_method(method, family_checkpoints, workdir):
    from picli import provenance
    from picli.perplexity import PerplexityReport, PerplexityResult
    from picli.verify import ModelRun, VerifyReport

    output = workdir / method
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", output, "--method", method).exit_code == 0
    limitations = run("card", output, "--dry-run").stdout.split("## Limitations")[1]
    assert ("PI compresses every RoPE frequency" in limitations) == (method == "linear")
    assert "Not measured for this model by picli" in limitations

    def measured(length, value):
        return PerplexityReport(256, [PerplexityResult(length, value, math.log(value), 4095, 1, 1, 1.0, 100.0)]).to_dict()

    # Perplexity at 1024 tokens, inside the original 2048: a measurement of short contexts.
    report = VerifyReport(ModelRun("model", str(output), 8192, None, measured(1024, 19.3)),
                          ModelRun("baseline", "/base", 2048, None, measured(1024, 18.9)), [], [1024], {})
    (output / "picli-verify.json").write_text(json.dumps(provenance.verify_record(report.to_dict(), command="picli "
                                                                                  "verify", data="/data/book.txt")))
    limitations = run("card", output, "--dry-run").stdout.split("## Limitations")[1]
    assert "Not measured for this model" not in limitations
    assert "Measured for this model by picli (Verification above): perplexity 19.300 at 1,024 tokens (baseline " \
           "18.900)." in limitations


def test_extend_hint_quotes_what_picli_measured_on_smollm2():
    """The closing hint of `picli extend` cites docs/science.md's methods run: its numbers are the JSON's."""
    from tests.helpers import ROOT

    results = json.loads((ROOT / "docs" / "results" / "methods.json").read_text())["results"]

    def perplexity(model, length):
        return results[model]["perplexity"][str(length)]["perplexity"]

    def keys(model, length):
        passkey = results[model]["passkey"][str(length)]
        return f"{passkey['retrieved']}/{passkey['trials']}"

    def rise(model):  # inside the old window: 1024, 4096, 8192 tokens and tokens 4096-8191
        ratios = [perplexity(model, length) / perplexity("base", length) - 1 for length in (1024, 4096, 8192)]
        ratios.append(results[model]["tails"][0]["perplexity"] / results["base"]["tails"][0]["perplexity"] - 1)
        return f"{100 * min(ratios):.1f}-{100 * max(ratios):.1f}%"

    hints = {name: method.untrained_hint() for name, method in rope.METHODS.items()}
    for hint in hints.values():
        assert "SmolLM2-135M-Instruct (dequantized from Q4_1, 8192 -> 16384 tokens)" in hint
    assert f"perplexity {perplexity('base', 1024):.2f} -> {perplexity('linear', 1024):.2f} at 1024" in hints["linear"]
    assert f"{keys('linear', 2048)} passkeys at 2048" in hints["linear"] and f"retrieved {keys('base', 2048)}" in \
        hints["linear"]
    assert f"use --method yarn ({rise('yarn')} above" in hints["linear"]
    assert f"at {rise('yarn')} above" in hints["yarn"] and f"at {rise('ntk')} above" in hints["ntk"]
    assert f"{keys('yarn', 2048)} passkeys at 2048 and at 12288" in hints["yarn"] and keys("yarn", 12288) == "6/8"
    assert f"{keys('ntk', 2048)} passkeys at 2048 and {keys('ntk', 12288)} at 12288" in hints["ntk"]


def test_extend_ends_with_the_methods_own_hint(family_checkpoints, workdir):
    for method in ("linear", "yarn"):
        result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / method, "--method", method)
        assert result.exit_code == 0, result.stderr
        closing = " ".join(result.stdout.split()).split("Not fine-tuned yet: ")[1]
        assert closing == " ".join(rope.METHODS[method].untrained_hint().split())
    assert "--method yarn" in rope.METHODS["linear"].untrained_hint()


def test_push_holds_config_json_to_the_recorded_method(family_checkpoints, workdir):
    from picli.hub import preflight

    for method in ("yarn", "ntk"):
        output = workdir / method
        assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", output, "--method",
                   method).exit_code == 0
        (output / "tokenizer.json").write_text("{}")
        assert preflight(output)[0] == [], method  # what the method writes is what picli.json records
    config = json.loads((workdir / "ntk" / "config.json").read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"] = 5.0
    (workdir / "ntk" / "config.json").write_text(json.dumps(config))
    problems, _ = preflight(workdir / "ntk")
    assert any(f"config.json says theta 5 but picli.json recorded ntk theta {10000 * 4 ** (16 / 14):g}" in problem
               for problem in problems), problems


def test_a_new_method_is_one_file_and_a_registry_line(family_checkpoints, workdir, monkeypatch):
    """docs/concepts.md's llama3 example, as written there, registered by one line: extend writes it and
    the self-check holds it against transformers' own llama3; a GGUF is refused in one line."""
    from tests.helpers import ROOT

    text = (ROOT / "docs" / "concepts.md").read_text()
    source = text.split("### Adding a method")[1].split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(source.replace("from .base import", "from picli.rope.methods.base import"), "llama3.py", "exec"),
         namespace)
    monkeypatch.setitem(rope.METHODS, "llama3", namespace["Llama3"]())
    result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", workdir / "l3", "--method", "llama3",
                 "--json")
    assert result.exit_code == 0, result.stderr
    check = json.loads(result.stdout)["self_check"]
    assert check["ok"] and check["max_relative_error"] < 1e-5 and check["transformers4_reads"]["rope_type"] == "llama3"
    written = json.loads((workdir / "l3" / "config.json").read_text())
    assert written["rope_scaling"] == {"type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 2048}
    card = run("card", workdir / "l3", "--dry-run").stdout
    assert "by Llama 3.1 RoPE scaling, factor **4**" in card and "compresses every" not in card
    assert_clean_error(run("extend", make_gguf(workdir / "m.gguf"), "--to", 8192, "-o", workdir / "l3.gguf",
                           "--method", "llama3"), "no GGUF metadata form")


# ---------------------------------------------------------------------------------------
# Older readers: transformers 4.44.2 and 4.57.1 compute what picli wrote (slow: subprocesses).

COMPAT_READER = """
import json, sys
sys.path.append(sys.argv[1])  # torch from the main environment, after this environment's own packages
import transformers
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
for path in sys.argv[2:]:
    config = AutoConfig.from_pretrained(path)
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    theta = getattr(config, "rope_theta", None) or getattr(config, "rotary_emb_base", None)
    inv_freq, attention = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu") if rope_type != "default" else (None, 1.0)
    print(json.dumps({"rope_type": rope_type, "theta": theta, "attention": attention,
                      "inv_freq": None if inv_freq is None else inv_freq.tolist()}))
"""


def _older_reader(version, outputs):
    """What transformers `version` computes for each output, in one subprocess."""
    import os
    import subprocess
    from pathlib import Path

    from tests.helpers import side_python

    python = side_python(version)
    torch_site = str(Path(torch.__file__).resolve().parent.parent)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", COMPAT_READER, torch_site, *map(str, outputs)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.strip().splitlines()[-len(outputs):]]


def _version(text):
    return tuple(int(part) for part in text.split("."))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["target", "original"])
@pytest.mark.parametrize("version", ["4.44.2", "4.57.1"])
def test_older_transformers_compute_picli_yarn(version, layout, family_checkpoints, tmp_path):
    """4.51+ read the default layout as meant; 4.44-4.50 build the ramp at max_position_embeddings
    (the target), which the original layout gets right: exactly what yarn_readers states."""
    cases = []
    for name in UNSCALED:
        config = json.loads((family_checkpoints[name] / "config.json").read_text())
        first = max(rope.methods.yarn_min_transformers(config), {"gemma3_text": "4.50.0", "qwen3": "4.51.0"}.get(
            config["model_type"], "0.0.0"), key=_version)
        if _version(version) < _version(first):
            continue
        state = rope.read_state(config)
        output = tmp_path / f"{name}-{layout}"
        result = run("extend", family_checkpoints[name], "--to", state.window * 4, "-o", output, "--method", "yarn",
                     "--max-position-embeddings", layout)
        assert result.exit_code == 0, result.stderr
        cases.append((name, state, output))
    for (name, state, _), read in zip(cases, _older_reader(version, [output for *_, output in cases])):
        assert read["rope_type"] == "yarn" and float(read["theta"]) == state.theta, (name, read)
        assert read["attention"] == pytest.approx(0.1 * math.log(4) + 1, rel=1e-9), name
        # 4.44-4.50 ignore original_max_position_embeddings: the ramp is built at max_position_embeddings.
        ramp_window = state.window * 4 if (layout == "target" and _version(version) < (4, 51)) else state.window
        expected = rope.yarn_inverse_frequencies(state.theta, state.rotary_dim, 4.0, ramp_window)
        np.testing.assert_allclose(read["inv_freq"], expected, rtol=1e-6, err_msg=name)
        if ramp_window != state.window:  # the deviation is real, not within rounding
            meant = rope.yarn_inverse_frequencies(state.theta, state.rotary_dim, 4.0, state.window)
            assert not np.allclose(read["inv_freq"], meant, rtol=1e-3), name
    checked = len(cases)
    assert checked >= (2 if version == "4.44.2" else 8)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["4.44.2", "4.57.1"])
def test_older_transformers_read_ntk_theta(version, family_checkpoints, tmp_path):
    cases = []
    for name in UNSCALED:
        config = json.loads((family_checkpoints[name] / "config.json").read_text())
        introduced = {"qwen3": "4.51.0", "gemma3_text": "4.50.0"}.get(config["model_type"], "4.0.0")
        if _version(version) < _version(introduced):
            continue
        state = rope.read_state(config)
        output = tmp_path / name
        assert run("extend", family_checkpoints[name], "--to", state.window * 4, "-o", output, "--method",
                   "ntk").exit_code == 0
        cases.append((name, state, output))
    for (name, state, _), read in zip(cases, _older_reader(version, [output for *_, output in cases])):
        assert read["rope_type"] == "default", (name, read)
        assert float(read["theta"]) == pytest.approx(rope.ntk_theta(state.theta, 4.0, state.rotary_dim), rel=1e-12)
    checked = len(cases)
    assert checked >= 6
