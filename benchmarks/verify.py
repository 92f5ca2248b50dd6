"""Benchmark: `picli verify` against the way public scripts verify a long-context model.

Passkey. The same sweep (same prompts, same keys, same seed) runs two ways:

- picli's scorer (`picli.passkey.evaluate_passkey`): one teacher-forced forward pass per
  trial, only the answer positions get logits, the shared prompt prefix is computed once
  into a KV cache that grows from the largest k to the smallest, trials of a k batched;
- a generate-per-trial loop, as the public YaRN / LongLoRA scripts do it: for each trial the
  whole prompt (`LengthPrompts.full_prompt`) goes to
  `model.generate(max_new_tokens=len(answer), do_sample=False)`. A trial succeeds when the
  decoded new text contains the key (YaRN's test) and, separately, when the new tokens equal
  the key's tokens (LongLoRA's test, and picli's definition).

It prints trials/s of each and the ratio, and compares the per-trial outcomes of picli with
both generate tests (it counts mismatches; it does not assert).

Perplexity. One window of L=4096 tokens (tests/data/alice.txt tokenized and repeated to reach
4096 tokens: repetition makes the value meaningless as a perplexity, but both sides score the
same tokens, which is all a memory comparison needs) scored by picli's
`evaluate_token_ids` (decoder body, then the output head on ~128 MiB of logits at a time) and by
the full-logits way, `model(ids, labels=ids)` (a [4096 x 49152] float32 logits tensor, then
cross-entropy over it). It reports the peak memory of each and checks the perplexities agree.

Memory. Every measured method runs in its own child process (this script re-invoked with
`--child NAME`), so nothing one method allocates is seen by another. Each child loads the
model, runs a small warm-up, records its RSS (the baseline: mostly the weights), resets the
kernel's peak-RSS mark (`/proc/self/clear_refs`), runs the method once, and reports:
`peak RSS` = the process's `ru_maxrss` (model loading included), and `increment` = the
peak RSS during the measured run (VmHWM after the reset) minus the baseline. Where the reset
is not allowed, the increment is `ru_maxrss` minus the baseline (then it may hide behind the
loading peak; the output says so).

Wall times exclude model loading and warm-up; CPU seconds (user + system, all threads) of the
same section are reported beside them, as they suffer less from other work on the machine.
torch runs with 2 threads in every child. Before each child the script waits (up to
--max-wait seconds) for the 1-minute load average to fall below --max-load, and the tables
show the load average at the start and end of each.

Run it from the repository root on a quiet machine (about 8 minutes on 2 idle CPU cores):

    .venv/bin/python benchmarks/verify.py            # tables + targets
    .venv/bin/python benchmarks/verify.py --quick    # 2 positions x 2 trials, a smoke run
    .venv/bin/python benchmarks/verify.py --json     # raw numbers as JSON on stdout
    .venv/bin/python benchmarks/verify.py --save-json run.json   # tables, and the numbers kept
    .venv/bin/python benchmarks/verify.py --from-json run.json   # the tables of a saved run

SmolLM2-135M is picli's embedded model: it is imported into picli's cache on first use
(~25 s), before anything is measured. The script always exits 0: it is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from _common import PYTHON, ROOT, machine, picli_env, run_child, targets_summary, targets_table, wait_for_quiet

THREADS = 2
MODEL = "smollm2-135m"
TEXT = ROOT / "tests" / "data" / "alice.txt"

# Targets from the issue.
SPEEDUP_MIN = 1.8  # picli trials/s over generate trials/s, CPU, SmolLM2, 1024 tokens, 8 x 10
PPL_MEMORY_RATIO_MAX = 0.5  # picli perplexity peak-memory increment / full-logits increment at L=4096
PPL_REL_DIFF_MAX = 1e-3  # the two perplexities must agree (not an issue target; a correctness check)

CHILDREN = ("passkey-picli", "passkey-generate", "ppl-picli", "ppl-full")


# ---------------------------------------------------------------------------------------------
# Child side: one method, one process.

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Set VmHWM (peak RSS) back to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Memory:
    """Baseline RSS after loading, then the peak of the measured run."""

    def start(self) -> None:
        import gc

        gc.collect()
        self.baseline_kib = _status_kib("VmRSS") or 0
        self.reset = _reset_peak()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = usage.ru_utime + usage.ru_stime

    def finish(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peak_process = usage.ru_maxrss  # KiB on Linux
        peak_run = (_status_kib("VmHWM") if self.reset else None) or peak_process
        return {"cpu_seconds": usage.ru_utime + usage.ru_stime - self.cpu,
                "rss_after_load_mb": self.baseline_kib / 1024, "peak_rss_mb": peak_process / 1024,
                "peak_run_mb": peak_run / 1024, "increment_mb": max(0, peak_run - self.baseline_kib) / 1024,
                "peak_reset": self.reset}


def _load(path: str):
    import torch

    torch.set_num_threads(THREADS)
    from picli.modeling import load_model

    loaded = load_model(Path(path), device="cpu", dtype="auto", attention="sdpa")
    with torch.inference_mode():  # warm-up: first-call costs (kernels, allocator) stay out of the timing
        loaded.model(input_ids=torch.tensor([list(range(10, 74))]), logits_to_keep=1)
    return loaded


def child_passkey(method: str, path: str, length: int, positions: int, trials: int, seed: int) -> dict:
    import random

    import torch
    from picli.passkey import PromptBuilder, Protocol, evaluate_passkey

    loaded = _load(path)
    protocol = Protocol(positions=positions, trials=trials, seed=seed)
    # The prompts evaluate_passkey builds: the same builder, a Random seeded the same way.
    prompts = PromptBuilder(loaded.tokenizer).prompts(length, protocol, random.Random(seed))
    trials_all = [trial for group in prompts.groups for trial in group]
    memory = Memory()
    if method == "passkey-picli":
        import picli.passkey

        # Tokens the model reads: the shared prefix once, then each trial's own suffix.
        tokens = max(trial.prefix_length for trial in trials_all) + sum(len(trial.suffix) for trial in trials_all)
        auto_batch = getattr(picli.passkey, "_auto_batch", None)  # a private helper: report it only if it is there
        batch = auto_batch(loaded, length, trials) if auto_batch else "auto"
        memory.start()
        started = time.perf_counter()
        result = evaluate_passkey(loaded, [length], protocol).results[0]
        seconds = time.perf_counter() - started
        return {"method": method, "seconds": seconds, "ks": result.ks, "keys": result.keys,
                "exact": result.outcomes, "model_tokens": tokens, "batch": batch, **memory.finish()}

    # Tokens the model reads: each whole prompt, then one per generated token after the first.
    tokens = sum(len(prompts.full_prompt(trial)) + len(trial.answer) - 1 for trial in trials_all)
    model, tokenizer = loaded.model, loaded.tokenizer
    with torch.inference_mode():  # warm up generate too
        model.generate(torch.tensor([list(range(10, 74))]), max_new_tokens=2, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
    memory.start()
    started = time.perf_counter()
    exact, contains, texts = [], [], []
    for group in prompts.groups:
        exact_row, contains_row, text_row = [], [], []
        for trial in group:
            prompt = torch.tensor([prompts.full_prompt(trial)])
            with torch.inference_mode():
                generated = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                           max_new_tokens=len(trial.answer), do_sample=False,
                                           pad_token_id=tokenizer.eos_token_id)
            new = generated[0, prompt.shape[1]:].tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            exact_row.append(new == trial.answer)
            contains_row.append(str(trial.key) in text)
            text_row.append(text)
        exact.append(exact_row)
        contains.append(contains_row)
        texts.append(text_row)
    seconds = time.perf_counter() - started
    return {"method": method, "seconds": seconds, "ks": prompts.ks,
            "keys": [[trial.key for trial in group] for group in prompts.groups],
            "exact": exact, "contains": contains, "texts": texts, "model_tokens": tokens, **memory.finish()}


def ppl_tokens(tokenizer, length: int) -> list[int]:
    """`length` tokens of alice.txt: BOS + the text, repeated (without BOS) until long enough."""
    text = TEXT.read_text()
    first = list(tokenizer(text, add_special_tokens=True).input_ids)
    more = list(tokenizer(text, add_special_tokens=False).input_ids)
    ids = first
    while len(ids) < length:
        ids = ids + more
    return ids[:length]


def child_ppl(method: str, path: str, length: int) -> dict:
    import math

    import torch

    loaded = _load(path)
    ids = ppl_tokens(loaded.tokenizer, length)
    memory = Memory()
    if method == "ppl-picli":
        from picli.perplexity import evaluate_token_ids

        memory.start()
        started = time.perf_counter()
        result = evaluate_token_ids(loaded, [ids], [length], stride=256).results[0]
        seconds = time.perf_counter() - started
        return {"method": method, "seconds": seconds, "perplexity": result.perplexity, "nll": result.nll,
                "tokens_scored": result.tokens_scored, "windows": result.windows, **memory.finish()}
    memory.start()
    started = time.perf_counter()
    with torch.inference_mode():
        tensor = torch.tensor([ids])
        output = loaded.model(input_ids=tensor, labels=tensor, use_cache=False)
        nll = float(output.loss)
        logits_shape = list(output.logits.shape)
        del output
    seconds = time.perf_counter() - started
    return {"method": method, "seconds": seconds, "perplexity": math.exp(nll), "nll": nll,
            "tokens_scored": length - 1, "logits_shape": logits_shape, **memory.finish()}


def child_main(args) -> None:
    if args.child.startswith("passkey-"):
        result = child_passkey(args.child, args.model_path, args.length, args.positions, args.trials, args.seed)
    else:
        result = child_ppl(args.child, args.model_path, args.ppl_length)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------
# Parent side: run the children, compare, print.

def measure_method(name: str, args, path: Path, env: dict) -> dict:
    """One method in its own child process (this script with --child NAME): its report, plus the
    process's wall time and peak RSS and the load average around it."""
    command = [PYTHON, str(Path(__file__).resolve()), "--child", name, "--model-path", str(path),
               "--length", str(args.length), "--positions", str(args.positions), "--trials", str(args.trials),
               "--seed", str(args.seed), "--ppl-length", str(args.ppl_length)]
    load_start = wait_for_quiet(args.max_load, args.max_wait)
    print(f"  running {name} (load average {load_start:.2f}) ...", file=sys.stderr, flush=True)
    child = run_child(command, env, cwd=ROOT)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = child.wall_s
    result["load_start"], result["load_end"] = load_start, os.getloadavg()[0]
    result["wait4_maxrss_mb"] = child.peak_rss_mb
    print(f"    {result['seconds']:.1f} s measured ({result['cpu_seconds']:.0f} CPU s), {child.wall_s:.1f} s process, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB, increment {result['increment_mb']:.0f} MB", file=sys.stderr,
          flush=True)
    return result


def model_path(model: str) -> Path:
    """The checkpoint's directory; the embedded SmolLM2 is imported once (not timed)."""
    sys.path.insert(0, str(ROOT))
    from picli.checkpoint import resolve

    return resolve(model, on_event=lambda event: print(event.get("text", ""), file=sys.stderr)).path


def flat(rows: list[list]) -> list:
    return [value for row in rows for value in row]


def compare(picli: dict, generate: dict) -> dict:
    same_prompts = picli["ks"] == generate["ks"] and picli["keys"] == generate["keys"]
    ours, exact, contains = flat(picli["exact"]), flat(generate["exact"]), flat(generate["contains"])
    return {"same_prompts": same_prompts, "trials": len(ours),
            "mismatch_vs_exact": sum(a != b for a, b in zip(ours, exact)),
            "mismatch_vs_contains": sum(a != b for a, b in zip(ours, contains)),
            "success": {"picli": sum(ours), "generate_exact": sum(exact), "generate_contains": sum(contains)}}


def passkey_table(picli: dict, generate: dict, agreement: dict) -> str:
    trials = agreement["trials"]
    lines = ["| method | trials | tokens read | wall s | trials/s | CPU s | load avg start/end | successes | "
             "RSS after load MB | peak RSS MB | increment MB |", "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    rows = [(f"picli scorer (evaluate_passkey, batch {picli['batch']})", picli, f"{agreement['success']['picli']}/{trials}"),
            ("generate per trial", generate, f"{agreement['success']['generate_exact']}/{trials} exact, "
                                             f"{agreement['success']['generate_contains']}/{trials} contains")]
    for label, row, successes in rows:
        lines.append(f"| {label} | {trials} | {row['model_tokens']} | {row['seconds']:.1f} | {trials / row['seconds']:.3f} | "
                     f"{row['cpu_seconds']:.0f} | {row['load_start']:.2f}/{row['load_end']:.2f} | {successes} | "
                     f"{row['rss_after_load_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['increment_mb']:.0f} |")
    return "\n".join(lines)


def ppl_table(picli: dict, full: dict) -> str:
    lines = ["| method | perplexity | wall s | CPU s | load avg start/end | RSS after load MB | peak RSS MB | increment MB |",
             "|---|---:|---:|---:|---|---:|---:|---:|"]
    for label, row in (("picli evaluate_token_ids", picli), ("full logits, model(ids, labels=ids)", full)):
        lines.append(f"| {label} | {row['perplexity']:.4f} | {row['seconds']:.1f} | {row['cpu_seconds']:.0f} | "
                     f"{row['load_start']:.2f}/{row['load_end']:.2f} | {row['rss_after_load_mb']:.0f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['increment_mb']:.0f} |")
    return "\n".join(lines)


def targets(results: dict, agreement: dict, args) -> list[dict]:
    picli, generate = results["passkey-picli"], results["passkey-generate"]
    ppl_picli, ppl_full = results["ppl-picli"], results["ppl-full"]
    trials = agreement["trials"]
    speedup = (trials / picli["seconds"]) / (trials / generate["seconds"])
    ratio = ppl_picli["increment_mb"] / ppl_full["increment_mb"] if ppl_full["increment_mb"] else float("inf")
    rel = abs(ppl_picli["perplexity"] - ppl_full["perplexity"]) / ppl_full["perplexity"]
    grid = f"{args.positions}x{args.trials}"
    return [
        {"target": f"passkey trials/s, picli / generate ({args.length} tokens, {grid})", "value": f"{speedup:.2f}x",
         "wanted": f">= {SPEEDUP_MIN}x", "pass": speedup >= SPEEDUP_MIN, "number": speedup},
        {"target": "per-trial outcomes, picli vs generate token-exact",
         "value": f"{agreement['mismatch_vs_exact']}/{trials} differ", "wanted": "0 differ",
         "pass": agreement["mismatch_vs_exact"] == 0 and agreement["same_prompts"],
         "number": agreement["mismatch_vs_exact"]},
        {"target": "per-trial outcomes, picli vs generate contains-key",
         "value": f"{agreement['mismatch_vs_contains']}/{trials} differ", "wanted": "0 differ",
         "pass": agreement["mismatch_vs_contains"] == 0 and agreement["same_prompts"],
         "number": agreement["mismatch_vs_contains"]},
        {"target": f"perplexity peak-memory increment, picli / full logits (L={args.ppl_length})",
         "value": f"{ratio:.2f}x", "wanted": f"<= {PPL_MEMORY_RATIO_MAX}x", "pass": ratio <= PPL_MEMORY_RATIO_MAX,
         "number": ratio},
        {"target": f"perplexity agreement, relative difference picli vs full (L={args.ppl_length})", "value": f"{rel:.1e}",
         "wanted": f"<= {PPL_REL_DIFF_MAX:g}", "pass": rel <= PPL_REL_DIFF_MAX, "number": rel},
    ]


def report(data: dict) -> str:
    """The printed tables, from the JSON this script saves (so --from-json prints the same)."""
    results, agreement, machine, run = data["results"], data["agreement"], data["machine"], data["run"]
    picli, generate = results["passkey-picli"], results["passkey-generate"]
    checks = data["targets"]
    name = "SmolLM2-135M" if data["model"].rstrip("/").endswith(MODEL) else data["model"]
    lines = [f"picli verify benchmark on {name} (fp32, CPU): {machine['cpus']} CPUs, {machine['torch_threads']} "
             f"torch threads, 1-min load average {machine['load_average_before']:.2f} before, "
             f"{machine['load_average_after']:.2f} after", "",
             f"Passkey, {run['length']} tokens, {run['positions']} positions x {run['trials']} trials, seed {run['seed']} "
             f"(same prompts both ways: {'yes' if agreement['same_prompts'] else 'NO'}):", "",
             passkey_table(picli, generate, agreement), "",
             f"Tokens read, generate / picli: {generate['model_tokens'] / picli['model_tokens']:.2f}x; CPU seconds, "
             f"generate / picli: {generate['cpu_seconds'] / picli['cpu_seconds']:.2f}x.", "",
             f"Per-trial outcomes, picli vs generate: {agreement['mismatch_vs_exact']} of {agreement['trials']} differ "
             f"from the token-exact test, {agreement['mismatch_vs_contains']} from the contains-key test.", "",
             f"Perplexity, one window of {run['ppl_length']} tokens (alice.txt, repeated), stride 256:", "",
             ppl_table(results["ppl-picli"], results["ppl-full"])]
    if not all(row["peak_reset"] for row in results.values()):
        lines += ["", "note: the peak-RSS reset was refused here; increments are ru_maxrss - RSS after load"]
    lines += ["", targets_table(checks), "", targets_summary(checks, separator="; ")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positions", type=int, default=8, help="values of k (default 8)")
    parser.add_argument("--trials", type=int, default=10, help="keys per k (default 10)")
    parser.add_argument("--length", type=int, default=1024, help="passkey prompt length in tokens (default 1024)")
    parser.add_argument("--ppl-length", type=int, default=4096, help="perplexity window in tokens (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the keys (default 0)")
    parser.add_argument("--quick", action="store_true", help="2 positions x 2 trials: a smoke run")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON on stdout")
    parser.add_argument("--save-json", type=Path, help="also write the raw numbers to this file")
    parser.add_argument("--from-json", type=Path, help="print the tables of a saved run; measure nothing")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-min load average to fall "
                        "below this before each measured process (default 1.5)")
    parser.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for it (default 600)")
    parser.add_argument("--model", default=MODEL, help=f"checkpoint to measure (default {MODEL}, the embedded SmolLM2)")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        child_main(args)
        return
    if args.from_json:
        print(report(json.loads(args.from_json.read_text())))
        return
    if args.quick:
        args.positions, args.trials = 2, 2

    load_before = os.getloadavg()[0]  # other work on the machine skews every number below
    env = picli_env(THREADS)
    path = model_path(args.model)
    print(f"Measuring on {path} ({os.cpu_count()} CPUs, {THREADS} torch threads):", file=sys.stderr)
    results = {name: measure_method(name, args, path, env) for name in CHILDREN}
    load_after = os.getloadavg()[0]
    agreement = compare(results["passkey-picli"], results["passkey-generate"])
    data = {"machine": {**machine(), "torch_threads": THREADS, "load_average_before": load_before,
                        "load_average_after": load_after},
            "model": str(path),
            "run": {"length": args.length, "positions": args.positions, "trials": args.trials, "seed": args.seed,
                    "ppl_length": args.ppl_length},
            "results": results, "agreement": agreement, "targets": targets(results, agreement, args)}
    if args.save_json:
        args.save_json.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2) if args.json else report(data))


if __name__ == "__main__":
    main()
