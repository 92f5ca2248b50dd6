"""The docs say what the code does: generated reference, aliases, quick start, family table."""

from __future__ import annotations

import re
from pathlib import Path

from picli import docgen
from picli.checkpoint import ALIASES
from picli.rope import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_commands_md_matches_help():
    committed = (DOCS / "commands.md").read_text()
    assert committed == docgen.render(), "docs/commands.md differs from `picli --help`: run `make docs`"


def test_commands_md_covers_every_command():
    committed = (DOCS / "commands.md").read_text()
    for name in docgen.command_names():
        assert f"## `picli {name}`" in committed and f"Usage: picli {name} " in committed


def test_every_alias_is_documented_with_its_repo():
    lines = (DOCS / "quickstart.md").read_text().splitlines() + (DOCS / "runtimes.md").read_text().splitlines()
    for alias, repo in ALIASES.items():
        rows = [line for line in lines if f"`{alias}`" in line and f"`{repo}`" in line]
        assert rows, f"alias {alias} -> {repo} is not documented in docs/quickstart.md or docs/runtimes.md"


def test_readme_quick_start_is_two_make_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^```[^\n]*\n(.*?)^```", readme, re.S | re.M)
    assert block, "README.md has no ``` block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_runtimes_family_table_matches_rope_py():
    # One row per family: | `model_type` | min transformers 4.x | legacy type key | ...
    text = (DOCS / "runtimes.md").read_text()
    rows = {name: (version, key)
            for name, version, key in re.findall(r"^\| `([\w.]+)` \| (\d+\.\d+\.\d+) \| `(\w+)` \|", text, re.M)}
    expected = {name: (family.min_transformers, family.legacy_type_key) for name, family in FAMILIES.items()}
    assert rows == expected, "docs/runtimes.md's family table differs from picli/rope.py FAMILIES"
