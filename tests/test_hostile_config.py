"""Hostile values in config.json, GGUF metadata and options: one `Error:` line, never a
traceback, never a checkpoint written from a value that makes no sense (issue 14).

Each case edits a tiny checkpoint (conftest.write_checkpoint) and runs every command that
reads it; each asserts exit code 1, exactly one `Error:` line naming the key and the value,
no traceback, nothing written, and the source unchanged (conftest.tree_hash). Several of
these exited 0 with a wrong checkpoint before: a negative window or factor was written as
is, `rope_theta: 0` became 10000, `--to 10^12` wrote factor 4.9e8.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import pytest

from tests.helpers import FAMILY_CONFIGS, assert_clean_error, make_gguf, run, tree_hash, write_checkpoint

NAN, INF = float("nan"), float("inf")
LIMIT = "2,147,483,647"  # picli.rope.MAX_WINDOW, as the error prints it


def edited(base: str, edits: dict) -> dict:
    """FAMILY_CONFIGS[base] with dotted keys set ("rope_scaling.factor": -4.0)."""
    config = copy.deepcopy(FAMILY_CONFIGS[base])
    for dotted, value in edits.items():
        *parents, leaf = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def linear(base: str, where: str, factor) -> dict:
    """A linear scaling dict in `where` ("rope_scaling" or "rope_parameters") with `factor`."""
    config = copy.deepcopy(FAMILY_CONFIGS[base])
    if where == "rope_scaling":
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    else:
        config["rope_parameters"] = {**config["rope_parameters"], "rope_type": "linear", "factor": factor}
    return config


# (id, config or raw config.json text, fragments the Error: line must hold)
RAW_INF = "1e999"  # Python's json reads this as inf: a number "beyond float range"
CASES = [
    # The window: negative and zero were written into the output with exit 0.
    ("window negative", edited("llama_v4", {"max_position_embeddings": -4096}), ["max_position_embeddings", "-4096"]),
    ("window zero", edited("llama_v4", {"max_position_embeddings": 0}), ["max_position_embeddings", "got 0"]),
    ("window fractional", edited("llama_v4", {"max_position_embeddings": 2048.5}), ["max_position_embeddings", "2048.5"]),
    ("window NaN", edited("llama_v4", {"max_position_embeddings": NAN}), ["max_position_embeddings", "nan"]),
    ("window string", edited("llama_v4", {"max_position_embeddings": "2048"}), ["max_position_embeddings", "'2048'"]),
    ("window 1e999", json.dumps(FAMILY_CONFIGS["llama_v4"]).replace('"max_position_embeddings": 2048',
                                                                    f'"max_position_embeddings": {RAW_INF}'),
     ["max_position_embeddings", "inf"]),
    ("window past 2^31", edited("llama_v4", {"max_position_embeddings": 2**40}), ["max_position_embeddings", LIMIT]),
    # Theta: 0 was read as "missing" and silently became 10000.
    ("theta zero", edited("llama_v4", {"rope_theta": 0}), ["rope_theta", "got 0"]),
    ("theta negative", edited("llama_v4", {"rope_theta": -10000.0}), ["rope_theta", "-10000.0"]),
    ("theta NaN", edited("llama_v4", {"rope_theta": NAN}), ["rope_theta", "nan"]),
    ("theta Infinity", edited("llama_v4", {"rope_theta": INF}), ["rope_theta", "inf"]),
    ("theta 1e999", json.dumps(FAMILY_CONFIGS["llama_v4"]).replace('"rope_theta": 10000.0', f'"rope_theta": {RAW_INF}'),
     ["rope_theta", "inf"]),
    ("theta string", edited("llama_v4", {"rope_theta": "1e4"}), ["rope_theta", "'1e4'"]),
    ("theta in rope_parameters zero", edited("llama_v5", {"rope_parameters.rope_theta": 0}),
     ["rope_parameters.rope_theta", "got 0"]),
    # An existing linear factor: -4 / -8 were composed and written with exit 0.
    ("factor negative", linear("llama_v4", "rope_scaling", -4.0), ["rope_scaling.factor", "-4.0"]),
    ("factor zero", linear("llama_v4", "rope_scaling", 0), ["rope_scaling.factor", "got 0"]),
    ("factor NaN", linear("llama_v4", "rope_scaling", NAN), ["rope_scaling.factor", "nan"]),
    ("factor Infinity", linear("llama_v4", "rope_scaling", INF), ["rope_scaling.factor", "inf"]),
    ("factor string", linear("llama_v4", "rope_scaling", "2"), ["rope_scaling.factor", "'2'"]),
    ("factor negative in rope_parameters", linear("llama_v5", "rope_parameters", -8.0),
     ["rope_parameters.factor", "-8.0"]),
    ("original window junk", edited("llama_v4", {"rope_scaling": {"type": "yarn", "factor": 4.0,
                                                                   "original_max_position_embeddings": "abc"}}),
     ["rope_scaling.original_max_position_embeddings", "'abc'"]),
    ("rope type a number", edited("llama_v4", {"rope_scaling": {"type": 5, "factor": 2.0}}), ["RoPE type", "5"]),
    # Head geometry.
    ("head_dim zero", edited("qwen3", {"head_dim": 0}), ["head_dim", "got 0"]),
    ("head_dim negative", edited("qwen3", {"head_dim": -16}), ["head_dim", "-16"]),
    ("head_dim fractional", edited("qwen3", {"head_dim": 16.5}), ["head_dim", "16.5"]),
    ("head_dim string", edited("qwen3", {"head_dim": "16"}), ["head_dim", "'16'"]),
    ("hidden_size string", edited("llama_v4", {"hidden_size": "64"}), ["hidden_size", "'64'"]),
    ("heads zero", edited("llama_v4", {"num_attention_heads": 0}), ["num_attention_heads", "got 0"]),
    ("hidden smaller than heads", edited("llama_v4", {"hidden_size": 2}), ["hidden_size 2", "smaller"]),
    ("layers string", edited("llama_v4", {"num_hidden_layers": "2"}), ["num_hidden_layers", "'2'"]),
    ("kv heads NaN", edited("llama_v4", {"num_key_value_heads": NAN}), ["num_key_value_heads", "nan"]),
    # Partial rotary.
    ("partial zero", edited("phi", {"partial_rotary_factor": 0}), ["partial_rotary_factor", "got 0"]),
    ("partial above one", edited("phi", {"partial_rotary_factor": 1.5}), ["partial_rotary_factor", "1.5"]),
    ("partial NaN", edited("phi", {"partial_rotary_factor": NAN}), ["partial_rotary_factor", "nan"]),
    ("rotary_pct zero", edited("gpt_neox", {"rotary_pct": 0}), ["rotary_pct", "got 0"]),
    ("rotary_emb_base zero", edited("gpt_neox", {"rotary_emb_base": 0}), ["rotary_emb_base", "got 0"]),
    # Per-layer-type (nested, Gemma 3) RoPE.
    ("nested entry a string", edited("gemma3_text", {"rope_parameters.full_attention": "linear"}),
     ["rope_parameters.full_attention", "'linear'"]),
    ("nested sliding a string", edited("gemma3_text", {"rope_parameters.sliding_attention": "default"}),
     ["rope_parameters.sliding_attention", "'default'"]),
    ("nested theta zero", edited("gemma3_text", {"rope_parameters.full_attention.rope_theta": 0}),
     ["rope_parameters.full_attention.rope_theta", "got 0"]),
    ("nested sliding theta string", edited("gemma3_text", {"rope_parameters.sliding_attention.rope_theta": "1e4"}),
     ["rope_parameters.sliding_attention.rope_theta", "'1e4'"]),
    ("nested factor NaN", edited("gemma3_text", {"rope_parameters.full_attention.rope_type": "linear",
                                                 "rope_parameters.full_attention.factor": NAN}),
     ["rope_parameters.full_attention.factor", "nan"]),
    ("local base freq zero", edited("gemma3_text_v4", {"rope_local_base_freq": 0}), ["rope_local_base_freq", "got 0"]),
    # model_type junk.
    ("model_type a number", edited("llama_v4", {"model_type": 5}), ["model_type", "got 5"]),
    ("model_type a list", edited("llama_v4", {"model_type": ["llama"]}), ["model_type", "['llama']"]),
    ("model_type 10k characters", edited("llama_v4", {"model_type": "x" * 10_000}), ["model_type", "10002 characters"]),
    # The file itself.
    ("nested 100k deep", '{"model_type": "llama", "a": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested too deeply"]),
    ("not UTF-8", b"\xff\xfe" + json.dumps(FAMILY_CONFIGS["llama_v4"]).encode(), ["not UTF-8", "0xff"]),
    ("top level a list", "[1, 2]", ["does not hold a JSON object"]),
    ("integer of 5000 digits", '{"model_type": "llama", "max_position_embeddings": 1' + "0" * 5000 + "}",
     ["cannot be parsed", "digits"]),
]

COMMANDS = {
    "inspect": lambda model, work: ["inspect", model],
    "extend": lambda model, work: ["extend", model, "--to", "16384", "-o", work / "out"],
    "extend --dry-run": lambda model, work: ["extend", model, "--to", "16384", "-o", work / "out", "--dry-run"],
    "push --dry-run": lambda model, work: ["push", "someone/model-16k", model, "--dry-run"],
    "card": lambda model, work: ["card", model],
}


def write_hostile(directory: Path, content) -> Path:
    base = content if isinstance(content, dict) else FAMILY_CONFIGS["llama_v4"]
    write_checkpoint(directory, base, tokenizer_max=2048)
    if isinstance(content, str):
        (directory / "config.json").write_text(content)
    elif isinstance(content, bytes):
        (directory / "config.json").write_bytes(content)
    return directory


@pytest.fixture(scope="module")
def hostile_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {name: write_hostile(root / f"case{index}", content) for index, (name, content, _) in enumerate(CASES)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name,fragments", [(name, fragments) for name, _, fragments in CASES],
                         ids=[name for name, _, _ in CASES])
def test_hostile_config_is_one_line_error(name, fragments, command, hostile_checkpoints, workdir):
    source = hostile_checkpoints[name]
    before = tree_hash(source)
    result = run(*COMMANDS[command](source, workdir))
    assert_clean_error(result, *fragments)
    assert tree_hash(source) == before
    assert not (workdir / "out").exists()
    assert not (workdir / ".picli").exists()


def test_theta_zero_is_not_read_as_the_default(checkpoint, workdir):
    """The worst case of the `or` chains: theta 0 came out as 10000 with exit 0."""
    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("rope_theta")
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 0}
    (checkpoint / "config.json").write_text(json.dumps(config))
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", "8192", "-o", workdir / "out", "--json")
    assert_clean_error(result, "rope_parameters.rope_theta", "got 0")
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before


def test_linear_factor_below_one_is_refused(checkpoint, workdir):
    config = json.loads((checkpoint / "config.json").read_text())
    config["rope_scaling"] = {"type": "linear", "factor": 0.5}
    (checkpoint / "config.json").write_text(json.dumps(config))
    result = run("extend", checkpoint, "--to", "8192", "-o", workdir / "out")
    assert_clean_error(result, "0.5", "below 1")
    assert not (workdir / "out").exists()
    # inspect still describes it: a factor below 1 is valid config, just not something to compose PI on.
    assert run("inspect", checkpoint, "--json").exit_code == 0


@pytest.mark.parametrize("edit,fragments", [
    ({"sliding_window": "16"}, ["sliding_window", "'16'"]),
    ({"layer_types": "full_attention"}, ["layer_types", "'full_attention'"]),
], ids=["sliding_window string", "layer_types string"])
def test_kv_cache_fields(edit, fragments, checkpoint):
    """Read only by inspect's KV-cache estimate (range("2") and min(w, "16") raised before)."""
    config = {**json.loads((checkpoint / "config.json").read_text()), **edit}
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert_clean_error(run("inspect", checkpoint), *fragments)


def test_unknown_model_type_fails_the_self_check_in_one_line(checkpoint, workdir):
    """A model_type transformers does not know (custom code): nothing can prove the result."""
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "my_custom_llama"
    (checkpoint / "config.json").write_text(json.dumps(config))
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", "8192", "-o", workdir / "out")
    assert_clean_error(result, "cannot read", "cannot check the result")
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before


# ---------------------------------------------------------------------------------------
# --to / --from: the window limit.


@pytest.mark.parametrize("to,fragments", [
    (str(10**12), ["--to", LIMIT, "int32"]),
    ("9" * 500, ["--to", LIMIT, "502 characters"]),
    (str(2**32 + 5), ["--to", LIMIT]),
    (str(2**31), ["--to", LIMIT]),
    ("4194304k", ["--to", LIMIT]),  # 2^32 tokens spelled in k
], ids=["1e12", "500 digits", "past 2^32", "2^31", "in k"])
def test_to_past_the_limit(to, fragments, checkpoint, workdir):
    result = run("extend", checkpoint, "--to", to, "-o", workdir / "out")
    assert_clean_error(result, *fragments)
    assert not (workdir / "out").exists()


def test_to_at_the_limit_is_planned(checkpoint, workdir):
    result = run("extend", checkpoint, "--to", str(2**31 - 1), "-o", workdir / "out", "--dry-run", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["target_window"] == 2**31 - 1
    assert plan["factor"] == pytest.approx((2**31 - 1) / 2048)


def test_from_with_hundreds_of_digits(checkpoint, workdir):
    result = run("extend", checkpoint, "--to", "8192", "--from", "9" * 300, "-o", workdir / "out")
    assert_clean_error(result, "--from", LIMIT)


def test_core_refuses_a_target_past_the_limit():
    """The library path (no CLI parsing) refuses too: plan_config is the last gate."""
    from picli import rope
    from picli.errors import CannotExtend

    with pytest.raises(CannotExtend, match="2,147,483,647"):
        rope.plan_config(FAMILY_CONFIGS["llama_v4"], 10**12)


# ---------------------------------------------------------------------------------------
# The self-check must fail on non-finite values (max(0.0, nan) is 0.0).


def test_self_check_fails_on_nan_frequencies(checkpoint, workdir, monkeypatch):
    import torch

    from picli import extend, self_check
    from picli.errors import SelfCheckFailed

    plan = extend.plan_extend(str(checkpoint), 8192, output=workdir / "out")
    written = workdir / "written"
    written.mkdir()
    (written / "config.json").write_text(json.dumps(plan.new_files["config.json"]))
    real = self_check.effective_inv_freqs

    def poisoned(directory):
        frequencies = real(directory)
        if directory != checkpoint:  # the output's frequencies, as a broken transformers might give them
            frequencies = {name: torch.full_like(values, math.nan) for name, values in frequencies.items()}
        return frequencies

    assert self_check.self_check(written, checkpoint, plan)["ok"]  # the honest frequencies pass
    monkeypatch.setattr(self_check, "effective_inv_freqs", poisoned)
    with pytest.raises(SelfCheckFailed, match=r"output's inverse frequencies .* not finite \(nan\)"):
        self_check.self_check(written, checkpoint, plan)
    # The same check through the CLI: one line, nothing written.
    result = run("extend", checkpoint, "--to", "8192", "-o", workdir / "out")
    assert_clean_error(result, "not finite (nan)")
    assert not (workdir / "out").exists()


# ---------------------------------------------------------------------------------------
# finetune --lr: 0 meant "the default" (an `or` chain).


@pytest.mark.parametrize("lr", ["0", "-1e-5", "nan", "inf"])
def test_finetune_lr_refused_before_loading(lr, checkpoint, workdir):
    result = run("finetune", checkpoint, "--lr", lr, "--plan", "-o", workdir / "ft")
    assert_clean_error(result, "--lr must be a positive finite number")
    assert not (workdir / "ft").exists()


# ---------------------------------------------------------------------------------------
# GGUF metadata.


def deeply_nested_gguf(path: Path, depth: int) -> Path:
    """general.architecture, then one key holding arrays of arrays `depth` deep (hand-built:
    gguf's writer recurses too)."""
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    body = string("general.architecture") + struct.pack("<I", 8) + string("llama")
    body += string("llama.deep") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQ", 0, 0)
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + body
    path.write_bytes(data + b"\0" * (-len(data) % 32))  # the (empty) data section starts aligned
    return path


GGUF_CASES = [
    ("context length a string", {"llama.context_length": ("add_string", "4096")}, ["llama.context_length", "'4096'"]),
    ("context length an array", {"llama.context_length": ("add_array", [4096])}, ["llama.context_length", "[4096]"]),
    ("context length zero", {"llama.context_length": ("add_uint32", 0)}, ["llama.context_length", "got 0"]),
    ("freq_base a string", {"llama.rope.freq_base": ("add_string", "10000")}, ["llama.rope.freq_base", "'10000'"]),
    ("freq_base NaN", {"llama.rope.freq_base": ("add_float32", NAN)}, ["llama.rope.freq_base", "nan"]),
    ("factor zero", {"llama.rope.scaling.type": ("add_string", "linear"),
                     "llama.rope.scaling.factor": ("add_float32", 0.0)}, ["llama.rope.scaling.factor", "0.0"]),
    ("factor NaN", {"llama.rope.scaling.type": ("add_string", "linear"),
                    "llama.rope.scaling.factor": ("add_float32", NAN)}, ["llama.rope.scaling.factor", "nan"]),
    ("scaling type a number", {"llama.rope.scaling.type": ("add_uint32", 1)}, ["llama.rope.scaling.type", "got 1"]),
    ("original context a string", {"llama.rope.scaling.type": ("add_string", "linear"),
                                   "llama.rope.scaling.factor": ("add_float32", 2.0),
                                   "llama.rope.scaling.original_context_length": ("add_string", "x")},
     ["llama.rope.scaling.original_context_length", "'x'"]),
    ("head count a string", {"llama.attention.head_count": ("add_string", "4")}, ["llama.attention.head_count"]),
]
GGUF_COMMANDS = {
    "inspect": lambda model, work: ["inspect", model],
    "extend": lambda model, work: ["extend", model, "--to", "16384", "-o", work / "out.gguf"],
    "extend --dry-run": lambda model, work: ["extend", model, "--to", "16384", "-o", work / "out.gguf", "--dry-run"],
}


@pytest.mark.parametrize("command", sorted(GGUF_COMMANDS))
@pytest.mark.parametrize("kv,fragments", [(kv, fragments) for _, kv, fragments in GGUF_CASES],
                         ids=[name for name, _, _ in GGUF_CASES])
def test_hostile_gguf_metadata(kv, fragments, command, tmp_path, workdir):
    source = make_gguf(tmp_path / "model.gguf", kv)
    before = tree_hash(source)
    assert_clean_error(run(*GGUF_COMMANDS[command](source, workdir)), *fragments)
    assert tree_hash(source) == before
    assert not list(workdir.glob("out.gguf*"))


@pytest.mark.parametrize("command", sorted(GGUF_COMMANDS))
def test_gguf_arrays_nested_thousands_deep(command, tmp_path, workdir):
    source = deeply_nested_gguf(tmp_path / "deep.gguf", 5000)
    assert_clean_error(run(*GGUF_COMMANDS[command](source, workdir)), "not a valid GGUF file", "nested")


def test_gguf_shallow_nested_arrays_still_read(tmp_path):
    from picli.gguf_io import read_gguf

    info = read_gguf(deeply_nested_gguf(tmp_path / "shallow.gguf", 3))
    assert info.metadata["llama.deep"] == [[[[]]]]


def test_gguf_to_past_2_32(tmp_path, workdir):
    """The UINT32 context_length could not hold it: a ValueError traceback before."""
    source = make_gguf(tmp_path / "model.gguf")
    result = run("extend", source, "--to", str(2**32 + 5), "-o", workdir / "out.gguf")
    assert_clean_error(result, "--to", LIMIT, "uint32")
    assert not list(workdir.glob("out.gguf*"))


# Found by a random mutation run over config.json (inspect, extend --dry-run, --method):
# values read only by the runtime predictions or the report, after the RoPE checks.
FUZZ_FOUND = {
    "yarn original window a string": ({"rope_scaling": {"type": "yarn", "factor": 2.0,
                                                        "original_max_position_embeddings": "abc"}},
                                      "original_max_position_embeddings"),
    "yarn attention_factor a string": ({"rope_scaling": {"type": "yarn", "factor": 2.0,
                                                         "original_max_position_embeddings": 2048,
                                                         "attention_factor": "x"}}, "attention_factor"),
    "yarn mscale negative": ({"rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048,
                                               "mscale": -1, "mscale_all_dim": 1}}, "mscale"),
}


@pytest.mark.parametrize("case", sorted(FUZZ_FOUND))
def test_runtime_prediction_values_are_checked(case, tmp_path):
    edit, fragment = FUZZ_FOUND[case]
    source = write_checkpoint(tmp_path / "m", {**copy.deepcopy(FAMILY_CONFIGS["llama_v4"]), **edit}, tokenizer_max=2048)
    before = tree_hash(source)
    assert_clean_error(run("inspect", source), fragment)
    assert tree_hash(source) == before


@pytest.mark.parametrize("architectures", [1, float("nan"), {"a": 1}, [], [3]])
def test_junk_architectures_field_is_shown_as_unknown(architectures, tmp_path):
    source = write_checkpoint(tmp_path / "m", {**FAMILY_CONFIGS["llama_v4"], "architectures": architectures},
                              tokenizer_max=2048)
    result = run("inspect", source, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["architecture"] is None
