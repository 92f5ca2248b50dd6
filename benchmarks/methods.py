"""Linear PI, YaRN and NTK-aware scaling on the real SmolLM2-135M, without fine-tuning.

Issue 10's question: a user who extends a model and does not fine-tune it, which method costs
least inside the old window and works best past it? SmolLM2-135M-Instruct (the embedded
`smollm2-135m`, window 8192, rope_theta 1e5) is extended to 16384 by each method, and the three
extended models and the base model are measured with the same protocol. Every model operation is
a picli command run as a subprocess, as a user would run it:

    picli extend smollm2-135m --to 16384 --method linear|yarn|ntk -o WORK/<method> --weights symlink
    picli verify MODEL --perplexity --data TEXT --length 1024 --length 4096 --max-tokens 4096
    picli verify MODEL --perplexity --data TEXT --length 8192 --max-tokens 8192
    picli verify MODEL --perplexity --data TEXT --length 12288 --max-tokens 12288
    picli verify MODEL --passkey --quick --length 2048            (--long-passkey: and 12288)

Perplexity is sliding-window (stride 256) from the first token of one public-domain book: at 1k
(13 windows) and 4k (one window) over the same first 4096 tokens, inside the old window: what
each method costs at short range; at 8k and 12k over the first 8192 and 12288 tokens, one window
each, so each token is scored with all the text before it: the protocol of the YaRN paper's
Table 2 ("documents truncated to evaluation context window size"). Two thirds of the 12k
window's tokens sit inside the old window, so the table also gives the perplexity of the tokens
each window adds to the next shorter one, by subtraction (`tail_perplexities`): tokens
8192-12287 are every one past the old window and inside the new, the measure issue 10 asks for.
Passkey is picli's quick protocol (4 depths x 2 keys, seed 0: the same keys for every model).
Passkey at 12288 is issue 10's plan too, but costs 8-14x the 12k perplexity window per model on
CPU (measured: 898-1255 s against 88-111 s): opt in.

The text: Lewis Carroll, "Alice's Adventures in Wonderland" (1865; public domain), the Project
Gutenberg "Millennium Fulcrum Edition 2.9" as the Canterbury compression corpus ships it
(alice29.txt, 39357 SmolLM2 tokens, no Gutenberg header). It needs nothing but PyPI: Brotli's
source distribution carries the corpus (`brotli-1.2.1/tests/testdata/alice29.txt`); this
script fetches it once with `pip download` into $PICLI_HOME/bench (default
~/.cache/picli/bench) and checks its sha256 (provenance and hashes: benchmarks/data/README.md).
`--data FILE` measures another text.

Run it from the repository root (the results are in docs/science.md, the raw JSON in
docs/results/methods.json):

    .venv/bin/python benchmarks/methods.py                 # the table, as measured
    .venv/bin/python benchmarks/methods.py --json          # the numbers as JSON (stdout)
    .venv/bin/python benchmarks/methods.py --quick         # mechanics only: 256/512 tokens, ~4 min
    .venv/bin/python benchmarks/methods.py --table docs/results/methods.json   # print a saved run

`--quick` measures tiny lengths on tests/data/alice.txt (in the repository) and checks only the
plumbing; its numbers mean nothing. Progress goes to stderr, the result to stdout. The script
exits 0 whatever the outcome: it is a measurement. `--keep DIR` keeps the extended models and
every picli command's JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _common import ROOT, PicliRunner, machine, work_directory

BASE = "smollm2-135m"
TARGET = 16384
METHODS = ("linear", "yarn", "ntk")
MODELS = ("base",) + METHODS

# The text: one file of Brotli's sdist (pinned, hashed), fetched with pip and cached.
TEXT_SDIST = "brotli==1.2.1"
TEXT_MEMBER = "brotli-1.2.1/tests/testdata/alice29.txt"
TEXT_SHA256 = "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0"  # as shipped (CRLF)
# Cached beside picli's own models (outside the repository); LF line ends: what is measured.
TEXT_CACHE = Path(os.environ.get("PICLI_HOME") or Path.home() / ".cache" / "picli") / "bench" / "alice29.txt"
QUICK_TEXT = ROOT / "tests" / "data" / "alice.txt"

# Each model gets these picli verify calls. Perplexity lengths share a call only when they share
# --max-tokens: the text read is one setting per call.
FULL = [{"measures": ["perplexity"], "lengths": [1024, 4096], "max_tokens": 4096},
        {"measures": ["perplexity"], "lengths": [8192], "max_tokens": 8192},
        {"measures": ["perplexity"], "lengths": [12288], "max_tokens": 12288},
        {"measures": ["passkey"], "lengths": [2048]}]
# Passkey at 12288 as well (issue 10's plan): 8-14x the time of the 12k perplexity window per
# model (the keys of the quick grid sit up to 12k tokens deep, and everything after a key is run
# once per trial), more than the measured run's budget on 2 shared cores; --long-passkey adds it.
LONG_PASSKEY = {"measures": ["passkey"], "lengths": [12288]}
# Mechanics only: one call per model, every code path of the full run at tiny lengths.
QUICK = [{"measures": ["perplexity", "passkey"], "lengths": [256, 512], "max_tokens": 768}]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locate_text() -> Path:
    """alice29.txt, fetched once from PyPI (Brotli's sdist) into picli's cache; fails with what to do."""
    if TEXT_CACHE.is_file():
        return TEXT_CACHE
    log(f"fetching the text: pip download --no-deps --no-binary :all: {TEXT_SDIST} (once, into {TEXT_CACHE.parent})")
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                               "-d", scratch, TEXT_SDIST], capture_output=True, text=True)
        archives = list(Path(scratch).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            sys.exit(f"Error: could not download {TEXT_SDIST}'s source distribution (it carries the text):\n"
                     f"{done.stderr.strip()[-500:]}\nHint: run where PyPI is reachable, or pass --data FILE "
                     "with a long plain-text file of your own.")
        with tarfile.open(archives[0]) as archive:
            raw = archive.extractfile(TEXT_MEMBER).read()
    if hashlib.sha256(raw).hexdigest() != TEXT_SHA256:
        sys.exit(f"Error: {TEXT_MEMBER} does not have the recorded sha256 {TEXT_SHA256}\n"
                 "Hint: the archive changed; see benchmarks/data/README.md, or pass --data FILE.")
    TEXT_CACHE.parent.mkdir(parents=True, exist_ok=True)
    partial = TEXT_CACHE.with_suffix(".partial")
    partial.write_bytes(raw.replace(b"\r\n", b"\n"))
    partial.replace(TEXT_CACHE)
    return TEXT_CACHE


def passkey_summary(result: dict) -> dict:
    outcomes = [hit for row in result["outcomes"] for hit in row]
    return {"k_max": result["k_max"], "k_largest": result["k_largest"], "retrieved": sum(outcomes),
            "trials": len(outcomes), "beyond_window": result["beyond_window"], "seconds": result["seconds"]}


def measure(model: str, name: str, text: Path, calls: list[dict], picli: PicliRunner) -> dict:
    """Perplexity and passkey at every planned length for one model, one picli verify per call."""
    started = time.perf_counter()
    records, perplexity, passkey, window = [], {}, {}, None
    for call in calls:
        args = ["verify", model, *(f"--{measure}" for measure in call["measures"]),
                *(arg for length in call["lengths"] for arg in ("--length", str(length))), "--no-save"]
        if "perplexity" in call["measures"]:
            args += ["--data", str(text), "--stride", "256", "--max-tokens", str(call["max_tokens"])]
        if "passkey" in call["measures"]:
            args += ["--quick"]
        record, _ = picli.run(*args)
        records.append(record)
        run = record["model"]
        window = run["window"]
        for result in (run["perplexity"] or {}).get("results", []):
            perplexity[str(result["length"])] = {key: result[key] for key in (
                "perplexity", "nll", "tokens_scored", "windows", "seconds", "short_documents")}
        for result in (run["passkey"] or {}).get("results", []):
            passkey[str(result["length"])] = passkey_summary(result)
    (picli.workdir / f"verify-{name}.json").write_text(json.dumps(records, indent=2))
    return {"model": model, "window": window, "perplexity": perplexity, "passkey": passkey,
            "tails": tail_perplexities(perplexity), "seconds": time.perf_counter() - started, "records": records}


def tail_perplexities(perplexity: dict) -> list[dict]:
    """Perplexity of only the tokens each single window adds to the next shorter one, for every
    pair of consecutive lengths measured as one window from the text's first token: a causal model
    predicts token t from tokens < t alone, so the shorter window's tokens carry the same loss in
    both, and the rest follows by subtraction. With 4096, 8192 and 12288: tokens 4096-8191 (late in
    the old window) and tokens 8192-12287 (every one past the old window)."""
    single = sorted((int(length), result) for length, result in perplexity.items()
                    if result["windows"] == 1 and result["tokens_scored"] == int(length) - 1)
    tails = []
    for (short_length, short), (long_length, long) in zip(single, single[1:]):
        tokens = long["tokens_scored"] - short["tokens_scored"]
        nll = (long["nll"] * long["tokens_scored"] - short["nll"] * short["tokens_scored"]) / tokens
        tails.append({"from": short_length, "to": long_length, "tokens": tokens, "nll": nll,
                      "perplexity": math.exp(nll)})
    return tails


def extend(method: str, picli: PicliRunner) -> dict:
    output = picli.workdir / method
    # symlinked weights: the four models share one copy of the base weights; verify only reads them.
    record, _ = picli.run("extend", BASE, "--to", str(TARGET), "--method", method, "-o", str(output),
                          "--weights", "symlink")
    config = json.loads((output / "config.json").read_text())
    return {"path": str(output), "rope_theta": config.get("rope_theta"), "rope_scaling": config.get("rope_scaling"),
            "max_position_embeddings": config.get("max_position_embeddings"), "record": record}


def run(args) -> dict:
    calls = QUICK if args.quick else FULL + ([LONG_PASSKEY] if args.long_passkey else [])
    # Absolute: every picli command runs in the work directory.
    text = Path(args.data).resolve() if args.data else (QUICK_TEXT if args.quick else locate_text())
    if not text.is_file():
        sys.exit(f"Error: no text file at {text}\nHint: pass --data FILE with plain text")
    work = work_directory(args.keep, "picli-methods-")
    picli = PicliRunner(work, args.threads, verbose=True, timeout=args.timeout)
    started = time.perf_counter()
    try:
        extended = {method: extend(method, picli) for method in METHODS}
        paths = {"base": BASE, **{method: extended[method]["path"] for method in METHODS}}
        results = {}
        for name in MODELS:
            log(f"== {name}")
            results[name] = measure(paths[name], name, text, calls, picli)
            log(f"   {name}: {results[name]['seconds']:.0f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    environment = machine()

    return {"benchmark": "methods", "quick": args.quick, "base": BASE, "target_window": TARGET,
            "text": {"path": str(text), "sha256": sha256(text), "bytes": text.stat().st_size},
            "calls": calls, "stride": 256, "passkey_protocol": "quick (4 depths x 2 keys, seed 0)",
            "threads": args.threads, "wall_seconds": time.perf_counter() - started,
            "versions": {key: environment[key] for key in ("python", "torch", "transformers")},
            "machine": environment,
            "extended": {method: {k: v for k, v in extended[method].items() if k != "record"}
                         for method in METHODS},
            "results": results}


def table(result: dict) -> str:
    calls = result["calls"]
    ppl_lengths = sorted({length for call in calls if "perplexity" in call["measures"] for length in call["lengths"]})
    passkey_lengths = sorted({length for call in calls if "passkey" in call["measures"] for length in call["lengths"]})
    tails = tail_perplexities(result["results"]["base"]["perplexity"])
    header = (["model", "RoPE"] + [f"ppl {length}" for length in ppl_lengths]
              + [f"ppl tokens {tail['from']}-{tail['to'] - 1}" for tail in tails]
              + [f"passkey {length}" for length in passkey_lengths] + ["seconds"])
    rows = []
    for name in MODELS:
        row = result["results"][name]
        if name == "base":
            rope = f"as trained (window {row['window']})"
        else:
            extended = result["extended"][name]
            rope = (f"theta {extended['rope_theta']:.6g}" if name == "ntk"
                    else f"{name} x{extended['rope_scaling']['factor']:g}")
        cells = [name, rope]
        cells += [f"{row['perplexity'][str(length)]['perplexity']:.2f}" for length in ppl_lengths]
        cells += [f"{tail['perplexity']:.2f}" for tail in tail_perplexities(row["perplexity"])]
        for length in passkey_lengths:
            passkey = row["passkey"][str(length)]
            cells.append(f"{passkey['retrieved']}/{passkey['trials']}, k_max {passkey['k_max']}")
        cells.append(f"{row['seconds']:.0f}")
        rows.append(cells)
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |"
             for line in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    notes = [f"text: {result['text']['path']} (sha256 {result['text']['sha256'][:16]}...)"]
    notes += [f"perplexity at {', '.join(map(str, call['lengths']))}: stride 256 over the first "
              f"{call['max_tokens']} tokens" for call in calls if "perplexity" in call["measures"]]
    notes += [f"ppl tokens {tail['from']}-{tail['to'] - 1}: those tokens alone, from the {tail['to']} "
              f"and {tail['from']} windows (both one window from the first token) by subtraction"
              for tail in tails]
    notes += [f"passkey: keys retrieved / trials and k_max, {result['passkey_protocol']}",
              f"wall time: {result['wall_seconds']:.0f} s ({result['threads']} torch thread(s) per picli process)"]
    return "\n".join(lines + [""] + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny lengths on tests/data/alice.txt: mechanics only")
    parser.add_argument("--data", help="plain-text file to measure instead of alice29.txt")
    parser.add_argument("--long-passkey", action="store_true", help="also passkey at 12288 (slow on CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per picli process (default 1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per picli command")
    parser.add_argument("--keep", help="keep the work directory (extended models, picli JSON) here; new or empty")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved --json result; measure nothing")
    args = parser.parse_args()
    result = json.loads(Path(args.table).read_text()) if args.table else run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result))


if __name__ == "__main__":
    main()
