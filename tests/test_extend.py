"""`picli extend` end to end through the CLI, on tiny checkpoints of every family.

Every output is reloaded through transformers and its effective RoPE compared with a plain
reference computed here (not with picli's own code); the source is hashed before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import (EXTEND_EXPECTED, FAMILY_CONFIGS, REFUSED_CONFIGS, assert_clean_error, reference_inv_freq,
                           run, tree_hash, write_checkpoint)



def effective(path: Path) -> dict[str, torch.Tensor]:
    from tests.helpers import rotary_class_inv_freqs as effective_inv_freqs

    return effective_inv_freqs(path)


@pytest.mark.parametrize("name", sorted(EXTEND_EXPECTED))
def test_extend_every_family(name, family_checkpoints, workdir):
    source = family_checkpoints[name]
    before = tree_hash(source)
    target, theta, rotary_dim, factor = EXTEND_EXPECTED[name]
    output = workdir / "out"
    result = run("extend", source, "--to", target, "-o", output, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["plan"]["factor"] == factor
    assert payload["self_check"]["ok"] is True

    frequencies = effective(output)
    full = frequencies.get("all", frequencies.get("full_attention"))
    torch.testing.assert_close(full, reference_inv_freq(theta, rotary_dim, factor), rtol=1e-6, atol=0)
    if "sliding_attention" in frequencies:  # Gemma 3's local layers keep their theta, unscaled
        torch.testing.assert_close(frequencies["sliding_attention"], reference_inv_freq(10000.0, 16, 1.0),
                                   rtol=1e-6, atol=0)
    config = json.loads((output / "config.json").read_text())
    assert config["max_position_embeddings"] == target
    assert json.loads((output / "tokenizer_config.json").read_text())["model_max_length"] == target
    assert json.loads((output / "generation_config.json").read_text())["max_length"] == target
    assert (output / "README.md").read_text() == "# a model card the user wrote\n"
    assert tree_hash(source) == before


def test_picli_json_and_last_json(family_checkpoints, workdir):
    source = family_checkpoints["llama_v4"]
    result = run("extend", source, "--to", "8k")
    assert result.exit_code == 0, result.stderr
    output = workdir / "llama_v4-8k"  # default name: <name>-<N/1024>k in the cwd
    record = json.loads((output / "picli.json").read_text())
    assert record["source"] == {"path": str(source)}
    assert record["rope"]["factor"] == 4.0 and record["rope"]["original_window"] == 2048
    assert record["rope"]["target_window"] == 8192
    changed = {change["key"]: change for change in record["changes"]["config.json"]}
    assert changed["max_position_embeddings"]["before"] == 2048
    assert record["versions"]["transformers"].startswith("5.")
    assert record["command"].startswith("picli ")
    last = json.loads((workdir / ".picli" / "last.json").read_text())
    assert last["path"] == str(output)
    assert "Self-check passed" in result.stdout


def test_extending_an_extended_checkpoint_composes_and_keeps_history(family_checkpoints, workdir):
    first = workdir / "x4"
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", first).exit_code == 0
    second = workdir / "x8"
    result = run("extend", first, "--to", 16384, "-o", second, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["plan"]["factor"] == 8.0
    record = json.loads((second / "picli.json").read_text())
    assert record["history"][0]["rope"]["factor"] == 4.0
    torch.testing.assert_close(effective(second)["all"], reference_inv_freq(10000.0, 16, 8.0), rtol=1e-6, atol=0)


def test_original_mode_composes_through_the_record(family_checkpoints, workdir):
    first = workdir / "orig"
    assert run("extend", family_checkpoints["llama_v4"], "--to", 8192, "-o", first,
               "--max-position-embeddings", "original").exit_code == 0
    assert json.loads((first / "config.json").read_text())["max_position_embeddings"] == 2048
    result = run("extend", first, "--to", 16384, "-o", workdir / "again", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["plan"]["factor"] == 8.0  # not 4 * 16384 / 2048


def test_dry_run_writes_nothing(family_checkpoints, workdir):
    result = run("extend", family_checkpoints["llama_v4"], "--to", 8192, "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "dry run" in result.stdout and "rope_scaling" in result.stdout
    assert list(workdir.iterdir()) == []


def test_dry_run_json_lists_changes(family_checkpoints, workdir):
    result = run("extend", family_checkpoints["mistral"], "--to", 65536, "--dry-run", "--json")
    payload = json.loads(result.stdout)
    keys = {change["key"] for change in payload["plan"]["changes"]["config.json"]}
    assert {"rope_scaling", "rope_parameters", "max_position_embeddings"} <= keys
    assert payload["dry_run"] is True and list(workdir.iterdir()) == []


def test_weights_modes(family_checkpoints, workdir):
    source = family_checkpoints["llama_v4"]
    assert run("extend", source, "--to", 4096, "-o", workdir / "hard", "--weights", "hardlink").exit_code == 0
    assert os.stat(workdir / "hard" / "model.safetensors").st_ino == os.stat(source / "model.safetensors").st_ino
    # Non-weight files are always real copies, so editing them never reaches the source.
    assert os.stat(workdir / "hard" / "README.md").st_ino != os.stat(source / "README.md").st_ino
    assert run("extend", source, "--to", 4096, "-o", workdir / "sym", "--weights", "symlink").exit_code == 0
    link = workdir / "sym" / "model.safetensors"
    assert link.is_symlink() and link.resolve() == (source / "model.safetensors").resolve()
    assert run("extend", source, "--to", 4096, "-o", workdir / "copy").exit_code == 0
    copied = workdir / "copy" / "model.safetensors"
    assert not copied.is_symlink() and os.stat(copied).st_ino != os.stat(source / "model.safetensors").st_ino
    assert copied.read_bytes() == (source / "model.safetensors").read_bytes()


def test_sharded_checkpoint_and_bin_files_are_carried(tmp_path, workdir):
    from safetensors.numpy import save_file
    import numpy as np

    source = write_checkpoint(tmp_path / "sharded", FAMILY_CONFIGS["llama_v4"])
    (source / "model.safetensors").unlink()
    weight_map = {}
    for index in (1, 2):
        shard = f"model-0000{index}-of-00002.safetensors"
        save_file({f"layer{index}.weight": np.ones((4, 4), dtype=np.float32)}, str(source / shard))
        weight_map[f"layer{index}.weight"] = shard
    (source / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (source / "pytorch_model.bin").write_bytes(b"not a pickle; picli must never unpickle it")
    (source / "chat_template.jinja").write_text("{{ messages }}")
    before = tree_hash(source)
    result = run("extend", source, "--to", 4096, "-o", workdir / "out")
    assert result.exit_code == 0, result.stderr
    copied = {p.name for p in (workdir / "out").iterdir()}
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin", "chat_template.jinja", "picli.json", "config.json"} <= copied
    assert tree_hash(source) == before


def test_missing_shard_is_an_error(tmp_path, workdir):
    source = write_checkpoint(tmp_path / "broken", FAMILY_CONFIGS["llama_v4"])
    (source / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    assert_clean_error(run("extend", source, "--to", 4096), "missing")


def test_force_replaces_existing_output(family_checkpoints, workdir):
    """Only an output picli wrote (picli.json there): anything else is refused (tests/test_safety.py)."""
    output = workdir / "out"
    assert run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", output).exit_code == 0
    (output / "stale.txt").write_text("old")
    result = run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", output)
    assert_clean_error(result, "already exists")
    assert "--force" in result.stderr
    assert (output / "stale.txt").exists()
    assert run("extend", family_checkpoints["llama_v4"], "--to", 4096, "-o", output, "--force").exit_code == 0
    assert not (output / "stale.txt").exists() and (output / "picli.json").exists()


def test_interrupted_run_leaves_nothing(checkpoint, workdir, monkeypatch):
    import picli.extend

    calls = []

    def copy_then_interrupt(src, dst, mode):
        calls.append(src)
        Path(dst).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(picli.extend, "copy_file", copy_then_interrupt)
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert result.exit_code == 130 and calls
    assert list(workdir.iterdir()) == []  # no output, no staging directory
    assert tree_hash(checkpoint) == before


def test_disk_full_leaves_nothing(checkpoint, workdir, monkeypatch):
    import errno

    import picli.extend

    def disk_full(src, dst, mode):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(picli.extend, "copy_file", disk_full)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert_clean_error(result, "disk full")
    assert list(workdir.iterdir()) == []


def test_failed_self_check_writes_nothing(checkpoint, workdir, monkeypatch):
    import picli.self_check

    real = picli.self_check.effective_inv_freqs

    def off_by_a_bit(path):
        frequencies = real(path)
        return {key: value * 1.01 for key, value in frequencies.items()} if "picli-tmp" in str(path) else frequencies

    monkeypatch.setattr(picli.self_check, "effective_inv_freqs", off_by_a_bit)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert_clean_error(result, "self-check failed")
    assert list(workdir.iterdir()) == []


# --- every bad input: one line, a hint, exit 1, no traceback, source untouched ----------

def test_missing_path(workdir):
    assert_clean_error(run("extend", "./no-such-model", "--to", 4096), "no such file or directory")


def test_not_a_model_dir(tmp_path, workdir):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run("extend", tmp_path / "empty", "--to", 4096), "not a model directory")


def test_malformed_config(tmp_path, workdir):
    source = write_checkpoint(tmp_path / "bad", FAMILY_CONFIGS["llama_v4"])
    (source / "config.json").write_text('{"model_type": "llama",')
    before = tree_hash(source)
    assert_clean_error(run("extend", source, "--to", 4096), "not valid JSON")
    assert tree_hash(source) == before


@pytest.mark.parametrize("name", sorted(REFUSED_CONFIGS))
def test_refused_families(name, tmp_path, workdir):
    config, reason = REFUSED_CONFIGS[name]
    source = write_checkpoint(tmp_path / name, config)
    before = tree_hash(source)
    assert_clean_error(run("extend", source, "--to", 1 << 20), reason)
    assert tree_hash(source) == before and list(workdir.iterdir()) == []


def test_force_replaces_llama3_scheme_with_plain_pi(tmp_path, workdir):
    config, _ = REFUSED_CONFIGS["llama3_scaled"]
    source = write_checkpoint(tmp_path / "llama31", config)
    result = run("extend", source, "--to", 32768, "-o", workdir / "out", "--force", "--json")
    assert result.exit_code == 0, result.stderr
    assert "replacing llama3" in result.stderr
    torch.testing.assert_close(effective(workdir / "out")["all"], reference_inv_freq(500000.0, 16, 4.0),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("target", ["2048", "1024"])
def test_target_not_larger(checkpoint, workdir, target):
    assert_clean_error(run("extend", checkpoint, "--to", target), "not larger than the current window")


@pytest.mark.parametrize("target", ["abc", "-5", "0", "1.5k"])
def test_bad_target(checkpoint, workdir, target):
    assert_clean_error(run("extend", checkpoint, "--to", target), "--to must be")


def test_output_exists(checkpoint, workdir):
    (workdir / "taken").mkdir()
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", workdir / "taken"), "already exists")


def test_output_inside_source(checkpoint, workdir):
    before = tree_hash(checkpoint)
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", checkpoint / "out"), "inside the source")
    assert tree_hash(checkpoint) == before


def test_source_inside_output_even_with_force(checkpoint, workdir):
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 4096, "-o", checkpoint.parent, "--force")
    assert_clean_error(result, "inside the output")
    assert tree_hash(checkpoint) == before


def test_read_only_destination(checkpoint, workdir):
    # As root, permission bits do not stop writes; /sys refuses everyone.
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", "/sys/fs/picli-out"), "cannot write to")


def test_corrupt_safetensors_header(checkpoint, workdir):
    (checkpoint / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_clean_error(run("extend", checkpoint, "--to", 4096), "corrupt safetensors header")
    assert_clean_error(run("inspect", checkpoint), "corrupt safetensors header")


def test_bad_weights_mode(checkpoint, workdir):
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "--weights", "move"), "--weights must be one of")


def test_debug_shows_traceback(checkpoint, workdir, monkeypatch):
    monkeypatch.setenv("PICLI_DEBUG", "1")
    result = run("extend", checkpoint, "--to", "1024")
    assert result.exit_code == 1 and result.exception is not None


@pytest.mark.parametrize("name", sorted(EXTEND_EXPECTED))
def test_self_check_frequencies_equal_the_model_rotary_class(name, family_checkpoints, workdir):
    """picli's self-check reads configs through transformers without importing modeling code;
    here it must agree with each family's own rotary embedding, source and output."""
    from picli.self_check import effective_inv_freqs

    output = workdir / "out"
    assert run("extend", family_checkpoints[name], "--to", EXTEND_EXPECTED[name][0], "-o", output).exit_code == 0
    for path in (family_checkpoints[name], output):
        fast, truth = effective_inv_freqs(path), effective(path)
        assert fast.keys() == truth.keys()
        for layer_type in truth:
            torch.testing.assert_close(fast[layer_type], truth[layer_type], rtol=1e-6, atol=0)


def test_generation_config_is_carried_when_unchanged(tmp_path, workdir):
    source = write_checkpoint(tmp_path / "gen", FAMILY_CONFIGS["llama_v4"], tokenizer_max=100000)
    (source / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert run("extend", source, "--to", 4096, "-o", workdir / "out").exit_code == 0
    assert json.loads((workdir / "out" / "generation_config.json").read_text()) == {"eos_token_id": 2}
    assert json.loads((workdir / "out" / "tokenizer_config.json").read_text()) == {"model_max_length": 100000}


def test_training_checkpoints_are_not_carried(tmp_path, workdir):
    source = write_checkpoint(tmp_path / "trained", FAMILY_CONFIGS["llama_v4"])
    (source / "checkpoints" / "step-0000002").mkdir(parents=True)
    (source / "checkpoints" / "step-0000002" / "optimizer.bin").write_bytes(b"x" * 100)
    (source / "metrics.jsonl").write_text('{"step": 1}\n')
    assert run("extend", source, "--to", 4096, "-o", workdir / "out").exit_code == 0
    assert not (workdir / "out" / "checkpoints").exists() and (workdir / "out" / "metrics.jsonl").exists()
