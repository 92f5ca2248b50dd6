"""What `picli finetune` writes: resumable checkpoints during the run, and the final model.

A checkpoint (`OUTPUT/checkpoints/step-NNNNNNN/`) is picli's own, with no pickle anywhere:

    trainable.safetensors    the trainable weights, full (gathered from every process)
    optimizer.safetensors    AdamW's state per weight: `NAME:exp_avg`, `NAME:exp_avg_sq`, `NAME:step`
    rng-R.safetensors        torch's RNG states of process R (`cpu`, `cuda:I`)
    trainer_state.json       the step, the tokens, the settings that fix the run, where its
                             source and data came from (absolute paths, fingerprints), each
                             file's size

The LR schedule has no state: it is a function of the step (training.learning_rate), as is
the batch order (textdata.batch_indices), so the step fixes both. States are kept full, not
sharded, so a run saved on N processes resumes on any number. Checkpoints and the export are
built in a staging directory and renamed, so an interruption never leaves half of one behind;
a checkpoint that is damaged anyway (a disk filled, a file deleted) is skipped for the one
before it, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PicliError
from .files import atomic_write_json, staged_directory
from .provenance import finetune_record, read_record, write_record
from .training import TrainSettings

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE = "trainer_state.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
FORMAT = "picli-checkpoint/1"
KEPT = 2  # newest checkpoints kept: the one before the newest is the fallback when the newest is damaged
# Optimizer state names are weight names (dots, no colon) joined to the state's name by ':'.
SEPARATOR = ":"
# The source's fingerprint reads this many chunks of this many bytes, evenly spaced, from each
# weight file (256 KiB a file: a file smaller than that is read whole, in overlapping chunks).
SAMPLES = 64
SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resume continues from, and the newer ones it had to pass over."""
    folder: Path
    state: dict
    skipped: list[str] = field(default_factory=list)  # "step-N (why)", newest first

    @property
    def step(self) -> int:
        return self.state["step"]


# ---------------------------------------------------------------------------------------
# What a run was trained from: the source and the data, recorded so that a resume can check them


def source_fingerprint(model_path: Path) -> str:
    """config.json and every weight file's name, size, safetensors header and a sample of its
    bytes: what makes the checkpoint this model. A re-extended copy differs in config.json; a
    fine-tune of it keeps config.json and every header (finetune writes both as they were), so
    only the weights' bytes tell it apart. Sampled, not hashed whole: milliseconds where
    hashing 100 GB of weights would take minutes, and training changes nearly every chunk."""
    from .checkpoint import safetensors_header, weight_files

    digest = hashlib.sha256((model_path / "config.json").read_bytes())
    for weight_file in weight_files(model_path):
        size = weight_file.stat().st_size
        digest.update(f"\0{weight_file.relative_to(model_path)}\0{size}\0".encode())
        if weight_file.suffix == ".safetensors":
            digest.update(json.dumps(safetensors_header(weight_file), sort_keys=True).encode())
        with open(weight_file, "rb") as handle:
            for index in range(SAMPLES):
                handle.seek(index * max(0, size - SAMPLE_BYTES) // (SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def data_location(spec: str) -> str:
    """The data as a resume must find it: a local path made absolute (a relative one would name
    another file from another folder), a Hub dataset as given."""
    return spec if spec.startswith("hf:") else str(Path(spec).expanduser().resolve())


def run_identity(model_path: Path, data: str, sequences_fingerprint: str, sequence_count: int) -> dict:
    return {"source": {"path": str(model_path.resolve()), "fingerprint": source_fingerprint(model_path)},
            "data": {"path": data_location(data), "fingerprint": sequences_fingerprint, "sequences": sequence_count}}


def check_same_data(point: ResumePoint, identity: dict) -> None:
    """A resume trains on the sequences the run started with, or stops: a file changed or
    swapped under the same name would otherwise pass for an exact continuation."""
    recorded, now_data = point.state["data"], identity["data"]
    if recorded.get("fingerprint") != now_data["fingerprint"]:
        counts = f"{recorded.get('sequences')} sequences then, {now_data['sequences']} now"
        raise PicliError(f"the run's data {recorded.get('path')} no longer gives the sequences it trained on "
                         f"({counts}): it changed since the run started",
                         hint="restore the data, or start a new run (-o elsewhere, or --force)")



# ---------------------------------------------------------------------------------------
# Saving and finding checkpoints


def save_checkpoint(accelerator, loss_module, optimizer, output: Path, step: int, tokens: int,
                    settings: TrainSettings, identity: dict) -> None:
    """Atomic: built in a staging directory and renamed; older checkpoints are pruned after.

    Every process takes part (gathering sharded weights and optimizer state is a collective);
    the main process writes the weights and the optimizer state, each process its RNG state.
    """
    import torch
    from safetensors.torch import save_file

    folder = output / CHECKPOINTS
    target = folder / f"step-{step:07d}"
    staging = folder / f".{target.name}.picli-tmp"
    main = accelerator.is_main_process
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    accelerator.wait_for_everyone()
    weights, moments = _full_states(accelerator, loss_module, optimizer)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda:{index}": state for index, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(staging / f"rng-{accelerator.process_index}.safetensors"))
    if main:
        save_file(weights, str(staging / TRAINABLE))
        save_file(moments, str(staging / OPTIMIZER))
    accelerator.wait_for_everyone()
    if main:
        files = {path.name: path.stat().st_size for path in staging.iterdir()}
        atomic_write_json(staging / STATE, {"format": FORMAT, "step": step, "tokens": tokens,
                                            "processes": accelerator.num_processes, "settings": settings.recorded(),
                                            **identity, "files": files})
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        for old in sorted(folder.glob("step-*"))[:-KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _full_states(accelerator, loss_module, optimizer) -> tuple[dict, dict]:
    """The trainable weights and AdamW's state, full and on the CPU (gathered from FSDP shards;
    empty on processes other than the main one when several run)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=accelerator.num_processes > 1)
    module = accelerator.unwrap_model(loss_module)
    weights = get_model_state_dict(module, options=options)
    moments = get_optimizer_state_dict(module, _plain(optimizer), options=options)
    # named_parameters lists a tied weight (embeddings = head) once: safetensors refuses shared memory.
    trainable = {name for name, parameter in module.named_parameters() if parameter.requires_grad}
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items() if name in trainable}
    flat = {f"{name}{SEPARATOR}{key}": value.detach().cpu().contiguous()
            for name, state in moments.get("state", {}).items() for key, value in state.items()}
    return weights, flat


def _plain(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def load_checkpoint(accelerator, loss_module, optimizer, point: ResumePoint) -> None:
    """Weights, AdamW's state and (where this process saved one) the RNG state, into a run
    that setup built as for a fresh start. safetensors and JSON only: nothing is unpickled."""
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    module = accelerator.unwrap_model(loss_module)
    options = StateDictOptions(full_state_dict=True, strict=False)
    weights = load_file(str(point.folder / TRAINABLE))
    # Not strict (frozen weights come from the source), so a name that matches nothing is looked for here.
    unexpected = set(weights) - set(module.state_dict())
    if unexpected:
        raise PicliError(f"{point.folder.name} holds weights this model does not have ({sorted(unexpected)[0]}, ...)",
                         hint="resume with the settings the run started with (--lora as it was), or start again")
    set_model_state_dict(module, weights, options=options)
    # The fresh optimizer's groups (the same recipe, recorded) with the saved per-weight state.
    fresh = get_optimizer_state_dict(module, _plain(optimizer), options=StateDictOptions(full_state_dict=True))
    state: dict[str, dict] = {}
    for key, value in load_file(str(point.folder / OPTIMIZER)).items():
        name, _, what = key.rpartition(SEPARATOR)
        state.setdefault(name, {})[what] = value
    set_optimizer_state_dict(module, _plain(optimizer), {"state": state, "param_groups": fresh["param_groups"]},
                             options=options)
    rng_file = point.folder / f"rng-{accelerator.process_index}.safetensors"
    if rng_file.exists():  # a process that did not exist when the run saved keeps its seeded state
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                if f"cuda:{index}" in rng:
                    torch.cuda.set_rng_state(rng[f"cuda:{index}"], index)


def has_checkpoint(output: Path) -> bool:
    folder = output / CHECKPOINTS
    return folder.is_dir() and any(folder.glob("step-*"))


def find_resume_point(output: Path) -> ResumePoint | None:
    """The newest intact checkpoint; damaged newer ones are passed over and named."""
    folder = output / CHECKPOINTS
    candidates = sorted(folder.glob("step-*"), reverse=True) if folder.is_dir() else []
    skipped = []
    for candidate in candidates:
        state, damage = read_checkpoint(candidate)
        if state is not None:
            return ResumePoint(candidate, state, skipped)
        skipped.append(f"{candidate.name} ({damage})")
    if skipped:
        raise PicliError(f"no intact checkpoint to resume in {folder}: {'; '.join(skipped)}",
                         hint="start the run again with --force, or restore the checkpoint files")
    return None


def read_checkpoint(folder: Path) -> tuple[dict | None, str]:
    """(trainer_state.json, "") for an intact checkpoint, else (None, what is wrong with it)."""
    from .checkpoint import safetensors_header
    from .errors import NotACheckpoint

    if (folder / "pytorch_model.bin").exists() or (folder / "optimizer.bin").exists():
        return None, ("written by an earlier picli in accelerate's pickled format, which picli no longer loads "
                      "(it never unpickles a file)")
    try:
        state = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        return None, f"no {STATE}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        return None, f"{STATE} is unreadable: {' '.join(str(exc).split())[:100]}"
    fields = {"format": str, "step": int, "tokens": int, "settings": dict, "source": dict, "data": dict,
              "files": dict}
    wrong = [name for name, kind in fields.items() if not isinstance(state.get(name) if isinstance(state, dict)
                                                                      else None, kind)]
    if wrong:
        return None, f"{STATE} lacks {', '.join(wrong)}"
    if state["format"] != FORMAT:
        return None, f"{STATE} has format {state['format']!r}, not {FORMAT!r}"
    # A resume reads these paths and names: an edited record must fail here, in one line.
    if not all(isinstance(state[part].get("path"), str) for part in ("source", "data")) or \
            not isinstance(state["source"].get("fingerprint"), str):
        return None, f"{STATE} lacks the source's or the data's path or fingerprint"
    for name, size in state["files"].items():
        if Path(name).name != name or not isinstance(size, int):
            return None, f"{STATE} lists {name!r}, which is not a file picli writes into a checkpoint"
        path = folder / name
        if not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != size:
            return None, f"{name} has {path.stat().st_size} bytes where {size} were written"
        try:
            safetensors_header(path)
        except NotACheckpoint as exc:
            return None, exc.message
    if TRAINABLE not in state["files"] or OPTIMIZER not in state["files"]:
        return None, f"{STATE} lists no {TRAINABLE} or {OPTIMIZER}"
    return state, ""


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metrics of steps the checkpoint does not contain."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------
# The final model


def export_model(accelerator, loss_module, model_path: Path, output: Path, settings: TrainSettings, record: dict,
                 command: str, parameters: int, state_dict: dict | None = None) -> None:
    """The final checkpoint: weights saved by transformers, config.json copied from the source.

    transformers 5's save_pretrained drops the legacy rope_scaling/rope_theta keys, so the
    source's dual-schema config.json (written by `picli extend`) is carried verbatim.
    """
    language_model = accelerator.unwrap_model(loss_module).language_model
    if state_dict is not None:  # gathered from FSDP shards; keys carry the loss module's prefix
        state_dict = {key.removeprefix("language_model."): value for key, value in state_dict.items()}
    if settings.lora and not settings.keep_adapter:
        language_model = language_model.merge_and_unload()
    staging_parent = output / ".final"
    if staging_parent.exists():
        shutil.rmtree(staging_parent)
    staging_parent.mkdir()
    with staged_directory(staging_parent / "model") as staging:
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

