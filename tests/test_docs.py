"""The docs say what the code does: generated reference, the example card, aliases, quick start,
family table; and the repository stands alone: nothing cites a file it does not have."""

from __future__ import annotations

import json
import re
import subprocess
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


# --- the repository stands alone ---------------------------------------------------------------

# A relative link in Markdown: [text](target).
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A path into the repository's own folders, as prose and comments cite them.
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|tests|benchmarks|examples|picli|\.ci)/[\w./*<>-]*[\w*>])")
# A top-level document named in capitals (README.md, CONTRIBUTING.md, ...).
DOC_NAME = re.compile(r"(?<![\w./-])([A-Z][A-Z_]*\.md)\b")
# A folder outside the repository: whoever clones picli does not have it.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.-])shared[/]")
# Paths that are cited on purpose and are not in the repository, each with its reason. The test
# fails when an entry is no longer cited or the file now exists, so this list cannot rot.
NOT_HERE = {
    ("CONTRIBUTING.md", "docs/help.md"): "simonw/llm's generated reference, named as that project's file",
    ("docs/concepts.md", "picli/rope/methods/llama3.py"): "the file a new method would be: the page's example",
}


def tracked_text_files() -> dict[str, str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = {}
    for name in filter(None, listed.stdout.split("\0")):
        path = ROOT / name
        try:
            files[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # deleted in the working tree, or binary
            continue
    return files


def missing(path: Path) -> bool:
    if "*" in path.name:
        return not any(path.parent.glob(path.name))
    if path.exists():
        return False
    # A place the user fills (benchmarks/wheels/): git-ignored, so it is not in a clone.
    relative = str(path.relative_to(ROOT))
    return all(subprocess.run(["git", "check-ignore", "-q", form], cwd=ROOT).returncode != 0
               for form in (relative, relative + "/"))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def dangling_citations(files: dict[str, str]) -> tuple[list[str], set[tuple[str, str]]]:
    """What the texts cite that the repository does not have (file: cited path), and which
    NOT_HERE entries were met."""
    dangling, excused = [], set()
    for name, text in files.items():
        here = (ROOT / name).parent
        # A <placeholder> in a path (class_defaults-<version>.json), or a last part in capitals
        # (plan_configs/MODEL), stands for any name.
        cited = [ROOT / re.sub(r"<[^>]*>|(?<=/)[A-Z][A-Z_]*$", "*", match) for match in REPO_PATH.findall(text)]
        cited += [ROOT / match if (ROOT / match).exists() else here / match for match in DOC_NAME.findall(text)]
        if name.endswith(".md"):
            for target in LINK.findall(text):
                if target.startswith(("http:", "https:", "mailto:")):
                    continue
                path, _, anchor = target.partition("#")
                path = here / path if path else ROOT / name
                cited.append(path)
                if anchor and path.suffix == ".md" and path.is_file() and anchor not in anchors(path):
                    dangling.append(f"{name}: {target} (no such heading)")
        for path in cited:
            shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            if (name, shown) in NOT_HERE:
                excused.add((name, shown))
            elif name == "tests/test_docs.py" and shown in {cited for _, cited in NOT_HERE}:
                continue  # this file's own list above
            elif missing(path):
                dangling.append(f"{name}: {shown}")
        dangling += [f"{name}: {match}" for match in OUTSIDE.findall(text)]
    return dangling, excused


def test_the_citation_check_finds_what_a_clone_would_lack():
    # Every missing name spelled in pieces, so that this file itself cites none of them.
    design, style, outside = "DESIGN" + ".md", "STYLE" + ".md", "../" + "sha" + "red"
    code, page, nowhere = "picli" + "/x.py", "docs" + "/x.md", "docs" + "/nowhere.md"
    no_folder = "tests" + "/data/none"
    files = {code: f"# the rule of {design} §2 and {style}",
             page: f"see [the notes]({outside}/notes.txt), [a page](nowhere.md), "
                   "[a heading](design.md#no-such-heading), docs/design.md, "
                   "[a section](design.md#2-the-config-one-intent-several-readers), "
                   f"tests/data/class_defaults-<version>.json, tests/data/plan_configs/MODEL, {no_folder}/MODEL "
                   "and [the guide](../CONTRIBUTING.md)"}
    dangling, _ = dangling_citations(files)
    assert sorted(dangling) == sorted([
        f"{code}: picli/{design}", f"{code}: picli/{style}", f"{page}: docs/{outside}/notes.txt", f"{page}: {outside}",
        f"{page}: {nowhere}", f"{page}: design.md#no-such-heading (no such heading)", f"{page}: {no_folder}/*"]), \
        dangling


def test_nothing_cites_a_file_the_repository_does_not_have():
    files = tracked_text_files()
    assert "README.md" in files and "picli/cli.py" in files  # the listing worked
    dangling, excused = dangling_citations(files)
    assert dangling == [], "cited but not in the repository:\n" + "\n".join(dangling)
    stale = [f"{name}: {cited}" for (name, cited) in NOT_HERE
             if (name, cited) not in excused or not missing(ROOT / cited)]
    assert stale == [], "NOT_HERE entries no longer needed (not cited, or the file now exists):\n" + "\n".join(stale)
