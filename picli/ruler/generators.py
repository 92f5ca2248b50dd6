"""RULER's four generators, as text: one sample of a task at a given haystack size.

Each function follows `generate_input_output` of its RULER script (scripts/data/synthetic/
niah.py, variable_tracking.py, common_words_extraction.py, freq_words_extraction.py at
c3f5e3b): the same needles, chains, word lists, counts, orders and joins, and the same
templates and answer prefixes (tasks.py). What differs is where the randomness comes from.
RULER draws everything from one global generator, so a sample depends on how many prompts
the haystack search tried before it, and therefore on the tokenizer. Here each sample has
its own generator (seeded by prompts.py from the seed, task, length and sample index) and
draws what does not depend on the haystack size first (keys, values, chains, the few-shot
example, cwe's frequent words, the coded vocabulary), so every model sees the same needles and answers at a
length, and only the amount of haystack around them depends on its tokenizer. The fixed-seed
shuffles RULER performs with `random.Random(args.random_seed)` are kept as they are.

The functions are pure: no tokenizer, no model. prompts.py sizes the haystack.
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass

from .sources import DEPTHS, NOISE, Haystack, common_words, random_word_pair, split_sentences
from .tasks import NEEDLE, TEMPLATES

# scipy.special.zeta(2.0), which freq_words_extraction.py divides by: pi^2 / 6 in float64.
ZETA_2 = 1.6449340668482264


@dataclass(frozen=True)
class Draft:
    """One sample before rendering: the user's text, the answer prefix, the references."""

    question: str  # the task template, formatted: the text of the last user turn
    answer_prefix: str  # appended after the template (after the assistant's turn opens, in a chat)
    references: tuple[str, ...]
    examples: tuple[tuple[str, str], ...] = ()  # few-shot turns before the question: (user text, reply)
    passes: int = 1  # passes over the essay haystack (> 1 only when repeating it was allowed)


def _random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        return random_word_pair(rng)
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def _singular(template: str) -> str:
    """niah.py's rewrite of the template when one value is asked for ("Some ... are" -> "A ... is")."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def niah(args: dict, size: int, rng: random.Random, seed: int, haystack: Haystack | None = None,
         repeat: bool = False) -> Draft:
    """Needles "One of the special magic {numbers} for {key} is: {value}." in a haystack of
    `size` noise sentences, distractor needles, or essay words (niah.py generate_input_output)."""
    key_kind, value_kind = args["type_needle_k"], args["type_needle_v"]
    key_count = max(args["num_needle_k"], args["num_needle_q"])
    keys, values, needles = [], [], []
    for _ in range(key_count):
        keys.append(_random_value(key_kind, rng))
        values.append([_random_value(value_kind, rng) for _ in range(args["num_needle_v"])])
        needles += [NEEDLE.format(type_needle_v=value_kind, key=keys[-1], value=value) for value in values[-1]]
    random.Random(seed).shuffle(needles)
    queried = rng.sample(range(key_count), args["num_needle_q"])

    passes = 1
    if args["type_haystack"] == "essay":
        assert haystack is not None
        text, passes = haystack.text(size, repeat)
        sentences = split_sentences(text.strip())
        cuts = [0] + sorted(int(len(sentences) * (depth / 100)) for depth in rng.sample(DEPTHS, len(needles))) \
            + [len(sentences)]
        parts = []
        for index in range(1, len(cuts)):
            parts.append(" ".join(sentences[cuts[index - 1]:cuts[index]]))
            if index - 1 < len(needles):
                parts.append(needles[index - 1])
        context = " ".join(parts)
    else:
        if args["type_haystack"] == "noise":
            lines = [NOISE] * size
        else:
            lines = [NEEDLE.format(type_needle_v=value_kind, key=_random_value(key_kind, rng),
                                   value=_random_value(value_kind, rng)) for _ in range(size)]
        for index, needle in zip(sorted(rng.sample(range(size), len(needles)), reverse=True), needles):
            lines.insert(index, needle)
        context = "\n".join(lines)

    queries = [keys[index] for index in queried]
    answers = tuple(value for index in queried for value in values[index])
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix = TEMPLATES["niah"]
    shown_kind = value_kind
    if args["num_needle_q"] * args["num_needle_v"] == 1:
        template, prefix, shown_kind = _singular(template), _singular(prefix), value_kind[:-1]
    return Draft(template.format(type_needle_v=shown_kind, context=context, query=query),
                 prefix.format(type_needle_v=shown_kind, query=query), answers, passes=passes)


def _chains(rng: random.Random, chains: int, hops: int, example: bool) -> tuple[list[list[str]], list[list[str]]]:
    """variable_tracking.py generate_chains: names of 5 capitals (3 in the example), values of 5 digits
    (12345 in the example), "VAR B = VAR A " lines (with RULER's trailing space)."""
    letters = 3 if example else 5
    hops = min(10, hops) if example else hops
    names: list[str] = []
    # RULER appends a fresh name when two collide and then cuts its list in chains of hops+1,
    # so a collision (p ~ 1e-6) makes a malformed chain; drawing distinct names avoids it.
    while len(names) < chains * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    grouped, lines = [], []
    for start in range(0, len(names), hops + 1):
        chain = names[start:start + hops + 1]
        value = "12345" if example else str(rng.randint(10000, 99998))  # np.random.randint(10000, 99999)
        grouped.append(chain)
        lines.append([f"VAR {chain[0]} = {value}"] + [f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(hops)])
    return grouped, lines


def randomize_example(example: str, hops: int, rng: random.Random) -> str:
    """variable_tracking.py randomize_icl: new names for the example's answer, a new value for 12345.

    Every occurrence is replaced (str.replace), as in RULER."""
    for name in example.strip().split()[-hops - 1:]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return example.replace("12345", str(rng.randint(10000, 99998)))


def variable_tracking(args: dict, size: int, rng: random.Random, example: str | None = None) -> Draft:
    """Chains "VAR XXXXX = 12345", "VAR YYYYY = VAR XXXXX " hidden among `size` noise sentences,
    after the in-context example (variable_tracking.py generate_input_output and
    sys_vartrack_w_noise_random). `example` None builds the example itself."""
    hops, count = args["num_hops"], args["num_chains"]
    names, chains = _chains(rng, count, hops, example=example is None)
    hops = len(names[0]) - 1
    value = chains[0][0].split("=")[-1].strip()
    shown_example = randomize_example(example, hops, rng) if example is not None else None
    sentences = [NOISE] * size
    for chain in chains:
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for offset, (position, line) in enumerate(zip(positions, chain)):
            sentences.insert(position + offset, line)
    context = "\n".join(sentences).replace(". \n", ".\n")
    template, prefix = TEMPLATES["variable_tracking"]
    question = template.format(context=context, query=value, num_v=hops + 1)
    if shown_example is not None:
        question = shown_example + "\n" + question
    return Draft(question, prefix.format(num_v=hops + 1, query=value), tuple(names[0]))


def example_text(draft: Draft) -> str:
    """The vt in-context example as RULER inserts it: the plain prompt, its answer, a newline."""
    return draft.question + draft.answer_prefix + " " + " ".join(draft.references) + "\n"


def _numbered(words: list[str]) -> str:
    return " ".join(f"{index + 1}. {word}" for index, word in enumerate(words))


def _word_list(words: tuple[str, ...], size: int, common_repeats: int, other_repeats: int, common: int,
               rng: random.Random, seed: int) -> tuple[str, list[str]]:
    """common_words_extraction.py get_example: `size` distinct words, `common` of them repeated more.

    RULER samples all `size` and repeats the first `common`; drawing those first and the rest
    from the words left is the same distribution, and keeps the answer the same at any size."""
    frequent = rng.sample(words, common)
    taken = set(frequent)
    others = rng.sample([word for word in words if word not in taken], size - common)
    listed = frequent * common_repeats + others * other_repeats
    random.Random(seed).shuffle(listed)
    return _numbered(listed), frequent


def common_words_extraction(args: dict, size: int, rng: random.Random, seed: int, length: int) -> Draft:
    """A numbered list of `size` distinct words, 10 of them repeated 30 times and the rest 3 (6 and 1
    below 4096 tokens), after one solved example (common_words_extraction.py generate_input_output)."""
    words = common_words(seed)
    common = args["num_cw"]
    if length < 4096:
        example_shape, repeats = (20, 3, 1), (6, 1)
    else:
        example_shape, repeats = (40, 10, 3), (args["freq_cw"], args["freq_ucw"])
    template, prefix = TEMPLATES["common_words_extraction"]
    example_context, example_answer = _word_list(words, *example_shape, common, rng, seed)
    context, answer = _word_list(words, size, *repeats, common, rng, seed)
    example = (template.format(context=example_context), prefix + " " + _numbered(example_answer))
    return Draft(template.format(context=context), prefix, tuple(answer), examples=(example,))


def coded_vocabulary(rng: random.Random, size: int, seed: int, word_length: int = 6) -> list[str]:
    """freq_words_extraction.py's vocabulary: distinct random lowercase words, sorted, shuffled by the
    run's seed, the most frequent one replaced by '...' (noise)."""
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=word_length)) for _ in range(size)]
    while len(set(vocabulary)) < size:
        vocabulary.append("".join(rng.choices(string.ascii_lowercase, k=word_length)))
    vocabulary = sorted(set(vocabulary))
    random.Random(seed).shuffle(vocabulary)
    vocabulary[0] = "..."
    return vocabulary


def frequent_words(vocabulary: list[str], size: int, seed: int, alpha: float = 2.0) -> Draft:
    """About `size` coded words drawn by Zipf's law over the vocabulary; the answer is ranks 2-4
    (freq_words_extraction.py gen_text)."""
    if alpha != 2.0:
        raise ValueError("RULER's fwe uses alpha 2.0; picli has zeta(2) only")
    words = []
    for rank, word in enumerate(vocabulary, start=1):
        words += [word] * int(size * (rank ** -alpha) / ZETA_2)
    random.Random(seed).shuffle(words)
    template, prefix = TEMPLATES["freq_words_extraction"]
    return Draft(template.format(context=" ".join(words)), prefix, tuple(vocabulary[1:4]))
