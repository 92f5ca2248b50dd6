"""Passkey retrieval as the PI paper measures it (§3.3), and fast.

The prompt is Mohtashami & Jaggi's, byte for byte: `generate_prompt` in
epfml/landmark-attention (llama/run_test.py; the PI paper's Figure 3 shows its line breaks)
joins five parts with "\n": the task line, a prefix of the filler "The grass is green. ..."
repeated (`" ".join([garbage] * 2000)`, cut anywhere), the line "The pass key is {key}.
Remember it. {key} is the pass key.", another prefix of the same filler, and "What is the
pass key? The pass key is". picli cuts the filler at token boundaries instead of at random
characters, so that every prompt of an evaluated length L has the same number of tokens and
the key line starts exactly k tokens before the end (k counts the line break that opens it).
`positions` values of k are spread uniformly over the prompt (k_i = i/n of it), `trials`
random 5-digit keys each, and

    k_max = the largest k such that every evaluated k' <= k succeeds in >= 20% of trials.

k_max never equals the length: the deepest key sits after the task line and before the
question, so each result also carries the deepest depth tested (`k_largest`) and the lowest
success rate at any depth up to k_max.

Scoring is teacher-forced: greedy decoding reproduces the key exactly when the argmax at
each answer position is the next key token, so one forward pass replaces a generate loop,
and only the answer positions get logits. All prompts of a length share their beginning
(task line + filler, truncated at the key), so prompts are visited from the largest k to
the smallest while one KV cache of that shared prefix grows; each trial then runs only its
own ~k tokens, batched across the trials of a k.

The same logits give each trial partial credit, so that a key half remembered does not read
like one never seen: the argmax tokens at the answer positions (`predicted`, decoded as
`predicted_text`), the key's digits those tokens reproduce in place (`digits_right`, defined
by the function of that name), and the log-probability of the whole key given the prompt
(`key_logprob`: the sum of log-softmax of each key token at its answer position).
"""

from __future__ import annotations

import copy
import inspect
import random
import time
from dataclasses import asdict, dataclass, field

from .errors import PicliError
from .events import Events

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
THRESHOLD = 0.2  # the paper's success rate for "retrieved at this distance"


@dataclass(frozen=True)
class Protocol:
    positions: int = 32
    trials: int = 10
    seed: int = 0
    threshold: float = THRESHOLD

    @property
    def name(self) -> str:
        if (self.positions, self.trials) == (32, 10):
            return "paper"
        return "quick" if (self.positions, self.trials) == QUICK else "custom"

    def describe(self) -> dict:
        return {"name": self.name, "positions": self.positions, "trials": self.trials, "seed": self.seed,
                "threshold": self.threshold, "scoring": "teacher-forced greedy (argmax at every key token)",
                "prompt": "Mohtashami & Jaggi 2023 (epfml/landmark-attention llama/run_test.py generate_prompt: "
                          "five parts joined by newlines), as in PI (Chen et al. 2023) section 3.3, Figure 3",
                "k": "tokens from the line break that opens the key line to the end of the prompt"}


QUICK = (4, 2)


@dataclass(frozen=True)
class LengthResult:
    length: int
    ks: list[int]
    success: list[float]  # per k, fraction of trials retrieved
    outcomes: list[list[bool]]  # per k, per trial
    keys: list[list[int]]
    k_max: int
    k_largest: int  # the deepest depth tested (key line right after the task line): k_max's ceiling, not the length
    lowest_success: float | None  # the weakest depth up to k_max (None when k_max is 0)
    beyond_window: bool  # evaluated past the model's max_position_embeddings
    seconds: float
    # Per k, per trial: partial credit from the same teacher-forced pass (module docstring).
    predicted: list[list[list[int]]] = field(default_factory=list)  # argmax token at each answer position
    predicted_text: list[list[str]] = field(default_factory=list)  # those tokens decoded
    digits_right: list[list[int]] = field(default_factory=list)  # of key_digits, see digits_right()
    key_logprob: list[list[float]] = field(default_factory=list)  # natural log, the whole key
    key_digits: int = 5
    # Over every trial of the length: what a benchmark reads when k_max and success are all 0.
    mean_digits_right: float | None = None
    mean_key_logprob: float | None = None

    @property
    def passed_all(self) -> bool:
        return all(rate >= 1.0 for rate in self.success)


@dataclass(frozen=True)
class PasskeyReport:
    protocol: dict
    window: int  # the model's max_position_embeddings
    results: list[LengthResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Trial:
    """One prompt, as token ids, split where the shared prefix ends."""

    k: int
    key: int
    prefix_length: int  # tokens shared with every prompt of a smaller k
    suffix: list[int]  # key line, filler, question, and the answer without its last token
    answer: list[int]  # the key's tokens, which greedy decoding must reproduce


@dataclass(frozen=True)
class LengthPrompts:
    """Every trial of one evaluated length; each prompt = prefix_stream[:prefix_length] + suffix."""

    length: int
    ks: list[int]
    groups: list[list[Trial]]  # per k, its trials
    prefix_stream: list[int]  # task line + filler: what every prompt starts with, up to its key

    def full_prompt(self, trial: Trial) -> list[int]:
        """The whole prompt of one trial, without the answer (for generate-based checks)."""
        return self.prefix_stream[:trial.prefix_length] + trial.suffix[:len(trial.suffix) - len(trial.answer) + 1]


def prompt_text(key: int, before: int, after: int) -> str:
    """The generator's prompt with `before` / `after` characters of filler around the key line.

    Mirrors `generate_prompt` of epfml/landmark-attention (llama/run_test.py), which cuts
    `garbage_inf[:n_garbage_prefix]` and `garbage_inf[:n_garbage_suffix]` from the same
    repeated filler and joins the five parts with "\n". The token prompts below decode to
    exactly this text (tests/test_passkey.py checks it).
    """
    # The generator stops at 2000 repeats (its longest prompts needed no more); the text is
    # the same for any count that covers the cut.
    filler = " ".join([FILLER] * (max(before, after) // len(FILLER) + 2))
    return "\n".join([TASK, filler[:before], KEY_LINE.format(key=key), filler[:after], QUESTION])


def k_max(ks: list[int], success: list[float], threshold: float = THRESHOLD) -> int:
    """The largest k with every k' <= k at or above the threshold; 0 if the smallest fails."""
    best = 0
    for k, rate in sorted(zip(ks, success)):
        if rate < threshold:
            break
        best = k
    return best


def digits_right(predicted_pieces: list[str], answer_pieces: list[str]) -> int:
    """The key's digits that the argmax reproduces in place: per answer position, the decoded
    predicted token and the decoded key token are compared character by character from their
    start, and each digit of the key token matched by the same character counts.

    Position by position rather than over the joined strings, so one wrong token (a space
    dropped, two digits merged) costs its own digits only and does not shift the rest. A
    tokenizer with one token per digit (SmolLM2, Llama) makes this the number of key digits
    whose token was the argmax given the true digits before it.
    """
    right = 0
    for predicted, expected in zip(predicted_pieces, answer_pieces):
        right += sum(1 for wanted, got in zip(expected, predicted) if wanted.isdigit() and wanted == got)
    return right


def _pieces(tokenizer, tokens: list[int]) -> list[str]:
    return [tokenizer.decode([token]) for token in tokens]


def lowest_success(ks: list[int], success: list[float], k_max_value: int) -> float | None:
    """The lowest success rate at any depth up to k_max: how far above the threshold k_max stands."""
    rates = [rate for k, rate in zip(ks, success) if k <= k_max_value]
    return min(rates) if k_max_value and rates else None


class PromptBuilder:
    """Token-exact passkey prompts for one tokenizer.

    A prompt is task + filler[:a] + key line + filler[:b] + question, where every piece after
    the task line opens with its "\n" and the filler is one token stream of "\n" + the
    repeated filler: decoded, it is the generator's text with the filler cut at a token
    boundary (`prompt_text`).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.task = tokenizer(TASK, add_special_tokens=True).input_ids
        self.question = self._continue("\n" + QUESTION)
        newline = self._continue("\n")
        # The fewest filler tokens on either side of the key line. The generator allows an
        # empty filler ("...there.\n\nThe pass key is"); where a tokenizer merges "\n\n" into
        # one token, that prompt's ids would not be its text's own tokenization, so the filler
        # then keeps its first word.
        self.filler_floor = (len(newline) if self._continue("\n\n") == newline * 2
                             else len(self._continue("\n" + FILLER.split()[0])))
        self._filler = self._continue("\n" + " ".join([FILLER] * 8))
        self._repeats = 8

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _continue(self, text: str) -> list[int]:
        """The ids of `text` where it continues a prompt rather than begins one.

        Sentencepiece tokenizers mark the start of a text with a space ("\n" alone becomes
        "▁", "<0x0A>"); tokenizing after an anchor and dropping the anchor's ids avoids that.
        """
        anchor = self._ids(".")
        ids = self._ids("." + text)
        return ids[len(anchor):] if ids[:len(anchor)] == anchor else self._ids(text)

    def filler(self, tokens: int) -> list[int]:
        """The first `tokens` tokens of "\n" + the repeated filler; the same stream for every prompt."""
        while len(self._filler) < tokens:
            self._repeats = self._repeats * 2 + tokens // 8  # doubling: a few tokenizations even at 128k
            self._filler = self._continue("\n" + " ".join([FILLER] * self._repeats))
        return self._filler[:tokens]

    def key_line(self, key: int) -> list[int]:
        return self._continue("\n" + KEY_LINE.format(key=key))

    def answer(self, key: int) -> list[int]:
        return self._continue(f" {key}")

    def grid(self, length: int, positions: int, answer_room: int, key_line: int) -> tuple[int, list[int]]:
        """(prompt tokens, the k values): k_i = i/n of the prompt, i = 1..n, uniform over the length.

        Starting at 1/n rather than at the smallest possible k keeps filler between the key
        and the question, as in the original prompt; the largest k puts the key line right
        after the task line (and the fewest filler tokens), so it is the deepest depth a
        prompt of this length can test.
        """
        prompt_length = length - answer_room
        smallest = key_line + self.filler_floor + len(self.question)
        largest = prompt_length - len(self.task) - self.filler_floor
        if largest < smallest:
            raise PicliError(f"--length {length} is too short for a passkey prompt (needs at least "
                             f"{smallest + len(self.task) + answer_room} tokens)", hint="use a longer --length")
        # At tiny lengths neighbouring k can coincide; they stay separate rows of trials.
        return prompt_length, [max(smallest, round(largest * index / positions)) for index in range(1, positions + 1)]

    def layout(self, length: int, protocol: Protocol, rng: random.Random) -> tuple[list[list[int]], int, list[int]]:
        """(the keys, prompt tokens, the k values) of one length: draws the keys from `rng`."""
        keys = [[rng.randint(10000, 99999) for _ in range(protocol.trials)] for _ in range(protocol.positions)]
        answer_room = max(len(self.answer(key)) for row in keys for key in row)
        key_line_room = max(len(self.key_line(key)) for row in keys for key in row)
        return (keys, *self.grid(length, protocol.positions, answer_room, key_line_room))

    def prompts(self, length: int, protocol: Protocol, rng: random.Random) -> LengthPrompts:
        keys, prompt_length, ks = self.layout(length, protocol, rng)
        grouped = []
        for k, row in zip(ks, keys):
            prefix_length = prompt_length - k
            group = []
            for key in row:
                line, answer = self.key_line(key), self.answer(key)
                after = k - len(line) - len(self.question)
                suffix = line + self.filler(after) + self.question + answer[:-1]
                group.append(Trial(k, key, prefix_length, suffix, answer))
            grouped.append(group)
        return LengthPrompts(length, ks, grouped, self.task + self.filler(prompt_length))


def check_lengths(tokenizer, lengths: list[int], protocol: Protocol = Protocol()) -> None:
    """Every length long enough for its prompts, with the tokenizer alone: before any weight
    loads. The keys are drawn as evaluate_passkey draws them, so the rooms are the run's own."""
    builder, rng = PromptBuilder(tokenizer), random.Random(protocol.seed)
    for length in lengths:
        builder.layout(length, protocol, rng)


def evaluate_passkey(loaded, lengths: list[int], protocol: Protocol = Protocol(), batch_size: int | None = None,
                     on_event: Events = None, window: int | None = None) -> PasskeyReport:
    from .modeling import check_fits

    builder = PromptBuilder(loaded.tokenizer)
    # The checkpoint's effective window (checkpoint.effective_window) when the caller knows it:
    # with --max-position-embeddings original, the config's field is the old window.
    window = window or int(getattr(loaded.config, "max_position_embeddings", 0) or 0)
    rng = random.Random(protocol.seed)
    results = []
    for length in lengths:
        prompts = builder.prompts(length, protocol, rng)
        check_fits(loaded, length, batch=1, what=f"passkey at {length} tokens")
        started = time.perf_counter()
        scores = predict_answers(loaded, prompts, batch_size, on_event)
        outcomes = [[score.tokens == trial.answer for score, trial in zip(row, group)]
                    for row, group in zip(scores, prompts.groups)]
        success = [sum(row) / len(row) for row in outcomes]
        found = k_max(prompts.ks, success, protocol.threshold)
        right = [[digits_right(_pieces(loaded.tokenizer, score.tokens), _pieces(loaded.tokenizer, trial.answer))
                  for score, trial in zip(row, group)] for row, group in zip(scores, prompts.groups)]
        # Four decimals of a natural log: differences far below what one trial changes.
        logprobs = [[round(score.key_logprob, 4) for score in row] for row in scores]
        trials = sum(len(row) for row in scores)
        results.append(LengthResult(
            length=length, ks=prompts.ks, success=success, outcomes=outcomes,
            keys=[[trial.key for trial in group] for group in prompts.groups],
            k_max=found, k_largest=max(prompts.ks), lowest_success=lowest_success(prompts.ks, success, found),
            beyond_window=bool(window and length > window), seconds=time.perf_counter() - started,
            predicted=[[score.tokens for score in row] for row in scores],
            predicted_text=[[loaded.tokenizer.decode(score.tokens) for score in row] for row in scores],
            digits_right=right, key_logprob=logprobs, key_digits=len(str(prompts.groups[0][0].key)),
            mean_digits_right=round(sum(map(sum, right)) / trials, 4),
            mean_key_logprob=round(sum(map(sum, logprobs)) / trials, 4),
        ))
    return PasskeyReport(protocol=protocol.describe(), window=window, results=results)


@dataclass(frozen=True)
class AnswerScore:
    """One trial's answer positions, teacher-forced: what greedy decoding picks at each, and how
    likely the model finds the key."""

    tokens: list[int]  # the argmax at each answer position
    key_logprob: float  # sum over the key's tokens of log-softmax at its answer position


def predict_answers(loaded, prompts: LengthPrompts, batch_size: int | None = None,
                    on_event: Events = None) -> list[list[AnswerScore]]:
    """Greedy tokens and the key's log-probability at the answer positions, per k, per trial
    (teacher-forced: one forward pass gives both).

    Largest k first: the shared prefix only grows, so its KV cache is extended, never
    recomputed; each group of trials runs on a copy of it.
    """
    import torch
    from transformers import DynamicCache

    model, device = loaded.model, loaded.device
    grouped, length = prompts.groups, prompts.length
    order = sorted(range(len(grouped)), key=lambda index: -grouped[index][0].k)
    predictions: list[list[AnswerScore]] = [[] for _ in grouped]
    cache = DynamicCache(config=model.config)
    # transformers renamed past_key_values to cache (5.2x); pass whichever this release takes.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    consumed = 0
    done, total = 0, sum(len(group) for group in grouped)
    batch = batch_size or _auto_batch(loaded, length, len(grouped[0]))
    with torch.inference_mode():
        for index in order:
            group = grouped[index]
            prefix_length = group[0].prefix_length
            if prefix_length > consumed:
                new_tokens = torch.tensor([prompts.prefix_stream[consumed:prefix_length]], device=device)
                model(input_ids=new_tokens, **{cache_name: cache}, use_cache=True, logits_to_keep=1)
                consumed = prefix_length
            results = {}
            for chunk in _same_length_chunks(group, batch):
                restore = _prefix_snapshot(cache) if len(chunk) == 1 else None
                trial_cache = cache if restore else copy.deepcopy(cache)
                if len(chunk) > 1:
                    trial_cache.batch_repeat_interleave(len(chunk))
                suffix = torch.tensor([trial.suffix for _, trial in chunk], device=device)
                answer_length = len(chunk[0][1].answer)
                logits = model(input_ids=suffix, **{cache_name: trial_cache}, use_cache=True,
                               logits_to_keep=answer_length).logits
                # float32 before the softmax: a bf16 log-probability of a near-certain key rounds to 0.
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                answers = torch.tensor([trial.answer for _, trial in chunk], device=log_probs.device)
                key_logprobs = log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1).sum(-1).tolist()
                for (position, _trial), tokens, key_logprob in zip(chunk, logits.argmax(-1).tolist(), key_logprobs):
                    results[position] = AnswerScore(tokens, key_logprob)
                if restore:
                    restore()
                del trial_cache, logits, log_probs
                done += len(chunk)
                if on_event:
                    on_event({"kind": "progress", "task": f"passkey {length}", "done": done, "total": total,
                              "unit": "trials"})
            predictions[index] = [results[position] for position in range(len(group))]
    return predictions


def _prefix_snapshot(cache):
    """A way to put the shared prefix back after one trial ran on `cache` itself, or None.

    Copying the cache per trial costs a whole cache (16 GB for a 7B model at 32k). A full-
    attention DynamicLayer appends by torch.cat, which leaves the old key/value tensors
    untouched, so keeping references to them is enough. Sliding-window and other layers may
    drop or modify past states, so they get a copy instead.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    saved = [(layer, layer.keys, layer.values, layer.is_initialized) for layer in layers]

    def restore() -> None:
        for layer, keys, values, initialized in saved:
            layer.keys, layer.values, layer.is_initialized = keys, values, initialized

    return restore


def _same_length_chunks(group: list[Trial], batch: int) -> list[list[tuple[int, Trial]]]:
    """Trials whose suffixes have equal length can share one batch without padding."""
    by_length: dict[tuple[int, int], list[tuple[int, Trial]]] = {}
    for position, trial in enumerate(group):
        by_length.setdefault((len(trial.suffix), len(trial.answer)), []).append((position, trial))
    chunks = []
    for members in by_length.values():
        chunks += [members[start:start + batch] for start in range(0, len(members), batch)]
    return chunks


def _auto_batch(loaded, length: int, trials: int) -> int:
    """As many trials per forward as the free memory allows for their copied caches.

    On a CPU batching buys no speed (benchmarks/verify.py: both ways read ~500 tokens/s) and
    costs a cache copy per trial, so trials run one at a time there.
    """
    from .modeling import available_memory, kv_bytes_per_token, working_bytes

    if loaded.device.type == "cpu":
        return 1
    free = available_memory(loaded.device)
    if free is None:
        return 1
    # Per trial in a batch: its copy of the cache and its suffix's keys (up to the whole
    # prompt when the key sits early), one layer's activations over the suffix, and the
    # [suffix x prompt] attention mask transformers builds for a suffix over a cached prefix
    # (2 bytes a cell covers a bool or a half-precision mask).
    per_trial = (kv_bytes_per_token(loaded.config, loaded.dtype) * length * 2
                 + working_bytes(loaded.config, loaded.dtype, length) + length * length * 2)
    return max(1, min(trials, int(free * 0.5 // max(per_trial, 1))))


def generate_success(loaded, prompts: LengthPrompts, trial: Trial) -> bool:
    """The public scripts' way, for checks and benchmarks: greedy generate, then compare."""
    import torch

    prompt = torch.tensor([prompts.full_prompt(trial)], device=loaded.device)
    with torch.inference_mode():
        generated = loaded.model.generate(prompt, max_new_tokens=len(trial.answer), do_sample=False,
                                          pad_token_id=loaded.tokenizer.eos_token_id)
    return generated[0, prompt.shape[1]:].tolist() == trial.answer

