"""Hostile checkpoints and concurrent runs (issue 14): what picli refuses, and that it says so
in one line without a traceback, leaves the source untouched and writes nothing half-done.

Areas, as in docs/safety.md: files from outside the checkpoint (links, index entries),
safetensors headers, GGUF staging and concurrent runs, and disk-full messages.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (FAMILY_CONFIGS, REVISION, ROOT, assert_clean_error, make_gguf, picli, run, tree_hash,
                           write_checkpoint)



def write_safetensors(path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


# ---------------------------------------------------------------------------------------
# Checkpoint files: links and index entries that lead outside the checkpoint.


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "token"
    path.parent.mkdir()
    path.write_text("hf_secretsecretsecretsecretsecret\n")
    return path


def test_extend_refuses_a_link_to_a_file_outside(checkpoint, workdir, secret):
    (checkpoint / "hf_token").symlink_to(secret)
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert_clean_error(result, "hf_token")
    assert "outside the checkpoint" in result.stderr
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before


def test_extend_refuses_a_link_to_a_directory_outside(checkpoint, workdir, secret):
    (checkpoint / "extra").symlink_to(secret.parent, target_is_directory=True)
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), "extra")
    assert not (workdir / "out").exists()


def test_links_inside_the_checkpoint_are_copied(checkpoint, workdir):
    (checkpoint / "sub").mkdir()
    (checkpoint / "sub" / "notes.txt").write_text("kept\n")
    (checkpoint / "notes.txt").symlink_to("sub/notes.txt")
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert result.exit_code == 0, result.stderr
    copied = workdir / "out" / "notes.txt"
    assert not copied.is_symlink() and copied.read_text() == "kept\n"


def test_symlink_weights_output_can_be_extended_again_and_pushed(checkpoint, workdir):
    """`--weights symlink` outputs link into their source: picli's own links stay allowed."""
    from picli.hub import preflight

    assert run("extend", checkpoint, "--to", 4096, "-o", workdir / "sym", "--weights", "symlink").exit_code == 0
    (workdir / "sym" / "tokenizer.json").write_text("{}")
    problems, _ = preflight(workdir / "sym")
    assert not [p for p in problems if "outside" in p], problems
    result = run("extend", workdir / "sym", "--to", 8192, "-o", workdir / "again")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "again" / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()


def test_a_forged_symlink_record_does_not_carry_other_files(checkpoint, workdir, secret):
    """picli.json saying `weights: symlink` does not make a link to a non-checkpoint file legal."""
    secret_weights = secret.parent / "model.safetensors"
    secret_weights.write_bytes((checkpoint / "model.safetensors").read_bytes())
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "model.safetensors").symlink_to(secret_weights)
    (checkpoint / "picli.json").write_text(json.dumps({"weights": "symlink"}))
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), "model.safetensors")


def push_ready(checkpoint: Path, workdir: Path) -> Path:
    assert run("extend", checkpoint, "--to", 4096, "-o", workdir / "out").exit_code == 0
    (workdir / "out" / "tokenizer.json").write_text("{}")
    return workdir / "out"


def test_push_refuses_a_link_outside_and_never_lists_it(checkpoint, workdir, secret):
    from picli.hub import preflight

    model = push_ready(checkpoint, workdir)
    (model / "token.txt").symlink_to(secret)
    problems, _ = preflight(model)
    assert any("token.txt" in p and "outside the checkpoint" in p for p in problems), problems
    result = run("push", "org/model-4k", model, "--dry-run")
    assert_clean_error(result, "token.txt")
    assert "secret" not in result.stdout + result.stderr


def test_push_ignores_links_in_folders_it_never_uploads(checkpoint, workdir, secret):
    from picli.hub import preflight

    model = push_ready(checkpoint, workdir)
    (model / ".picli").mkdir(exist_ok=True)
    (model / ".picli" / "token").symlink_to(secret)
    problems, _ = preflight(model)
    assert not [p for p in problems if "outside" in p], problems


def blob_cache(hf_home: Path, repo_id: str, revision: str) -> Path:
    """The layout huggingface_hub really writes: snapshot files are links into ../../blobs/."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = write_checkpoint(repo_dir / "snapshots" / revision, FAMILY_CONFIGS["llama_v4"], tokenizer_max=2048)
    (repo_dir / "blobs").mkdir()
    for path in list(snapshot.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        path.rename(repo_dir / "blobs" / digest)
        path.symlink_to(f"../../blobs/{digest}")
    return snapshot


@pytest.mark.slow
def test_hub_cache_snapshot_links_into_its_blobs_are_allowed(tmp_path):
    hf_home = tmp_path / "hf"
    snapshot = blob_cache(hf_home, "huggyllama/llama-7b", REVISION)
    assert (snapshot / "config.json").is_symlink()
    result = picli("extend", "huggyllama/llama-7b", "--to", "4096", cwd=tmp_path,
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    written = tmp_path / "llama-7b-4k" / "model.safetensors"
    assert not written.is_symlink() and written.read_bytes() == (snapshot / "model.safetensors").read_bytes()


def test_hub_cache_snapshot_link_outside_its_repo_is_refused(tmp_path, workdir, secret):
    snapshot = blob_cache(tmp_path / "hf", "org/model", "0" * 40)
    (snapshot / "token").symlink_to(secret)
    (snapshot / "other.json").symlink_to("../../../models--other--repo/blobs/abc")
    result = run("extend", snapshot, "--to", 4096, "-o", workdir / "out")
    assert_clean_error(result, "token")
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("shard", ["../x.safetensors", "/ABS/x.safetensors", "sub/../../x.safetensors"])
def test_index_naming_shards_outside_the_folder_is_refused(checkpoint, workdir, shard):
    from picli.hub import preflight

    outside = checkpoint.parent / "x.safetensors"
    outside.write_bytes((checkpoint / "model.safetensors").read_bytes())
    shard = shard.replace("/ABS", str(checkpoint.parent))
    index = {"metadata": {}, "weight_map": {"lm_head.weight": shard, "model.embed_tokens.weight": "model.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        result = run(*command)
        assert_clean_error(result, "outside the checkpoint")
        assert shard in result.stderr
    assert not (workdir / "out").exists()
    (checkpoint / "tokenizer.json").write_text("{}")
    problems, _ = preflight(checkpoint)
    assert any("outside the checkpoint" in p for p in problems), problems


@pytest.mark.parametrize("weight_map", [["model.safetensors"], {"a": 3}, "model.safetensors", {"a": ""}])
def test_index_weight_map_of_the_wrong_shape(checkpoint, workdir, weight_map):
    from picli.hub import preflight

    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        assert_clean_error(run(*command), "weight_map")
    (checkpoint / "tokenizer.json").write_text("{}")
    problems, _ = preflight(checkpoint)
    assert any("weight_map" in p for p in problems), problems


@pytest.mark.parametrize("raw", [b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"\xff\xfe{}"])
def test_unreadable_index(raw, checkpoint, workdir):
    (checkpoint / "model.safetensors.index.json").write_bytes(raw)
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        assert_clean_error(run(*command), "model.safetensors.index.json")


# ---------------------------------------------------------------------------------------
# Checkpoint files: safetensors headers.

BAD_HEADERS = {
    "shape not a list": ({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, 16, "shape"),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, 16, "shape"),
    "fractional shape": ({"w": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}}, 16, "shape"),
    "bool shape": ({"w": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, 16, "shape"),
    "entry not an object": ({"w": 5}, 0, "'w'"),
    "offsets not two ints": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": "0-16"}}, 16, "data_offsets"),
    "offsets disagree with shape": ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}, 16, "data_offsets"),
    "data shorter than offsets": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 10, "header implies"),
    "data longer than offsets": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 20, "header implies"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_safetensors_header(case, checkpoint, workdir):
    header, data_length, expected = BAD_HEADERS[case]
    write_safetensors(checkpoint / "model.safetensors", header, b"\0" * data_length)
    before = tree_hash(checkpoint)
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        result = run(*command)
        assert_clean_error(result, "model.safetensors")
        assert expected in result.stderr
    assert not (workdir / "out").exists() and tree_hash(checkpoint) == before


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 b"[1, 2]", b"\xff\xfe"])
def test_unreadable_safetensors_json(raw, checkpoint, workdir):
    write_safetensors(checkpoint / "model.safetensors", None, raw_header=raw)
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        assert_clean_error(run(*command), "model.safetensors")


def test_header_length_beyond_the_file(checkpoint, workdir):
    (checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}")
    assert_clean_error(run("inspect", checkpoint), "model.safetensors")


def test_truncated_weights_are_refused_by_extend_and_inspect(checkpoint, workdir):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    for command in (("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), ("inspect", checkpoint)):
        result = run(*command)
        assert_clean_error(result, "model.safetensors is")
        assert "header implies" in result.stderr
    assert not (workdir / "out").exists()


def test_a_source_without_weights_is_refused(checkpoint, workdir):
    (checkpoint / "model.safetensors").unlink()
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", workdir / "out"), "no weight files")
    assert not (workdir / "out").exists()


def test_valid_headers_still_count_parameters(checkpoint):
    from picli.checkpoint import tensor_summary

    summary = tensor_summary(checkpoint)
    assert summary.parameter_count == 16 * 8 * 2 and summary.dtypes == {"F32": 1, "F16": 1}


# ---------------------------------------------------------------------------------------
# Outputs and concurrent runs.


@pytest.fixture
def gguf_source(tmp_path) -> Path:
    source = tmp_path / "src" / "tiny.gguf"
    source.parent.mkdir()
    make_gguf(source)
    return source


def staging_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".picli-tmp" in p.name or ".picli-lock" in p.name)


def test_gguf_stale_staging_is_removed_and_never_nested(gguf_source, workdir):
    from picli.extend import apply_extend, plan_extend
    from picli.files import STAGING_MARK

    (workdir / ".out.gguf.picli-tmp-killed").write_bytes(b"\0" * 4096)  # a run killed mid-write
    (workdir / "..out.gguf.picli-tmp-killed.picli-tmp-nested").write_bytes(b"\0" * 4096)  # older picli's nesting
    (workdir / ".out.gguf.picli.json.picli-tmp-killed").write_text("{")
    seen: list[list[str]] = []
    plan = plan_extend(str(gguf_source), 8192, output=workdir / "out.gguf")
    apply_extend(plan, "picli", on_event=lambda event: seen.append(staging_names(workdir)))
    during = {name for names in seen for name in names}
    assert during and not [name for name in during if name.count(STAGING_MARK) > 1], during
    assert not [name for name in during if "killed" in name], during
    assert staging_names(workdir) == []


def test_gguf_output_that_is_a_directory(gguf_source, workdir):
    (workdir / "taken").mkdir()
    (workdir / "taken" / "mine.txt").write_text("x")
    result = run("extend", gguf_source, "--to", 8192, "-o", workdir / "taken", "--force")
    assert_clean_error(result, "is a directory")
    assert sorted(p.name for p in (workdir / "taken").iterdir()) == ["mine.txt"]
    assert staging_names(workdir) == []


def hold_lock(lock_path: Path) -> subprocess.Popen:
    """Another process holding picli's lock, as a second `picli extend` would."""
    code = ("import fcntl, sys, time\n"
            f"handle = open({str(lock_path)!r}, 'a')\n"
            "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(timeout=30)


def test_second_gguf_run_fails_at_once_and_changes_nothing(gguf_source, workdir):
    output = workdir / "out.gguf"
    assert run("extend", gguf_source, "--to", 8192, "-o", output).exit_code == 0
    before = tree_hash(workdir)
    live = workdir / ".out.gguf.picli-tmp-live"
    live.write_bytes(b"half of the first run's output")
    holder = hold_lock(workdir / ".out.gguf.picli-lock")
    try:
        result = run("extend", gguf_source, "--to", 16384, "-o", output, "--force")
        assert_clean_error(result, "another picli run is writing")
        assert str(output) in result.stderr
        assert live.exists()  # the live run's staging is left alone
    finally:
        release(holder)
    live.unlink()
    (workdir / ".out.gguf.picli-lock").unlink(missing_ok=True)
    assert tree_hash(workdir) == before
    result = run("extend", gguf_source, "--to", 16384, "-o", output, "--force")
    assert result.exit_code == 0, result.stderr
    assert staging_names(workdir) == []  # the lock file goes with the run


def test_second_hf_run_leaves_the_first_runs_staging(checkpoint, workdir):
    live = workdir / ".out.picli-tmp-live"
    live.mkdir()
    (live / "model.safetensors").write_bytes(b"being written")
    holder = hold_lock(workdir / ".out.picli-lock")
    try:
        assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", workdir / "out"),
                           "another picli run is writing")
        assert (live / "model.safetensors").read_bytes() == b"being written"
        assert not (workdir / "out").exists()
    finally:
        release(holder)
    # With nobody holding the lock, the same staging is stale and the next run clears it.
    assert run("extend", checkpoint, "--to", 4096, "-o", workdir / "out").exit_code == 0
    assert staging_names(workdir) == []


@pytest.mark.slow
def test_two_real_extends_to_one_output(checkpoint, workdir):
    """Two processes: exactly one writes; the other fails with one line, no traceback."""
    code = ("import sys\nfrom picli.cli import app\n"
            f"sys.argv = ['picli', 'extend', {str(checkpoint)!r}, '--to', '4096', '-o', {str(workdir / 'out')!r}, "
            "'--force']\napp()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        runs = [subprocess.Popen([sys.executable, "-c", code], cwd=workdir, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=300) for p in runs]  # (stdout, stderr), and each has exited
        results = [subprocess.CompletedProcess(p.args, p.returncode, *output) for p, output in zip(runs, outputs)]
        for result in results:
            if result.returncode == 0:
                assert "Traceback" not in result.stderr, result.stderr
            else:
                assert_clean_error(result, "another picli run is writing")
        assert 0 in [result.returncode for result in results]
        assert json.loads((workdir / "out" / "picli.json").read_text())["rope"]["factor"] == 2.0
        assert staging_names(workdir) == []


def test_gguf_and_its_record_never_disagree(gguf_source, workdir, monkeypatch):
    import picli.files
    from picli.gguf_io import read_gguf

    output = workdir / "out.gguf"
    sidecar = workdir / "out.gguf.picli.json"
    assert run("extend", gguf_source, "--to", 8192, "-o", output).exit_code == 0
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == output:
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst)

    monkeypatch.setattr(picli.files.os, "replace", failing_replace)
    result = run("extend", gguf_source, "--to", 16384, "-o", output, "--force")
    # EIO is no error a user can fix, but it is still one line, not a traceback
    assert_clean_error(result, "the operating system failed: I/O error")
    monkeypatch.setattr(picli.files.os, "replace", real_replace)
    assert read_gguf(output).metadata["llama.rope.scaling.factor"] == 4.0
    assert json.loads(sidecar.read_text())["rope"]["factor"] == 4.0
    assert staging_names(workdir) == []


# ---------------------------------------------------------------------------------------
# Disk full: the message names the file being written.


def test_disk_full_names_the_output_file_not_the_source(checkpoint, workdir, monkeypatch):
    import picli.files

    monkeypatch.setattr(picli.files, "_reflink", lambda src, dst: False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", full)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    # The first file copied (README.md) hits the full disk; shutil names the source there.
    assert_clean_error(result, f"disk full writing {workdir / 'out' / 'README.md'};")
    assert str(checkpoint) not in result.stderr
    assert not (workdir / "out").exists() and staging_names(workdir) == []


def test_disk_full_in_a_json_write_names_it(checkpoint, workdir, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert_clean_error(result, "disk full writing")
    assert str(workdir / "out" / "config.json") in result.stderr
    assert not (workdir / "out").exists() and staging_names(workdir) == []


def test_disk_full_writing_a_gguf_names_it(gguf_source, workdir, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = run("extend", gguf_source, "--to", 8192, "-o", workdir / "out.gguf")
    assert_clean_error(result, f"disk full writing {workdir / 'out.gguf'}")
    assert not (workdir / "out.gguf").exists() and staging_names(workdir) == []


def test_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path):
    from picli.errors import OutputError
    from picli.files import target_lock

    target = tmp_path / "out"
    with target_lock(target):
        with target_lock(target):  # the GGUF path locks around a staged file that locks too
            pass
        with open(tmp_path / ".out.picli-lock", "a") as other:  # another open file: another process's view
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder = hold_lock(tmp_path / ".out.picli-lock")
    try:
        with pytest.raises(OutputError, match="another picli run is writing"):
            with target_lock(target):
                pass
    finally:
        release(holder)


# ---------------------------------------------------------------------------------------
# Replacing an output (issue 19): --force replaces only what picli wrote, never a home,
# the working directory, a source or a folder that holds one.


def home_like(path: Path) -> Path:
    """A folder as a user's home looks: a private key, a shell profile."""
    (path / ".ssh").mkdir(parents=True)
    (path / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (path / ".bashrc").write_text("export PATH\n")
    return path


def test_force_never_replaces_a_folder_picli_did_not_write(checkpoint, workdir):
    home = home_like(workdir / "someone")
    before = tree_hash(home)
    result = run("extend", checkpoint, "--to", 4096, "-o", home, "--force")
    assert_clean_error(result, "picli did not write it")
    assert tree_hash(home) == before and not list(workdir.glob(".someone*"))


def test_force_never_replaces_the_home_directory(checkpoint, workdir, monkeypatch):
    home = home_like(workdir.parent / "home")
    (home / "picli.json").write_text("{}")  # even a record there does not make a home picli's
    monkeypatch.setenv("HOME", str(home))
    before = tree_hash(home)
    assert_clean_error(run("extend", checkpoint, "--to", 4096, "-o", "~", "--force"), "your home directory")
    assert tree_hash(home) == before


@pytest.mark.parametrize("where", [".", "..", "/"])
def test_force_never_replaces_the_working_directory_or_above(checkpoint, workdir, where, monkeypatch):
    here = workdir / "projects" / "mine"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    for folder in (here, here.parent):
        (folder / "notes.txt").write_text("mine")
        (folder / "picli.json").write_text("{}")  # a record does not make them picli's to replace
    result = run("extend", checkpoint, "--to", 4096, "-o", where, "--force")
    # `/` also holds the source, which is said first.
    assert_clean_error(result, "is inside the output /" if where == "/" else "picli never writes over it")
    assert (here / "notes.txt").read_text() == "mine" and (here.parent / "notes.txt").read_text() == "mine"
    assert os.getcwd() == str(here)


@pytest.mark.parametrize("target", ["source", "parent"])
def test_force_never_replaces_the_source_or_a_folder_holding_it(checkpoint, workdir, target):
    output = checkpoint if target == "source" else checkpoint.parent
    (checkpoint / "picli.json").write_text("{}")
    before = tree_hash(checkpoint)
    result = run("extend", checkpoint, "--to", 4096, "-o", output, "--force")
    assert_clean_error(result, "the source checkpoint itself" if target == "source" else "is inside the output")
    assert tree_hash(checkpoint) == before


def test_force_replaces_an_output_picli_wrote(checkpoint, workdir):
    output = workdir / "out"
    assert run("extend", checkpoint, "--to", 4096, "-o", output).exit_code == 0
    (output / "leftover.txt").write_text("old")
    assert run("extend", checkpoint, "--to", 8192, "-o", output, "--force").exit_code == 0
    assert not (output / "leftover.txt").exists()
    assert json.loads((output / "picli.json").read_text())["rope"]["target_window"] == 8192


def test_force_never_replaces_a_gguf_picli_did_not_write(gguf_source, workdir):
    mine = workdir / "mine.gguf"
    mine.write_bytes(b"my own file")
    result = run("extend", gguf_source, "--to", 8192, "-o", mine, "--force")
    assert_clean_error(result, "picli did not write it")
    assert mine.read_bytes() == b"my own file"


def test_finetune_force_never_trains_into_a_folder_picli_did_not_write(tiny_model_dir, workdir):
    home = home_like(workdir / "someone")
    before = tree_hash(home)
    result = run("finetune", tiny_model_dir, "-o", home, "--force", "--data", workdir / "none.txt", "--steps", 1)
    assert_clean_error(result, "picli did not write it")
    assert tree_hash(home) == before
    assert_clean_error(run("finetune", tiny_model_dir, "-o", ".", "--data", "x.txt"), "the current directory")


@pytest.mark.parametrize("target", ["inside", "foreign"])
def test_verify_output_never_overwrites_a_model_file_or_a_foreign_file(tiny_model_dir, workdir, target):
    path = tiny_model_dir / "config.json" if target == "inside" else workdir / "notes.json"
    if target == "foreign":
        path.write_text('{"mine": true}')
    before = path.read_bytes()
    result = run("verify", tiny_model_dir, "--passkey", "--length", 64, "-o", path)
    assert_clean_error(result, "inside the" if target == "inside" else "picli did not write it")
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------
# Secrets (issue 19): what is not part of a model is never copied or uploaded, and said.

FAKE_TOKEN = "hf_" + "Ab3" * 12  # the shape of a Hub token, 36 letters and digits
# relative path -> the reason picli gives (files.not_model_reason)
SECRETS = {
    ".env": "hidden file", ".netrc": "hidden file", ".DS_Store": "hidden file",
    ".ssh/": "hidden folder", "token.txt": "named like a secret", "hf_token": "named like a secret",
    "server.pem": "a private key", "id_rsa": "a private key", "notes.txt": "holds a Hugging Face token",
}


def plant_secrets(folder: Path) -> None:
    (folder / ".env").write_text(f"HF_TOKEN={FAKE_TOKEN}\n")
    (folder / ".netrc").write_text("machine huggingface.co password x\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / ".ssh").mkdir()
    (folder / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (folder / "token.txt").write_text("not even a token\n")
    (folder / "hf_token").write_text("x\n")
    (folder / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (folder / "id_rsa").write_text("-----BEGIN RSA PRIVATE KEY-----\n")
    (folder / "notes.txt").write_text(f"trained on my box; login with {FAKE_TOKEN}\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "special_tokens_map.json").write_text("{}")
    (folder / "added_tokens.json").write_text("{}")


def test_not_model_reason_is_the_one_rule():
    from picli.files import not_model_reason

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json", ".gitattributes", "README.md", "model-00001-of-00002.safetensors"):
        assert not_model_reason(name) is None, name
    assert not_model_reason("sub/.env") == "hidden file"
    assert not_model_reason(".git/config") == "in hidden folder .git/"
    assert not_model_reason("sub/.gitattributes") == "hidden file"  # only the repo's own, at the top
    assert not_model_reason("access-token.txt") and not_model_reason("credentials.json")


def test_extend_copies_no_secret_and_says_what_it_left_out(checkpoint, workdir):
    plant_secrets(checkpoint)
    dry = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out", "--dry-run", "--json")
    left_out = {entry["path"]: entry["reason"] for entry in json.loads(dry.stdout)["plan"]["left_out"]}
    assert set(left_out) == set(SECRETS) and all(left_out[p].startswith(r) for p, r in SECRETS.items())
    result = run("extend", checkpoint, "--to", 4096, "-o", workdir / "out")
    assert result.exit_code == 0, result.stderr
    assert "Left out" in result.stdout and "notes.txt (holds a Hugging Face token" in result.stdout
    copied = {p.relative_to(workdir / "out").as_posix() for p in (workdir / "out").rglob("*") if p.is_file()}
    assert not {name for name in copied if name in SECRETS or name.startswith(".ssh")}
    assert {".gitattributes", "special_tokens_map.json", "added_tokens.json"} <= copied
    assert not any(FAKE_TOKEN.encode() in (workdir / "out" / name).read_bytes() for name in copied)


def test_push_plan_lists_no_secret_and_says_why(checkpoint, workdir):
    from picli.hub import plan_push

    model = push_ready(checkpoint, workdir)
    plant_secrets(model)
    plan = plan_push("org/model-4k", model)
    listed = {entry.path for entry in plan.files}
    assert not listed & set(SECRETS) and ".ssh/id_ed25519" not in listed and ".gitattributes" in listed
    withheld = {entry["path"]: entry["reason"] for entry in plan.withheld}
    assert withheld[".ssh/id_ed25519"] == "in hidden folder .ssh/" and withheld["notes.txt"].startswith("holds")
    dry = run("push", "org/model-4k", model, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    files_part, _, rest = dry.stdout.partition("Not part of a model, never uploaded: ")
    assert ".env" not in files_part.split("Files (")[1] and "token.txt (named like a secret" in rest
    assert FAKE_TOKEN not in dry.stdout


@pytest.mark.slow
def test_push_uploads_no_secret(checkpoint, workdir, hub, env):
    model = push_ready(checkpoint, workdir)
    plant_secrets(model)
    result = picli("push", "org/model-4k", str(model), env=env, cwd=workdir)
    assert result.returncode == 0, result.stderr
    remote = set(hub.files("org/model-4k"))
    assert "config.json" in remote and not remote & set(SECRETS) and not [n for n in remote if n.startswith(".ssh")]


@pytest.mark.parametrize("name", ["README.md", "config.json", "tokenizer_config.json"])
def test_push_refuses_a_needed_file_holding_a_token(checkpoint, workdir, name):
    """Left out, the card would lose its text or the Hub model its config: refused instead."""
    model = push_ready(checkpoint, workdir)
    path = model / name
    if name == "README.md":
        path.write_text(f"# mine\nuse {FAKE_TOKEN}\n")
    else:
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, "note": f"token {FAKE_TOKEN}"}))
    result = run("push", "org/model-4k", model, "--dry-run")
    assert_clean_error(result, f"{name} holds a Hugging Face token")
    assert FAKE_TOKEN not in result.stdout + result.stderr
