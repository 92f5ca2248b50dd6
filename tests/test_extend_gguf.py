"""`picli extend file.gguf`: GGUF in, GGUF out, tensor bytes unchanged."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from picli.gguf_io import read_gguf
from tests.helpers import assert_clean_error, make_gguf, run, tree_hash


def test_gguf_extend_writes_scaling_keys(tmp_path, workdir):
    source = tmp_path / "tiny.Q4_K_M.gguf"
    make_gguf(source)
    before = tree_hash(source)
    result = run("extend", str(source), "--to", "8192", "--json")
    assert result.exit_code == 0, result.stderr
    output = workdir / "tiny.Q4_K_M-8k.gguf"
    assert json.loads(result.stdout)["plan"]["output"] == str(output)
    meta = read_gguf(output).metadata
    assert meta["llama.context_length"] == 8192
    assert meta["llama.rope.scaling.type"] == "linear"
    assert meta["llama.rope.scaling.factor"] == 4.0
    assert meta["llama.rope.scaling.original_context_length"] == 2048
    assert meta["llama.rope.freq_base"] == 10000.0
    source_tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(source)).tensors}
    for tensor in gguf.GGUFReader(str(output)).tensors:
        np.testing.assert_array_equal(np.array(tensor.data), source_tensors[tensor.name])
    record = json.loads((workdir / "tiny.Q4_K_M-8k.gguf.picli.json").read_text())
    assert record["rope"]["factor"] == 4.0
    assert json.loads((workdir / ".picli" / "last.json").read_text())["path"] == str(output)
    assert tree_hash(source) == before


def test_gguf_extend_again_composes(tmp_path, workdir):
    source = tmp_path / "tiny.gguf"
    make_gguf(source)
    assert run("extend", str(source), "--to", "4096", "-o", "x2.gguf").exit_code == 0
    result = run("extend", "x2.gguf", "--to", "16384", "-o", "x8.gguf", "--json")
    assert result.exit_code == 0, result.stderr
    meta = read_gguf(workdir / "x8.gguf").metadata
    assert meta["llama.rope.scaling.factor"] == 8.0
    assert meta["llama.rope.scaling.original_context_length"] == 2048


def test_gguf_without_rope_is_refused(tmp_path, workdir):
    source = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(source), "gpt2")
    writer.add_context_length(1024)
    writer.add_tensor("token_embd.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_clean_error(run("extend", str(source), "--to", "4096"), "no RoPE metadata")
    assert list(workdir.iterdir()) == []


def test_not_a_gguf(tmp_path, workdir):
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"definitely not gguf")
    assert_clean_error(run("extend", str(source), "--to", "4096"), "not a valid GGUF")


# ---------------------------------------------------------------------------------------
# Split GGUFs, an impossible rotary dimension, and inspect agreeing with extend.


def _inspect(path) -> tuple[dict, str]:
    """The JSON report, and its warnings as one text."""
    result = run("inspect", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    return report, "\n".join(report["warnings"])


def test_split_gguf_inspect_reads_the_model_from_shard_1(tmp_path):
    """gguf-py's split writer, as llama.cpp's gguf-split: the model's metadata only in shard 1."""
    make_gguf(tmp_path / "tiny.gguf", split_max_tensors=2)
    first, second = tmp_path / "tiny-00001-of-00002.gguf", tmp_path / "tiny-00002-of-00002.gguf"
    assert first.is_file() and second.is_file()
    for given, number in ((first, 1), (second, 2)):
        report, stderr = _inspect(given)
        assert f"shard {number} of 2" in stderr and "all 2 shards found" in stderr
        assert report["architecture"] == "llama" and report["rope"]["window"] == 2048
        assert report["files"] == [first.name, second.name] and report["shards"] == 2
        # Every tensor of the model, not one shard's share: 4 x 6 + 7 + 3 x 5.
        assert report["parameters"] == 46
        assert report["size_bytes"] == first.stat().st_size + second.stat().st_size
        assert report["can_extend"] is False
        assert "split GGUF (2 shards)" in report["cannot_extend_reason"]
        assert "llama-gguf-split --merge tiny-00001-of-00002.gguf tiny.gguf" in report["cannot_extend_reason"]


def test_split_gguf_inspect_lists_missing_shards(tmp_path):
    make_gguf(tmp_path / "tiny.gguf", split_max_tensors=1)  # three tensors: three shards
    (tmp_path / "tiny-00002-of-00003.gguf").unlink()
    report, stderr = _inspect(tmp_path / "tiny-00003-of-00003.gguf")
    assert "shard 3 of 3" in stderr and "missing: tiny-00002-of-00003.gguf" in stderr
    assert report["files"] == ["tiny-00001-of-00003.gguf", "tiny-00003-of-00003.gguf"] and report["shards"] == 3
    (tmp_path / "tiny-00001-of-00003.gguf").unlink()
    result = run("inspect", str(tmp_path / "tiny-00003-of-00003.gguf"))
    assert_clean_error(result, "shard 1 (tiny-00001-of-00003.gguf), which holds the model's metadata, is missing")


def test_split_gguf_extend_refuses_every_shard(tmp_path, workdir):
    """One shard rewritten would still say split.count = 2: refused, with the merge command."""
    make_gguf(tmp_path / "tiny.gguf", split_max_tensors=2)
    before = tree_hash(tmp_path)
    for shard in ("tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"):
        result = run("extend", str(tmp_path / shard), "--to", "8192", "-o", "out.gguf")
        assert_clean_error(result, "split GGUF")
        assert "llama-gguf-split --merge tiny-00001-of-00002.gguf tiny.gguf" in result.stderr
    assert list(workdir.iterdir()) == [] and tree_hash(tmp_path) == before


def test_rope_dimension_count_beyond_head_dim_is_refused(tmp_path, workdir):
    """64 / 4 heads = 16 channels per head; RoPE over 32 of them cannot be."""
    shape = {"llama.embedding_length": ("add_uint32", 64), "llama.attention.head_count": ("add_uint32", 4),
             "llama.block_count": ("add_uint32", 2), "llama.rope.dimension_count": ("add_uint32", 32)}
    source = tmp_path / "bad.gguf"
    make_gguf(source, kv=shape)
    report, stderr = _inspect(source)
    assert report["can_extend"] is False and "inconsistent" in report["cannot_extend_reason"]
    assert "dimension_count 32 exceeds the head dimension 16" in stderr
    for method in ("linear", "yarn", "ntk"):
        result = run("extend", str(source), "--to", "8192", "-o", "out.gguf", "--method", method)
        assert_clean_error(result, "llama.rope.dimension_count 32 exceeds the head dimension 16")
    assert list(workdir.iterdir()) == []
    # key_length, when present, is the head dimension: 32 channels, and RoPE over all 32 is fine.
    good = tmp_path / "good.gguf"
    make_gguf(good, kv={**shape, "llama.attention.key_length": ("add_uint32", 32)})
    assert _inspect(good)[0]["can_extend"] is True
    assert run("extend", str(good), "--to", "8192", "-o", "out.gguf").exit_code == 0


def test_an_mrope_gguf_is_refused_as_its_config_json_is(tmp_path, workdir):
    """Qwen2-VL's GGUF (rope.dimension_sections) gets the answer its config.json gets, every method."""
    source = tmp_path / "vl.gguf"
    make_gguf(source, kv={"llama.rope.dimension_sections": ("add_array", [16, 24, 24, 0])})
    report, _ = _inspect(source)
    assert report["can_extend"] is False and "M-RoPE" in report["cannot_extend_reason"]
    for method in ("linear", "yarn", "ntk"):
        result = run("extend", str(source), "--to", "8192", "-o", "out.gguf", "--method", method)
        assert_clean_error(result, "uses M-RoPE (llama.rope.dimension_sections [16, 24, 24, 0])")
    assert list(workdir.iterdir()) == []


AGREEMENT_CASES = {
    "unknown scaling type": {"llama.rope.scaling.type": ("add_string", "su-rope"),
                             "llama.rope.scaling.factor": ("add_float32", 2.0)},
    "no context length": {"llama.context_length": None},
    "longrope": {"llama.rope.scaling.type": ("add_string", "longrope"),
                 "llama.rope.scaling.factor": ("add_float32", 4.0)},
    "linear": {"llama.rope.scaling.type": ("add_string", "linear"), "llama.rope.scaling.factor": ("add_float32", 2.0),
               "llama.rope.scaling.original_context_length": ("add_uint32", 1024)},
    "unscaled": {},
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_inspect_and_extend_agree(case, tmp_path, workdir):
    """inspect's "can extend" is extend's own decision: yes exactly when `picli extend --to 2x` succeeds,
    and its reason is extend's error."""
    source = tmp_path / "model.gguf"
    make_gguf(source, kv=AGREEMENT_CASES[case])
    report, _ = _inspect(source)
    result = run("extend", str(source), "--to", "8192", "-o", "out.gguf")
    assert report["can_extend"] is (result.exit_code == 0), (report, result.stderr)
    if result.exit_code:
        assert_clean_error(result, report["cannot_extend_reason"].split(" (")[0])
    assert report["can_extend"] is (case in ("linear", "unscaled"))
