"""RULER's scores and the two effective lengths.

Scoring is RULER's (scripts/eval/evaluate.py and scripts/eval/synthetic/constants.py at
c3f5e3b): a prediction is stripped, every control character (U+0000-U+001F) becomes a
newline, and it is stripped again (`postprocess_pred`); then

    string_match_all  = mean over samples of (references found in the prediction / references) x 100
    string_match_part = mean over samples of (1 if any reference is found) x 100

where "found" is a case-insensitive substring test, and a task's score is rounded to two
decimals. The average at a length is the mean of the task scores there.

Effective length, two ways, over the lengths tested:
  RULER's:   the largest length whose average is above 85.6, the score of Llama-2-7B at 4k
             (Hsieh et al. 2024, README of NVIDIA/RULER: "exceeding a qualitative threshold").
  relative:  the largest length whose average is at least 85% of the model's own average at
             its shortest tested length (NoLiMa, Modarressi et al. 2025, arXiv 2502.05167, its
             results table: "the longest context where a model maintains at least 85% of its
             base score"; NoLiMa's base score comes from contexts of 250 to 1K tokens, picli's
             is the shortest length tested). A small model that never reaches 85.6 still gets
             a length it can be judged by.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

RULER_THRESHOLD = 85.6
RELATIVE_FRACTION = 0.85
_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """evaluate.py postprocess_pred."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def sample_score(metric: str, prediction: str, references: tuple[str, ...] | list[str]) -> float:
    """One sample's part of a task score, 0-100, on the post-processed prediction."""
    found = [reference.lower() in postprocess(prediction).lower() for reference in references]
    if metric == "string_match_all":
        return sum(found) / len(found) * 100
    if metric == "string_match_part":
        return 100.0 if any(found) else 0.0
    raise ValueError(f"unknown metric {metric!r}")


def task_score(metric: str, predictions: list[str], references: list[tuple[str, ...]]) -> float:
    """RULER's score of one task at one length, rounded to two decimals as its metric functions do."""
    scores = [sample_score(metric, prediction, refs) for prediction, refs in zip(predictions, references)]
    return round(sum(scores) / len(scores), 2)


@dataclass(frozen=True)
class EffectiveLength:
    rule: str  # "ruler" or "relative"
    description: str
    threshold: float  # the average a length must reach (ruler: above it; relative: at least it)
    length: int | None  # the largest tested length that passed; None: none did
    longest_tested_passed: bool  # the true effective length may be longer than anything tested

    def to_dict(self) -> dict:
        return asdict(self)


def effective_lengths(averages: dict[int, float]) -> tuple[EffectiveLength, EffectiveLength]:
    """(RULER's, relative) effective length from {length: average score}."""
    lengths = sorted(averages)
    ruler_passing = [length for length in lengths if averages[length] > RULER_THRESHOLD]
    base = averages[lengths[0]]
    relative_threshold = RELATIVE_FRACTION * base
    relative_passing = [length for length in lengths if averages[length] >= relative_threshold]
    ruler = EffectiveLength(
        "ruler", f"the largest tested length whose average is above {RULER_THRESHOLD} (Llama-2-7B at 4k, RULER)",
        RULER_THRESHOLD, max(ruler_passing, default=None), lengths[-1] in ruler_passing)
    relative = EffectiveLength(
        "relative", f"the largest tested length whose average is at least {RELATIVE_FRACTION:.0%} of the average "
                    f"at the shortest tested length ({lengths[0]}: {base:.2f}) (NoLiMa)",
        round(relative_threshold, 4), max(relative_passing, default=None) if base > 0 else None,
        base > 0 and lengths[-1] in relative_passing)
    return ruler, relative
