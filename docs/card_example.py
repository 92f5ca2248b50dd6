"""The example model card in docs/publishing.md, rendered by `picli card` from the records of the
run that page describes, committed in docs/results/card-example/ (the extended checkpoint's
config.json, picli.json and picli-verify.json; no weights: the card never reads them).

    .venv/bin/python docs/card_example.py            # print the card
    .venv/bin/python docs/card_example.py --write    # put it into docs/publishing.md

tests/test_docs.py holds the block in publishing.md to this script's output, so after a change
to the card, run it with --write.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "results" / "card-example"
PAGE = ROOT / "docs" / "publishing.md"
REPO = "your-name/SmolLM2-135M-Instruct-16k"
# The card's block in publishing.md: the first ````markdown fence after this heading.
HEADING = "## Example: SmolLM2-135M-Instruct extended to 16k"
FENCE_OPEN, FENCE_CLOSE = "````markdown\n", "\n````\n"


def render() -> str:
    """`picli card RECORDS --repo REPO --dry-run`, run on a copy (the card command never writes in
    a dry run, but nothing should ever land beside the committed records)."""
    from typer.testing import CliRunner

    from picli.cli import app

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(shutil.copytree(RECORDS, Path(scratch) / "SmolLM2-135M-Instruct-16k"))
        result = CliRunner().invoke(app, ["card", str(checkpoint), "--repo", REPO, "--dry-run", "--json"])
    if result.exit_code != 0:
        raise SystemExit(f"picli card failed:\n{result.stderr}")
    return json.loads(result.stdout)["card"].rstrip("\n")


def block_span(page: str) -> tuple[int, int]:
    """Where the card sits in publishing.md: (start, end) of the text inside the fence."""
    start = page.index(FENCE_OPEN, page.index(HEADING)) + len(FENCE_OPEN)
    return start, page.index(FENCE_CLOSE, start)


def main() -> None:
    card = render()
    if sys.argv[1:] == ["--write"]:
        page = PAGE.read_text(encoding="utf-8")
        start, end = block_span(page)
        PAGE.write_text(page[:start] + card + page[end:], encoding="utf-8")
        print(f"wrote the card into {PAGE.relative_to(ROOT)}", file=sys.stderr)
    elif sys.argv[1:]:
        raise SystemExit("usage: docs/card_example.py [--write]")
    else:
        print(card)


if __name__ == "__main__":
    main()
