"""RULER's task table: the 13 tasks of scripts/synthetic.yaml, their templates, answer
prefixes and tokens to generate (scripts/data/synthetic/constants.py), and their metric
(scripts/eval/synthetic/constants.py), all as NVIDIA/RULER has them at commit c3f5e3b.

picli generates the 11 synthetic tasks itself; qa_1 and qa_2 need SQuAD and HotpotQA, which
picli never downloads, and are listed here only so that their name gives a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PicliError

RULER_COMMIT = "c3f5e3b"
RULER_REPOSITORY = "NVIDIA/RULER"

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

# scripts/data/synthetic/constants.py, TASKS[...]["template"] and ["answer_prefix"].
TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    ),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
    ),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\n"
        "Question: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
    ),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
    ),
}
TOKENS_TO_GENERATE = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120,
                      "freq_words_extraction": 50, "qa": 32}
METRICS = {"niah": "string_match_all", "variable_tracking": "string_match_all",
           "common_words_extraction": "string_match_all", "freq_words_extraction": "string_match_all",
           "qa": "string_match_part"}


@dataclass(frozen=True)
class Task:
    name: str  # as in synthetic.yaml
    family: str  # synthetic.yaml's `task`: the generator script and the constants' key
    args: dict = field(default_factory=dict)  # synthetic.yaml's `args`

    @property
    def budget(self) -> int:
        """Tokens to generate: what the prompt leaves room for, and the most greedy decoding produces."""
        return TOKENS_TO_GENERATE[self.family]

    @property
    def metric(self) -> str:
        return METRICS[self.family]

    @property
    def template(self) -> str:
        return TEMPLATES[self.family][0]

    @property
    def answer_prefix(self) -> str:
        return TEMPLATES[self.family][1]


def _niah(name: str, haystack: str, key: str, value: str, keys: int = 1, values: int = 1, queries: int = 1) -> Task:
    return Task(name, "niah", {"type_haystack": haystack, "type_needle_k": key, "type_needle_v": value,
                               "num_needle_k": keys, "num_needle_v": values, "num_needle_q": queries})


TASKS = {task.name: task for task in (
    _niah("niah_single_1", "noise", "words", "numbers"),
    _niah("niah_single_2", "essay", "words", "numbers"),
    _niah("niah_single_3", "essay", "words", "uuids"),
    _niah("niah_multikey_1", "essay", "words", "numbers", keys=4),
    _niah("niah_multikey_2", "needle", "words", "numbers"),
    _niah("niah_multikey_3", "needle", "uuids", "uuids"),
    _niah("niah_multivalue", "essay", "words", "numbers", values=4),
    _niah("niah_multiquery", "essay", "words", "numbers", queries=4),
    Task("vt", "variable_tracking", {"type_haystack": "noise", "num_chains": 1, "num_hops": 4}),
    Task("cwe", "common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    Task("fwe", "freq_words_extraction", {"alpha": 2.0}),
    Task("qa_1", "qa", {"dataset": "squad"}),
    Task("qa_2", "qa", {"dataset": "hotpotqa"}),
)}
SYNTHETIC = tuple(name for name, task in TASKS.items() if task.family != "qa")


def resolve_tasks(names: list[str] | tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Task names as the user gives them ("all", a comma list, or a list), checked, in RULER's order."""
    if names is None or names == "all" or list(names) == ["all"]:
        return SYNTHETIC
    if isinstance(names, str):
        names = names.split(",")
    wanted = [name.strip() for name in names if name.strip()]
    for name in wanted:
        if name not in TASKS:
            raise PicliError(f"unknown RULER task {name!r}", hint=f"choose from {', '.join(SYNTHETIC)}, or all")
        if TASKS[name].family == "qa":
            raise PicliError(f"{name} needs {TASKS[name].args['dataset']} data, which picli does not download or ship",
                             hint=f"run the synthetic tasks: {', '.join(SYNTHETIC)}")
    if not wanted:
        raise PicliError("no RULER task given", hint=f"choose from {', '.join(SYNTHETIC)}, or all")
    return tuple(name for name in TASKS if name in wanted)
