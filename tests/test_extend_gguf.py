"""`picli extend file.gguf`: GGUF in, GGUF out, tensor bytes unchanged."""

from __future__ import annotations

import json

import gguf
import numpy as np
from typer.testing import CliRunner

from picli.cli import app
from picli.gguf_io import read_gguf
from tests.helpers import assert_clean_error, make_gguf, tree_hash

runner = CliRunner()


def test_gguf_extend_writes_scaling_keys(tmp_path, workdir):
    source = tmp_path / "tiny.Q4_K_M.gguf"
    make_gguf(source)
    before = tree_hash(source)
    result = runner.invoke(app, ["extend", str(source), "--to", "8192", "--json"])
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
    assert runner.invoke(app, ["extend", str(source), "--to", "4096", "-o", "x2.gguf"]).exit_code == 0
    result = runner.invoke(app, ["extend", "x2.gguf", "--to", "16384", "-o", "x8.gguf", "--json"])
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
    assert_clean_error(runner.invoke(app, ["extend", str(source), "--to", "4096"]), "no RoPE metadata")
    assert list(workdir.iterdir()) == []


def test_not_a_gguf(tmp_path, workdir):
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"definitely not gguf")
    assert_clean_error(runner.invoke(app, ["extend", str(source), "--to", "4096"]), "not a valid GGUF")
