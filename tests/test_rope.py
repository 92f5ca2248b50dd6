"""The config rules of docs/design.md §2, as pure functions, and the runtime predictions held
against the installed transformers."""

from __future__ import annotations

import copy

import pytest

from picli import rope
from picli.errors import CannotExtend, NotACheckpoint
from tests.helpers import FAMILY_CONFIGS, REFUSED_CONFIGS


def plan(name: str, target: int, **options) -> rope.ConfigPlan:
    return rope.plan_config(copy.deepcopy(FAMILY_CONFIGS[name]), target, **options)


def test_llama_v4_gets_both_schemas_agreeing():
    result = plan("llama_v4", 8192)
    config = result.config
    assert result.factor == 4.0 and isinstance(result.factor, float)
    assert config["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    assert config["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert config["rope_theta"] == 10000.0
    assert config["max_position_embeddings"] == 8192
    assert ("max_position_embeddings", 2048, 8192) in result.changes


def test_v5_only_file_gets_top_level_theta():
    # Without top-level rope_theta, 4.x (and 5.x once rope_scaling exists) would use 10000.
    config = plan("llama_v5", 16384).config
    assert config["rope_theta"] == 500000.0
    assert config["rope_parameters"]["rope_theta"] == 500000.0
    assert config["rope_scaling"]["factor"] == 4.0


def test_missing_theta_uses_family_default():
    config = plan("llama_no_theta", 4096).config
    assert config["rope_theta"] == 10000.0 and config["rope_parameters"]["factor"] == 2.0


def test_int_theta_is_written_as_float():
    config = plan("qwen3", 81920).config
    assert isinstance(config["rope_theta"], float) and config["rope_theta"] == 1e6
    assert config["rope_scaling"] == {"type": "linear", "factor": 2.0}


def test_existing_linear_scaling_composes():
    result = plan("llama_linear", 16384)
    assert result.previous_factor == 2.0
    assert result.factor == 8.0  # 2 * 16384 / 4096
    assert result.original_window == 2048
    assert any("existing linear factor" in text for text in result.warnings)


def test_recorded_window_decides_composition():
    # picli recorded that this checkpoint kept max_position_embeddings at the original 2048.
    config = copy.deepcopy(FAMILY_CONFIGS["llama_linear"])
    config["max_position_embeddings"] = 2048
    result = rope.plan_config(config, 16384, recorded_window=4096)
    assert result.factor == 8.0


def test_from_window_overrides_config():
    result = plan("llama_v4", 16384, from_window=4096)
    assert result.factor == 4.0 and result.current_window == 4096


def test_keep_max_position_original():
    config = plan("llama_v4", 8192, keep_max_position=True).config
    assert config["max_position_embeddings"] == 2048 and config["rope_scaling"]["factor"] == 4.0


def test_gemma3_nested_scales_only_full_attention():
    config = plan("gemma3_text", 65536).config
    assert config["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 2.0,
                                                           "rope_theta": 1000000.0}
    assert config["rope_parameters"]["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    # gemma3's 4.x config indexes rope_scaling["rope_type"].
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert config["rope_theta"] == 1e6 and config["rope_local_base_freq"] == 10000.0


def test_gemma3_v4_style_file_becomes_nested():
    config = plan("gemma3_text_v4", 65536).config
    assert config["rope_parameters"]["full_attention"]["factor"] == 2.0
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert "factor" not in config["rope_parameters"]["sliding_attention"]


def test_gpt_neox_partial_rotary_keeps_family_keys():
    result = plan("gpt_neox", 8192)
    config = result.config
    assert config["rotary_pct"] == 0.25 and config["rotary_emb_base"] == 10000.0
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert config["rope_theta"] == 10000.0 and config["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert rope.read_state(config).rotary_dim == 4  # head_dim 16 * 0.25


def test_phi_partial_rotary_at_top_level():
    config = plan("phi", 4096).config
    assert config["partial_rotary_factor"] == 0.5
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.5


@pytest.mark.parametrize("name", sorted(REFUSED_CONFIGS))
def test_refusals_name_the_reason(name):
    config, reason = REFUSED_CONFIGS[name]
    with pytest.raises(CannotExtend) as excinfo:
        rope.plan_config(copy.deepcopy(config), 1 << 20)
    assert reason in excinfo.value.message
    assert "\n" not in excinfo.value.message and excinfo.value.hint


def test_force_replaces_other_scheme_from_pretraining_window():
    config, _ = REFUSED_CONFIGS["llama3_scaled"]
    result = rope.plan_config(copy.deepcopy(config), 32768, force=True)
    assert result.factor == 4.0  # 32768 / original 8192, not stacked on llama3's 8
    assert result.config["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0}
    assert any("--force" in text for text in result.warnings)


@pytest.mark.parametrize("target", [2048, 1024])
def test_target_not_larger_is_refused(target):
    with pytest.raises(CannotExtend, match="not larger than the current window"):
        plan("llama_v4", target)


def test_disagreement_is_detected_and_fixed():
    config = copy.deepcopy(FAMILY_CONFIGS["llama_v5"])
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}  # stale legacy dict
    state = rope.read_state(config)
    assert state.disagreement and "rope_scaling wins" in state.disagreement
    assert state.theta == 10000.0  # what 5.x really uses: rope_scaling wins, no top-level theta
    # a linear factor with no original window is ambiguous (test_rope_types): --from says which reading
    result = rope.plan_config(config, 16384, from_window=4096)
    assert rope.read_state(result.config).disagreement is None


def test_malformed_rope_values_are_user_errors():
    config = copy.deepcopy(FAMILY_CONFIGS["llama_v4"])
    config["rope_theta"] = "ten thousand"
    with pytest.raises(NotACheckpoint, match="rope_theta must be a finite number > 0"):
        rope.plan_config(config, 4096)


def test_inverse_frequencies_reference():
    frequencies = rope.inverse_frequencies(10000.0, 8, factor=2.0)
    assert frequencies == pytest.approx([0.5, 0.05, 0.005, 0.0005])


def test_vllm_over_claims_hf_convention():
    extended = plan("llama_v4", 8192).config
    view = rope.predict_vllm(extended)
    assert view["derived_max_model_len"] == 32768 and view["flag"] == "--max-model-len 8192"
    original_style = plan("llama_v4", 8192, keep_max_position=True).config
    assert rope.predict_vllm(original_style)["derived_max_model_len"] == 8192


def test_transformers4_prediction_flags_v5_only_files():
    view = rope.predict_transformers4(FAMILY_CONFIGS["llama_v5"])
    assert view["theta"] == 10000.0  # the class default, not the file's 500000
    assert any("no top-level rope_theta" in note for note in view["notes"])


# --- parity: the rules above against what the installed transformers 5 really reads ----

def _transformers_view(config: dict) -> tuple[float, str, float]:
    from transformers import AutoConfig

    loaded = AutoConfig.for_model(**copy.deepcopy(config))
    params = loaded.rope_parameters
    if "full_attention" in params:
        params = params["full_attention"]
    return float(params["rope_theta"]), params["rope_type"], float(params.get("factor", 1.0))


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_transformers5_prediction_matches_transformers(name):
    for config in (FAMILY_CONFIGS[name], plan(name, 1 << 17).config):
        predicted = rope.predict_transformers5(config)
        theta, rope_type, factor = _transformers_view(config)
        assert (predicted["theta"], predicted["rope_type"], predicted["factor"]) == (theta, rope_type, factor)


def test_transformers5_prediction_matches_on_stale_legacy_dict():
    config = copy.deepcopy(FAMILY_CONFIGS["llama_v5"])
    config["rope_scaling"] = {"type": "linear", "factor": 2.0}
    predicted = rope.predict_transformers5(config)
    assert (predicted["theta"], predicted["rope_type"], predicted["factor"]) == _transformers_view(config)


def test_rope_package_stays_pure():
    """picli.rope is config dicts in, data out: importing it pulls in no heavy library, and no
    module of it reaches for files, checkpoints or the commands that use it."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; import picli.rope; "
            "print([m for m in ('torch', 'transformers', 'huggingface_hub', 'gguf', 'numpy', 'picli.files', "
            "'picli.checkpoint', 'picli.extend', 'picli.provenance') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    package = Path(rope.__file__).parent
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert node.module == "errors", f"{module.name} imports picli.{node.module}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                raise AssertionError(f"{module.name} opens a file")
