"""A RULER run on one model: the suite's prompts through greedy decoding, every sample scored,
the scores per task and length, the averages, both effective lengths, and every sample kept.

    suite = build_suite(loaded.tokenizer, RulerSettings(lengths=(4096, 8192), samples=20))
    report = run_suite(loaded, suite, on_event=on_event)

A suite belongs to a tokenizer and template: build one per model (two models with the same
tokenizer get identical suites, so rows compare like with like).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..events import Events
from .decoding import auto_batch, greedy_generate
from .prompts import RulerSettings, Suite, build_suite
from .scoring import EffectiveLength, effective_lengths, sample_score, task_score
from .tasks import TASKS


@dataclass(frozen=True)
class SampleResult:
    task: str
    length: int
    index: int
    input: str  # exactly what the model read (template and answer prefix included)
    references: tuple[str, ...]
    prediction: str  # decoded generation before the first end-of-sequence token (special tokens skipped)
    score: float  # this sample's part of the task score, 0-100
    prompt_tokens: int
    generated_tokens: int
    stopped: bool  # ended at end of sequence rather than at the task's budget


@dataclass(frozen=True)
class TaskScore:
    task: str
    length: int
    metric: str
    score: float  # 0-100, rounded to two decimals as RULER's metric functions do
    samples: int
    seconds: float


@dataclass(frozen=True)
class LengthAverage:
    length: int
    average: float  # mean of the task scores at this length
    tasks: int
    beyond_window: bool  # longer than the model's max_position_embeddings


@dataclass(frozen=True)
class RulerReport:
    protocol: dict  # how the samples were made and scored (prompts.build_suite)
    window: int  # the model's max_position_embeddings
    scores: list[TaskScore]
    averages: list[LengthAverage]
    effective: list[EffectiveLength]  # RULER's, then the relative one
    samples: list[SampleResult]
    seconds: float

    def table(self) -> dict[str, dict[int, float]]:
        """{task: {length: score}}: the task x length picture."""
        table: dict[str, dict[int, float]] = {}
        for score in self.scores:
            table.setdefault(score.task, {})[score.length] = score.score
        return table

    def to_dict(self, samples: bool = True) -> dict:
        data = {"protocol": self.protocol, "window": self.window, "scores": [asdict(score) for score in self.scores],
                "averages": [asdict(average) for average in self.averages],
                "effective": [length.to_dict() for length in self.effective], "seconds": self.seconds}
        if samples:
            data["samples"] = [asdict(sample) for sample in self.samples]
        return data


def evaluate_ruler(loaded, settings: RulerSettings, batch_size: int | None = None, on_event: Events = None,
                   window: int | None = None) -> RulerReport:
    return run_suite(loaded, build_suite(loaded.tokenizer, settings, on_event), batch_size, on_event, window)


def run_suite(loaded, suite: Suite, batch_size: int | None = None, on_event: Events = None,
              window: int | None = None) -> RulerReport:
    from ..modeling import check_fits

    started = time.perf_counter()
    chat = suite.protocol["template"]["used"] == "chat"
    # The checkpoint's effective window when the caller knows it (checkpoint.effective_window).
    window = window or int(getattr(loaded.config, "max_position_embeddings", 0) or 0)
    scores, results = [], []
    for (task_name, length), samples in suite.groups().items():
        task = TASKS[task_name]
        prompts = [loaded.tokenizer(sample.input, add_special_tokens=not chat, verbose=False).input_ids
                   for sample in samples]
        for sample, prompt in zip(samples, prompts):
            if len(prompt) != sample.prompt_tokens:
                raise ValueError(f"{task_name} sample {sample.index} has {len(prompt)} tokens here, {sample.prompt_tokens} "
                                 "when it was built: a suite belongs to the tokenizer that built it")
        batch = batch_size or auto_batch(loaded, length, len(samples))
        check_fits(loaded, length, batch=batch, what=f"RULER {task_name} at {length} tokens")
        group_started = time.perf_counter()
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done += count
            if on_event:
                on_event({"kind": "progress", "task": f"RULER {task_name} {length}", "done": done,
                          "total": len(samples), "unit": "samples"})

        generations = greedy_generate(loaded, prompts, task.budget, batch, on_done=progress)
        predictions = [loaded.tokenizer.decode(generation.tokens, skip_special_tokens=True) for generation in generations]
        for sample, generation, prediction in zip(samples, generations, predictions):
            results.append(SampleResult(sample.task, length, sample.index, sample.input, sample.references, prediction,
                                        sample_score(task.metric, prediction, sample.references), sample.prompt_tokens,
                                        len(generation.tokens), generation.stopped))
        scores.append(TaskScore(task_name, length, task.metric,
                                task_score(task.metric, predictions, [sample.references for sample in samples]),
                                len(samples), round(time.perf_counter() - group_started, 3)))
    averages = []
    for length in dict.fromkeys(score.length for score in scores):
        at_length = [score.score for score in scores if score.length == length]
        averages.append(LengthAverage(length, sum(at_length) / len(at_length), len(at_length),
                                      bool(window) and length > window))
    ruler, relative = effective_lengths({average.length: average.average for average in averages})
    return RulerReport(suite.protocol, window, scores, averages, [ruler, relative], results,
                       round(time.perf_counter() - started, 3))

