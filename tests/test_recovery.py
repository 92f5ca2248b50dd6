"""benchmarks/recovery.py (issue 20): the decision rules on hand-made numbers, the table carrying
the JSON's values, and (slow) `--quick` end to end through picli's commands on the real SmolLM2.

The rules are docs/science.md's, fixed before the run; these tests hold the script to them at
their edges, so that the run's outcome is the rules' and not the code's."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, load_benchmark, missing_environment


@pytest.fixture(scope="module")
def recovery():
    return load_benchmark("recovery")


def row(keys: int, ppl: float, k_max: int = 987, deepest: int = 987, trials: int = 20) -> dict:
    return {"keys_retrieved": keys, "trials": trials, "perplexity": ppl, "k_max": k_max, "k_largest": deepest}


@pytest.mark.parametrize("arm, control, outcome", [
    # The control: valid at 18/20 keys (90%), invalid at 17/20; an arm is invalid where the control is.
    (None, row(18, 20.0), "valid"),
    (None, row(17, 20.0), "invalid"),
    (row(20, 20.0), row(17, 20.0), "invalid"),
    # Restored: k_max at the deepest depth, >= 75% of keys, perplexity <= 1.10 x the control's.
    (row(15, 22.0), row(20, 20.0), "restored"),  # 75%, x1.10 exactly: both edges inside
    (row(14, 20.0), row(20, 20.0), "partial"),  # 70% of keys
    (row(20, 22.1), row(20, 20.0), "partial"),  # x1.105
    (row(18, 20.0, k_max=740), row(20, 20.0), "partial"),  # one depth below 20%: k_max short of the deepest
    # Not restored: <= 15% of keys with perplexity <= 1.2 x the control's.
    (row(3, 24.0, k_max=0), row(20, 20.0), "not restored"),  # 15%, x1.2 exactly
    (row(0, 24.1, k_max=0), row(20, 20.0), "partial"),  # no key, but the perplexity is not back either
    (row(4, 20.0, k_max=247), row(20, 20.0), "partial"),  # 20% of keys: between the rules
    (row(0, 40.0, k_max=0), row(19, 20.0), "partial"),  # PI before fine-tuning: x2 perplexity, no key
])
def test_decision_rules_at_their_edges(recovery, arm, control, outcome):
    assert recovery.decide(control if arm is None else arm, control)[0] == outcome


def test_decisions_use_the_control_at_the_same_step(recovery):
    table = {"control": {"0": row(20, 20.0), "10": row(20, 30.0)},
             "pi": {"0": row(0, 40.0, k_max=0), "10": row(16, 32.0), "30": row(20, 20.0)}}
    decided = recovery.decisions(table)
    assert decided["control"] == {"0": {"outcome": "valid", "reason": decided["control"]["0"]["reason"]},
                                  "10": {"outcome": "valid", "reason": decided["control"]["10"]["reason"]}}
    # At 10 steps x1.067 of the control's 30.0 (not of its 20.0 at step 0): restored.
    assert decided["pi"]["10"]["outcome"] == "restored" and "x1.067" in decided["pi"]["10"]["reason"]
    assert decided["pi"]["0"]["outcome"] == "partial"
    assert "30" not in decided["pi"]  # no control at 30 steps: nothing to decide against


def test_continuation_estimate_uses_the_measured_pace(recovery):
    seconds = {"finetune": {"control": {"10": 100.0, "30": 200.0}, "pi": {"10": 110.0, "30": 190.0},
                            "pi_low": {}, "yarn": {}},
               "verify": {"30": 400.0}}
    # 300 s / 30 steps each arm = 20 s per step for the two; 30 more steps; half of the last verify's models.
    assert recovery.estimate_round(seconds, 30, 60) == pytest.approx(20 * 30 + 200)


def synthetic_result(recovery) -> dict:
    """A result in the script's shape, by hand: what the renderer and the rules read."""
    def measured(keys: int, ppl: float, digits: float, logprob: float) -> dict:
        ks = [247, 494, 740, 987]
        per_depth = [min(5, max(0, keys - 5 * index)) for index in range(4)]
        return {**row(keys, ppl, k_max=987 if min(per_depth) else 0), "tokens_scored": 4095, "ks": ks,
                "success_by_depth": [count / 5 for count in per_depth],
                "digits_right_by_depth": [digits] * 4, "key_logprob_by_depth": [logprob] * 4,
                "mean_digits_right": digits, "mean_key_logprob": logprob, "key_digits": 5,
                "per_trial": [{"k": k} for k in ks for _ in range(5)]}
    table = {"control": {"0": measured(20, 18.9, 5.0, -0.1), "10": measured(20, 18.5, 5.0, -0.1)},
             "pi": {"0": measured(0, 39.8, 1.2, -14.0), "10": measured(2, 25.0, 2.6, -7.5)},
             "pi_low": {"0": measured(0, 39.8, 1.2, -14.0), "10": measured(0, 33.0, 1.6, -11.0)},
             "yarn": {"0": measured(20, 19.3, 5.0, -0.2), "10": measured(20, 18.9, 5.0, -0.1)}}
    return {"model_description": "SmolLM2", "target_window": 16384, "recipe": "picli finetune ...",
            "protocol": {"perplexity": "p", "passkey": "k"}, "plan": recovery.FULL,
            "rules": {"control_keeps": 0.9, "restored_keys": 0.75, "restored_ppl": 1.1, "not_restored_keys": 0.15,
                      "not_restored_ppl": 1.2},
            "arms": {arm: {"label": label} for arm, (label, _, _) in recovery.ARMS.items()},
            "table": table, "valid": True, "continuation": {"planned": [60, 100], "ran": [], "skipped": {}},
            "seconds": {"extend": {"linear-x2": 9.0}, "finetune": {"control": {"10": 900.0}}, "verify": {"0": 300.0}},
            "wall_seconds": 5000, "threads": 2, "quick": False,
            "machine": {"cpu": "CPU", "cpus": 2, "torch": "2.13.0", "transformers": "5.x"}}


def test_the_table_carries_the_json_values_and_the_rules_outcome(recovery):
    result = synthetic_result(recovery)
    rendered = recovery.table(result)
    assert "| PI x2, LR 1e-4 | 10 | 25.000 | 1.351 | 2/20 | 0/987 | 2.60 | -7.50 | partial |" in rendered
    assert "| YaRN x2, LR 1e-4 | 10 | 18.900 | 1.022 | 20/20 | 987/987 | 5.00 | -0.10 | restored |" in rendered
    assert "| control (RoPE unchanged) | 10 | 18.500 | 1.000 | 20/20 | 987/987 | 5.00 | -0.10 | valid |" in rendered
    assert "| PI x2, LR 1e-4 | 10 | 2 / 0 / 0 / 0 (of 5) | 2.60 / 2.60 / 2.60 / 2.60 |" in rendered
    changed = copy.deepcopy(result)
    changed["table"]["pi"]["10"]["mean_key_logprob"] = -7.25
    assert recovery.table(changed) != rendered


def test_argmax_errors_count_the_keys_tokens_and_the_copies_from_one_position_too_far(recovery, tmp_path):
    """The key's tokens come from a model that retrieved it in the same verify call; a key no model
    retrieved is left out; the step-0 rows are the arms' starting checkpoints (PI and PI-low share one)."""
    def passkey(keys, hits, predicted):
        return {"passkey": {"results": [{"keys": [keys], "outcomes": [hits], "predicted": [predicted]}]}}
    # Key 111 is the tokens [9, 1, 2, 3]; key 222, [9, 4, 5, 6]: the base retrieves 111 only.
    base = passkey([111, 222], [True, False], [[9, 1, 2, 3], [9, 4, 4, 7]])
    # PI: right at the space, then each position the key's next token; the last position is not counted.
    linear = passkey([111, 222], [False, False], [[9, 2, 3, 8], [9, 5, 6, 0]])
    yarn = passkey([111, 222], [False, False], [[7, 1, 2, 3], [9, 5, 6, 0]])
    verify = {"command": ["picli", "verify", "smollm2-135m", "linear-x2", "yarn-x2", "--passkey"],
              "result": {"reports": [{"name": "a", "model": base}, {"name": "b", "model": linear},
                                     {"name": "c", "model": yarn}]}}
    finetune = {"command": ["picli", "finetune", "linear-x2"], "result": {}}
    result = {"arms": {"control": {"label": "control", "step_0_model": "smollm2-135m"},
                       "pi": {"label": "PI", "step_0_model": "linear-x2"},
                       "pi_low": {"label": "PI-low", "step_0_model": "linear-x2"},
                       "yarn": {"label": "YaRN", "step_0_model": "yarn-x2"}},
              "seconds": {"verify": {"0": 1.0}}}
    errors = recovery.argmax_errors(result, [finetune, verify])
    assert errors["control"]["0"] == {"keys": 1, "positions": 3, "right": 3, "next_token": 0,
                                      "right_by_position": [1, 1, 1], "next_token_by_position": [0, 0, 0]}
    assert errors["pi"]["0"] == errors["pi_low"]["0"] == {"keys": 1, "positions": 3, "right": 1, "next_token": 2,
                                                          "right_by_position": [1, 0, 0],
                                                          "next_token_by_position": [0, 1, 1]}
    assert errors["yarn"]["0"]["right_by_position"] == [0, 1, 1] and errors["yarn"]["0"]["next_token"] == 0
    assert "| PI | 0 | 1 | 3 | 1 | 1 / 0 / 0 | 2 | 0 / 1 / 1 |" in recovery.errors_table(result, [finetune, verify])
    # The committed record is read gzipped as well as plain; a record of another run is refused.
    record = tmp_path / "commands.jsonl.gz"
    record.write_bytes(gzip.compress((json.dumps(finetune) + "\n" + json.dumps(verify) + "\n").encode()))
    assert recovery.read_commands(record) == [finetune, verify]
    with pytest.raises(SystemExit, match="not the same run"):
        recovery.argmax_errors({**result, "seconds": {"verify": {"0": 1.0, "10": 2.0}}}, [verify])
    with pytest.raises(SystemExit, match="give --table"):
        recovery.main(["--commands", str(record)])


def test_an_interrupted_run_replays_its_completed_commands_then_runs_the_rest(recovery, tmp_path, monkeypatch):
    """--resume's machinery (PicliRunner in benchmarks/_common.py): the recorded commands answer in
    order without a process; a cut-off last line is dropped; a leftover output of the first command
    that really runs is removed (only inside the work directory); a different command stops the run."""
    common = sys.modules["_common"]  # benchmarks/_common.py, as recovery.py imported it
    recorded = [{"command": ["picli", "extend", "m", "-o", "a"], "seconds": 10.0, "result": {"n": 1}},
                {"command": ["picli", "verify", "a"], "seconds": 5.0, "result": {"n": 2}}]
    log = tmp_path / "commands.jsonl"
    log.write_text("".join(json.dumps(entry) + "\n" for entry in recorded) + '{"command": ["picli", "fin')
    started = []

    class Child:  # what subprocess.Popen would start: picli printing its JSON
        returncode = 0

        def __init__(self, command, **_):
            started.append(command[3:-1])  # [python, -m, picli, *args, --json]

        def communicate(self, timeout=None):
            return json.dumps({"n": 3}), ""

        def poll(self):
            return 0

    monkeypatch.setattr(common.subprocess, "Popen", Child)
    runner = common.PicliRunner(tmp_path, threads=1, verbose=False, replay=True)
    assert runner.run("extend", "m", "-o", "a", fresh=tmp_path / "a") == ({"n": 1}, 10.0)
    assert runner.run("verify", "a") == ({"n": 2}, 5.0)
    assert started == [] and runner.replayed == 2 and runner.replayed_seconds == 15.0
    leftover = tmp_path / "b"
    (leftover / "checkpoint-1").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    assert runner.run("finetune", "a", "-o", "b", fresh=leftover)[0] == {"n": 3}
    assert started == [["finetune", "a", "-o", "b"]] and not leftover.exists()
    runner.run("finetune", "a", "-o", "../outside", fresh=outside)
    runner.run("finetune", "a", "-o", ".", fresh=tmp_path)
    assert outside.is_dir() and log.is_file()  # not the script's to remove, nor the work directory itself
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["command"][1] for line in lines] == ["extend", "verify", "finetune", "finetune", "finetune"]
    # A run whose commands differ from the record is not the same run: it stops.
    again = common.PicliRunner(tmp_path, threads=1, verbose=False, replay=True)
    with pytest.raises(SystemExit, match="command 1 of the interrupted run was `picli extend m -o a`"):
        again.run("extend", "m", "-o", "other")


def test_resume_takes_the_runs_own_arguments(recovery, tmp_path):
    (tmp_path / "arguments.json").write_text(json.dumps({"argv": ["--quick", "--steps", "3", "--keep", "w"]}))
    args = recovery.resumed_arguments(recovery.parse_args(["--resume", str(tmp_path), "--json"]))
    assert (args.quick, args.steps, args.resume, args.json) == (True, [3], str(tmp_path), True)
    assert args.argv == ["--quick", "--steps", "3", "--keep", "w"]
    with pytest.raises(SystemExit, match="give only --json or -v beside it, not --steps 5"):
        recovery.resumed_arguments(recovery.parse_args(["--resume", str(tmp_path), "--steps", "5"]))
    with pytest.raises(SystemExit, match="not a recovery.py work directory"):
        recovery.resumed_arguments(recovery.parse_args(["--resume", str(tmp_path / "nothing")]))


@pytest.mark.slow
def test_recovery_quick(tmp_path, tiny_model_dir):
    """--quick through every picli command and round, on a tiny random Llama (window 512, x2 to
    1024: the mechanics are the model's business no more than the numbers are): extend, verify at 0 steps, fine-tune every arm,
    verify, the continuation round (--resume) for PI and the control, verify; the partial credit
    per trial in the JSON; both texts' provenance; the table re-rendered from the saved JSON."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "data"))
    import austen

    if not austen.available():
        missing_environment("the Austen text is missing: `make test` (or `make austen`) fetches it")
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--quick", "--json",
                           "--model", str(tiny_model_dir), "--to", "1024", "--keep", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    table = result["table"]
    assert set(table) == {"control", "pi", "pi_low", "yarn"}
    assert set(table["pi_low"]) == set(table["yarn"]) == {"0", "1"}
    assert set(table["pi"]) == set(table["control"]) == {"0", "1", "2"}  # --quick always continues
    assert result["continuation"]["ran"] == [2]
    # Each arm is its own model at 1 step; PI and PI-low start from the same checkpoint.
    at_one = {arm: rows["1"]["perplexity"] for arm, rows in table.items()}
    assert len(set(at_one.values())) == 4, at_one
    assert table["pi"]["0"] == table["pi_low"]["0"] and table["pi"]["0"] != table["control"]["0"]
    # Every model scored the same held-out tokens (the full run: 4095 of the first 4096).
    assert len({measured["tokens_scored"] for rows in table.values() for measured in rows.values()}) == 1
    for rows in table.values():
        for measured in rows.values():
            assert measured["trials"] == len(measured["per_trial"]) == 4
            assert all(0 <= trial["digits_right"] <= 5 and trial["key_logprob"] <= 0 for trial in measured["per_trial"])
            assert measured["mean_key_logprob"] == pytest.approx(
                sum(trial["key_logprob"] for trial in measured["per_trial"]) / 4, abs=1e-3)
    # The continuation resumed the first round: one run, both steps' losses.
    for arm in ("pi", "control"):
        metrics = [json.loads(line) for line in (tmp_path / "work" / f"{arm}-ft" / "metrics.jsonl").read_text().splitlines()]
        assert [metric["step"] for metric in metrics] == [1, 2]
    commands = [json.loads(line)["command"] for line in (tmp_path / "work" / "commands.jsonl").read_text().splitlines()]
    assert ["picli", "finetune", "linear-x2", "-o", "pi-ft", "--resume", "--steps", "2", "--save-every", "1"] in commands
    lrs = {command[command.index("-o") + 1]: command[command.index("--lr") + 1]
           for command in commands if command[1] == "finetune" and "--lr" in command}
    assert lrs == {"control-ft": "0.0001", "pi-ft": "0.0001", "pi_low-ft": "2e-05", "yarn-ft": "0.0001"}
    # Provenance: two authors, hashed; versions and machine.
    assert result["data"]["train"]["author"] != result["data"]["held_out"]["author"]
    assert len(result["data"]["train"]["files"]) == 6
    assert all(len(entry["sha256"]) == 64 for part in ("train", "held_out")
               for entry in result["data"][part]["files"].values())
    assert {"torch", "transformers", "cpu", "cpus", "gpus"} <= set(result["machine"])
    assert set(result["decisions"]) == set(table)
    # --table prints the same table from the saved JSON.
    saved = tmp_path / "recovery.json"
    saved.write_text(done.stdout)
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--table", str(saved)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "| PI x2, LR 1e-4 | 2 |" in again.stdout
    assert "--quick: mechanics only" in again.stdout
    # Interrupted before its last round was recorded (the continuation's two fine-tunes and its
    # verify): --resume replays the first 8 commands and runs the last 3 again, to the same table.
    log = tmp_path / "work" / "commands.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 11
    log.write_text("".join(lines[:8]) + lines[8][:50])  # the 9th cut off mid-line, as a kill leaves it
    resumed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recovery.py"), "--resume",
                              str(tmp_path / "work"), "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = json.loads(resumed.stdout)
    assert second["resumed"]["replayed_commands"] == 8 and len(log.read_text().splitlines()) == 11
    assert second["command"] == result["command"] and second["continuation"]["ran"] == [2]
    for arm, rows in table.items():
        for step, measured in rows.items():
            assert second["table"][arm][step]["perplexity"] == pytest.approx(measured["perplexity"], rel=1e-6)
            assert second["table"][arm][step]["per_trial"] == measured["per_trial"]
