"""Sliding-window perplexity, as the PI paper (§3.2) and YaRN measure it.

Windows of `length` tokens advance by `stride` (PI and YaRN use 256) through each document;
each window scores only the tokens no earlier window scored, with at least `length - stride`
tokens of context before them (Press et al., "Train Short, Test Long"). Every token but a
document's first is scored exactly once when stride < length; at stride == length each
window's first token has no predecessor inside it and goes unscored, as in the HF loop. This
is the standard Hugging Face loop (`prev_end`, `trg_len`), computed without its memory cost:

    report = evaluate_perplexity(load_model(path), load_texts("book.txt"), [2048, 4096])

The paper's two protocols (section 3.2) choose documents before scoring: PG-19's whole test
split (100 books), and proof-pile's 128 random test documents of at least 32768 tokens, each
cut to its first 32768. `select_documents` does that (doc_tokens, min_doc_tokens,
sample_docs + seed) and records what it kept. A document shorter than the evaluated length
can only be scored in windows as long as itself: each result counts those documents and
their tokens, so a "32768" perplexity measured on shorter text says so.

Full-vocabulary logits for a 16k window are 16k x 152k floats (10 GB in float32), so the
decoder body runs alone and the output head is applied only to the scored positions, a chunk
at a time, with cross-entropy in float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from .errors import PicliError
from .events import Events
from .modeling import LoadedModel, check_fits, head_chunk, split_model
from .textdata import Document


@dataclass(frozen=True)
class PerplexityResult:
    length: int
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats; perplexity = exp(nll)
    tokens_scored: int
    documents: int
    windows: int
    seconds: float
    tokens_per_second: float  # scored tokens; windows overlap, so the model reads more than this
    # Documents with fewer tokens than `length`: their windows were as long as the document, not
    # `length`. tokens_scored = tokens_scored_full + tokens_scored_short.
    short_documents: int = 0
    tokens_scored_short: int = 0
    tokens_scored_full: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PerplexityReport:
    stride: int
    results: list[PerplexityResult]
    selection: dict | None = None  # which documents were scored, and how they were cut (select_documents)

    def to_dict(self) -> dict[str, Any]:
        return {"stride": self.stride, "results": [result.to_dict() for result in self.results],
                "selection": self.selection}


@dataclass(frozen=True)
class DocumentSelection:
    """Which documents perplexity scores, in tokens of the model's tokenizer (BOS included)."""

    max_tokens: int | None = None  # total text read, in order (after the choices below)
    doc_tokens: int | None = None  # each document cut to its first N tokens
    min_doc_tokens: int | None = None  # documents shorter than this are skipped (and counted)
    sample_docs: int | None = None  # N documents drawn at random (seeded) among those kept
    seed: int = 0

    def check(self) -> None:
        for option, value, least in (("--max-tokens", self.max_tokens, 1), ("--doc-tokens", self.doc_tokens, 2),
                                     ("--min-doc-tokens", self.min_doc_tokens, 1),
                                     ("--sample-docs", self.sample_docs, 1)):
            if value is not None and value < least:
                raise PicliError(f"{option} must be at least {least}, got {value}",
                                 hint="the paper's proof-pile protocol: --sample-docs 128 --min-doc-tokens 32768 "
                                      "--doc-tokens 32768")


def select_documents(tokenize, documents: list[Document], selection: DocumentSelection) -> tuple[list[list[int]], dict]:
    """Token ids of the documents to score, and a record of the choice.

    With sample_docs, documents are visited in a seeded random order and the first N long
    enough are kept: a uniform random sample of the qualifying documents that tokenizes only
    as many as it needs. Fewer qualifying documents than asked for is an error, not a
    quietly smaller sample.
    """
    import random

    selection.check()
    order = list(range(len(documents)))
    if selection.sample_docs is not None:
        random.Random(selection.seed).shuffle(order)
    chosen: list[list[int]] = []
    examined = skipped = truncated = 0
    budget = selection.max_tokens
    for index in order:
        if selection.sample_docs is not None and len(chosen) >= selection.sample_docs:
            break
        if budget is not None and budget <= 0:
            break
        ids = list(tokenize(documents[index].text))
        examined += 1
        if selection.min_doc_tokens is not None and len(ids) < selection.min_doc_tokens:
            skipped += 1
            continue
        if selection.doc_tokens is not None and len(ids) > selection.doc_tokens:
            ids = ids[:selection.doc_tokens]
            truncated += 1
        if budget is not None:
            ids = ids[:budget]
            budget -= len(ids)
        chosen.append(ids)
    if selection.sample_docs is not None and len(chosen) < selection.sample_docs:
        qualifying = f" with at least {selection.min_doc_tokens} tokens" if selection.min_doc_tokens else ""
        raise PicliError(f"--sample-docs {selection.sample_docs} asks for more documents than the data has{qualifying}: "
                         f"{len(chosen)} of {len(documents)}",
                         hint="lower --sample-docs or --min-doc-tokens, or give more data")
    if not chosen and selection.min_doc_tokens is not None:
        raise PicliError(f"no document has at least {selection.min_doc_tokens} tokens ({len(documents)} examined)",
                         hint="lower --min-doc-tokens, or give longer documents")
    record = {"documents": len(documents), "examined": examined, "used": len(chosen),
              "skipped_short": skipped, "truncated": truncated, "tokens": sum(len(ids) for ids in chosen),
              "max_tokens": selection.max_tokens, "doc_tokens": selection.doc_tokens,
              "min_doc_tokens": selection.min_doc_tokens, "sample_docs": selection.sample_docs,
              "seed": selection.seed if selection.sample_docs is not None else None}
    return chosen, record


def evaluate_perplexity(loaded: LoadedModel, documents: list[Document], lengths: list[int], stride: int = 256,
                        max_tokens: int | None = None, on_event: Events = None,
                        selection: DocumentSelection | None = None) -> PerplexityReport:
    """Perplexity of `documents` at each window length; `max_tokens` caps the text read, in order
    (a shorthand for selection=DocumentSelection(max_tokens=...))."""
    selection = selection or DocumentSelection(max_tokens=max_tokens)

    def tokenize(text: str) -> list[int]:
        return loaded.tokenizer(text, add_special_tokens=True)["input_ids"]

    token_ids_list, chosen = select_documents(tokenize, documents, selection)
    report = evaluate_token_ids(loaded, token_ids_list, lengths, stride=stride, on_event=on_event)
    return PerplexityReport(stride=report.stride, results=report.results, selection=chosen)


def evaluate_token_ids(loaded: LoadedModel, token_ids_list: list[list[int]], lengths: list[int], stride: int = 256,
                       on_event: Events = None, chunk_size: int | None = None) -> PerplexityReport:
    """The computation behind `evaluate_perplexity`, on token ids already made."""
    import torch

    emit = on_event or (lambda event: None)
    if stride < 1:
        raise PicliError(f"--stride must be at least 1, got {stride}", hint="PI and YaRN use --stride 256")
    for length in lengths:
        if length < 2:
            raise PicliError(f"--length must be at least 2 tokens, got {length}", hint="e.g. --length 4096")
        if stride > length:
            # The HF loop would silently skip the tokens between windows.
            raise PicliError(f"--stride {stride} is larger than --length {length}: some tokens would never be scored",
                             hint=f"use --stride {min(256, length)} or less")
    sequences = [torch.tensor(ids, dtype=torch.long) for ids in token_ids_list if len(ids) >= 2]
    total = sum(len(ids) - 1 for ids in sequences)
    if total == 0:
        raise PicliError("the evaluation text is too short: no document has two tokens",
                         hint="give more text, or raise --max-tokens")
    longest = max(len(ids) for ids in sequences)
    decoder, head, adjust = split_model(loaded.model)
    chunk_size = chunk_size or head_chunk(head.weight.shape[0])
    results = []
    for length in lengths:
        task = f"perplexity {length}"
        if longest < length:
            emit({"kind": "message", "text": f"every document is shorter than {length} tokens (longest {longest}): "
                                             f"perplexity {length} uses windows of at most {longest}"})
        check_fits(loaded, min(length, longest), what=f"perplexity at {length}")
        started = time.perf_counter()
        nll_sum, scored, windows, short_documents, scored_short = 0.0, 0, 0, 0, 0
        emit({"kind": "progress", "task": task, "done": 0, "total": total, "unit": "tokens"})
        with torch.inference_mode():
            for ids in sequences:
                if len(ids) < length:
                    # One window, as long as the document: every token of it is scored with less
                    # context than `length` allows. Counted, so the result can say so.
                    short_documents += 1
                    scored_short += len(ids) - 1
                for begin, end, first_target in _windows(len(ids), length, stride):
                    window = ids[begin:end].unsqueeze(0).to(loaded.device)
                    hidden = decoder(input_ids=window, use_cache=False).last_hidden_state[0]
                    # Position p predicts token p + 1: targets [first_target, end) come from the rows one earlier.
                    rows = hidden[first_target - begin - 1:end - begin - 1]
                    nll_sum += _chunked_nll(rows, ids[first_target:end], head, adjust, chunk_size)
                    scored += end - first_target
                    windows += 1
                    emit({"kind": "progress", "task": task, "done": scored, "total": total, "unit": "tokens"})
        seconds = time.perf_counter() - started
        nll = nll_sum / scored
        results.append(PerplexityResult(length=length, perplexity=math.exp(nll), nll=nll, tokens_scored=scored,
                                        documents=len(sequences), windows=windows, seconds=seconds,
                                        tokens_per_second=scored / seconds if seconds > 0 else 0.0,
                                        short_documents=short_documents, tokens_scored_short=scored_short,
                                        tokens_scored_full=scored - scored_short))
    return PerplexityReport(stride=stride, results=results)


def _windows(count: int, length: int, stride: int):
    """(begin, end, first_target) for each window over `count` tokens; targets are [first_target, end)."""
    previous_end = 0
    for begin in range(0, count, stride):
        end = min(begin + length, count)
        # Token 0 has nothing before it to predict it from, so the first window starts scoring at 1.
        yield begin, end, max(previous_end, begin + 1)
        previous_end = end
        if end == count:
            break


def _chunked_nll(rows, targets, head, adjust, chunk_size: int) -> float:
    """Summed NLL of `targets` predicted from hidden `rows`, never more than chunk_size logit rows at once."""
    import torch.nn.functional as F

    weight_device = head.weight.device  # under --device-map auto the head may sit on another GPU
    total = 0.0
    for start in range(0, len(targets), chunk_size):
        logits = adjust(head(rows[start:start + chunk_size].to(weight_device))).float()
        total += F.cross_entropy(logits, targets[start:start + chunk_size].to(weight_device), reduction="sum").item()
    return total
