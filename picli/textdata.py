"""Text to evaluate or train on: files, folders, JSON Lines, or a Hugging Face Hub dataset.

    load_texts("book.txt")                 one document
    load_texts("corpus/")                  every .txt/.md/.jsonl/.json inside, recursively, sorted
    load_texts("data.jsonl", "content")    one document per line, from the "content" field
    load_texts("hf:pg19:test")             a Hub dataset split (needs `pip install datasets`)

Used by `verify` (perplexity) and `finetune`, which also packs it here into fixed-length
training sequences in a seeded order. Empty documents are dropped: they score no tokens and
train nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import PicliError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: a path, "path:line", or "hf:NAME:SPLIT[i]"
    text: str


def load_texts(spec: str, text_field: str = "text", max_documents: int | None = None) -> list[Document]:
    if spec.startswith("hf:"):
        documents = _load_hub(spec, text_field, max_documents)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise PicliError(f"no such file or folder: {spec}",
                             hint="give a .txt/.md/.jsonl/.json file, a folder, or hf:NAME[:SPLIT]")
        files = [path] if path.is_file() else sorted(
            found for found in path.rglob("*")
            if found.is_file() and found.suffix.lower() in TEXT_SUFFIXES + RECORD_SUFFIXES
            and not any(part.startswith(".") for part in found.relative_to(path).parts))
        documents = []
        for file in files:
            documents += [doc for doc in _load_file(file, text_field) if doc.text.strip()]
            if max_documents is not None and len(documents) >= max_documents:
                break
    documents = [doc for doc in documents if doc.text.strip()][:max_documents]
    if not documents:
        raise PicliError(f"{spec} holds no text to use (no documents, or all of them empty)",
                         hint=f"check the path; for JSON data, check --text-field (now {text_field!r})")
    return documents


def _load_file(file: Path, text_field: str) -> list[Document]:
    try:
        content = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        # Also what a .parquet or .arrow file named by mistake runs into.
        raise PicliError(f"{file} is not UTF-8 text",
                         hint="convert it to UTF-8, or give .txt/.md/.jsonl/.json") from exc
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return [Document(f"{file}:{number}", _field(_parse(line, file, number), text_field, file, number))
                for number, line in enumerate(content.splitlines(), start=1) if line.strip()]
    if suffix == ".json":
        data = _parse(content, file, None)
        records = data if isinstance(data, list) else [data]
        # A list of plain strings is a common hand-written form; accept it as it is.
        return [Document(f"{file}[{index}]",
                         record if isinstance(record, str) else _field(record, text_field, file, None))
                for index, record in enumerate(records)]
    # .txt, .md, or any other file the user named explicitly: the whole file is one document.
    return [Document(str(file), content)]


def _parse(text: str, file: Path, line: int | None):
    where = f"{file} line {line}" if line else str(file)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PicliError(f"{where} is not valid JSON ({exc.msg})",
                         hint="JSON Lines needs one JSON object per line") from exc


def _field(record, text_field: str, file: Path, line: int | None) -> str:
    where = f"{file} line {line}" if line else str(file)
    if not isinstance(record, dict):
        raise PicliError(f"{where} is a {type(record).__name__}, not an object with a {text_field!r} field",
                         hint="each record must be a JSON object like {\"text\": \"...\"}")
    if text_field in record and not isinstance(record[text_field], str):
        value = record[text_field]
        kind = "null" if value is None else {bool: "boolean", int: "number", float: "number", list: "list",
                                             dict: "object"}.get(type(value), type(value).__name__)
        raise PicliError(f"{where}: field {text_field!r} is a {kind}, not a string of text",
                         hint=f"make {text_field!r} a string on every line, or drop that line")
    if not isinstance(record.get(text_field), str):
        fields = ", ".join(sorted(record)) or "none"
        raise PicliError(f"{where} has no text field {text_field!r} (fields: {fields})",
                         hint="name the field that holds the text with --text-field")
    return record[text_field]


def _load_hub(spec: str, text_field: str, max_documents: int | None) -> list[Document]:
    import importlib

    name, _, split = spec[len("hf:"):].partition(":")
    # "train" is the one split every Hub dataset has; evaluation should name its split (hf:NAME:test).
    split = split or "train"
    if not name:
        raise PicliError(f"{spec!r} names no dataset", hint="e.g. hf:emozilla/pg19-test:test")
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as exc:
        raise PicliError(f"reading {spec} needs the datasets package, which picli does not install by default",
                         hint="pip install 'picli[data]' (or pip install datasets)") from exc
    try:
        dataset = datasets.load_dataset(name, split=split if max_documents is None else f"{split}[:{max_documents}]")
    except Exception as exc:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise PicliError(f"dataset {name!r} (split {split}) is not in the local cache and HF_HUB_OFFLINE=1",
                             hint="unset HF_HUB_OFFLINE to download it, or use a local file") from exc
        if isinstance(exc, (FileNotFoundError, ValueError)) or type(exc).__name__ == "DatasetNotFoundError":
            # ValueError is how datasets reports an unknown split; its first line lists the real ones.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PicliError(f"cannot load dataset {name!r} split {split!r}: {reason}",
                             hint="check the name and split on huggingface.co/datasets") from exc
        raise
    if text_field not in dataset.column_names:
        raise PicliError(f"dataset {name!r} has no column {text_field!r} (columns: {', '.join(dataset.column_names)})",
                         hint="name the column that holds the text with --text-field")
    return [Document(f"{spec}[{index}]", text) for index, text in enumerate(dataset[text_field])
            if isinstance(text, str)]


# ---------------------------------------------------------------------------------------
# Training sequences (picli finetune)


def pack_sequences(token_lists: list[list[int]], eos_token_id: int | None, seq_len: int) -> list[list[int]]:
    """Documents joined with EOS and cut into full sequences of seq_len (the tail is dropped)."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(tokens)
        if eos_token_id is not None:
            stream.append(eos_token_id)
    return [stream[start:start + seq_len] for start in range(0, len(stream) - seq_len + 1, seq_len)]


def split_and_order(sequence_count: int, seed: int, eval_fraction: float) -> tuple[list[int], list[int]]:
    """A seeded permutation: the last slice is held out for the eval loss, the rest trains."""
    import torch

    order = torch.randperm(sequence_count, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = max(1, round(sequence_count * eval_fraction)) if sequence_count >= 4 else 0
    return order[: sequence_count - held_out], order[sequence_count - held_out:]


def batch_indices(train: list[int], step: int, batch_size: int) -> list[int]:
    """The global batch of one optimizer step: a pure function of the step, so resume is exact."""
    start = step * batch_size
    return [train[(start + offset) % len(train)] for offset in range(batch_size)]


def sequences_fingerprint(sequences: list[list[int]]) -> str:
    """sha256 of the packed token ids: one value that changes when the text, the tokenizer,
    --text-field or --seq-len would give the run other sequences (a resume checks it)."""
    import hashlib
    from array import array

    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(array("q", [len(sequence), *sequence]).tobytes())
    return digest.hexdigest()


def data_reuse(train_sequences: int, steps: int, batch_size: int, seq_len: int) -> dict:
    """How much of what `steps` optimizer steps read was new: batch_indices cycles through the
    training sequences, so past one epoch the same tokens come round again."""
    read = steps * batch_size
    return {"train_sequences": train_sequences, "unique_tokens": min(read, train_sequences) * seq_len,
            "epochs": read / train_sequences if train_sequences else 0.0}


def load_sequences(tokenizer, data: str | None, text_field: str, seq_len: int,
                   on_event: Callable[[dict], None] | None = None) -> list[list[int]]:
    """`data` tokenized, joined with EOS and packed into sequences of exactly seq_len tokens."""
    if not data:
        raise PicliError("no training data given", hint="pass --data FILE|DIR|JSONL|hf:NAME")
    documents = load_texts(data, text_field=text_field)
    if on_event:
        on_event({"kind": "message", "text": f"Tokenizing {len(documents)} document(s) from {data}"})
    token_lists = [tokenizer(document.text, add_special_tokens=False).input_ids for document in documents]
    total = sum(len(tokens) + 1 for tokens in token_lists)
    sequences = pack_sequences(token_lists, tokenizer.eos_token_id, seq_len)
    if not sequences:
        raise PicliError(f"the data has {total} tokens, shorter than one sequence of {seq_len}",
                         hint="add more text, or lower --seq-len")
    return sequences
