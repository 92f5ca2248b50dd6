"""What hardware a fine-tune needs: `picli finetune --plan` on the config.json of common sizes.

Runs `picli finetune CONFIG_DIR --plan --seq-len L --dtype bfloat16 --json` (in-process: the
same `finetune_command` call the CLI makes) on the config.json files in tests/data/plan_configs/,
written with the dimensions of Meta's published files (Llama-3.2-1B, Llama-2-7b-hf,
Llama-3.1-8B, Llama-2-13b-hf, Llama-3.1-70B), at 8k, 16k and 32k tokens, and prints the
Markdown table docs/finetune.md shows. No weights are needed or read: transformers builds each
model on the meta device. Every number is picli's estimate (finetune_plan.py), not a
measurement; tests/test_finetune.py holds the table in the docs to this script's output.

    .venv/bin/python benchmarks/plan_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from picli.finetune import finetune_command  # noqa: E402
from picli.training import TrainSettings  # noqa: E402

CONFIGS = ROOT / "tests" / "data" / "plan_configs"
MODELS = ("Llama-3.2-1B", "Llama-2-7b-hf", "Llama-3.1-8B", "Llama-2-13b-hf", "Llama-3.1-70B")
LENGTHS = (8192, 16384, 32768)
GPU_BYTES = 80e9  # an 80 GB GPU (A100 80GB, H100), counted in the table's decimal GB
COMMAND = "picli finetune tests/data/plan_configs/MODEL --plan --seq-len L --dtype bfloat16 --json"


def plans() -> list[dict]:
    return [finetune_command(str(CONFIGS / model), None, TrainSettings(seq_len=length, dtype="bfloat16"),
                             plan_only=True) for model in MODELS for length in LENGTHS]


def devices_needed(row: dict) -> str:
    """The fewest devices that hold this mode under 80 GB each (1: no sharding needed)."""
    if row["bytes"] < GPU_BYTES:
        return "1"
    fitting = [int(count) for count, size in row["fsdp"].items() if size < GPU_BYTES]
    return f"{min(fitting)} (FSDP)" if fitting else f"> {max(int(count) for count in row['fsdp'])}"


def table(results: list[dict]) -> str:
    lines = ["| model (parameters) | seq-len | full: 1 GPU | full: FSDP x8, each | full: 80 GB GPUs | "
             "LoRA: 1 GPU | LoRA: 80 GB GPUs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for plan in results:
        rows = {(row["mode"], row["gradient_checkpointing"]): row for row in plan["memory"]}
        full, lora = rows[("full", True)], rows[("lora", True)]
        name = Path(plan["model"]).name
        lines.append(f"| {name} ({plan['parameters'] / 1e9:.2f}B) | {plan['seq_len'] // 1024}k | "
                     f"{full['bytes'] / 1e9:,.0f} GB | {full['fsdp']['8'] / 1e9:,.0f} GB | {devices_needed(full)} | "
                     f"{lora['bytes'] / 1e9:,.0f} GB | {devices_needed(lora)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(plans()))
