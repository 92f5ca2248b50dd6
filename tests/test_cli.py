"""The command line as a whole: entry points, --help speed, version."""

from __future__ import annotations

import subprocess
import sys

from picli import __version__
from picli.cli import parse_window
from picli.docgen import command_names
from tests.helpers import assert_clean_error, run


def test_help_does_not_import_torch_or_transformers():
    code = ("import sys; from picli.cli import app; from typer.testing import CliRunner; "
            "result = CliRunner().invoke(app, ['--help']); assert result.exit_code == 0; "
            "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'gguf', 'numpy') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "picli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"picli {__version__}"


def test_every_command_has_examples_in_help():
    names = command_names()
    assert {"inspect", "extend", "finetune", "verify", "push", "card"} <= set(names)
    for command in names:
        result = run(command, "--help")
        assert result.exit_code == 0 and "--json" in result.stdout, command
        assert "Examples" in result.stdout, f"`picli {command} --help` has no Examples section"
        examples = result.stdout.split("Examples", 1)[1]
        assert f"picli {command} " in examples, f"`picli {command} --help` shows no example of itself"


def test_missing_required_option_is_a_usage_error():
    assert_clean_error(run("extend", "smollm2-135m"), "--to", exit_code=2)


def test_parse_window():
    assert parse_window("16384") == 16384
    assert parse_window("16k") == 16384 and parse_window("32K") == 32768
