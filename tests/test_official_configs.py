"""config.json files in the shape the official checkpoints publish them (tests/data/official/):
read as transformers reads them (class defaults for what they leave out), extended without
losing keys picli does not model, refused with the real reason (issue 19)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from picli import rope
from picli.errors import CannotExtend, NotACheckpoint
from picli.rope.methods.yarn import yarn_attention_factor, yarn_inverse_frequencies
from tests.helpers import assert_clean_error, read_in, run, tree_hash, write_checkpoint

DATA = Path(__file__).resolve().parent / "data" / "official"


def official(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def source(tmp_path: Path, name: str, config: dict | None = None, window: int | None = None) -> Path:
    return write_checkpoint(tmp_path / name, config or official(name), tokenizer_max=window)


# --- class defaults -------------------------------------------------------------------------

@pytest.mark.parametrize("name, target, factor", [("gemma-3-4b-pt", 262144, 16.0), ("llava-1.5-7b-hf", 8192, 2.0)])
def test_official_wrappers_with_minimal_text_config_extend(name, target, factor, tmp_path, workdir):
    """Their text_config leaves head_dim / num_attention_heads to the class: once refused as
    'fix config.json'."""
    checkpoint = source(tmp_path, name)
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", target, "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan"]["factor"] == factor and payload["self_check"]["ok"] is True
    text = json.loads((workdir / "out" / "config.json").read_text())["text_config"]
    # Read through the class, written as the file was: no class default is copied in.
    assert "head_dim" not in text and "num_attention_heads" not in text
    assert text["max_position_embeddings"] == target
    assert tree_hash(checkpoint) == before


def test_inspect_says_which_values_came_from_the_class(tmp_path):
    checkpoint = source(tmp_path, "gemma-3-4b-pt")
    report = json.loads(run("inspect", checkpoint, "--json").stdout)
    # Gemma3TextConfig's head_dim is 256 whatever the hidden size (2560 / 8 would be 320).
    assert report["rope"]["head_dim"] == 256
    defaults = report["rope"]["defaults"]
    assert defaults["head_dim"]["value"] == 256 and "Gemma3TextConfig" in defaults["head_dim"]["source"]
    assert defaults["num_attention_heads"]["value"] == 8 and defaults["num_key_value_heads"]["value"] == 4
    assert "hidden_size" not in defaults  # the file gives it
    # KV cache from the class's shape (4 kv heads x head_dim 256, 34 layers, sliding layers
    # at their 1024 window): without the class's heads and head_dim it would be 0.
    assert report["kv_cache_bytes"]["131072"] > 2 * 4 * 256 * 2 * 131072
    human = run("inspect", checkpoint)
    assert "class defaults" in human.stdout and "Gemma3TextConfig" in human.stdout


def test_llava_reads_llamaconfig_defaults():
    state = rope.read_state(official("llava-1.5-7b-hf"))
    assert (state.head_dim, state.window, state.theta) == (128, 4096, 10000.0)
    assert state.defaults["hidden_size"]["value"] == 4096 and "LlamaConfig" in state.defaults["hidden_size"]["source"]


def test_unknown_class_is_said_not_blamed_on_the_file():
    config = {"model_type": "mystery_lm", "rope_theta": 10000.0, "max_position_embeddings": 4096}
    with pytest.raises(Exception) as raised:
        rope.read_state(config)
    assert "no config class for model_type 'mystery_lm'" in raised.value.message
    assert "fix config.json" not in raised.value.hint


# --- keys picli does not model survive (gpt-oss truncate) ------------------------------------

def test_gpt_oss_stacked_yarn_keeps_truncate_and_transformers_computes_it(tmp_path, workdir):
    checkpoint = source(tmp_path, "gpt-oss-20b")
    result = run("extend", checkpoint, "--to", 262144, "--method", "yarn", "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan"]["factor"] == 64.0 and payload["self_check"]["ok"] is True
    assert any("truncate: false" in warning and "GGUF" in warning for warning in payload["plan"]["warnings"])
    written = json.loads((workdir / "out" / "config.json").read_text())
    for block in (written["rope_scaling"], written["rope_parameters"]):
        assert block["truncate"] is False and block["original_max_position_embeddings"] == 4096
    assert written["rope_scaling"]["rope_type"] == "yarn"  # the key newer classes index


def test_yarn_truncate_false_differs_from_truncated():
    truncated = rope.yarn_inverse_frequencies(150000.0, 64, 32.0, 4096)
    exact = rope.yarn_inverse_frequencies(150000.0, 64, 32.0, 4096, truncate=False)
    moved = [abs(a - b) / b for a, b in zip(truncated, exact) if abs(a - b) > 1e-12 * b]
    assert len(moved) >= 5 and max(moved) > 0.5


def test_dropping_truncate_fails_the_self_check(tmp_path, workdir, monkeypatch):
    """The old writer rebuilt the block from scratch: transformers then truncates, and the
    self-check (which compares with what the plan means, truncate included) must see it."""
    from picli.rope.methods.yarn import Yarn

    checkpoint = source(tmp_path, "gpt-oss-20b")
    monkeypatch.setattr(Yarn, "kept", lambda self, current: {})
    monkeypatch.setattr(Yarn, "parameters", lambda self, plan, current, request: {
        "factor": plan.factor, "original_max_position_embeddings": plan.original_window, "kept": {"truncate": False},
        "beta_fast": 32.0, "beta_slow": 1.0})
    assert_clean_error(run("extend", checkpoint, "--to", 262144, "--method", "yarn", "-o", workdir / "out"),
                       "self-check failed")
    assert not (workdir / "out").exists()


def test_inspect_check_says_gguf_cannot_express_truncate(tmp_path):
    report = json.loads(run("inspect", source(tmp_path, "gpt-oss-20b"), "--check", "--json").stdout)
    assert any("llama.cpp" in text and "truncate" in text for text in report["check"]["disagreements"])


# --- a default-valued attention_factor (OLMo 3) ---------------------------------------------

def test_olmo3_attention_factor_is_the_default_written_out(tmp_path, workdir):
    checkpoint = source(tmp_path, "olmo-3-7b")
    result = run("extend", checkpoint, "--to", 131072, "--method", "yarn", "-o", workdir / "out", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["self_check"]["ok"] is True
    written = json.loads((workdir / "out" / "config.json").read_text())
    full = written["rope_parameters"]["full_attention"]
    assert full["factor"] == 16.0 and full["original_max_position_embeddings"] == 8192
    assert "attention_factor" not in full and "attention_factor" not in written["rope_scaling"]  # recomputed


@pytest.mark.parametrize("value, default", [(1.2079441541679836, True), (1.2079, True), (1.208, True),
                                            (1.2080, True), (1.20801, False), (1.3, False), (1.21, True)])
def test_attention_factor_tolerance_follows_the_written_digits(value, default):
    # 0.1 ln 8 + 1 = 1.20794415...: 1.208 rounds to it at 3 decimals, 1.20801 does not at 5.
    from picli.rope.methods.yarn import is_default_attention_factor

    assert is_default_attention_factor(value, 8.0) is default
    assert math.isclose(0.1 * math.log(8) + 1, 1.2079441541679836)


def test_a_custom_attention_factor_stays_refused(tmp_path, workdir):
    config = official("olmo-3-7b")
    config["rope_scaling"]["attention_factor"] = 1.3
    assert_clean_error(run("extend", source(tmp_path, "olmo", config), "--to", 131072, "--method", "yarn", "-o",
                           workdir / "out"), "custom attention factor")


# --- Llama 4 and the order of refusals ------------------------------------------------------

def test_llama4_is_refused_with_its_reasons_even_with_only_config_json(tmp_path, workdir):
    checkpoint = source(tmp_path, "llama-4-scout-17b-16e")
    first = assert_clean_error(run("extend", checkpoint, "--to", 1 << 24), "Llama 4")
    for reason in ("llama3 scaling", "chunked-attention", "no RoPE"):
        assert reason in first
    for weights in checkpoint.glob("*.safetensors"):
        weights.unlink()
    assert "Llama 4" in assert_clean_error(run("extend", checkpoint, "--to", 1 << 24), "llama3 scaling")
    report = json.loads(run("inspect", checkpoint, "--json").stdout)
    assert report["can_extend"] is False and "chunked-attention" in report["cannot_extend_reason"]


def test_a_hub_model_is_refused_by_its_config_before_its_weights_download(tmp_path, workdir, monkeypatch):
    """`picli extend meta-llama/Llama-4-Scout-...` must not download 200 GB to say no."""
    import huggingface_hub

    from picli.checkpoint import METADATA_PATTERNS

    snapshot = source(tmp_path, "llama-4-scout-17b-16e")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **_):
        calls.append(allow_patterns)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_clean_error(run("extend", "meta-llama/Llama-4-Scout-17B-16E", "--to", 1 << 24), "Llama 4")
    assert calls == [METADATA_PATTERNS]


def test_architecture_refusal_comes_before_missing_weights(tmp_path, workdir):
    checkpoint = source(tmp_path, "phi-4-mini-instruct")
    for weights in checkpoint.glob("*.safetensors"):
        weights.unlink()
    assert_clean_error(run("extend", checkpoint, "--to", 262144), "longrope")


# --- yarn on yarn with --from -----------------------------------------------------------------

SMOL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 8192,
        "rope_theta": 100000.0}


@pytest.fixture
def yarn_x15(tmp_path, workdir) -> Path:
    checkpoint = write_checkpoint(tmp_path / "smol", SMOL, tokenizer_max=8192)
    assert run("extend", checkpoint, "--to", 12288, "--method", "yarn", "-o", tmp_path / "x15").exit_code == 0
    return tmp_path / "x15"


def test_yarn_on_yarn_with_from_is_relative_to_the_pretraining_window(yarn_x15, workdir):
    result = run("extend", yarn_x15, "--to", 16384, "--from", 12288, "--method", "yarn", "-o", workdir / "out")
    assert result.exit_code == 0, result.stderr
    scaling = json.loads((workdir / "out" / "config.json").read_text())["rope_scaling"]
    assert scaling["factor"] == 2.0 and scaling["original_max_position_embeddings"] == 8192
    assert rope.predict_vllm(json.loads((workdir / "out" / "config.json").read_text()))["derived_max_model_len"] == 16384


def test_a_from_that_contradicts_the_yarn_config_is_refused(yarn_x15, workdir):
    assert_clean_error(run("extend", yarn_x15, "--to", 16384, "--from", 6144, "--method", "yarn", "-o",
                           workdir / "out"), "--from 6144 contradicts")


def test_the_self_check_catches_a_from_window_written_as_the_original(yarn_x15, workdir, monkeypatch):
    """The old planner: original_max_position_embeddings = --from (factor 2 over 12288: vLLM serves 24576)."""
    from picli.rope.methods.base import Start
    from picli.rope.methods.yarn import Yarn

    monkeypatch.setattr(Yarn, "compose", lambda self, current, request, warnings: Start(
        request.from_window, request.from_window, current.factor, current.theta))
    assert_clean_error(run("extend", yarn_x15, "--to", 16384, "--from", 12288, "--method", "yarn", "-o",
                           workdir / "out"), "self-check failed")
    assert not (workdir / "out").exists()


# --- a top-level theta that disagrees with rope_parameters -----------------------------------

SPLIT = {**SMOL, "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}


def test_inspect_check_reports_a_theta_split_and_fails(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "split", SPLIT)
    result = run("inspect", checkpoint, "--check")
    assert result.exit_code == 1  # a verdict with its report, not an error: exit 1, no Error line
    assert "check failed" in result.stderr and "Error" not in result.stderr
    report = json.loads(run("inspect", checkpoint, "--check", "--json").stdout)
    assert report["check"]["ok"] is False
    text = " ".join(report["check"]["disagreements"])
    assert "10000 (read by transformers 4.x)" in text and "500000 (read by transformers 5.x)" in text


def test_extend_refuses_a_theta_split_and_writes_nothing(tmp_path, workdir):
    checkpoint = write_checkpoint(tmp_path / "split", SPLIT)
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 16384, "-o", workdir / "out")
    assert_clean_error(result, "top-level rope_theta 10000")
    assert "Hint: set rope_theta" in result.stderr
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before


# --- M-RoPE and yarn: vLLM reads it otherwise (docs/runtimes.md, "M-RoPE and yarn") ------------

# The block Qwen2.5-VL's model card recommends for long text (QwenLM/Qwen2.5-VL README,
# "Processing Long Texts"), in place of the released mrope block.
QWEN25_VL_CARD_YARN = {"type": "yarn", "mrope_section": [16, 24, 24], "factor": 4,
                       "original_max_position_embeddings": 32768}


@pytest.mark.parametrize("name", ["qwen2.5-vl-7b-instruct", "qwen3-vl-8b-instruct"])
def test_yarn_on_mrope_is_refused_naming_vllm(name, tmp_path, workdir):
    """Once refused with linear's reason ("linear PI ... does not describe it"), which is not
    why yarn is: transformers and llama.cpp read yarn with mrope_section alike, vLLM does not."""
    checkpoint = source(tmp_path, name)
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 262144, "--method", "yarn", "-o", workdir / "out")
    first = assert_clean_error(result, "M-RoPE")
    assert "vLLM" in first and "4 x original_max_position_embeddings" in first and "linear PI" not in first
    assert "Hint: for transformers or llama.cpp alone" in result.stderr
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before
    report = json.loads(run("inspect", checkpoint, "--json").stdout)
    assert any(line.startswith("--method yarn: ") and "vLLM" in line for line in report["warnings"])
    # linear (the default) keeps its own reason.
    assert "linear PI of a single window" in assert_clean_error(run("extend", checkpoint, "--to", 262144), "M-RoPE")
    with pytest.raises(CannotExtend, match="vLLM"):
        rope.plan_config(official(name), 262144, "yarn")


def test_transformers_reads_the_card_yarn_block_as_plain_yarn():
    """What docs/runtimes.md cites for transformers: the Qwen2.5-VL rotary class builds yarn's
    frequencies and attention factor from the model card's block, mrope_section only regroups them."""
    import torch
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    config = {**official("qwen2.5-vl-7b-instruct"), "max_position_embeddings": 131072,
              "rope_scaling": dict(QWEN25_VL_CARD_YARN)}
    text = Qwen2_5_VLConfig(**config).get_text_config()
    embedding = Qwen2_5_VLRotaryEmbedding(text)
    expected = torch.tensor(yarn_inverse_frequencies(1e6, 128, 4.0, 32768))
    assert embedding.rope_type == "yarn" and embedding.mrope_section == [16, 24, 24]
    assert torch.allclose(embedding.inv_freq.double(), expected.double(), rtol=1e-5)
    assert embedding.attention_scaling == pytest.approx(yarn_attention_factor(4.0))


def test_vllm_mrope_ramp_moves_the_pairs_docs_runtimes_states():
    """vLLM's ramp at 4 x the original window (its MRotaryEmbedding cache length): the numbers
    docs/runtimes.md gives for Qwen2.5-VL-7B (theta 1e6, head_dim 128, factor 4, 32768)."""
    ours = yarn_inverse_frequencies(1e6, 128, 4.0, 32768)
    vllm = yarn_inverse_frequencies(1e6, 128, 4.0, 4 * 32768)
    moved = [abs(b - a) / a for a, b in zip(ours, vllm) if abs(b - a) / a > 1e-9]
    assert len(ours) == 64 and len(moved) == 23 and max(moved) == pytest.approx(1.2353, abs=1e-4)


# --- SmolLM3: layers without RoPE ------------------------------------------------------------

def test_smollm3_rope_layers_are_counted_as_its_class_reads_them():
    """Every 4th SmolLM3 layer has no RoPE (no_rope_layers 0): nothing there to extend."""
    from transformers import SmolLM3Config

    config = official("smollm3-3b")
    assert rope.rope_layers(config) == {"rope": 27, "layers": 36, "source": "no_rope_layers"}
    # Left out, the list is the class's fill-in from no_rope_layer_interval (and the class's layer count).
    for interval in (None, 3):
        bare = {key: value for key, value in config.items() if key not in ("no_rope_layers", "no_rope_layer_interval",
                                                                         "num_hidden_layers", "layer_types")}
        if interval:
            bare["no_rope_layer_interval"] = interval
        counted = rope.rope_layers(bare)
        assert counted["rope"] == sum(SmolLM3Config(**bare).no_rope_layers) == (24 if interval else 27)
        assert counted["layers"] == 36 and "no_rope_layer_interval" in counted["source"]
    assert rope.rope_layers(official("llava-1.5-7b-hf")) is None
    with pytest.raises(NotACheckpoint, match="no_rope_layers must be a list of 0 and 1"):
        rope.rope_layers({**config, "no_rope_layers": [1, 2]})


def test_inspect_says_how_many_smollm3_layers_use_rope(tmp_path):
    checkpoint = source(tmp_path, "smollm3-3b")
    report = json.loads(run("inspect", checkpoint, "--json").stdout)
    assert report["rope"]["rope_layers"] == {"rope": 27, "layers": 36, "source": "no_rope_layers"}
    shown = " ".join(run("inspect", checkpoint).stdout.split())
    assert "RoPE layers 27 of 36 (no_rope_layers); the 9 without RoPE are unaffected by the extension" in shown


# --- every official shape: what picli does with it ----------------------------------------------

@pytest.mark.parametrize("name, needle", [("qwen3-vl-8b-instruct", "M-RoPE"), ("qwen2.5-vl-7b-instruct", "M-RoPE"),
                                          ("phi-4-mini-instruct", "longrope"),
                                          ("llama-4-scout-17b-16e", "Llama 4")])
def test_official_shapes_that_are_refused_say_why(name, needle):
    assert needle in rope.refusal(official(name)).message


@pytest.mark.parametrize("name, theta, window", [("smollm3-3b", 5e6, 65536), ("granite-3.3-8b-instruct", 1e7, 131072),
                                                 ("ministral-8b-instruct-2410", 1e8, 32768),
                                                 ("mistral-small-3.1-24b-instruct-2503", 1e9, 131072)])
def test_official_shapes_plan(name, theta, window):
    config = official(name)
    plan = rope.plan_config(config, 2 * window)
    text = rope.language_config(plan.config)
    assert plan.factor == 2.0 and text["rope_theta"] == theta and text["max_position_embeddings"] == 2 * window


# --- what picli writes reads back right in the old transformers releases ---------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, target, method, version, expected", [
    ("llava-1.5-7b-hf", 8192, "linear", "4.44.2", {"theta": 10000.0, "type": "linear", "factor": 2.0}),
    ("llava-1.5-7b-hf", 8192, "linear", "4.57.1", {"theta": 10000.0, "type": "linear", "factor": 2.0}),
    ("gemma-3-4b-pt", 262144, "linear", "4.57.1", {"theta": 1e6, "type": "linear", "factor": 16.0,
                                                   "local_theta": 10000.0}),
    ("gpt-oss-20b", 262144, "yarn", "4.57.1", {"theta": 150000.0, "type": "yarn", "factor": 64.0}),
    ("olmo-3-7b", 131072, "yarn", "4.57.1", {"theta": 500000.0, "type": "yarn", "factor": 16.0}),
])
def test_old_transformers_read_outputs_of_official_shapes(name, target, method, version, expected, tmp_path, workdir):
    result = run("extend", source(tmp_path, name), "--to", target, "--method", method, "-o", workdir / "out")
    assert result.exit_code == 0, result.stderr
    read = read_in(version, workdir / "out")
    assert read["window"] == target and {key: read[key] for key in expected} == expected, read
