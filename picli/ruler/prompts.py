"""RULER's prompts for one tokenizer: the template (plain or the tokenizer's chat template),
the haystack sized so that prompt plus tokens to generate fit the length, and every sample
of a run built before the model runs anything.

    suite = build_suite(tokenizer, RulerSettings(lengths=(4096, 8192)))

Sizing follows RULER's scripts (scripts/data/synthetic/*.py): for niah, vt and cwe a binary
search over the haystack size (noise sentences, distractor needles, essay words or listed
words) for the largest whose prompt plus the task's tokens to generate fits the length,
probing from RULER's step ("incremental") and to its upper bound; then each sample steps
down by that increment until it fits. fwe grows its word count from length/6 by length/32
(freq_words_extraction.py). Tokens are counted as the model reads them (special tokens and
chat template included), where RULER counts `tokenizer.tokenize(text)` without the BOS.

Every sample draws from its own generator, seeded by (seed, task, length, index): two models
with the same tokenizer and template get byte-identical prompts, and models with different
tokenizers get the same needles and answers with haystacks of their own size.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from ..errors import PicliError
from ..events import Events
from . import generators
from .generators import Draft
from .sources import Haystack, common_words, load_haystack
from .tasks import RULER_COMMIT, RULER_REPOSITORY, SYNTHETIC, TASKS, Task, resolve_tasks

CHAT_TEMPLATES = ("auto", "chat", "none")
SEED = 42  # scripts/data/prepare.py --random_seed
SAMPLES = 500  # scripts/config_tasks.sh NUM_SAMPLES
VT_EXAMPLE_TOKENS = 500  # variable_tracking.py main(): the in-context example is fitted to 500 tokens


@dataclass(frozen=True)
class RulerSettings:
    lengths: tuple[int, ...]
    tasks: tuple[str, ...] = SYNTHETIC
    samples: int = SAMPLES
    seed: int = SEED
    chat_template: str = "auto"  # auto: the tokenizer's when it has one; chat: require it; none: RULER's plain
    haystack: str | None = None  # FILE|DIR|hf:NAME for the essay tasks; None: picli's built-in text
    repeat_haystack: bool = False  # RULER repeats a haystack that runs out; picli refuses unless asked

    def check(self) -> tuple[str, ...]:
        """The settings' own errors, before any tokenizer or model is loaded; the tasks, resolved."""
        tasks = resolve_tasks(self.tasks)
        if self.samples < 1:
            raise PicliError(f"--samples must be at least 1, got {self.samples}", hint="RULER uses 500 per task and length")
        if not self.lengths:
            raise PicliError("no --length given for RULER", hint="e.g. --length 4096 --length 8192")
        for length in self.lengths:
            if length < 1:
                raise PicliError(f"--length must be positive, got {length}", hint="e.g. --length 4096")
        if self.chat_template not in CHAT_TEMPLATES:
            raise PicliError(f"--chat-template must be one of {', '.join(CHAT_TEMPLATES)}, got {self.chat_template!r}",
                             hint="auto uses the tokenizer's chat template when it has one")
        return tasks


@dataclass(frozen=True)
class Sample:
    task: str
    length: int
    index: int
    input: str  # the exact text the model reads: template (chat-rendered when used) + answer prefix
    answer_prefix: str
    references: tuple[str, ...]
    budget: int  # tokens to generate
    prompt_tokens: int  # tokens of `input` as the model reads it; prompt_tokens + budget <= length
    haystack_size: int  # noise sentences, distractor needles, essay words or listed words (task-dependent)
    haystack_passes: int = 1  # > 1 only when the essay haystack was repeated


@dataclass(frozen=True)
class Suite:
    """Every sample of a run, and how they were made (the report's protocol)."""

    protocol: dict
    samples: tuple[Sample, ...] = field(repr=False)

    def groups(self) -> dict[tuple[str, int], list[Sample]]:
        grouped: dict[tuple[str, int], list[Sample]] = {}
        for sample in self.samples:
            grouped.setdefault((sample.task, sample.length), []).append(sample)
        return grouped

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "samples": [asdict(sample) for sample in self.samples]}


class Prompter:
    """Renders drafts into the text a model reads, and counts its tokens as the model will."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer = tokenizer
        self.chat = chat

    def render(self, draft: Draft) -> str:
        """RULER's `model_template.format(task_template=...) + answer_prefix` (scripts/data/prepare.py),
        with the tokenizer's chat template as the model template when `chat`.

        cwe's solved example: RULER formats it with the whole template, model template included,
        and joins it to the question with a newline; in a chat that is an earlier user turn and
        the assistant's reply."""
        if not self.chat:
            return "\n".join([user + reply for user, reply in draft.examples] + [draft.question + draft.answer_prefix])
        messages = []
        for user, reply in draft.examples:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        messages.append({"role": "user", "content": draft.question})
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered + draft.answer_prefix

    def ids(self, text: str) -> list[int]:
        # A rendered chat template already holds the special tokens the model expects (BOS included).
        # verbose=False: probes longer than model_max_length are counted, never fed to the model.
        return self.tokenizer(text, add_special_tokens=not self.chat, verbose=False).input_ids

    def count(self, draft: Draft) -> int:
        return len(self.ids(self.render(draft)))

    def count_text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False).input_ids)


def chat_template_use(tokenizer, requested: str) -> dict:
    """Whether prompts go through the tokenizer's chat template, and which one (for the report)."""
    template = getattr(tokenizer, "chat_template", None)
    if requested == "chat" and not template:
        raise PicliError("the tokenizer has no chat template, so --chat-template chat cannot use one",
                         hint="use --chat-template none for RULER's plain template (what base models get)")
    used = "chat" if template and requested in ("auto", "chat") else "plain"
    record = {"requested": requested, "used": used}
    if used == "chat":
        text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
        record["chat_template_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return record


def sample_rng(seed: int, task: str, length: int, index: int | str) -> random.Random:
    # A str seed is hashed (SHA-512) by random.seed: the same stream on every platform and Python 3.
    return random.Random(f"ruler|{seed}|{task}|{length}|{index}")


def build_suite(tokenizer, settings: RulerSettings, on_event: Events = None) -> Suite:
    """Every sample of every task and length, or the first reason it cannot be built (a PicliError)."""
    tasks = settings.check()
    template = chat_template_use(tokenizer, settings.chat_template)
    prompter = Prompter(tokenizer, template["used"] == "chat")
    needs_essay = any(TASKS[name].args.get("type_haystack") == "essay" for name in tasks)
    haystack = load_haystack(settings.haystack) if needs_essay else None
    lengths = tuple(dict.fromkeys(settings.lengths))  # a length given twice is measured once
    samples: list[Sample] = []
    groups = [(length, name) for length in lengths for name in tasks]
    for done, (length, name) in enumerate(groups, start=1):
        builder = TaskBuilder(TASKS[name], length, settings, prompter, haystack)
        samples += builder.samples(settings.samples)
        if on_event:
            on_event({"kind": "progress", "task": "RULER prompts", "done": done, "total": len(groups), "unit": "tasks"})
    protocol = {
        "benchmark": "RULER", "source": f"{RULER_REPOSITORY}@{RULER_COMMIT}", "tasks": list(tasks),
        "lengths": list(lengths), "samples": settings.samples, "seed": settings.seed, "template": template,
        "haystack": {**haystack.describe(), "repeat": settings.repeat_haystack} if haystack else None,
        "decoding": "greedy, KV cache, up to each task's tokens to generate, stopping at end of sequence",
        "metrics": {name: TASKS[name].metric for name in tasks},
        "tokens_to_generate": {name: TASKS[name].budget for name in tasks},
    }
    return Suite(protocol, tuple(samples))


class TaskBuilder:
    """The samples of one task at one length: the haystack search, then each sample fitted."""

    def __init__(self, task: Task, length: int, settings: RulerSettings, prompter: Prompter,
                 haystack: Haystack | None):
        self.task, self.length, self.settings = task, length, settings
        self.prompter, self.haystack = prompter, haystack
        self.seed = settings.seed
        self.example = self._vt_example() if task.family == "variable_tracking" else None

    # --- what RULER's scripts fix per task -------------------------------------------------

    def increment(self) -> int:
        """RULER's step of the haystack size (`incremental` in each script)."""
        family, kind = self.task.family, self.task.args.get("type_haystack")
        if family == "niah":
            if kind == "essay":
                return 500
            return 5 if self.length < 4096 else 25
        if family == "variable_tracking":
            return 5 if self.length < 4096 else 10
        return 10  # common_words_extraction

    def cap(self) -> int | None:
        """The most units the sources hold: the essay's words (unless repeating), cwe's word list."""
        if self.task.args.get("type_haystack") == "essay" and not self.settings.repeat_haystack:
            return len(self.haystack.words)
        if self.task.family == "common_words_extraction":
            return len(common_words(self.seed))
        return None

    def draft(self, size: int, rng: random.Random) -> Draft:
        args, family = self.task.args, self.task.family
        if family == "niah":
            return generators.niah(args, size, rng, self.seed, self.haystack, self.settings.repeat_haystack)
        if family == "variable_tracking":
            return generators.variable_tracking(args, size, rng, self.example)
        return generators.common_words_extraction(args, size, rng, self.seed, self.length)

    # --- the fit ---------------------------------------------------------------------------

    def samples(self, count: int) -> list[Sample]:
        if self.task.family == "freq_words_extraction":
            return self._fwe_samples(count)
        step = self.increment()
        size = self._search(step)
        return [self._fitted(index, size, step, self._draft_at) for index in range(count)]

    def _draft_at(self, size: int, index: int | str) -> Draft:
        return self.draft(size, sample_rng(self.seed, self.task.name, self.length, index))

    def _fitted(self, index: int, size: int, step: int, draft_at) -> Sample:
        """Sample `index` at the searched size, a step smaller each time it does not fit (every
        RULER script's per-sample loop)."""
        budget = self.task.budget
        while True:
            draft = draft_at(size, index)
            text = self.prompter.render(draft)
            tokens = len(self.prompter.ids(text))
            if tokens + budget <= self.length:
                return Sample(self.task.name, self.length, index, text, draft.answer_prefix, draft.references,
                              budget, tokens, size, draft.passes)
            if size <= step:
                raise self._too_short(tokens)
            size -= step

    def _search(self, step: int) -> int:
        """RULER's binary search: the largest size whose probe prompt plus budget fits the length."""
        budget, cap = self.task.budget, self.cap()
        if cap is not None and cap < step:
            raise self._source_too_small(cap)

        def tokens_at(size: int) -> int:
            return self.prompter.count(self._draft_at(size, "search"))

        if self.task.family == "common_words_extraction":
            # common_words_extraction.py sizes from a 4096-word probe; never more words than the list.
            probe = min(4096, cap)
            upper = max(int(self.length // (tokens_at(probe) / probe)) * 2, step * 2)
        else:
            upper = max(int(self.length / (tokens_at(step) / step) * 3), step * 2)
        if cap is not None:
            upper = min(upper, cap)
        lower, best = step, None
        while lower <= upper:
            middle = (lower + upper) // 2
            if tokens_at(middle) + budget <= self.length:
                best, lower = middle, middle + 1
            else:
                upper = middle - 1
        if best is None:
            raise self._too_short(tokens_at(step))
        if cap is not None and best == cap:
            raise self._source_too_small(cap, tokens_at(cap))
        return best

    def _fwe_samples(self, count: int) -> list[Sample]:
        """freq_words_extraction.py sys_kwext: the word count grown by length/32 from length/6 while
        the prompt stays under length - budget, then each sample shrunk by the same step to fit."""
        room = self.length - self.task.budget
        vocabulary_size, step = room // 50, room // 32
        if vocabulary_size < 4 or step < 1:
            raise self._too_short(None)
        alpha = self.task.args["alpha"]

        def draft(size: int, index: int | str) -> Draft:
            rng = sample_rng(self.seed, self.task.name, self.length, index)
            vocabulary = generators.coded_vocabulary(rng, vocabulary_size, self.seed)
            return generators.frequent_words(vocabulary, size, self.seed, alpha)

        size = room // 6
        while self.prompter.count(draft(size, "search")) < room:
            size += step
        size -= step
        return [self._fitted(index, size, step, draft) for index in range(count)]

    def _vt_example(self) -> str:
        """variable_tracking.py main(): one solved example in RULER's plain template, fitted to 500
        tokens by the same search (step 5, nothing to generate), counted without special tokens."""
        args, step = self.task.args, 5

        def draft(size: int) -> Draft:
            return generators.variable_tracking(args, size, sample_rng(self.seed, self.task.name, self.length, "example"))

        def tokens_at(size: int) -> int:
            example = draft(size)
            return self.prompter.count_text(example.question + example.answer_prefix)

        upper = max(int(VT_EXAMPLE_TOKENS / (tokens_at(step) / step) * 3), step * 2)
        lower, best = step, step
        while lower <= upper:
            middle = (lower + upper) // 2
            if tokens_at(middle) <= VT_EXAMPLE_TOKENS:
                best, lower = middle, middle + 1
            else:
                upper = middle - 1
        return generators.example_text(draft(best))

    # --- errors ------------------------------------------------------------------------------

    def _too_short(self, tokens: int | None) -> PicliError:
        name, budget = self.task.name, self.task.budget
        if tokens is None:
            return PicliError(f"--length {self.length} is too short for RULER's {name} (it generates {budget} tokens)",
                              hint="use a longer --length")
        return PicliError(f"--length {self.length} is too short for RULER's {name}: its smallest prompt has {tokens} "
                          f"tokens and the task generates {budget} more",
                          hint=f"use --length {tokens + budget} or more, or leave {name} out with --tasks")

    def _source_too_small(self, cap: int, tokens_at_cap: int | None = None) -> PicliError:
        name = self.task.name
        if self.task.family == "common_words_extraction":
            return PicliError(f"RULER's cwe at {self.length} tokens needs more than the {cap} distinct words of its "
                              "word lists", hint="RULER then draws from its english_words.json, which picli does not "
                              "ship: run cwe at a shorter --length")
        text_tokens = self.prompter.count_text(" ".join(self.haystack.words))
        if tokens_at_cap is None:
            # Smaller than RULER's first step (500 words): it needs at least that much text.
            needed = -(-text_tokens * self.increment() // cap)
        else:
            needed = text_tokens + self.length - self.task.budget - tokens_at_cap
        return PicliError(f"the haystack {self.haystack.name} has {text_tokens} tokens; {name} at {self.length} tokens "
                          f"needs about {needed}", hint="give a longer text with --haystack FILE|DIR|hf:NAME "
                          "(RULER repeats a haystack that runs out; picli does not, so no text appears twice)")
