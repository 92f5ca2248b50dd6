"""The package's shape: modules import downward only (CONTRIBUTING.md), so each can be read and
changed without the ones that use it. Every `from .x import` counts, also those inside
functions: a late import still ties two modules together."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import picli

PACKAGE = Path(picli.__file__).parent


def _top_level(module: str) -> str:
    """picli.rope.families -> rope: a subpackage is one node of the graph."""
    return module.split(".")[1] if module.count(".") else "__init__"


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    named = f"{base}.{node.module}" if node.module else base
                elif node.module and node.module.split(".")[0] == "picli":
                    named = node.module
                else:
                    continue
                # `from . import rope` names a module; `from . import __version__` names a value of __init__.
                names = [f"{named}.{alias.name}" for alias in node.names] if not node.module else [named]
                for name in names:
                    exists = (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists() or \
                        (PACKAGE.parent / name.replace(".", "/")).is_dir()
                    targets.add(_top_level(name if exists else name.rpartition(".")[0]))
            elif isinstance(node, ast.Import):
                targets |= {_top_level(alias.name) for alias in node.names if alias.name.split(".")[0] == "picli"}
        graph.setdefault(_top_level(module), set()).update(targets - {_top_level(module)})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_late_and_type_checking_imports():
    graph = import_graph()
    assert "finetune_plan" in graph["finetune"]  # imported inside a function
    assert {"training", "modeling"} <= graph["finetune_plan"]
    assert "errors" in graph["modeling"] and "cli" in graph["__main__"]


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_modules_import_downward_only():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_finetune_trio_shares_training_and_never_imports_upward():
    graph = import_graph()
    assert "finetune" not in graph["finetune_plan"] | graph["finetune_output"] | graph["training"]
    assert "finetune_plan" not in graph["finetune_output"] | graph["training"]
    assert "training" in graph["finetune_output"]


# --- the module map in picli/__init__.py ----------------------------------------------------


def module_map(docstring: str) -> set[str]:
    """The paths the map names: each entry line is indented, a path ending in .py or /, then text."""
    return {match.group(1) for match in re.finditer(r"^ +(\S+(?:\.py|/)) {2,}\S", docstring, re.MULTILINE)}


def package_modules() -> set[str]:
    """Every module of picli/ as the map names it: cli.py, rope/, rope/schema.py (no __init__.py)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if "__pycache__" in relative.parts:
            continue
        if path.name == "__init__.py":
            if relative.parent != Path("."):
                names.add(f"{relative.parent.as_posix()}/")
        else:
            names.add(relative.as_posix())
    return names


def test_the_map_reader_sees_entries_and_misses_prose():
    text = "Layout:\n  cli.py      the commands\n  rope/       RoPE\n    rope/schema.py  schemas\nsee cli.py  too\n"
    assert module_map(text) == {"cli.py", "rope/", "rope/schema.py"}


def test_the_module_map_names_every_module_and_nothing_else():
    listed, present = module_map(picli.__doc__), package_modules()
    assert {"cli.py", "rope/", "rope/methods/", "rope/methods/yarn.py", "__main__.py"} <= present  # the walk finds what it must
    assert present - listed == set(), "add these to the module map in picli/__init__.py"
    assert listed - present == set(), "the module map in picli/__init__.py names modules that do not exist"


def test_no_test_file_imports_another():
    """Shared fixtures live in conftest.py and shared helpers in tests/helpers.py, so each test file
    can be read, moved or deleted alone."""
    tests = Path(__file__).parent
    offenders = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [f"tests.{node.module or ''}"] + [f"tests.{alias.name}" for alias in node.names]
            offenders += [f"{path.name}: {name}" for name in names if name.startswith("tests.test_")]
    assert offenders == []


def test_conftest_holds_fixtures_only():
    """conftest.py holds the fixtures and the session's offline setup; what they build from (the
    family configs, write_checkpoint, the tokens...) lives in tests/helpers.py, which is where a
    test file imports it from: one home for each helper."""
    tests = Path(__file__).parent
    tree = ast.parse((tests / "conftest.py").read_text())
    public = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            if not node.name.startswith("_") and not any("fixture" in ast.unparse(d) for d in node.decorator_list):
                public.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            public += [target.id for target in targets if isinstance(target, ast.Name) and not target.id.startswith("_")]
        elif isinstance(node, ast.ClassDef):
            public.append(node.name)
    assert public == [], "move these to tests/helpers.py"
    importers = [path.name for path in sorted(tests.glob("*.py")) if path.name != "conftest.py"
                 and any(isinstance(node, ast.ImportFrom) and (node.module or "").endswith("conftest")
                         for node in ast.walk(ast.parse(path.read_text())))]
    assert importers == [], "import from tests.helpers, not from conftest"


# --- functions that fit on a screen ------------------------------------------------------------

MAX_LINES = 80
# A longer function says why in its docstring, in a sentence that starts so. For a CLI command,
# whose docstring is its --help, the reason follows a form feed (\f): Click and Typer show no
# help text after it.
REASON = "Long because"


def long_functions(source: str, name: str) -> list[str]:
    """Functions (methods and nested ones too) of more than MAX_LINES lines, from `def` to their
    last line, whose docstring gives no reason."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES and REASON not in (ast.get_docstring(node, clean=False) or ""):
                found.append(f"{name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_length_check_sees_a_long_function_and_its_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}", "m.py") == ["m.py:1 f (81 lines)"]
    assert long_functions(f"class C:\n    def g(self):\n{body.replace('    ', '        ')}", "m.py") == \
        ["m.py:2 g (81 lines)"]
    assert long_functions(f"def f():\n    '''Long because it must be.'''\n{body}", "m.py") == []
    assert long_functions(f"def f():\n{body[:-len(body.splitlines()[-1]) - 1]}", "m.py") == []  # exactly 80


def test_no_function_is_long_without_saying_why():
    found = [entry for path in sorted(PACKAGE.rglob("*.py"))
             for entry in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert found == [], (f"split these, or say in the docstring why one function is clearer ('{REASON} ...'):\n"
                         + "\n".join(found))


# --- make test-fast starts no picli process ----------------------------------------------------

TESTS = Path(__file__).resolve().parent
# What starts a process: subprocess, the helpers that run picli or a side environment in one.
PROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call", "picli", "read_in"}
# Process checks that stay fast on purpose: one short `python -c`/`-m picli` each, testing a
# process's own behaviour (imports, exit codes), which no in-process call can.
QUICK_PROCESS_TESTS = {
    "test_cli.py::test_help_does_not_import_torch_or_transformers",
    "test_cli.py::test_python_dash_m_and_version",
    "test_hostile_cli.py::test_usage_error_in_a_real_process",
    "test_perplexity.py::test_importing_does_not_import_torch",
    "test_rope.py::test_rope_package_stays_pure",
}


def unmarked_process_tests(source: str, name: str) -> list[str]:
    """Test functions that start a process (subprocess.*, picli(...), read_in(...)) without the
    slow mark, on the function or as the module's pytestmark."""
    tree = ast.parse(source, name)
    if any(isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "pytestmark" for target in node.targets)
           and "slow" in ast.unparse(node.value) for node in tree.body):
        return []
    found = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
            continue
        if any("slow" in ast.unparse(decorator) for decorator in node.decorator_list):
            continue
        calls = {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}
        starts = {call for call in calls
                  if call in ("picli", "read_in") or (call.startswith("subprocess.") and call.split(".")[1] in PROCESS_CALLS)}
        if starts:
            found.append(f"{name}::{node.name}")
    return found


def test_the_process_check_sees_subprocess_and_the_slow_mark():
    body = "    subprocess.run(['python', '-c', 'pass'])\n"
    assert unmarked_process_tests(f"def test_a():\n{body}", "t.py") == ["t.py::test_a"]
    assert unmarked_process_tests(f"def test_b(tmp_path):\n    picli('inspect', cwd=tmp_path)\n", "t.py") == ["t.py::test_b"]
    assert unmarked_process_tests(f"@pytest.mark.slow\ndef test_a():\n{body}", "t.py") == []
    assert unmarked_process_tests(f"pytestmark = pytest.mark.slow\ndef test_a():\n{body}", "t.py") == []
    assert unmarked_process_tests("def test_c():\n    run('inspect', 'x')\n", "t.py") == []  # in-process


def test_fast_tests_start_no_process():
    found = [entry for path in sorted(TESTS.glob("test_*.py"))
             for entry in unmarked_process_tests(path.read_text(encoding="utf-8"), path.name)]
    assert "test_cli.py::test_python_dash_m_and_version" in found  # the scan sees the quick ones
    assert sorted(set(found) - QUICK_PROCESS_TESTS) == [], "mark these @pytest.mark.slow (make test-fast skips them)"
    assert sorted(QUICK_PROCESS_TESTS - set(found)) == [], "no longer a quick process test: drop from the list"


# --- one way to run picli in-process, one repository root -----------------------------------------

# Test files that may construct their own CliRunner or find the repository root themselves, each
# with its reason. (test_cli.py's `python -c` program builds a CliRunner inside a string: it runs in
# a fresh process that must not import tests.helpers, and the scan below reads code, not strings.)
OWN_RUNNER_OR_ROOT: dict[str, str] = {}
# `Path(__file__).parent.parent`, `.resolve().parents[1]`: the repository root written out again.
ROOT_BY_HAND = re.compile(r"Path\(__file__\)(\.resolve\(\))?\.(parent\.parent|parents\[1\])")


def own_runners_and_roots(source: str, name: str) -> list[str]:
    """What tests/helpers.py holds once, done again in a test file: a CliRunner constructed (picli is
    run in-process by helpers.run), ROOT assigned, or the repository root derived from __file__."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "CliRunner":
            found.append(f"{name}:{node.lineno} CliRunner()")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(target, ast.Name) and target.id == "ROOT" for target in targets):
            found.append(f"{name}:{node.lineno} ROOT =")
        if isinstance(node, (ast.Attribute, ast.Subscript)) and ROOT_BY_HAND.fullmatch(ast.unparse(node)):
            found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_the_runner_and_root_check_sees_each_form():
    assert own_runners_and_roots("runner = CliRunner()\n", "t.py") == ["t.py:1 CliRunner()"]
    assert own_runners_and_roots("def f():\n    return typer.testing.CliRunner().invoke(app, [])\n", "t.py") == \
        ["t.py:2 CliRunner()"]
    assert own_runners_and_roots("ROOT = Path(__file__).resolve().parent.parent\n", "t.py") == \
        ["t.py:1 ROOT =", "t.py:1 Path(__file__).resolve().parent.parent"]
    assert own_runners_and_roots("ROOT: Path = HERE\n", "t.py") == ["t.py:1 ROOT ="]
    assert own_runners_and_roots("env = {'PYTHONPATH': str(Path(__file__).parents[1])}\n", "t.py") == \
        ["t.py:1 Path(__file__).parents[1]"]
    assert own_runners_and_roots("DATA = Path(__file__).parent / 'data'\n", "t.py") == []  # tests/ itself
    assert own_runners_and_roots("code = 'CliRunner().invoke(app)'\nresult = run('inspect')\n", "t.py") == []
    assert own_runners_and_roots("from tests.helpers import ROOT\nDOCS = ROOT / 'docs'\n", "t.py") == []


def test_picli_is_run_and_the_root_found_only_in_helpers():
    """tests/helpers.py runs picli in-process (run) and names the repository root (ROOT) once; a
    test file that makes its own CliRunner or root is a second copy that drifts (another runner's
    options, another idea of where the repository is)."""
    found = [entry for path in sorted(TESTS.glob("*.py")) if path.name not in ("helpers.py", *OWN_RUNNER_OR_ROOT)
             for entry in own_runners_and_roots(path.read_text(encoding="utf-8"), path.name)]
    assert found == [], "use tests.helpers.run and tests.helpers.ROOT (or add to OWN_RUNNER_OR_ROOT, with why)"
    helpers = own_runners_and_roots((TESTS / "helpers.py").read_text(encoding="utf-8"), "helpers.py")
    assert [entry.split(" ", 1)[1] for entry in helpers] == ["ROOT =", "Path(__file__).resolve().parent.parent",
                                                              "CliRunner()"]  # the one of each
    stale = [name for name in OWN_RUNNER_OR_ROOT
             if not own_runners_and_roots((TESTS / name).read_text(encoding="utf-8"), name)]
    assert stale == [], "no longer an exception: drop from OWN_RUNNER_OR_ROOT"
