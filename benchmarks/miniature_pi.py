"""The PI paper's central experiment in miniature, run entirely through picli's own commands.

Chen et al. 2023 (arXiv 2306.15595), Table 4: after Position Interpolation plus ~200 steps of
fine-tuning, passkey retrieval reaches the whole extended window, while fine-tuning at the
long window *without* PI barely grows it. This script asks the same question of a model
small enough for 2 CPU cores:

1. Setup (plain Python, no picli): a word-level tokenizer (every word of the passkey prompt,
   the digits 0-9 as separate tokens, [EOS], [UNK]) and a random-init Llama (2 layers, hidden
   128, 4 heads, MLP 512, window W, rope_theta 1e4), saved as a checkpoint; two JSONL corpora
   of passkey documents built from picli.passkey's own text constants: task line, filler,
   key line at a random depth, filler, question, and the answer ("... What is the pass key?
   The pass key is 12345."). The documents are sized so that, with the EOS `picli finetune`
   appends, they pack into sequences of exactly W (resp. T) tokens that cut no document:
   half the sequences are one passkey document of W-1 tokens, half a shorter one plus a
   filler-only document, so answers do not always sit at the same absolute positions.
2. `picli finetune BASE --seq-len W` in rounds of --short-round steps (`--resume --steps`
   continues a finished run exactly: the run saves a checkpoint at its last step because the
   round size is its --save-every), `picli verify --passkey --length W` after each round,
   until the short model retrieves the key at every evaluated depth of W (or --short-max).
3. `picli extend short --to T` (T = multiple x W): PI, factor T/W, no new weights; and
   `picli extend short --to T --method yarn` (YaRN, same factor, its default ramp and
   attention factor).
4. Six arms, all measured by `picli verify --passkey --length T`:
   (a) extrapolation: the short model as it is;
   (b) PI without fine-tuning;  (b') YaRN without fine-tuning;
   (c) PI + N steps of `picli finetune --seq-len T` on the T-token corpus;
   (c') YaRN + the same N steps;
   (d) direct fine-tuning: the short model, config untouched, N steps of the same fine-tune
       (transformers simply runs plain RoPE past max_position_embeddings).
   Arms (c), (c') and (d) are trained once each to the largest N, in increments: a run to N1
   with --save-every gcd(N), verify its exported model, then `--resume --steps N2`, and so
   on. Batch order is a pure function of (seed, step) and the LR is constant after warmup,
   so the model at N2 is the one an uninterrupted run would have produced, and every N
   costs only its own extra steps. (a), (b) and (b') are the N=0 points of (d), (c) and (c').
5. Steps 1-4 run once per seed of --seeds (default 0-3): the seed sets the model's init,
   both corpora, the data order and the passkey keys, so the short model differs per seed.
   The table gives, per arm and N, the mean and the range (min-max) over the seeds; the JSON
   holds every seed's numbers (per_seed) beside the summary.

Every fine-tune uses the same recipe: global batch 16 (one micro-batch), AdamW at LR 1e-3,
20 warmup steps, CPU, one torch thread per picli process (--threads). Every verification:
8 depths x 5 random keys (not the paper's 32 x 10; the k grid is what `picli verify
--positions 8 --trials 5` makes), success threshold 20%, k_max in tokens. Note that k cannot
reach T: the largest evaluable k is T minus the task line and the answer room (222 of 256 at
T=256); the table prints it.

Run it from the repository root (the results, and the wall time of the defaults on 2 shared
CPU cores, are in docs/science.md; every picli command is a new process, and its start-up
is a large part of the time):

    .venv/bin/python benchmarks/miniature_pi.py                     # table (Table 4 style)
    .venv/bin/python benchmarks/miniature_pi.py --json              # the numbers as JSON
    .venv/bin/python benchmarks/miniature_pi.py --multiple 4 --steps 100,200,400 --seeds 0
    .venv/bin/python benchmarks/miniature_pi.py --quick             # plumbing smoke test (one seed)

Progress goes to stderr, the result to stdout. `--keep DIR` keeps the work directory (models,
corpora, every picli command's JSON). The script exits 0 whatever the outcome: it is a
measurement, and docs/science.md quotes it. It never tunes anything towards an answer.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import signal
import sys
import time
from functools import reduce
from pathlib import Path

from _common import PicliRunner, machine, work_directory  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from picli.passkey import FILLER, KEY_LINE, QUESTION, TASK  # noqa: E402

POSITIONS, TRIALS = 8, 5
RECIPE = ["--batch-size", "16", "--micro-batch-size", "16", "--lr", "1e-3", "--warmup-steps", "20", "--cpu"]
ARMS = {
    "extrapolation": "(a) extrapolation: short model as is",
    "pi_no_ft": "(b) PI, no fine-tuning",
    "yarn_no_ft": "(b') YaRN, no fine-tuning",
    "pi_ft": "(c) PI + fine-tuning at T",
    "yarn_ft": "(c') YaRN + fine-tuning at T",
    "direct_ft": "(d) direct fine-tuning at T, no PI",
}


# ---------------------------------------------------------------------------------------
# Setup: tokenizer, random model, corpora (no picli involved)


def build_tokenizer(directory: Path, window: int):
    """Word level, digits split, so a 5-digit key is 5 tokens (as in tests/conftest.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for text in (TASK, FILLER, KEY_LINE.format(key=0), QUESTION):
        words.update(text.replace(".", " . ").replace("?", " ? ").split())
    vocab = {"[UNK]": 0, "[EOS]": 1, **{str(digit): 2 + digit for digit in range(10)}}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    model = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                   pre_tokenizers.Digits(individual_digits=True)])
    model.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]", eos_token="[EOS]",
                                        model_max_length=window)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_base_model(directory: Path, vocab_size: int, window: int, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=window,
                         rope_theta=10000.0, eos_token_id=1, bos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)


def passkey_document(tokenizer, length: int, rng: random.Random, filler_ids: list[int]) -> list[int]:
    """One complete example of exactly `length` tokens, the key line at a uniform random depth.

    Same layout as picli.passkey's prompts: task, filler from its start, key line, filler from
    its start again, question, then the answer the model must learn to copy.
    """
    key = rng.randint(10000, 99999)
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    task, key_line, question = encode(TASK), encode(" " + KEY_LINE.format(key=key)), encode(" " + QUESTION)
    answer = encode(f" {key}.")
    filler = length - len(task) - len(key_line) - len(question) - len(answer)
    if filler < 0:
        raise SystemExit(f"a passkey document needs {length - filler} tokens, not {length}")
    before = rng.randint(0, filler)
    return task + filler_ids[:before] + key_line + filler_ids[:filler - before] + question + answer


def sequence_documents(tokenizer, sequence_length: int, shortest: int, rng: random.Random,
                       filler_ids: list[int]) -> list[list[int]]:
    """Documents that fill one packed training sequence exactly (each + its EOS).

    Half the sequences are one passkey document of sequence_length - 1 tokens, laid out like
    `picli verify`'s prompts of that length. The other half hold a shorter passkey document
    (uniform length) and a filler-only document, in random order. Without them every answer
    sat at the same absolute positions, and the first measured short model learned exactly
    that: 97% on its training documents, 0% on verify's prompts, whose answer sits two
    positions later (and 34/35 when verified at W-2, where the positions coincide again).
    """
    if rng.random() < 0.5 or sequence_length - 3 < shortest:
        return [passkey_document(tokenizer, sequence_length - 1, rng, filler_ids)]
    length = rng.randint(shortest, sequence_length - 3)  # leaves the filler document >= 1 token
    documents = [passkey_document(tokenizer, length, rng, filler_ids), filler_ids[:sequence_length - length - 2]]
    rng.shuffle(documents)
    return documents


def write_corpus(path: Path, tokenizer, sequence_length: int, sequences: int, seed: int) -> None:
    """JSONL, one document per line; `picli finetune` packs it back into exactly these sequences."""
    rng = random.Random(seed)
    filler_ids = tokenizer((" " + FILLER) * (sequence_length // 10 + 2), add_special_tokens=False).input_ids
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    shortest = len(encode(TASK + " " + KEY_LINE.format(key=10000) + " " + QUESTION + " 10000."))
    with open(path, "w") as handle:
        for _ in range(sequences):
            documents = sequence_documents(tokenizer, sequence_length, shortest, rng, filler_ids)
            assert sum(len(ids) + 1 for ids in documents) == sequence_length
            for ids in documents:
                text = tokenizer.decode(ids)
                assert encode(text) == ids, "the corpus must tokenize back to the planned documents"
                handle.write(json.dumps({"text": text}) + "\n")


# ---------------------------------------------------------------------------------------
# picli, as a user runs it


class Picli(PicliRunner):
    """picli's commands as this experiment uses them."""

    def __call__(self, *args: str) -> dict:
        return self.run(*args)[0]

    def finetune(self, model: str, output: str, data: str, seq_len: int, steps: int, save_every: int,
                 seed: int, resume: bool) -> dict:
        if resume:
            # The run's own settings (data, seq-len, batch, LR, seed) come from its checkpoint.
            return self("finetune", model, "-o", output, "--resume", "--steps", str(steps),
                        "--save-every", str(save_every))
        return self("finetune", model, "-o", output, "--data", data, "--seq-len", str(seq_len), "--steps", str(steps),
                    "--save-every", str(save_every), "--seed", str(seed), *RECIPE)

    def passkey(self, model: str, lengths: list[int], baseline: str | None = None, seed: int = 0) -> dict:
        """{"model"|"baseline": {length: {"k_max", "k_largest", "success"}}}."""
        args = ["verify", model, "--passkey", "--positions", str(POSITIONS), "--trials", str(TRIALS),
                "--seed", str(seed), "--no-save"]
        for length in lengths:
            args += ["--length", str(length)]
        if baseline:
            args += ["--baseline", baseline]
        report = self(*args)
        measured = {}
        for label in ("model", "baseline"):
            run = report.get(label)
            if run:
                # Rounded: the mean of per-depth fractions (multiples of 1/trials) is not exact in
                # floating point, and 36 of 40 keys came out as 0.8999..., under a 0.9 threshold.
                measured[label] = {result["length"]: {"k_max": result["k_max"], "k_largest": result["ks"][-1],
                                                      "success": round(sum(result["success"])
                                                                       / len(result["success"]), 9)}
                                   for result in run["passkey"]["results"]}
        return measured


    def passkey_many(self, models: list[str], lengths: list[int], seed: int) -> dict:
        """{model: {length: ...}} for several models, two per `picli verify` call (model and
        --baseline), which halves the process start-ups."""
        measured = {}
        for first in range(0, len(models), 2):
            pair = models[first:first + 2]
            report = self.passkey(pair[0], lengths, baseline=pair[1] if len(pair) > 1 else None, seed=seed)
            measured[pair[0]] = report["model"]
            if len(pair) > 1:
                measured[pair[1]] = report["baseline"]
        return measured


# ---------------------------------------------------------------------------------------
# The experiment


def run_seed(args, seed: int, workdir: Path, picli: Picli) -> dict:
    """The whole pipeline for one seed: base model, corpora, short model, extensions, arms."""
    window, target = args.window, args.window * args.multiple
    steps = sorted(set(args.steps))
    started = time.perf_counter()
    workdir.mkdir(parents=True)
    picli.workdir = workdir

    base = workdir / "base"
    tokenizer = build_tokenizer(base, window)
    build_base_model(base, len(tokenizer), window, seed)
    write_corpus(workdir / "data-short.jsonl", tokenizer, window, args.sequences, seed)
    write_corpus(workdir / "data-long.jsonl", tokenizer, target, args.sequences, seed + 1)
    picli.say(f"seed {seed}: setup: vocabulary {len(tokenizer)}, W={window}, T={target}, "
              f"{args.sequences} sequences each, work directory {workdir}")

    # 1. The short model: train at W in rounds until it retrieves at every depth of W.
    short_steps, short_curve, learned = 0, [], False
    while short_steps < args.short_max and not learned:
        short_steps = min(short_steps + args.short_round, args.short_max)
        trained = picli.finetune("base", "short", "data-short.jsonl", window, short_steps, args.short_round,
                                 seed, resume=short_steps > args.short_round)
        at_window = picli.passkey("short", [window], seed=seed)["model"][window]
        short_curve.append({"steps": short_steps, "loss": trained["final_loss"], **at_window})
        picli.say(f"seed {seed}: short model, {short_steps} steps at W={window}: loss {trained['final_loss']:.3f}, "
                  f"k_max {at_window['k_max']}/{at_window['k_largest']}, success {at_window['success']:.0%}")
        learned = at_window["k_max"] == at_window["k_largest"] and at_window["success"] >= args.short_success
    if not learned and not args.quick:  # --quick's 20 steps learn nothing: it tests the plumbing
        # The experiment asks what extension does to a model that retrieves at W; without one
        # the arms measure nothing of that. The seed is reported, not dropped silently.
        picli.say(f"seed {seed}: the short model did not learn passkey at W in {short_steps} steps: no arms")
        return {"seed": seed, "vocabulary": len(tokenizer), "short_model_learned": False,
                "short_training": short_curve, "wall_seconds": round(time.perf_counter() - started)}

    # 2. The extended checkpoints (PI, and YaRN unless --no-yarn); arms (a), (b) and (b') at
    #    W and T.
    picli("extend", "short", "--to", str(target), "-o", "pi")
    extended = ["pi", "short"]
    if not args.no_yarn:
        picli("extend", "short", "--to", str(target), "--method", "yarn", "-o", "yarn")
        extended.append("yarn")
    zero = picli.passkey_many(extended, [window, target], seed)
    by_steps = {0: {"extrapolation": zero["short"][target], "pi_no_ft": zero["pi"][target]}}
    if not args.no_yarn:
        by_steps[0]["yarn_no_ft"] = zero["yarn"][target]
    picli.say(f"seed {seed}: 0 steps at T: " + ", ".join(f"{arm} k_max {measured['k_max']}"
                                                          for arm, measured in by_steps[0].items()))

    # 3. The fine-tuned arms at T, verified after each N of the step list.
    save_every = reduce(math.gcd, steps)
    arms = [("pi_ft", "pi")] + ([] if args.no_yarn else [("yarn_ft", "yarn")]) \
        + ([] if args.no_direct else [("direct_ft", "short")])
    previous = 0
    for count in steps:
        for arm, source in arms:
            picli.finetune(source, arm, "data-long.jsonl", target, count, save_every, seed, resume=previous > 0)
        measured = picli.passkey_many([arm for arm, _ in arms], [target], seed)
        by_steps[count] = {arm: measured[arm][target] for arm, _ in arms}
        picli.say(f"seed {seed}: {count} steps at T: " + ", ".join(f"{arm} k_max {result['k_max']}"
                                                                    for arm, result in by_steps[count].items()))
        previous = count

    return {
        "seed": seed,
        "vocabulary": len(tokenizer),
        "short_model_learned": learned,
        "k_largest": zero["short"][target]["k_largest"],
        "k_max_by_steps": {str(count): {arm: measured["k_max"] for arm, measured in row.items()}
                           for count, row in by_steps.items()},
        "success_by_steps": {str(count): {arm: round(measured["success"], 3) for arm, measured in row.items()}
                             for count, row in by_steps.items()},
        "at_short_window": {name: zero[model][window] for name, model in
                            (("short", "short"), ("pi_no_ft", "pi"), ("yarn_no_ft", "yarn")) if model in zero},
        "short_training": short_curve,
        "wall_seconds": round(time.perf_counter() - started),
    }


def spread(values: list[float]) -> dict:
    return {"mean": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}


def run(args) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()  # the long corpus exceeds the tokenizer's W: expected
    transformers.utils.logging.disable_progress_bar()
    workdir = work_directory(args.keep, "picli-miniature-")
    picli = Picli(workdir, args.threads, verbose=args.verbose)
    started = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(args, seed, workdir / f"seed-{seed}", picli))
        # One line per finished seed on stderr: an interrupted run still leaves every
        # finished seed's numbers in its log.
        picli.say(f"seed {seed} done: {json.dumps(per_seed[-1])}")

    measured = [result for result in per_seed if "k_max_by_steps" in result]  # the arms ran
    if not measured:
        raise SystemExit("no seed's short model learned passkey at W: nothing to extend (see the log above)")
    largest = {result["k_largest"] for result in measured}
    assert len(largest) == 1, "the prompt layout, hence the largest k, does not depend on the seed"
    summary = {}
    for count, row in measured[0]["k_max_by_steps"].items():
        summary[count] = {arm: {"k_max": spread([result["k_max_by_steps"][count][arm] for result in measured]),
                                "success": spread([result["success_by_steps"][count][arm] for result in measured])}
                          for arm in row}
    result = {
        "short_window": args.window,
        "target_window": args.window * args.multiple,
        "steps": sorted(set(args.steps)),
        "seeds": args.seeds,
        # the seeds whose arms ran (their short model learned passkey at W); the summary is over these
        "seeds_measured": [result["seed"] for result in measured],
        "k_largest": largest.pop(),
        # mean, min and max over the measured seeds, per number of fine-tuning steps and arm
        "summary": summary,
        "per_seed": per_seed,
        "protocol": {"positions": POSITIONS, "trials": TRIALS, "threshold": 0.2,
                     "passkey_seed": "the run's seed"},
        "threads": args.threads,
        "machine": machine(),
        "quick": args.quick,
        "recipe": "picli finetune " + " ".join(RECIPE),
        "model": "Llama, 2 layers, hidden 128, 4 heads, MLP 512, rope_theta 1e4, random init, "
                 f"word-level vocabulary of {per_seed[0]['vocabulary']}",
        "command": "benchmarks/miniature_pi.py " + " ".join(args.argv),
        "wall_seconds": round(time.perf_counter() - started),
        "workdir": str(workdir) if args.keep else None,
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def cell(values: dict, percent: bool) -> str:
    """mean (min-max) over the seeds; one value when there is one seed or they agree."""
    show = (lambda value: f"{value:.0%}") if percent else (lambda value: f"{value:.0f}")
    if show(values["min"]) == show(values["max"]):
        return show(values["min"])
    return f"{show(values['mean'])} ({show(values['min'])}-{show(values['max'])})"


def table(result: dict) -> str:
    """Rows: arms; columns: fine-tuning steps (the PI paper's Table 4 layout); one table for
    k_max and one for the mean success over all trials, each cell mean (min-max) over seeds."""
    window, target, largest = result["short_window"], result["target_window"], result["k_largest"]
    counts = list(result["summary"])
    protocol, seeds = result["protocol"], result["seeds_measured"]
    failed = [seed["seed"] for seed in result["per_seed"] if "k_max_by_steps" not in seed]
    measured = [seed for seed in result["per_seed"] if "k_max_by_steps" in seed]
    lines = [
        f"Passkey at T={target} after extension from W={window}; largest evaluable k at T: {largest}. "
        f"Seeds {', '.join(map(str, seeds))}: each cell is the mean (min-max) over the {len(seeds)} seed(s).",
        f"picli verify --passkey: {protocol['positions']} depths x {protocol['trials']} keys, a depth passes at "
        f">= 20% of its keys. Fine-tune: {result['recipe']}.",
    ]
    if failed:
        lines.append(f"Seed(s) {', '.join(map(str, failed))}: the short model did not learn passkey at W "
                     "(its rounds are in per_seed), so no arm was run; not in the table.")
    for title, key, percent in (("k_max (tokens)", "k_max", False), ("mean success over all trials", "success", True)):
        lines += ["", f"{title}:", "",
                  "| arm | " + " | ".join(f"{count} steps" for count in counts) + " |",
                  "|---|" + "---:|" * len(counts)]
        for arm, label in ARMS.items():
            cells = [cell(result["summary"][count][arm][key], percent) if arm in result["summary"][count] else ""
                     for count in counts]
            if any(cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    at_window = {name: spread([seed["at_short_window"][name]["k_max"] for seed in measured])
                 for name in measured[0]["at_short_window"]}
    success = {name: spread([seed["at_short_window"][name]["success"] for seed in measured])
               for name in measured[0]["at_short_window"]}
    short_steps = spread([seed["short_training"][-1]["steps"] for seed in measured])
    lines += [
        "",
        f"At W={window} (largest evaluable k {measured[0]['at_short_window']['short']['k_largest']}): "
        + "; ".join(f"{name} k_max {cell(at_window[name], False)} ({cell(success[name], True)})"
                    for name in at_window)
        + f"; the short model trained {cell(short_steps, False)} steps at W.",
        f"Wall time {result['wall_seconds']} s ("
        + ", ".join(f"seed {seed['seed']}: {seed['wall_seconds']} s" for seed in result["per_seed"]) + ").",
    ]
    if result.get("quick"):
        lines.append("--quick: tiny budgets, a smoke test of the plumbing; these numbers are not a measurement.")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=128, help="short window W in tokens (default 128)")
    parser.add_argument("--multiple", type=int, default=2, help="target T = multiple x W (default 2)")
    parser.add_argument("--steps", default="10,25,50,100,200",
                        help="fine-tuning steps N at T, comma-separated (default 10,25,50,100,200)")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated; each seed runs the whole pipeline: "
                        "model init, corpora, short model, data order and passkey keys (default 0,1,2,3: the published run)")
    parser.add_argument("--short-round", type=int, default=250, help="steps per round of short-window training")
    parser.add_argument("--short-max", type=int, default=2000, help="give up on the short model after this many")
    parser.add_argument("--short-success", type=float, default=0.9,
                        help="mean success at W the short model needs besides k_max = largest k (default 0.9)")
    parser.add_argument("--sequences", type=int, default=4000, help="packed training sequences per corpus")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per picli process (default 1: on a shared 2-core machine, two "
                        "threads spin-waiting on each other made each training step several times slower)")
    parser.add_argument("--no-direct", action="store_true", help="skip arm (d), direct fine-tuning")
    parser.add_argument("--no-yarn", action="store_true", help="skip the YaRN arms (b') and (c')")
    parser.add_argument("--quick", action="store_true", help="tiny budgets and the first seed only: a smoke "
                        "test of the plumbing, not a measurement")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    parser.add_argument("--verbose", action="store_true", help="log every picli command on stderr")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.steps = [int(value) for value in str(args.steps).split(",") if value.strip()]
        args.seeds = list(dict.fromkeys(int(value) for value in str(args.seeds).split(",") if value.strip()))
    except ValueError:
        parser.error("--steps and --seeds take comma-separated integers")
    if args.quick:
        args.steps, args.short_round, args.short_max, args.sequences = [10, 20], 20, 20, 200
        args.seeds = args.seeds[:1]
    if args.window < 80 or args.multiple < 2 or not args.steps or min(args.steps) < 1 or not args.seeds:
        parser.error("--window must be >= 80 tokens, --multiple >= 2, --steps positive integers, --seeds not empty")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so the running picli child is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))


if __name__ == "__main__":
    main()
