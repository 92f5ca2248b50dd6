"""Older readers: transformers 4.44.2 and 4.57.1 (side environments without torch, built by
`make test`) must read picli's outputs with the intended theta and factor."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import EXTEND_EXPECTED, run, side_python

VERSIONS = ("4.44.2", "4.57.1")
pytestmark = pytest.mark.slow

READER = """
import json, sys
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
print(json.dumps({
    "theta": getattr(config, "rope_theta", None),
    "rotary_emb_base": getattr(config, "rotary_emb_base", None),
    "rope_scaling": getattr(config, "rope_scaling", None),
    "max_position_embeddings": config.max_position_embeddings,
    "partial_rotary_factor": getattr(config, "partial_rotary_factor", None),
    "rotary_pct": getattr(config, "rotary_pct", None),
    "local_theta": getattr(config, "rope_local_base_freq", None),
}))
"""

# First 4.x release that knows each model_type at all.
INTRODUCED = {"qwen3": "4.51.0", "gemma3_text": "4.50.0"}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@pytest.fixture(scope="module")
def outputs(family_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    made = {}
    for name, (target, *_rest) in EXTEND_EXPECTED.items():
        output = root / name
        result = run("extend", str(family_checkpoints[name]), "--to", str(target),
                     "-o", str(output))
        assert result.exit_code == 0, result.stderr
        made[name] = output
    return made


@pytest.mark.parametrize("version", VERSIONS)
def test_old_transformers_reads_picli_outputs(version, outputs):
    python = side_python(version)
    checked = 0
    for name, output in sorted(outputs.items()):
        target, theta, _rotary_dim, factor = EXTEND_EXPECTED[name]
        model_type = json.loads((output / "config.json").read_text())["model_type"]
        if _version_tuple(version) < _version_tuple(INTRODUCED.get(model_type, "4.0.0")):
            continue
        result = subprocess.run([str(python), "-c", READER, str(output)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        read = json.loads(result.stdout.strip().splitlines()[-1])
        read_theta = read["rotary_emb_base"] if model_type == "gpt_neox" else read["theta"]
        assert float(read_theta) == theta, (name, read)
        scaling = read["rope_scaling"]
        assert (scaling.get("rope_type") or scaling.get("type")) == "linear", (name, scaling)
        assert scaling["factor"] == factor and isinstance(scaling["factor"], float), (name, scaling)
        assert read["max_position_embeddings"] == target
        if model_type == "phi":
            assert read["partial_rotary_factor"] == 0.5
        if model_type == "gpt_neox":
            assert read["rotary_pct"] == 0.25
        if model_type == "gemma3_text":
            assert read["local_theta"] == 10000.0
        # 4.x validates rope_scaling and logs what it rejects: picli's must pass, except for
        # 4.43-4.44's notice that the legacy "type" key is unrecognized next to the
        # "rope_type" it derives from it (the value is still read, as asserted above).
        complaints = [line for line in result.stderr.splitlines() if "rope_scaling" in line
                      and "Unrecognized keys in `rope_scaling` for 'rope_type'='linear': {'type'}" not in line]
        assert not complaints, (name, complaints)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("version", VERSIONS)
def test_old_transformers_reads_finetuned_output(version, tiny_model_dir, tmp_path):
    """The PI config survives `picli finetune` in both schemas (save_pretrained in 5.x would drop 4.x keys)."""
    python = side_python(version)
    extended = tmp_path / "ext"
    assert run("extend", str(tiny_model_dir), "--to", "1024", "-o", str(extended)).exit_code == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The grass is green. The sky is blue. " * 400)
    tuned = tmp_path / "ft"
    result = run("finetune", str(extended), "--data", str(corpus), "--seq-len", "64", "--steps", "1",
                 "--batch-size", "2", "--cpu", "-o", str(tuned))
    assert result.exit_code == 0, result.stderr
    read = subprocess.run([str(python), "-c", READER, str(tuned)], capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr[-2000:]
    values = json.loads(read.stdout.strip().splitlines()[-1])
    scaling = values["rope_scaling"]
    assert values["theta"] == 10000.0 and scaling["type"] == "linear" and scaling["factor"] == 2.0
    assert values["max_position_embeddings"] == 1024
