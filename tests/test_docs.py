"""The docs say what the code does: generated reference, the example card, aliases, quick start,
family table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from picli import docgen
from picli.checkpoint import ALIASES
from picli.rope import FAMILIES
from tests.helpers import ROOT, load_script

DOCS = ROOT / "docs"


def test_commands_md_matches_help():
    committed = (DOCS / "commands.md").read_text()
    assert committed == docgen.render(), "docs/commands.md differs from `picli --help`: run `make docs`"


def test_commands_md_covers_every_command():
    committed = (DOCS / "commands.md").read_text()
    for name in docgen.command_names():
        assert f"## `picli {name}`" in committed and f"Usage: picli {name} " in committed


def test_every_alias_is_documented_with_its_repo():
    lines = (DOCS / "quickstart.md").read_text().splitlines()
    for alias, repo in ALIASES.items():
        rows = [line for line in lines if f"`{alias}`" in line and f"`{repo}`" in line]
        assert rows, f"alias {alias} -> {repo} is not in docs/quickstart.md's alias table"


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
    assert rows == expected, "docs/runtimes.md's family table differs from FAMILIES in picli/rope/families.py"


def test_the_example_card_is_picli_cards_output():
    """docs/publishing.md shows a card "unedited": it is `picli card` on the committed records of
    that run (docs/card_example.py renders it; `--write` puts it into the page)."""
    example = load_script(DOCS / "card_example.py", "card_example")
    page = (DOCS / "publishing.md").read_text(encoding="utf-8")
    start, end = example.block_span(page)
    card = example.render()
    assert "| 2,048 | 0 | 2,011 |" in card  # the records were read: the measured passkey row
    assert page[start:end] == card, "the card in docs/publishing.md is stale: run docs/card_example.py --write"
    # The reading below the card quotes the records too: perplexity at 2,048, before -> after.
    verified = json.loads((example.RECORDS / "picli-verify.json").read_text())
    at_2048 = {run: next(row["perplexity"] for row in verified[run]["perplexity"]["results"] if row["length"] == 2048)
               for run in ("model", "baseline")}
    assert f"({at_2048['baseline']:.1f} -> {at_2048['model']:.1f})" in page[end:]
