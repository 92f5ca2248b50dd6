"""The miniature PI experiment (benchmarks/miniature_pi.py) end to end, through picli's commands.

Asserts only what held robustly in the earlier single-seed runs of the full experiment at 4W
(docs/science.md now reports the multi-seed run at 2W and says 4W was not rerun),
never which of PI and direct fine-tuning wins: a tiny random Llama learns passkey at its
short window W=128; at T=4W=512 it fails by extrapolation and fails under PI without
fine-tuning; PI + fine-tuning at T retrieves from the whole evaluable range of T within the
step budget. Arm (d), direct fine-tuning, and the YaRN arms are skipped (--no-direct --no-yarn):
nothing about them is asserted. One seed (--seeds 0): the CI budget has room for one pipeline.

T is 4W, not the script's default 2W: at 2W the short model extrapolated part of the way
(k_max 166 and 194 of 222 in two measured runs), so "extrapolation fails at T" is only a
clear fact at 4W (0 and 3 of 40 keys, k_max 0 and 179 of 478).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Measured at T=512, PI + fine-tuning: k_max 478 of 478 after 100, 200 and 400 steps in two
# runs; in the first the deepest depth passed only 1/5 and 2/5 keys at 100 and 200 (the
# threshold is 1/5), every depth >= 4/5 at 400. 400 is the budget where the assertion does
# not hang on one trial.
STEPS = 400


@pytest.mark.slow
def test_miniature_pi_experiment(tmp_path):
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "miniature_pi.py"), "--json", "--no-direct",
                           "--no-yarn", "--seeds", "0",
                           "--multiple", "4", "--steps", str(STEPS), "--keep", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["short_window"], result["target_window"], result["steps"]) == (128, 512, [STEPS])
    (seed,) = result["per_seed"]
    assert seed["short_model_learned"], seed["short_training"]  # else the script runs no arm
    k_max, largest = {**seed["k_max_by_steps"]["0"], **seed["k_max_by_steps"][str(STEPS)]}, result["k_largest"]
    assert set(k_max) == {"extrapolation", "pi_no_ft", "pi_ft"}, k_max  # --no-direct --no-yarn honoured
    assert largest >= 0.9 * result["target_window"]  # the evaluable range: T minus task line and answer

    # The short model solves passkey at W: every evaluated depth, up to the largest k of W.
    at_window = seed["at_short_window"]["short"]
    assert at_window["k_max"] == at_window["k_largest"], seed["short_training"]

    # Extrapolation and PI without fine-tuning fail at T. Measured: PI without fine-tuning
    # k_max 0 (not one of 40 keys); extrapolation k_max 0, then 179 (3 of 40 keys, 1/5 at the
    # three shallowest depths) after a change of rounding. Below half the evaluable range
    # still fails a model that retrieves only from the nearer half.
    assert k_max["extrapolation"] < 0.5 * largest, result
    assert k_max["pi_no_ft"] < 0.5 * largest, result
    # PI without fine-tuning fails even inside W (measured: no key at 128 tokens).
    assert seed["at_short_window"]["pi_no_ft"]["k_max"] < at_window["k_largest"], result

    # PI + fine-tuning at T reaches >= 90% of the evaluable range: with 8 depths, only the
    # deepest qualifies, so every depth must retrieve.
    assert k_max["pi_ft"] >= 0.9 * largest, result
