"""Sliding-window perplexity, as the PI paper (§3.2) and YaRN measure it.

Windows of `length` tokens advance by `stride` (PI and YaRN use 256) through each document;
each window scores only the tokens no earlier window scored, with at least `length - stride`
tokens of context before them (Press et al., "Train Short, Test Long"). Every token but a
document's first is scored exactly once when stride < length; at stride == length each
window's first token has no predecessor inside it and goes unscored, as in the HF loop. This
is the standard Hugging Face loop (`prev_end`, `trg_len`), computed without its memory cost:

    report = evaluate_perplexity(load_model(path), load_texts("book.txt"), [2048, 4096])

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PerplexityReport:
    stride: int
    results: list[PerplexityResult]

    def to_dict(self) -> dict[str, Any]:
        return {"stride": self.stride, "results": [result.to_dict() for result in self.results]}


def evaluate_perplexity(loaded: LoadedModel, documents: list[Document], lengths: list[int], stride: int = 256,
                        max_tokens: int | None = None, on_event: Events = None) -> PerplexityReport:
    """Perplexity of `documents` at each window length; `max_tokens` caps the text read, in order."""
    token_ids_list = []
    budget = max_tokens
    for document in documents:
        if budget is not None and budget <= 0:
            break
        ids = list(loaded.tokenizer(document.text, add_special_tokens=True)["input_ids"])
        if budget is not None:
            ids = ids[:budget]
            budget -= len(ids)
        token_ids_list.append(ids)
    return evaluate_token_ids(loaded, token_ids_list, lengths, stride=stride, on_event=on_event)


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
        nll_sum, scored, windows = 0.0, 0, 0
        emit({"kind": "progress", "task": task, "done": 0, "total": total})
        with torch.inference_mode():
            for ids in sequences:
                for begin, end, first_target in _windows(len(ids), length, stride):
                    window = ids[begin:end].unsqueeze(0).to(loaded.device)
                    hidden = decoder(input_ids=window, use_cache=False).last_hidden_state[0]
                    # Position p predicts token p + 1: targets [first_target, end) come from the rows one earlier.
                    rows = hidden[first_target - begin - 1:end - begin - 1]
                    nll_sum += _chunked_nll(rows, ids[first_target:end], head, adjust, chunk_size)
                    scored += end - first_target
                    windows += 1
                    emit({"kind": "progress", "task": task, "done": scored, "total": total})
        seconds = time.perf_counter() - started
        nll = nll_sum / scored
        results.append(PerplexityResult(length=length, perplexity=math.exp(nll), nll=nll, tokens_scored=scored,
                                        documents=len(sequences), windows=windows, seconds=seconds,
                                        tokens_per_second=scored / seconds if seconds > 0 else 0.0))
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
