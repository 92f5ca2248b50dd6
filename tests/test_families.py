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
from typer.testing import CliRunner

from picli import rope
from picli.cli import app
from tests.conftest import TINY, rotary_class_inv_freqs, tree_hash, write_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
COMPAT_VERSIONS = ("4.44.2", "4.57.1")
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def reference_inv_freq(theta: float, rotary_dim: int, factor: float = 1.0) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return 1.0 / (theta ** exponents) / factor


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
    python = _python(version)
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
    assert cohere["rope_theta"] == 500000.0  # 5.x's default, now explicit for 4.x too
    assert any("4.x reads 10000" in warning for warning in extended["cohere"][2]["plan"]["warnings"])


READER = """
import json, sys
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
config = getattr(config, "text_config", None) or config
scaling = getattr(config, "rope_scaling", None) or {}
neox = config.model_type == "gpt_neox"
print(json.dumps({
    "theta": float(config.rotary_emb_base if neox else config.rope_theta),
    "partial": float(config.rotary_pct if neox else getattr(config, "partial_rotary_factor", 1.0) or 1.0),
    "type": scaling.get("rope_type", scaling.get("type")),
    "factor": scaling.get("factor"),
    "window": config.max_position_embeddings,
    "local_theta": getattr(config, "rope_local_base_freq", None),
}))
"""


def _python(version: str) -> Path:
    python = ROOT / f".venv-tf{version}" / "bin" / "python"
    if not python.exists():
        pytest.skip(f"side environment for transformers {version} not built (run `make test`)")
    return python


def read_in(version: str, directory: Path) -> dict:
    result = subprocess.run([str(_python(version)), "-c", READER, str(directory)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    assert checked >= (8 if version == "4.44.2" else len(extended))
