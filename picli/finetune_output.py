"""What `picli finetune` writes: resumable checkpoints during the run, and the final model.

A checkpoint (`OUTPUT/checkpoints/step-NNNNNNN`) is accelerate's full state (model, optimizer,
scheduler, RNG) plus `trainer_state.json` with the step, which fixes the data position
because batch order is a pure function of (seed, step). Both it and the export are built in
a staging directory and renamed, so an interruption never leaves half of one behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_json, staged_directory
from .provenance import finetune_record, read_record, write_record
from .training import TrainSettings

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resume continues from, and its trainer_state.json (read once)."""
    folder: Path
    state: dict

    @property
    def step(self) -> int:
        return self.state["step"]


def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    candidates = sorted(folder.glob("step-*")) if folder.is_dir() else []
    return candidates[-1] if candidates else None


def find_resume_point(output: Path) -> ResumePoint | None:
    folder = latest_checkpoint(output)
    return ResumePoint(folder, json.loads((folder / STATE).read_text())) if folder else None


def save_checkpoint(accelerator, output: Path, step: int, tokens: int, settings: TrainSettings) -> None:
    """Atomic: built in a staging directory and renamed; older checkpoints are pruned after."""
    folder = output / CHECKPOINTS
    target = folder / f"step-{step:07d}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    staging = folder / f".{target.name}.picli-tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    # Pickled state: tied weights (embeddings = head) survive it, safetensors would drop one.
    accelerator.save_state(str(staging), safe_serialization=False)
    if accelerator.is_main_process:
        atomic_write_json(staging / STATE, {"step": step, "tokens": tokens, "settings": settings.recorded()})
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        for old in sorted(folder.glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metrics of steps the checkpoint does not contain."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def export_model(accelerator, loss_module, model_path: Path, output: Path, settings: TrainSettings, record: dict,
                 command: str, parameters: int, state_dict: dict | None = None) -> None:
    """The final checkpoint: weights saved by transformers, config.json copied from the source.

    transformers 5's save_pretrained drops the legacy rope_scaling/rope_theta keys, so the
    source's dual-schema config.json (written by `picli extend`) is carried verbatim.
    """
    language_model = accelerator.unwrap_model(loss_module).language_model
    if settings.lora and not settings.keep_adapter:
        language_model = language_model.merge_and_unload()
    staging_parent = output / ".final"
    if staging_parent.exists():
        shutil.rmtree(staging_parent)
    staging_parent.mkdir()
    with staged_directory(staging_parent / "model") as staging:
        if state_dict is not None:  # gathered from FSDP shards; keys carry the loss module's prefix
            state_dict = {key.removeprefix("language_model."): value for key, value in state_dict.items()}
        language_model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)
        if not (settings.lora and settings.keep_adapter):
            shutil.copyfile(model_path / "config.json", staging / "config.json")
        for name in os.listdir(model_path):
            source = model_path / name
            carried = name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja",
                                                              "generation_config.json", "vocab.json", "merges.txt")
            if carried and source.is_file() and not (staging / name).exists():
                shutil.copyfile(source, staging / name)
        write_record(staging, finetune_record(read_record(model_path), model_path=model_path,
                                              command=command, finetune=record, parameters=parameters))
    for name in os.listdir(staging_parent / "model"):
        os.replace(staging_parent / "model" / name, output / name)
    shutil.rmtree(staging_parent, ignore_errors=True)
