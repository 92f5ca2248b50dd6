"""picli.textdata: where verify --perplexity and finetune --data read their text (a file, a folder,
JSON lines, hf:NAME through the optional datasets package), and its one-line errors."""

from __future__ import annotations

import json
import sys
import types

import pytest

from picli.errors import PicliError
from picli.textdata import Document, load_texts
from tests.helpers import ROOT, assert_clean_error, run


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Once upon a time.\n\nThe end.\n")
    assert load_texts(str(path)) == [Document(str(path), "Once upon a time.\n\nThe end.\n")]


def test_folder_reads_known_files_recursively_sorted_without_hidden(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.md").write_text("# ay")
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "sea one"}\n\n{"text": "sea two"}\n')
    (tmp_path / "sub" / "d.json").write_text(json.dumps([{"text": "dee"}, "plain string"]))
    (tmp_path / "sub" / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / ".git" / "notes.txt").write_text("git")
    (tmp_path / "table.csv").write_text("x,y")
    documents = load_texts(str(tmp_path))
    assert [d.text for d in documents] == ["# ay", "bee", "sea one", "sea two", "dee", "plain string"]
    assert documents[2].name == f"{tmp_path / 'sub' / 'c.jsonl'}:1" and documents[3].name.endswith("c.jsonl:3")
    assert [d.text for d in load_texts(str(tmp_path), max_documents=3)] == ["# ay", "bee", "sea one"]


def test_jsonl_with_a_custom_field(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "content": f"document {i}"}) for i in range(3)))
    assert [d.text for d in load_texts(str(path), text_field="content")] == ["document 0", "document 1", "document 2"]


def test_jsonl_bad_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(PicliError, match=r"data\.jsonl line 3 is not valid JSON"):
        load_texts(str(path))


def test_jsonl_missing_field_lists_the_fields_it_has(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "x", "id": 2}\n')
    with pytest.raises(PicliError, match=r"line 2 has no text field 'text' \(fields: body, id\)") as error:
        load_texts(str(path))
    assert "--text-field" in error.value.hint


@pytest.mark.parametrize("value, kind", [("5", "number"), ("null", "null"), ('["a"]', "list")])
def test_jsonl_field_that_is_not_a_string_says_so(tmp_path, value, kind):
    # Not "no text field 'text' (fields: text)": the field is there, its value is not text.
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"text": ' + value + ', "id": 2}\n')
    with pytest.raises(PicliError, match=rf"data\.jsonl line 2: field 'text' is a {kind}, not a string") as error:
        load_texts(str(path))
    assert "no text field" not in error.value.message


def test_missing_path(tmp_path):
    with pytest.raises(PicliError, match="no such file or folder") as error:
        load_texts(str(tmp_path / "nope.txt"))
    assert error.value.hint


@pytest.mark.parametrize("make", ["empty_folder", "blank_file", "empty_records"])
def test_empty_data(tmp_path, make):
    target = tmp_path / "data"
    if make == "empty_folder":
        target.mkdir()
    elif make == "blank_file":
        target = tmp_path / "blank.txt"
        target.write_text("\n \n")
    else:
        target = tmp_path / "empty.jsonl"
        target.write_text('{"text": ""}\n{"text": "   "}\n')
    with pytest.raises(PicliError, match="no text to use") as error:
        load_texts(str(target))
    assert error.value.hint


def test_hub_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(PicliError, match="needs the datasets package") as error:
        load_texts("hf:emozilla/pg19-test:test")
    assert error.value.hint == "pip install 'picli[data]' (or pip install datasets)"


def test_hub_without_datasets_is_one_line_from_the_cli(tiny_model_dir, monkeypatch, workdir):
    monkeypatch.setitem(sys.modules, "datasets", None)
    result = run("verify", str(tiny_model_dir), "--perplexity", "--data",
                 "hf:emozilla/pg19-test:test", "--no-save")
    line = assert_clean_error(result, "reading hf:emozilla/pg19-test:test needs the datasets")
    assert result.stderr.splitlines()[0] == line and line.startswith("Error: reading hf:")
    assert "picli[data]" in result.stderr


def test_datasets_is_an_optional_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["data"] == ["datasets>=2.18"]
    assert not any(requirement.startswith("datasets") for requirement in project["dependencies"])


def fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_hub_offline_and_not_cached(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PicliError, match="not in the local cache and HF_HUB_OFFLINE=1"):
        load_texts("hf:emozilla/pg19-test")


def test_hub_dataset_rows(monkeypatch):
    calls = []

    class Split:
        column_names = ["title", "text"]

        def __getitem__(self, column):
            return {"title": ["A", "B", "C"], "text": ["alpha", "", "gamma"]}[column]

    def load_dataset(name, split):
        calls.append((name, split))
        return Split()

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    documents = load_texts("hf:org/books:test", max_documents=3)
    assert calls == [("org/books", "test[:3]")]
    assert documents == [Document("hf:org/books:test[0]", "alpha"), Document("hf:org/books:test[2]", "gamma")]
    assert load_texts("hf:org/books")[0].name == "hf:org/books[0]" and calls[-1] == ("org/books", "train")
    with pytest.raises(PicliError, match=r"no column 'body' \(columns: title, text\)"):
        load_texts("hf:org/books", text_field="body")


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1\x15\x04\x15\xff\xfe\x80")
    with pytest.raises(PicliError, match="is not UTF-8 text"):
        load_texts(str(path))
