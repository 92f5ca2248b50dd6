"""What RULER's generators draw from: its word lists, its noise sentence, and the essay haystack.

RULER (NVIDIA/RULER at c3f5e3b) reads its words from the wonderwords package
(scripts/data/synthetic/niah.py and common_words_extraction.py call
`wonderwords.random_word._get_words_from_text_file` on nounlist.txt, adjectivelist.txt and
verblist.txt). Its Docker image installs wonderwords unpinned, which in 2024 was 2.2.0; 3.0
dropped four nouns. picli ships the three lists of 2.2.0 (MIT) in picli/data/ruler/, so the
words are RULER's whatever is installed and nothing is read through a private function.

The essay haystack: RULER downloads Paul Graham's essays (json/download_paulgraham_essay.py).
picli ships a public-domain text instead (Alice's Adventures in Wonderland, the Canterbury
corpus' alice29.txt) and takes any other text through `load_haystack` (a file, a folder or
hf:NAME, read by picli.textdata). Provenance, licence and hashes: picli/data/ruler/README.md.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from dataclasses import dataclass, field
from importlib import resources

from ..errors import PicliError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEFAULT_HAYSTACK = "alice29.txt"
# niah.py: DEPTHS = np.round(np.linspace(0, 100, num=40)).astype(int); no value lies near a
# half, so Python's round gives the same integers (tests/test_ruler.py holds the list).
DEPTHS = tuple(round(100 * step / 39) for step in range(40))
# Abbreviations that end in a period without ending a sentence (see split_sentences).
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "no", "vol"})
_SENTENCE_END = re.compile(r"""[.!?]+["')\]]*(?= )""")


def _data_file(name: str) -> str:
    return resources.files("picli").joinpath("data", "ruler", name).read_text(encoding="utf-8")


@functools.cache
def word_list(name: str) -> tuple[str, ...]:
    """One of wonderwords' lists as `_get_words_from_text_file` returns it: a word a line, right-stripped."""
    return tuple(line.rstrip() for line in _data_file(name).splitlines())


@functools.cache
def adjectives() -> tuple[str, ...]:
    return tuple(sorted(set(word_list("adjectivelist.txt"))))


@functools.cache
def nouns() -> tuple[str, ...]:
    return tuple(sorted(set(word_list("nounlist.txt"))))


def random_word_pair(rng: random.Random) -> str:
    """An adjective-noun pair, uniform over RULER's `words` (niah.py builds all 6.2 million
    `f"{adj}-{noun}"` strings and calls random.choice; no two pairs spell the same string, so
    drawing the adjective and the noun apart is the same distribution without the list)."""
    return f"{rng.choice(adjectives())}-{rng.choice(nouns())}"


@functools.cache
def _common_words() -> tuple[str, ...]:
    return tuple(sorted(set(word_list("nounlist.txt") + word_list("adjectivelist.txt") + word_list("verblist.txt"))))


@functools.lru_cache(maxsize=4)
def common_words(seed: int) -> tuple[str, ...]:
    """common_words_extraction.py's `words`: nouns, adjectives and verbs, deduplicated, sorted,
    then shuffled by a generator seeded with the run's seed (the same order for every sample)."""
    words = list(_common_words())
    random.Random(seed).shuffle(words)
    return tuple(words)


def split_sentences(text: str) -> list[str]:
    """Sentences of single-spaced text, for placing needles between them.

    RULER uses nltk's punkt model (`sent_tokenize`), which nltk downloads at run time; picli
    cannot, so it splits after ., ! or ? (and any closing quotes or brackets) where the next
    word does not begin in lower case and the word before is not a common abbreviation.
    Joining the result with single spaces gives the text back, as with punkt on such text.
    """
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        following = text[end + 1:end + 2]
        last_word = text[start:match.start()].rsplit(" ", 1)[-1].lower()
        if not following or following.islower() or (match.group() == "." and last_word in ABBREVIATIONS):
            continue
        sentences.append(text[start:end])
        start = end + 1
    if start < len(text):
        sentences.append(text[start:])
    return sentences


@dataclass(frozen=True)
class Haystack:
    """A text to hide needles in, as RULER reads its essays: whitespace runs become one space,
    and the haystack of size n is the first n words (`re.sub(r"\\s+", " ", essay).split(" ")`)."""

    name: str  # "alice29.txt (built in)", or the --haystack the user gave
    sha256: str  # of the text as read (UTF-8), before whitespace is folded
    words: tuple[str, ...] = field(repr=False)

    def text(self, size: int, repeat: bool) -> tuple[str, int]:
        """(the first `size` words joined, how many passes over the text that took).

        RULER repeats its essays when a length needs more words than they hold (niah.py,
        generate_input_output: `haystack * repeats`); picli does so only when asked
        (RulerSettings.repeat_haystack): otherwise the fit never asks for more (see prompts.py).
        """
        passes = -(-size // len(self.words))
        if passes > 1 and not repeat:
            raise AssertionError("the fit asked for more words than the haystack holds")
        return " ".join((self.words * passes)[:size]), passes

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "words": len(self.words)}


def haystack_from_text(name: str, text: str) -> Haystack:
    words = tuple(re.sub(r"\s+", " ", text).strip().split(" "))
    if words == ("",):
        raise PicliError(f"the haystack {name} holds no text", hint="give a text file with English prose")
    return Haystack(name, hashlib.sha256(text.encode("utf-8")).hexdigest(), words)


def load_haystack(spec: str | None = None) -> Haystack:
    """The essay haystack: picli's own text (None), or `--haystack FILE|DIR|hf:NAME`.

    A folder or a dataset gives several documents; they are joined in order, as RULER
    concatenates its essays into one text.
    """
    if spec is None:
        return haystack_from_text(f"{DEFAULT_HAYSTACK} (built in)", _data_file(DEFAULT_HAYSTACK))
    from ..textdata import load_texts

    documents = load_texts(spec)
    return haystack_from_text(spec, "\n\n".join(document.text for document in documents))
