"""Every family picli claims, end to end; multimodal wrappers; per-layer RoPE; configs saved
by transformers 5 read the same by 4.x; the bad inputs of issue 9.

Sources are written by the installed transformers 5's own config classes
(`XConfig(...).save_pretrained`), so they carry only what 5.x saves; outputs are reloaded
through each family's rotary embedding class (5.x) and through the 4.x side environments'
config classes (slow), and compared with values stated here, not with picli's own code.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from picli import rope
from tests.helpers import (ROOT, TINY, assert_clean_error, read_in, reference_inv_freq, rotary_class_inv_freqs, run,
                           side_python, tree_hash, write_checkpoint)

DATA = ROOT / "tests" / "data"
COMPAT_VERSIONS = ("4.44.2", "4.57.1")


def class_defaults(version: str) -> dict:
    return json.loads((DATA / f"class_defaults-{version}.json").read_text())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3])


# --- the family table against the config classes --------------------------------------

def test_class_default_fixture_is_what_the_installed_transformers_5_fills_in():
    import contextlib
    import io

    from tests.data import class_defaults as generator

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        generator.main()
    live = json.loads(printed.getvalue())
    stored = class_defaults("5")
    assert live["transformers"].startswith("5.")
    assert live["families"] == stored["families"] and live["wrappers"] == stored["wrappers"]


@pytest.mark.slow
@pytest.mark.parametrize("version", COMPAT_VERSIONS)
def test_class_default_fixture_is_what_transformers_4_fills_in(version):
    python = side_python(version)
    result = subprocess.run([str(python), str(DATA / "class_defaults.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    live, stored = json.loads(result.stdout), class_defaults(version)
    assert live["families"] == stored["families"] and live["wrappers"] == stored["wrappers"]


@pytest.mark.parametrize("model_type", sorted(rope.FAMILIES))
def test_family_defaults_are_the_config_classes(model_type):
    family = rope.FAMILIES[model_type]
    five = class_defaults("5")["families"][model_type]
    assert five is not None, f"{model_type}: transformers 5 has no such config class"
    assert family.theta_default == five["theta"]
    assert family.window_default == five["max_position_embeddings"]
    assert family.partial_default == five["partial_rotary_factor"]
    assert family.nested == five["nested"]
    if family.nested:
        # None: the sliding layers use the global theta (OLMo 3).
        expected_local = None if five["local_theta"] == five["theta"] and not family.local_theta_key \
            else five["local_theta"]
        assert family.local_theta_default == expected_local
    for version in COMPAT_VERSIONS:
        four = class_defaults(version)["families"][model_type]
        if four is None:  # the release does not know the family: it must be below min_transformers
            assert _version(version) < _version(family.min_transformers), (model_type, version)
            continue
        assert (family.theta_default_4x or family.theta_default) == four["theta"], (model_type, version)
        assert family.window_default == four["max_position_embeddings"]
        assert family.partial_default == four["partial_rotary_factor"]


def test_wrappers_build_the_text_model_the_table_says():
    for version in ("5", *COMPAT_VERSIONS):
        for wrapper, built in class_defaults(version)["wrappers"].items():
            if built is not None:
                assert rope.WRAPPERS[wrapper][0] == built["text_model_type"], (version, wrapper)


# --- every claimed family, saved by transformers 5, extended end to end ------------------

BASE = {**TINY, "head_dim": 16}
# model_type -> (extra constructor arguments, theta or None for the class default,
#                partial rotary or None, sliding theta (nested), window or None for the default)
SOURCES = {
    "llama": ({}, 40000.0, None, None, 4096),
    "mistral": ({"sliding_window": 4096}, 40000.0, None, None, None),
    "mixtral": ({"num_local_experts": 2, "num_experts_per_tok": 1}, 40000.0, None, None, 4096),
    "qwen2": ({}, 40000.0, None, None, 4096),
    "qwen2_moe": ({"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 32}, 40000.0, None, None, 4096),
    "qwen3": ({}, 40000.0, None, None, 4096),
    "qwen3_moe": ({"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 32}, 40000.0, None, None,
                  4096),
    "qwen3_next": ({"layer_types": ["linear_attention", "full_attention"], "num_experts": 2,
                    "num_experts_per_tok": 1, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
                   40000.0, 0.5, None, 4096),
    "gemma": ({}, 40000.0, None, None, 4096),
    "gemma2": ({"sliding_window": 16}, 40000.0, None, None, 4096),
    "gemma3_text": ({"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
                    None, None, 20000.0, None),
    "gemma3n_text": ({"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
                      "num_kv_shared_layers": 0, "activation_sparsity_pattern": [0.0, 0.0],
                      "intermediate_size": [128, 128]}, 40000.0, None, 20000.0, 4096),
    "starcoder2": ({}, 40000.0, None, None, 4096),
    "cohere": ({}, None, None, None, 4096),  # 5.x reads 500000, 4.x 10000 when theta is left out
    "granite": ({}, 40000.0, None, None, 4096),
    "granitemoe": ({"num_local_experts": 2, "num_experts_per_tok": 1}, 40000.0, None, None, 4096),
    "granitemoeshared": ({"num_local_experts": 2, "num_experts_per_tok": 1, "shared_intermediate_size": 32},
                         40000.0, None, None, 4096),
    "olmo": ({}, 40000.0, None, None, 4096),
    "olmo2": ({}, 40000.0, None, None, 4096),
    "olmo3": ({"sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
              None, None, None, 4096),  # 5.x reads 500000, 4.x 10000 when theta is left out
    "gpt_neox": ({}, 40000.0, 0.5, None, 4096),
    "phi": ({}, 40000.0, 0.25, None, 4096),
    "stablelm": ({}, 40000.0, 0.5, None, None),
    "persimmon": ({}, None, 0.25, None, 4096),  # 5.x reads 10000, 4.x 25000 when theta is left out
    "falcon": ({"new_decoder_architecture": True, "num_kv_heads": 2}, 40000.0, None, None, 4096),
}


def test_every_claimed_family_has_an_end_to_end_source():
    assert set(SOURCES) == set(rope.FAMILIES)


def expected_values(model_type: str) -> dict:
    """What every reader must find in the output: from SOURCES and the class defaults."""
    _extra, theta, partial, local, window = SOURCES[model_type]
    family = rope.FAMILIES[model_type]
    window = window or family.window_default
    theta = theta or family.theta_default
    return {"theta": theta, "partial": partial or family.partial_default, "window": window, "target": 4 * window,
            "factor": 4.0, "local_theta": (local or theta) if family.nested else None}


def save_with_transformers5(directory: Path, model_type: str) -> Path:
    """config.json exactly as transformers 5 saves it, plus stand-in weights and side files."""
    from transformers import AutoConfig

    extra, theta, partial, local, window = SOURCES[model_type]
    # Falcon derives head_dim (a read-only property); the others take it as given.
    arguments = {**(TINY if model_type == "falcon" else BASE), **extra}
    if window:
        arguments["max_position_embeddings"] = window
    params = {"rope_type": "default"}
    if theta:
        params["rope_theta"] = theta
    if partial:
        params["partial_rotary_factor"] = partial
    if rope.FAMILIES[model_type].nested:
        sliding = {"rope_type": "default", **({"rope_theta": local} if local else {})}
        params = {"full_attention": params, "sliding_attention": sliding} if (theta or local) else None
    if params and (len(params) > 1 or rope.FAMILIES[model_type].nested):
        arguments["rope_parameters"] = params
    config = AutoConfig.for_model(model_type, **arguments)
    config.save_pretrained(directory / "_saved")
    saved = json.loads((directory / "_saved" / "config.json").read_text())
    expected = expected_values(model_type)
    write_checkpoint(directory, saved, tokenizer_max=expected["window"], generation_max=expected["window"])
    return directory


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """Each family: (5.x-saved source, picli's output, the extend --json payload)."""
    root = tmp_path_factory.mktemp("families5")
    made = {}
    for model_type in SOURCES:
        source = save_with_transformers5(root / model_type, model_type)
        before = tree_hash(source)
        output = root / f"{model_type}-out"
        result = run("extend", source, "--to", expected_values(model_type)["target"], "-o", output, "--json")
        assert result.exit_code == 0, (model_type, result.stderr)
        assert tree_hash(source) == before
        made[model_type] = (source, output, json.loads(result.stdout))
    return made


@pytest.mark.parametrize("model_type", sorted(SOURCES))
def test_transformers5_saved_source_extends_and_reloads(model_type, extended):
    source, output, payload = extended[model_type]
    expected = expected_values(model_type)
    assert payload["plan"]["factor"] == expected["factor"]
    assert payload["self_check"]["ok"] is True
    frequencies = rotary_class_inv_freqs(output)
    full = frequencies.get("all", frequencies.get("full_attention"))
    rotary_dim = int(16 * expected["partial"])
    torch.testing.assert_close(full, reference_inv_freq(expected["theta"], rotary_dim, expected["factor"]),
                               rtol=1e-6, atol=0)
    if "sliding_attention" in frequencies:  # sliding layers keep their theta and get no factor
        torch.testing.assert_close(frequencies["sliding_attention"],
                                   reference_inv_freq(expected["local_theta"], rotary_dim), rtol=1e-6, atol=0)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(output).max_position_embeddings == expected["target"]
    assert json.loads((output / "tokenizer_config.json").read_text())["model_max_length"] == expected["target"]


def test_olmo3_output_is_per_layer_and_loads_in_transformers5(extended):
    """OLMo 3's flat rope_parameters used to fail to load (KeyError 'full_attention')."""
    config = json.loads((extended["olmo3"][1] / "config.json").read_text())
    assert config["rope_parameters"]["full_attention"]["factor"] == 4.0
    assert config["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 500000.0}


def test_family_keys_that_transformers5_drops_are_written(extended):
    """5.x saves none of the keys 4.x reads; the outputs carry them all, explicitly."""
    neox = json.loads((extended["gpt_neox"][0] / "config.json").read_text())
    assert "rotary_pct" not in neox and "rotary_emb_base" not in neox  # what 5.x saved
    neox_out = json.loads((extended["gpt_neox"][1] / "config.json").read_text())
    assert neox_out["rotary_pct"] == 0.5 and neox_out["rotary_emb_base"] == 40000.0
    gemma = json.loads((extended["gemma3_text"][1] / "config.json").read_text())
    assert gemma["rope_local_base_freq"] == 20000.0 and gemma["rope_theta"] == 1e6
    assert gemma["max_position_embeddings"] == 4 * 131072
    phi = json.loads((extended["phi"][1] / "config.json").read_text())
    assert phi["partial_rotary_factor"] == 0.25
    cohere = json.loads((extended["cohere"][1] / "config.json").read_text())
    assert cohere["rope_theta"] == 500000.0  # 5.x writes its theta; picli adds the top-level key 4.x reads


def test_theta_left_to_a_class_default_that_4x_and_5x_disagree_on_is_written_and_said():
    config = {"model_type": "cohere", **TINY, "max_position_embeddings": 8192}
    plan = rope.plan_config(config, 16384)
    assert plan.config["rope_theta"] == 500000.0 and plan.config["rope_parameters"]["rope_theta"] == 500000.0
    assert any("transformers 5 reads 500000, 4.x reads 10000" in warning for warning in plan.warnings)


@pytest.mark.slow
@pytest.mark.parametrize("version", COMPAT_VERSIONS)
def test_transformers4_reads_outputs_of_transformers5_saved_sources(version, extended):
    checked = 0
    for model_type, (_source, output, _payload) in sorted(extended.items()):
        if _version(version) < _version(rope.FAMILIES[model_type].min_transformers):
            continue
        expected = expected_values(model_type)
        read = read_in(version, output)
        assert read["theta"] == expected["theta"], (model_type, read)
        assert read["partial"] == expected["partial"], (model_type, read)
        assert read["type"] == "linear" and read["factor"] == expected["factor"], (model_type, read)
        assert read["window"] == expected["target"], (model_type, read)
        if rope.FAMILIES[model_type].local_theta_key:
            assert read["local_theta"] == expected["local_theta"], (model_type, read)
        checked += 1
    # 4.44.2: the seven families whose min_transformers it meets; 4.57.1: every family.
    assert checked == (7 if version == "4.44.2" else len(extended))


# --- multimodal wrappers: RoPE lives in text_config ---------------------------------------

def wrapper_fixture(name: str, version: str) -> dict:
    return json.loads((DATA / "wrappers" / f"{name}-{version}.json").read_text())


def text_rotary_inv_freqs(checkpoint_dir: Path) -> dict:
    """The language model's own rotary class, built by transformers from the wrapper's text config."""
    import importlib

    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    config = AutoConfig.from_pretrained(checkpoint_dir).text_config
    module_name = model_type_to_module_name(config.model_type)
    module_name = {"gemma3_text": "gemma3"}.get(config.model_type, module_name)
    module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    prefix = type(config).__name__.removesuffix("Config")
    candidates = [obj for key, obj in vars(module).items() if key.endswith("RotaryEmbedding") and isinstance(obj, type)
                  and obj.__module__ == module.__name__]
    rotary = max(candidates, key=lambda cls: (prefix.startswith(cls.__name__.removesuffix("RotaryEmbedding")),
                                              -len(cls.__name__)))(config)
    return {name.removesuffix("inv_freq").removesuffix("_") or "all": buffer.to(torch.float64)
            for name, buffer in rotary.named_buffers() if name.endswith("inv_freq") and "original" not in name}


WRAPPER_VERSIONS = ("4.57.1", "5.24.0")
# fixture -> (window, theta of the full-attention layers, sliding theta, factor before)
WRAPPED = {
    "gemma3": (131072, 1e6, 10000.0, 8.0),  # Gemma 3 4B's shape: linear x8 on the global layers
    "gemma3_unscaled": (131072, 1e6, 10000.0, 1.0),
    "mistral3": (131072, 1e9, None, 1.0),
    "llava": (4096, 10000.0, None, 1.0),
    "idefics3": (8192, 100000.0, None, 1.0),
    "smolvlm": (8192, 100000.0, None, 1.0),
}


def write_wrapper(directory: Path, config: dict, window: int) -> Path:
    write_checkpoint(directory, config, tokenizer_max=window, generation_max=window)
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": "X", "model_max_length": window}))
    (directory / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 224, "width": 224}}))
    return directory


@pytest.mark.parametrize("version", WRAPPER_VERSIONS)
@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrapper_extends_its_language_model(name, version, tmp_path, workdir):
    window, theta, local_theta, previous = WRAPPED[name]
    config = wrapper_fixture(name, version)
    source = write_wrapper(tmp_path / name, config, window)
    before = tree_hash(source)
    target = 2 * window
    result = run("extend", source, "--to", target, "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    factor = previous * 2
    assert payload["plan"]["factor"] == factor and payload["self_check"]["ok"] is True
    assert any("vision tower is untouched" in warning for warning in payload["plan"]["warnings"])
    written = json.loads((workdir / "out" / "config.json").read_text())
    assert written["vision_config"] == config["vision_config"]
    assert "rope_scaling" not in written and "rope_parameters" not in written  # nothing at the wrapper's top level
    text = written["text_config"]
    assert text["max_position_embeddings"] == target and text["rope_theta"] == theta
    frequencies = text_rotary_inv_freqs(workdir / "out")
    full = frequencies.get("all", frequencies.get("full_attention"))
    torch.testing.assert_close(full, reference_inv_freq(theta, 16, factor), rtol=1e-6, atol=0)
    if local_theta:
        assert text["rope_local_base_freq"] == local_theta
        torch.testing.assert_close(frequencies["sliding_attention"], reference_inv_freq(local_theta, 16),
                                   rtol=1e-6, atol=0)
    assert json.loads((workdir / "out" / "processor_config.json").read_text())["model_max_length"] == target
    assert json.loads((workdir / "out" / "tokenizer_config.json").read_text())["model_max_length"] == target
    assert tree_hash(source) == before


def gemma3_as_released() -> dict:
    """Released Gemma 3 files (google/gemma-3-4b-it) leave rope_theta, rope_local_base_freq and
    max_position_embeddings to Gemma3TextConfig: the 4.57.1 fixture without them."""
    config = wrapper_fixture("gemma3", "4.57.1")
    for key in ("rope_theta", "rope_local_base_freq", "max_position_embeddings"):
        del config["text_config"][key]
    del config["text_config"]["model_type"]  # Gemma3Config ignores it: always gemma3_text
    return config


def test_gemma3_class_defaults_are_written_explicitly(tmp_path, workdir):
    source = write_wrapper(tmp_path / "gemma-3-4b", gemma3_as_released(), 131072)
    result = run("extend", source, "--to", 262144, "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["plan"]["factor"] == 16.0  # 8 x 262144 / 131072
    text = json.loads((workdir / "out" / "config.json").read_text())["text_config"]
    assert text["rope_theta"] == 1e6 and text["rope_local_base_freq"] == 10000.0
    assert text["max_position_embeddings"] == 262144 and text["model_type"] == "gemma3_text"
    assert text["rope_scaling"] == {"rope_type": "linear", "factor": 16.0}
    assert text["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    torch.testing.assert_close(text_rotary_inv_freqs(workdir / "out")["full_attention"],
                               reference_inv_freq(1e6, 16, 16.0), rtol=1e-6, atol=0)


def test_inspect_shows_the_language_model_and_the_untouched_vision_tower(tmp_path, workdir):
    source = write_wrapper(tmp_path / "gemma-3-4b", gemma3_as_released(), 131072)
    result = run("inspect", source, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rope"]["language_model"] == "text_config (gemma3_text)"
    assert report["rope"]["theta"] == 1e6 and report["rope"]["local_theta"] == 10000.0
    assert report["rope"]["window"] == 131072 and report["rope"]["factor"] == 8.0
    assert report["runtimes"]["transformers4"]["rope_type"] == "linear"
    assert any("vision tower is untouched" in warning for warning in report["warnings"])
    text = run("inspect", source)
    assert "text_config (gemma3_text)" in text.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_transformers_4_57_reads_wrapper_outputs(name, tmp_path, workdir):
    window, theta, local_theta, previous = WRAPPED[name]
    for version in WRAPPER_VERSIONS:
        source = write_wrapper(tmp_path / f"{name}-{version}", wrapper_fixture(name, version), window)
        output = workdir / f"out-{version}"
        assert run("extend", source, "--to", 2 * window, "-o", output).exit_code == 0
        read = read_in("4.57.1", output)
        assert read["theta"] == theta and read["type"] == "linear" and read["factor"] == previous * 2, read
        assert read["window"] == 2 * window
        if local_theta:
            assert read["local_theta"] == local_theta


# --- M-RoPE, per-layer RoPE, layers without RoPE ------------------------------------------

def assert_refused(result, needle: str, workdir: Path) -> None:
    assert_clean_error(result, needle)
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("version", WRAPPER_VERSIONS)
def test_mrope_is_refused_with_the_reason(version, tmp_path, workdir):
    config = wrapper_fixture("qwen2_vl", version)
    source = write_checkpoint(tmp_path / "qwen2-vl", config)
    before = tree_hash(source)
    assert_refused(run("extend", source, "--to", 65536), "M-RoPE (mrope_section [2, 3, 3])", workdir)
    assert "several sections" in run("extend", source, "--to", 65536).stderr
    assert rope.read_state(config).mrope_section == [2, 3, 3]
    report = json.loads(run("inspect", source, "--json").stdout)
    assert report["can_extend"] is False and "M-RoPE" in report["cannot_extend_reason"]
    assert tree_hash(source) == before


def test_mrope_in_a_flat_legacy_config_is_refused(tmp_path, workdir):
    """Qwen2-VL files before text_config existed: the text settings at the top level."""
    text = wrapper_fixture("qwen2_vl", "4.57.1")["text_config"]
    flat = {**text, "model_type": "qwen2_vl", "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    assert "M-RoPE" in rope.refusal(flat).message
    # ...and by its sections alone, whatever the model_type says.
    assert "M-RoPE" in rope.refusal({**flat, "model_type": "qwen2"}).message


def test_cohere2_is_refused_its_global_layers_have_no_rope(tmp_path, workdir):
    from transformers import Cohere2Config

    Cohere2Config(**TINY, layer_types=["sliding_attention", "full_attention"]).save_pretrained(tmp_path / "saved")
    source = write_checkpoint(tmp_path / "cohere2", json.loads((tmp_path / "saved" / "config.json").read_text()))
    assert_refused(run("extend", source, "--to", 65536), "global layers have no position encoding", workdir)
    assert "cohere2" not in rope.FAMILIES


@pytest.mark.parametrize("config, says", [
    ({"model_type": "gemma2", **BASE, "max_position_embeddings": 8192, "sliding_window": 4096}, True),
    ({"model_type": "mistral", **TINY, "max_position_embeddings": 32768, "sliding_window": 4096}, True),  # v0.1
    ({"model_type": "mistral", **TINY, "max_position_embeddings": 32768, "sliding_window": None}, False),  # v0.2+
])
def test_shared_sliding_rope_is_said(config, says, tmp_path, workdir):
    source = write_checkpoint(tmp_path / "m", config)
    note = "sliding layers"
    plan = json.loads(run("extend", source, "--to", 65536, "--dry-run", "--json").stdout)["plan"]
    assert any(note in warning for warning in plan["warnings"]) is says
    report = json.loads(run("inspect", source, "--json").stdout)
    assert any(note in warning for warning in report["warnings"]) is says


# --- bad input: one line, a hint, nothing written -----------------------------------------

BAD_CONFIGS = {
    "text_config_without_rope": ({"model_type": "blip-2", "vision_config": {}, "text_config": {
        "model_type": "opt", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 2048}},
        "opt has no RoPE"),
    "text_config_unknown_type": ({"model_type": "llava", "vision_config": {}, "text_config": {
        "model_type": "mystery_lm", **TINY, "rope_theta": 10000.0}}, "mystery_lm, which is neither in picli's family"),
    "text_config_no_model_type": ({"model_type": "unknown_wrapper", "text_config": {**TINY, "rope_theta": 1e4}},
                                  "text_config names no model_type"),
    "vision_only": ({"model_type": "siglip_vision_model", "hidden_size": 64, "num_attention_heads": 4,
                     "image_size": 224}, "is a vision model"),
    "vision_config_only": ({"model_type": "some_vision_encoder", "vision_config": {"hidden_size": 64}},
                           "is a vision model"),
    "top_level_disagrees": ({**wrapper_fixture("llava", "4.57.1"), "rope_theta": 500000.0},
                            "the top level and text_config disagree on RoPE"),
    "unknown_scaling_type": ({"model_type": "llama", **TINY, "max_position_embeddings": 2048, "rope_theta": 1e4,
                              "rope_scaling": {"type": "banana", "factor": 2.0}}, "unknown RoPE scaling type 'banana'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_and_writes_nothing(name, tmp_path, workdir):
    config, needle = BAD_CONFIGS[name]
    source = write_checkpoint(tmp_path / name, config)
    before = tree_hash(source)
    assert_refused(run("extend", source, "--to", 1 << 20), needle, workdir)
    assert tree_hash(source) == before


def test_agreeing_top_level_rope_is_kept_agreeing(tmp_path, workdir):
    config = {**wrapper_fixture("llava", "4.57.1"), "rope_theta": 10000.0, "max_position_embeddings": 4096}
    source = write_checkpoint(tmp_path / "llava", config)
    assert run("extend", source, "--to", 8192, "-o", workdir / "out").exit_code == 0
    written = json.loads((workdir / "out" / "config.json").read_text())
    assert written["max_position_embeddings"] == written["text_config"]["max_position_embeddings"] == 8192
    assert written["rope_theta"] == written["text_config"]["rope_theta"] == 10000.0


def test_gguf_multimodal_projector_is_refused(tmp_path, workdir):
    import gguf
    import numpy as np

    source = tmp_path / "mmproj-model-f16.gguf"
    writer = gguf.GGUFWriter(str(source), "clip")
    writer.add_tensor("v.patch_embd.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = tree_hash(source)
    assert_refused(run("extend", source, "--to", 8192), "multimodal projector (mmproj", workdir)
    assert tree_hash(source) == before
    report = json.loads(run("inspect", source, "--json").stdout)
    assert "mmproj" in report["cannot_extend_reason"]


def test_docs_family_table_is_the_family_table():
    import re

    text = (ROOT / "docs" / "runtimes.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9_]+)` \| (4\.\d+\.\d+) \|", text, flags=re.M))
    assert rows == {model_type: family.min_transformers for model_type, family in rope.FAMILIES.items()}


@pytest.mark.parametrize("name", ["llava", "mistral3", "gemma3_unscaled"])
@pytest.mark.parametrize("method", ["yarn", "ntk"])
def test_wrapper_takes_every_method_in_its_language_model(name, method, tmp_path, workdir):
    """yarn and ntk go where linear goes: into text_config, proven by transformers through the
    text model's config; the vision tower and the wrapper's top level are left alone."""
    window, theta, _, _ = WRAPPED[name]
    config = wrapper_fixture(name, "5.24.0")
    source = write_wrapper(tmp_path / name, config, window)
    before = tree_hash(source)
    result = run("extend", source, "--to", 2 * window, "--method", method, "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["self_check"]["ok"] is True
    written = json.loads((workdir / "out" / "config.json").read_text())
    assert written["vision_config"] == config["vision_config"]
    assert "rope_scaling" not in written and "rope_parameters" not in written
    text = written["text_config"]
    if method == "yarn":
        scaling = text["rope_scaling"]
        assert (scaling["rope_type"] if "rope_type" in scaling else scaling["type"]) == "yarn"
        assert scaling["factor"] == 2.0 and scaling["original_max_position_embeddings"] == window
    else:
        assert text["rope_theta"] > theta * 2  # s^(d/(d-2)) with s = 2 is above 2
    assert tree_hash(source) == before
