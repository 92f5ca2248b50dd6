"""picli's records: one owner (provenance.py), the default MODEL, where verify writes, and
hand-edited records that must give one line, not a traceback."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

import picli
from picli import provenance
from picli.checkpoint import resolve
from picli.errors import ModelNotFound
from tests.helpers import (FAMILY_CONFIGS, assert_clean_error, run, tree_hash, verify_file, verify_report,
                           write_checkpoint)


# --- one owner ------------------------------------------------------------------------

def test_every_command_records_the_command_line_the_same_way(tiny_model_dir, workdir, monkeypatch):
    """extend's picli.json and verify's picli-verify.json store the same thing: the command as
    typed, shell-quoted (a path with a space stays one argument when the line is run again)."""
    output = workdir / "my model"
    typed = {"extend": ["picli", "extend", str(tiny_model_dir), "--to", "1k", "-o", str(output)],
             "verify": ["picli", "verify", str(output), "--quick", "--length", "256", "--device", "cpu"]}
    for argv in typed.values():
        monkeypatch.setattr("sys.argv", argv)
        result = run(*argv[1:])
        assert result.exit_code == 0, result.stderr
    extended = json.loads((output / provenance.RECORD).read_text())
    verified = json.loads((output / provenance.VERIFY_RECORD).read_text())["runs"][0]
    quoted = f"'{output}'"
    assert extended["command"] == f"picli extend {tiny_model_dir} --to 1k -o {quoted}"
    assert verified["command"] == f"picli verify {quoted} --quick --length 256 --device cpu"


def test_only_provenance_spells_the_record_names():
    """No string in code outside provenance.py is a record's file name (help text may mention it)."""
    names = {"picli.json", ".picli.json", "picli-verify.json", "last.json"}
    offenders = []
    for path in Path(picli.__file__).parent.glob("*.py"):
        if path.name == "provenance.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert offenders == []


def test_one_verification_summary_from_the_full_record():
    report = verify_file(verify_report())
    summary = provenance.verification_summary(report)
    assert summary["created"] == report["created"] and summary["perplexity_data"] == "/data/pg19_book.txt"
    assert summary["model"] == {"path": "/abs/m", "source": None, "window": 8192,
                                "passkey_k_max": {"4096": 4056, "8192": 6114},
                                "passkey_k_largest": {"4096": 4056, "8192": 8152},
                                "passkey_lowest_success": {"4096": 1.0, "8192": 0.5},
                                "passkey_success": {"4096": 1.0, "8192": 0.625},
                                "perplexity": {"4096": 7.123, "8192": 6.877}, "stride": 256}
    assert summary["baseline"]["passkey_k_max"] == {"4096": 1014, "8192": 0}
    assert summary["notes"] == ["baseline: 4096, 8192 lie beyond"]
    assert summary["passkey_protocol"]["positions"] == 32


# --- the default MODEL ----------------------------------------------------------------

def test_resolve_none_is_the_last_output(tmp_path, workdir):
    with pytest.raises(ModelNotFound, match="no MODEL given"):
        resolve(None)
    model = write_checkpoint(tmp_path / "m", FAMILY_CONFIGS["llama_v4"])
    provenance.remember_last(model, "extend")
    said = []
    checkpoint = resolve(None, on_event=said.append)
    assert checkpoint.path == model.resolve() and checkpoint.kind == "hf"
    assert said == [{"kind": "message", "text": f"MODEL: {model.resolve()} (the last checkpoint picli wrote here)"}]
    (workdir / provenance.LAST).write_text("[1, 2]")  # a broken last.json is "none recorded", not a traceback
    with pytest.raises(ModelNotFound, match="no MODEL given"):
        resolve(None)


def test_card_without_model_uses_the_last_output(tmp_path, workdir):
    model = write_checkpoint(tmp_path / "m", FAMILY_CONFIGS["llama_v4"])
    provenance.remember_last(model, "extend")
    result = run("card", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert f"MODEL: {model.resolve()}" in result.stderr and "# m" in result.stdout


# --- hand-edited picli.json -----------------------------------------------------------

def _break_list(record: dict) -> str:
    return json.dumps([record])


def _break_factor(record: dict) -> str:
    return json.dumps({**record, "rope": {**record["rope"], "factor": "abc"}})


def _break_source(record: dict) -> str:
    return json.dumps({**record, "source": 5})


def _break_history(record: dict) -> str:
    return json.dumps({**record, "history": [{"rope": {"factor": None, "target_window": "2k"}}]})


BROKEN = {  # name -> (how the record is broken, what the one-line error says)
    "list": (_break_list, "holds a JSON list"),
    "factor": (_break_factor, '"rope.factor" should be a finite number above 0, found string "abc"'),
    "source": (_break_source, '"source" should be an object, found number 5'),
    "history": (_break_history, '"history[0].rope.target_window" should be a whole number'),
    "not-utf8": (lambda record: b"\xff\xfe" + json.dumps(record).encode("utf-16-le"), "is not UTF-8 text"),
    "invalid": (lambda record: json.dumps(record)[:-20], "is not valid JSON"),
}


@pytest.fixture(scope="module")
def picli_output(tmp_path_factory) -> Path:
    """A real `picli extend` output (2048 -> 8192) with a tokenizer, ready to push."""
    from picli.extend import apply_extend, plan_extend

    root = tmp_path_factory.mktemp("records")
    source = write_checkpoint(root / "src", FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048)
    (source / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    plan = plan_extend(str(source), 8192, output=root / "out")
    apply_extend(plan, command="picli extend src --to 8192")
    return plan.output


@pytest.fixture(params=sorted(BROKEN))
def broken(request, picli_output, tmp_path) -> tuple[Path, str]:
    model = Path(shutil.copytree(picli_output, tmp_path / "m"))
    damage, message = BROKEN[request.param]
    text = damage(json.loads((model / provenance.RECORD).read_text()))
    (model / provenance.RECORD).write_bytes(text if isinstance(text, bytes) else text.encode())
    return model, message


def test_broken_record_stops_extend(broken, workdir):
    model, message = broken
    before = tree_hash(model)
    result = run("extend", str(model), "--to", "16384", "-o", "out16")
    assert_clean_error(result, f"{model / provenance.RECORD}", message)
    assert "restore picli.json or delete it" in result.stderr
    assert tree_hash(model) == before and not (workdir / "out16").exists()


def test_broken_record_is_ignored_by_inspect_with_a_warning(broken):
    model, message = broken
    result = run("inspect", str(model), "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["provenance"] is None and report["rope"]["factor"] == 4.0  # config.json still speaks
    assert any(message in text and "ignored" in text for text in report["warnings"])
    table = run("inspect", str(model))
    assert table.exit_code == 0 and "Warning:" in table.stderr and "ignored" in table.stderr


def test_broken_record_stops_card_and_push(broken, workdir):
    model, message = broken
    before = tree_hash(model)
    assert_clean_error(run("card", str(model)), str(model / provenance.RECORD), message)
    assert_clean_error(run("push", "org/m", str(model), "--dry-run"), "not ready to publish",
                       str(model / provenance.RECORD), message)
    assert tree_hash(model) == before  # no README written


@pytest.mark.parametrize("edit, message", [
    (lambda record: record["model"]["passkey"]["results"][0].update(k_max="abc"), '"model.passkey.results"'),
    (lambda record: record.update(model={**record["model"], "window": "8k"}), '"model.window" should be a whole'),
])
def test_broken_verify_record_stops_card(picli_output, tmp_path, edit, message):
    model = Path(shutil.copytree(picli_output, tmp_path / "m"))
    record = verify_file(verify_report())
    edit(record)
    (model / provenance.VERIFY_RECORD).write_text(json.dumps(record))
    assert_clean_error(run("card", str(model)), str(model / provenance.VERIFY_RECORD), message)


# --- where verify writes --------------------------------------------------------------

def verify(*args: str):
    return run("verify", *args, "--quick", "--length", "256", "--device", "cpu")


def test_verify_leaves_a_users_checkpoint_alone_unless_asked(tiny_model_dir, tmp_path, workdir):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "mine"))
    before = tree_hash(model)
    result = verify(str(model))
    assert result.exit_code == 0, result.stderr
    assert "k_max" in result.stdout and tree_hash(model) == before
    said = " ".join(result.stderr.split())
    assert "picli did not write it" in said and "--save" in said and "-o FILE" in said

    result = verify(str(model), "-o", "numbers.json", "--json")
    assert result.exit_code == 0, result.stderr
    assert tree_hash(model) == before
    written = json.loads((workdir / "numbers.json").read_text())
    report = json.loads(result.stdout)
    assert written["model"]["passkey"] == report["model"]["passkey"] and {"created", "versions"} <= set(written)
    assert report["saved_to"] is None

    result = verify(str(model), "--save", "--json")
    assert result.exit_code == 0, result.stderr
    full = json.loads((model / provenance.VERIFY_RECORD).read_text())
    assert json.loads(result.stdout)["saved_to"] == str(model / provenance.VERIFY_RECORD)
    # The summary in picli.json is the one summary of the full record (its one run).
    assert full["format"] == 2 and len(full["runs"]) == 1
    assert json.loads((model / provenance.RECORD).read_text()) == {
        "verification": provenance.shown_summary(full["runs"])}


def test_verify_writes_into_picli_output_and_no_save_keeps_it_read_only(tiny_model_dir, workdir):
    assert run("extend", str(tiny_model_dir), "--to", "1024", "-o", "ext").exit_code == 0
    before = tree_hash(workdir / "ext")
    assert verify("ext", "--no-save").exit_code == 0
    assert tree_hash(workdir / "ext") == before
    result = verify("ext")
    assert result.exit_code == 0, result.stderr
    full = json.loads((workdir / "ext" / provenance.VERIFY_RECORD).read_text())
    record = json.loads((workdir / "ext" / provenance.RECORD).read_text())
    assert record["rope"]["factor"] == 2.0 and record["verification"] == provenance.shown_summary(full["runs"])


def test_verify_refuses_a_broken_record_before_measuring(picli_output, tmp_path, monkeypatch):
    model = Path(shutil.copytree(picli_output, tmp_path / "m"))
    (model / provenance.RECORD).write_text('{"source": 5}')
    import picli.modeling
    import picli.verify

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(picli.modeling, "load_model", never)
    assert_clean_error(verify(str(model)), str(model / provenance.RECORD), '"source" should be an object')
    # --no-save reads no record, so a broken one is no obstacle there (the fixture's stub
    # tokenizer cannot load, and the passkey lengths are checked with it before the weights).
    monkeypatch.setattr(picli.verify, "_check_passkey_lengths", lambda *args: None)
    assert "the model was loaded" in str(verify(str(model), "--no-save").exception)


def test_verify_output_must_be_a_file(tiny_model_dir, workdir):
    (workdir / "folder").mkdir()
    assert_clean_error(verify(str(tiny_model_dir), "-o", "folder"), "is a directory")
