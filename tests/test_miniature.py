"""The miniature PI experiment (benchmarks/miniature_pi.py) end to end, through picli's commands.

Asserts only what held in every seed of the published run (T = 2W = 256, seeds 0-3,
docs/results/miniature_2w_seeds.json) and again in a rerun of seed 0 on another machine and
transformers release (issue 20: transformers 5.25, AMD EPYC), never a per-seed cell: those do
not reproduce across machines and library versions (that rerun's seed 0 needed 500 steps at W
where the published one needed 250, and then differed in most cells). The facts, each with
the margin the published seeds left:

- PI without fine-tuning retrieves almost nothing at T: at most 1 key of 40 and k_max 33 of
  222 in the published seeds; asserted: at most 4 keys (10%) and k_max below half of 222.
- PI + fine-tuning at T has k_max at or below both YaRN + fine-tuning and direct fine-tuning
  at every N (published: every N from 10 to 200, all four seeds; the rerun: 10, 25, 50).
- YaRN + fine-tuning and direct fine-tuning reach the whole evaluable range (222) by 50 steps
  (published: all four seeds, YaRN by 10-50 steps, direct by 10-50).

One seed (0) and N = 10, 25, 50 (the rerun's command): the CI budget has room for one pipeline,
and the facts hold per seed, so one seed can fail them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

STEPS = (10, 25, 50)


@pytest.mark.slow
def test_miniature_pi_experiment(tmp_path):
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "miniature_pi.py"), "--json", "--seeds", "0",
                           "--steps", ",".join(map(str, STEPS)), "--keep", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["short_window"], result["target_window"], result["steps"]) == (128, 256, list(STEPS))
    (seed,) = result["per_seed"]
    # Every published seed's short model learned passkey at W (250-1750 steps; the rerun: 500).
    assert seed["short_model_learned"], seed["short_training"]
    largest = result["k_largest"]
    assert largest == 222  # T minus the task line and the answer room: fixed by the prompt layout
    k_max, success = seed["k_max_by_steps"], seed["success_by_steps"]

    assert success["0"]["pi_no_ft"] <= 0.1 and k_max["0"]["pi_no_ft"] < largest / 2, seed

    for steps in map(str, STEPS):
        row = k_max[steps]
        assert row["pi_ft"] <= min(row["yarn_ft"], row["direct_ft"]), (steps, row)

    assert k_max["50"]["yarn_ft"] == k_max["50"]["direct_ft"] == largest, k_max["50"]
