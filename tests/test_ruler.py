"""RULER (picli/ruler/): generators against RULER's formats, the fit, the scorer, seeds,
greedy decoding against plain generate, and a run end to end on a tiny model.

RULER's strings below are quoted from NVIDIA/RULER at c3f5e3b (scripts/data/synthetic/
constants.py, niah.py, variable_tracking.py, scripts/eval/synthetic/constants.py) as test
data: picli's own copies must equal them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from picli.errors import PicliError
from picli.ruler import RulerSettings, build_suite, effective_lengths, run_suite
from picli.ruler import decoding, generators, prompts, scoring, sources
from picli.ruler.tasks import SYNTHETIC, TASKS, TEMPLATES, TOKENS_TO_GENERATE
from tests.helpers import ROOT, word_tokenizer

DATA = ROOT / "picli" / "data" / "ruler"

# --- RULER's text, quoted -------------------------------------------------------------------

RULER_NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to "
                       "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all "
                       "the special magic {type_needle_v} for {query} mentioned in the provided text?")
RULER_NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
RULER_VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                     "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.")
RULER_VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                   "are assigned the value {query}, they are: ")
RULER_CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                      "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
                      "words in the above list?")
RULER_CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
RULER_FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                      "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
                      "ignore the dots '....'. What are the three most frequently appeared words in the above coded "
                      "text?")
RULER_FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
RULER_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
RULER_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
RULER_TOKENS = {"niah": 128, "variable_tracking": 30, "common_words_extraction": 120, "freq_words_extraction": 50,
                "qa": 32}

NUMBER_NEEDLE = re.compile(r"One of the special magic numbers for (.+?) is: (\d{7})\.")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def test_templates_budgets_and_needles_are_rulers():
    assert TEMPLATES["niah"] == (RULER_NIAH_TEMPLATE, RULER_NIAH_PREFIX)
    assert TEMPLATES["variable_tracking"] == (RULER_VT_TEMPLATE, RULER_VT_PREFIX)
    assert TEMPLATES["common_words_extraction"] == (RULER_CWE_TEMPLATE, RULER_CWE_PREFIX)
    assert TEMPLATES["freq_words_extraction"] == (RULER_FWE_TEMPLATE, RULER_FWE_PREFIX)
    assert TOKENS_TO_GENERATE == RULER_TOKENS
    assert sources.NOISE == RULER_NOISE and generators.NEEDLE == RULER_NEEDLE
    assert SYNTHETIC == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
    # synthetic.yaml's arguments for the tasks that differ most
    assert TASKS["niah_multikey_3"].args == {"type_haystack": "needle", "type_needle_k": "uuids",
                                             "type_needle_v": "uuids", "num_needle_k": 1, "num_needle_v": 1,
                                             "num_needle_q": 1}
    assert TASKS["niah_multiquery"].args["num_needle_q"] == 4 and TASKS["niah_multivalue"].args["num_needle_v"] == 4
    assert TASKS["cwe"].args == {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10} and TASKS["fwe"].args == {"alpha": 2.0}


def test_depths_are_numpys_rounded_linspace():
    import numpy as np

    assert list(sources.DEPTHS) == list(np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int))


def test_shipped_data_is_what_its_readme_says():
    readme = (DATA / "README.md").read_text()
    for name in ("alice29.txt", "nounlist.txt", "adjectivelist.txt", "verblist.txt"):
        digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert digest in readme, name
    assert (len(sources.word_list("nounlist.txt")), len(sources.adjectives()), len(sources.nouns())) == (6786, 910, 6786)
    assert len(sources.common_words(42)) == 8169
    haystack = sources.load_haystack()
    assert haystack.name == "alice29.txt (built in)" and len(haystack.words) == 26458
    assert haystack.words[:3] == ("ALICE'S", "ADVENTURES", "IN")


def test_sentences_split_where_punkt_would_and_join_back():
    text = ("Alice was tired. `What is the use of a book,' thought Alice. 'Well!' thought Alice to herself. "
            "Mr. Rabbit ran. Was it late? It was. e.g. this stays")
    sentences = sources.split_sentences(text)
    assert sentences == ["Alice was tired.", "`What is the use of a book,' thought Alice.",
                         "'Well!' thought Alice to herself.", "Mr. Rabbit ran.", "Was it late?", "It was. e.g. this stays"]
    assert " ".join(sentences) == text


# --- each generator against RULER's formats ---------------------------------------------------


def _rng(index=0):
    return prompts.sample_rng(42, "test", 4096, index)


def test_niah_single_noise_is_one_needle_among_noise_lines():
    draft = generators.niah(TASKS["niah_single_1"].args, 30, _rng(), 42)
    lines = draft.question.split("\n")
    assert lines[0] == ("A special magic number is hidden within the following text. Make sure to memorize it. "
                        "I will quiz you about the number afterwards.")
    needles = [line for line in lines if NUMBER_NEEDLE.fullmatch(line)]
    assert len(needles) == 1 and lines.count(RULER_NOISE) == 30 and len(lines) == 1 + 31 + 1
    key, value = NUMBER_NEEDLE.fullmatch(needles[0]).groups()
    assert draft.references == (value,)
    assert lines[-1] == f"What is the special magic number for {key} mentioned in the provided text?"
    assert draft.answer_prefix == f" The special magic number for {key} mentioned in the provided text is"
    adjective, _, noun = key.partition("-")
    assert adjective in sources.adjectives() and noun in sources.nouns()


def test_niah_essay_keeps_the_haystack_text_and_adds_only_needles():
    haystack = sources.load_haystack()
    draft = generators.niah(TASKS["niah_multikey_1"].args, 700, _rng(), 42, haystack)
    context = draft.question.split("\n")[1]
    needles = NUMBER_NEEDLE.findall(context)
    assert len(needles) == 4
    stripped = context
    for key, value in needles:
        stripped = stripped.replace(f"One of the special magic numbers for {key} is: {value}.", "")
    assert " ".join(stripped.split()) == " ".join(haystack.words[:700])
    # one key asked for, its value the answer; the other three are distractors
    asked = re.search(r"What is the special magic number for (.+?) mentioned", draft.question).group(1)
    assert draft.references == (dict(needles)[asked],)


def test_niah_uuids_needle_haystack_and_plural_templates():
    draft = generators.niah(TASKS["niah_multikey_3"].args, 12, _rng(), 42)
    lines = draft.question.split("\n")[1:-1]
    pattern = re.compile(rf"One of the special magic uuids for ({UUID}) is: ({UUID})\.")
    assert len(lines) == 13 and all(pattern.fullmatch(line) for line in lines)
    assert draft.references[0] in dict(pattern.fullmatch(line).groups() for line in lines).values()

    multivalue = generators.niah(TASKS["niah_multivalue"].args, 800, _rng(), 42, sources.load_haystack())
    assert multivalue.question.startswith("Some special magic numbers are hidden within the following text.")
    found = NUMBER_NEEDLE.findall(multivalue.question)
    assert len(found) == 4 and len({key for key, _ in found}) == 1
    assert sorted(multivalue.references) == sorted(value for _, value in found)
    assert multivalue.answer_prefix.endswith("mentioned in the provided text are")

    multiquery = generators.niah(TASKS["niah_multiquery"].args, 800, _rng(), 42, sources.load_haystack())
    values = dict(NUMBER_NEEDLE.findall(multiquery.question))
    keys = re.search(r"What are all the special magic numbers for (.+) mentioned", multiquery.question).group(1)
    asked = re.fullmatch(r"(.+), (.+), (.+), and (.+)", keys).groups()
    assert multiquery.references == tuple(values[key] for key in asked)


def test_vt_chain_follows_rulers_format_after_its_example():
    example = generators.example_text(generators.variable_tracking(TASKS["vt"].args, 8, _rng(1)))
    assert re.search(r"VAR ([A-Z]{3}) = 12345\n", example) and example.endswith("\n")
    draft = generators.variable_tracking(TASKS["vt"].args, 40, _rng(), example)
    first, chain = draft.references[0], draft.references
    assert len(chain) == 5 and all(re.fullmatch(r"[A-Z]{5}", name) for name in chain)
    value = re.search(rf"VAR {first} = (\d{{5}})\n", draft.question).group(1)
    positions = [draft.question.index(f"VAR {first} = {value}\n")]
    for before, after in zip(chain, chain[1:]):
        positions.append(draft.question.index(f"VAR {after} = VAR {before} \n"))  # RULER's trailing space
    assert positions == sorted(positions)
    assert draft.question.count(RULER_NOISE) == 40 + 8  # the example's noise, then the task's
    shown_example, task = draft.question.split("\n\nMemorize and track", 1)
    assert "12345" not in shown_example and re.search(r"VAR [A-Z]{3} = \d{5}\n", shown_example)
    assert task.endswith(f"Question: Find all variables that are assigned the value {value} in the text above.")
    assert draft.answer_prefix == RULER_VT_PREFIX.format(num_v=5, query=value)


@pytest.mark.parametrize("length, common, other", [(4096, 30, 3), (2048, 6, 1)])
def test_cwe_lists_ten_common_words_more_often(length, common, other):
    draft = generators.common_words_extraction(TASKS["cwe"].args, 60, _rng(), 42, length)
    (example_question, example_reply), = draft.examples
    assert example_reply.startswith(RULER_CWE_PREFIX + " 1. ")
    listing = draft.question.split("\n")[1]
    entries = re.findall(r"(\d+)\. (.+?)(?= \d+\. |$)", listing)
    assert [int(number) for number, _ in entries] == list(range(1, len(entries) + 1))
    counts = Counter(word for _, word in entries)
    assert len(counts) == 60 and set(draft.references) == {word for word, n in counts.items() if n == common}
    assert all(n == other for word, n in counts.items() if word not in draft.references)
    # the words to find do not depend on how many others the length makes room for
    assert generators.common_words_extraction(TASKS["cwe"].args, 90, _rng(), 42, length).references == draft.references


def test_fwe_counts_follow_zipf_and_the_answer_is_ranks_two_to_four():
    vocabulary = generators.coded_vocabulary(_rng(), 40, 42)
    draft = generators.frequent_words(vocabulary, 2000, 42)
    words = draft.question.split(" coded words. ", 1)[1].split("\n")[0].split(" ")
    counts = Counter(words)
    for rank, word in enumerate(vocabulary, start=1):
        assert counts.get(word, 0) == int(2000 * rank ** -2.0 / 1.6449340668482264)
    assert vocabulary[0] == "..." and draft.references == tuple(vocabulary[1:4])
    assert [word for word, _ in counts.most_common(4)] == ["...", *vocabulary[1:4]]


# --- the fit and the suite ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_suite():
    return build_suite(word_tokenizer(), RulerSettings(lengths=(1024, 4096), samples=2))


def test_every_prompt_fits_its_length_and_reads_as_built(word_suite):
    tokenizer = word_tokenizer()
    assert len(word_suite.samples) == 11 * 2 * 2
    for sample in word_suite.samples:
        ids = tokenizer(sample.input).input_ids
        assert len(ids) == sample.prompt_tokens
        assert sample.prompt_tokens + sample.budget <= sample.length, (sample.task, sample.length)
        assert sample.budget == TASKS[sample.task].budget and sample.input.endswith(sample.answer_prefix)
    # the haystack is filled, not left small: most prompts use most of their room
    for length in (1024, 4096):
        fill = [sample.prompt_tokens / (length - sample.budget) for sample in word_suite.samples if sample.length == length]
        assert sorted(fill)[len(fill) // 2] > 0.9


def test_the_search_finds_the_largest_haystack_that_fits():
    tokenizer = word_tokenizer()
    settings = RulerSettings(lengths=(2048,), samples=1)
    builder = prompts.TaskBuilder(TASKS["niah_single_1"], 2048, settings, prompts.Prompter(tokenizer, False), None)
    size = builder._search(builder.increment())

    def tokens(n):
        return builder.prompter.count(builder.draft(n, prompts.sample_rng(42, "niah_single_1", 2048, "search")))

    assert tokens(size) + 128 <= 2048 < tokens(size + 1) + 128


def test_samples_are_reproducible_by_seed_and_shared_across_tokenizers(word_suite):
    again = build_suite(word_tokenizer(), RulerSettings(lengths=(1024, 4096), samples=2))
    assert again.samples == word_suite.samples
    other_seed = build_suite(word_tokenizer(), RulerSettings(lengths=(1024,), samples=1, tasks=("niah_single_1",), seed=7))
    assert other_seed.samples[0].references != word_suite.samples[0].references
    # Another tokenizer sizes its own haystacks but hides the same needles and asks the same questions.
    coarse = word_tokenizer()
    coarse.backend_tokenizer.pre_tokenizer = __import__("tokenizers").pre_tokenizers.WhitespaceSplit()
    other = build_suite(coarse, RulerSettings(lengths=(1024,), samples=2))
    mine = {(s.task, s.length, s.index): s.references for s in word_suite.samples if s.length == 1024}
    assert {(s.task, s.length, s.index): s.references for s in other.samples} == mine
    assert any(s.haystack_size != word_suite.samples[0].haystack_size for s in other.samples if s.task == "niah_single_1")


def test_chat_template_auto_chat_and_none():
    tokenizer = word_tokenizer()
    settings = RulerSettings(lengths=(1024,), samples=1, tasks=("niah_single_1",))
    plain = build_suite(tokenizer, settings)
    assert plain.protocol["template"] == {"requested": "auto", "used": "plain"}
    with pytest.raises(PicliError, match="no chat template"):
        build_suite(tokenizer, RulerSettings(lengths=(1024,), samples=1, tasks=("niah_single_1",), chat_template="chat"))
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = build_suite(tokenizer, settings)
    assert chat.protocol["template"]["used"] == "chat" and len(chat.protocol["template"]["chat_template_sha256"]) == 64
    sample = chat.samples[0]
    assert sample.input.startswith("<user>A special magic number is hidden")
    assert sample.input.endswith("mentioned in the provided text?</user><assistant>" + sample.answer_prefix)
    assert build_suite(tokenizer, RulerSettings(lengths=(1024,), samples=1, tasks=("niah_single_1",),
                                                chat_template="none")).protocol["template"]["used"] == "plain"
    cwe = build_suite(tokenizer, RulerSettings(lengths=(1024,), samples=1, tasks=("cwe",))).samples[0]
    assert cwe.input.count("<user>") == 2 and cwe.input.count("<assistant>") == 2  # the solved example is a turn


# --- bad input: one line each, before any model work ---------------------------------------------


@pytest.mark.parametrize("settings, needle", [
    (RulerSettings(lengths=(1024,), tasks=("niah_single_9",)), "unknown RULER task 'niah_single_9'"),
    (RulerSettings(lengths=(1024,), tasks=("qa_1",)), "qa_1 needs squad data"),
    (RulerSettings(lengths=(1024,), samples=0), "--samples must be at least 1, got 0"),
    (RulerSettings(lengths=(1024,), chat_template="yes"), "--chat-template must be one of"),
    (RulerSettings(lengths=(300,), tasks=("niah_single_2",)), "--length 300 is too short for RULER's niah_single_2"),
    (RulerSettings(lengths=(60,), tasks=("fwe",)), "--length 60 is too short for RULER's fwe"),
])
def test_bad_settings_fail_in_one_line(settings, needle):
    with pytest.raises(PicliError, match=re.escape(needle)) as raised:
        build_suite(word_tokenizer(), settings)
    assert "\n" not in raised.value.message and raised.value.hint


def test_a_haystack_too_small_says_what_it_has_and_needs(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text(" ".join(["The cat sat on the mat."] * 200))  # 1,200 words
    settings = RulerSettings(lengths=(4096,), samples=1, tasks=("niah_single_2",), haystack=str(text))
    with pytest.raises(PicliError, match=r"the haystack .*short\.txt has 1400 tokens; niah_single_2 at 4096 tokens "
                                         r"needs about \d{4}"):
        build_suite(word_tokenizer(), settings)
    # RULER's way, asked for: the text repeats, and each sample says how many passes it took
    repeated = build_suite(word_tokenizer(), RulerSettings(lengths=(4096,), samples=1, tasks=("niah_single_2",),
                                                          haystack=str(text), repeat_haystack=True))
    assert repeated.samples[0].haystack_passes >= 2 and repeated.protocol["haystack"]["repeat"] is True
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Too short.")
    with pytest.raises(PicliError, match="has 3 tokens"):
        build_suite(word_tokenizer(), RulerSettings(lengths=(4096,), samples=1, tasks=("niah_single_2",),
                                                    haystack=str(tiny)))


# --- the scorer --------------------------------------------------------------------------------


def test_postprocess_strips_and_turns_control_characters_into_newlines():
    assert scoring.postprocess("  1234567\x00\x07 and\t8\x1f ") == "1234567\n\n and\n8"


@pytest.mark.parametrize("prediction, references, all_score, part_score", [
    (" 1234567.", ("1234567",), 100.0, 100.0),
    ("The numbers are 1111111 and 3333333", ("1111111", "2222222", "3333333", "4444444"), 50.0, 100.0),
    ("ABCDE, fghij", ("abcde", "FGHIJ", "KLMNO"), 200 / 3, 100.0),
    ("nothing here", ("1234567",), 0.0, 0.0),
    ("12345\x0067", ("1234567",), 0.0, 0.0),  # a control character splits the number
])
def test_string_match_on_hand_made_cases(prediction, references, all_score, part_score):
    assert scoring.sample_score("string_match_all", prediction, references) == pytest.approx(all_score)
    assert scoring.sample_score("string_match_part", prediction, references) == part_score


def test_task_score_is_rulers_mean_rounded_to_two_decimals():
    predictions = ["a b", "a", "nothing"]
    references = [("a", "b"), ("a", "b"), ("a",)]
    assert scoring.task_score("string_match_all", predictions, references) == 50.0
    assert scoring.task_score("string_match_all", ["x", "y", "a"], [("a",)] * 3) == 33.33
    assert scoring.task_score("string_match_part", predictions, references) == 66.67


def test_effective_lengths_both_rules():
    ruler, relative = effective_lengths({1024: 95.0, 2048: 90.0, 4096: 85.6, 8192: 70.0})
    assert ruler.length == 2048 and ruler.threshold == 85.6 and not ruler.longest_tested_passed  # 85.6 is not above
    assert relative.threshold == pytest.approx(80.75) and relative.length == 4096
    small = effective_lengths({1024: 40.0, 2048: 36.0, 4096: 30.0})
    assert small[0].length is None and small[1].length == 2048  # 36 >= 34, 30 < 34
    flat = effective_lengths({1024: 99.0, 4096: 98.0})
    assert flat[0].length == 4096 and flat[0].longest_tested_passed and flat[1].longest_tested_passed
    assert effective_lengths({1024: 0.0, 2048: 0.0})[1].length is None


# --- greedy decoding: the shortcut gives plain generate's predictions ---------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from picli.modeling import load_model

    return load_model(tiny_model_dir, device="cpu")


def test_shortcut_predictions_equal_plain_generate_on_every_task(tiny, word_suite, monkeypatch):
    """Batched, left-padded, rows dropped as they stop: the same tokens as generate on each prompt
    alone. A short budget keeps it fast; the stop token is one the model emits, so some rows stop."""
    prompts_by_task = {}
    for sample in word_suite.samples:
        if sample.length == 1024 and sample.index < 2:
            prompts_by_task.setdefault(sample.task, []).append(tiny.tokenizer(sample.input).input_ids)
    first = decoding.plain_generate(tiny, prompts_by_task["vt"][0], 6).tokens
    monkeypatch.setattr(tiny.model.generation_config, "eos_token_id", first[3])
    # most tasks' two prompts differ in length, so their batch is padded
    assert sum(len({len(prompt) for prompt in pair}) == 2 for pair in prompts_by_task.values()) >= 3
    stopped = 0
    for task, task_prompts in prompts_by_task.items():
        shortcut = decoding.greedy_generate(tiny, task_prompts, 6, batch_size=2)
        for prompt, generation in zip(task_prompts, shortcut):
            assert generation == decoding.plain_generate(tiny, prompt, 6), task
            stopped += generation.stopped
    assert stopped > 0


def test_end_to_end_on_a_tiny_model(tiny):
    events = []
    settings = RulerSettings(lengths=(512,), samples=2, tasks=("niah_single_1", "fwe"))
    suite = build_suite(tiny.tokenizer, settings)
    report = run_suite(tiny, suite, on_event=events.append)
    assert [(score.task, score.length, score.samples) for score in report.scores] == [("niah_single_1", 512, 2),
                                                                                      ("fwe", 512, 2)]
    assert report.window == 512 and report.averages[0].length == 512 and not report.averages[0].beyond_window
    assert [length.rule for length in report.effective] == ["ruler", "relative"]
    for result, sample in zip(report.samples, suite.samples):
        assert result.input == sample.input and result.references == sample.references
        assert result.score == scoring.sample_score(TASKS[result.task].metric, result.prediction, result.references)
        if sample.index == 0:  # what plain transformers makes of the recorded input, with the task's budget
            plain = decoding.plain_generate(tiny, tiny.tokenizer(sample.input).input_ids, sample.budget)
            assert result.prediction == tiny.tokenizer.decode(plain.tokens, skip_special_tokens=True)
            assert result.generated_tokens == len(plain.tokens)
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["samples"]) == 4 and data["protocol"]["source"] == "NVIDIA/RULER@c3f5e3b"
    assert "samples" not in report.to_dict(samples=False)
    assert events[-1] == {"kind": "progress", "task": "RULER fwe 512", "done": 2, "total": 2, "unit": "samples"}


def test_scores_and_effective_lengths_of_a_model_that_answers(tiny, monkeypatch):
    """A stand-in decoder whose text is the references (at 2048 only the first two): what the
    report aggregates, from each sample's score up to the effective lengths."""
    import dataclasses

    suite = build_suite(tiny.tokenizer, RulerSettings(lengths=(1024, 2048), samples=2, tasks=("niah_multivalue", "vt")))
    texts = [" ".join(s.references if s.length == 1024 else s.references[:2]) for s in suite.samples]
    by_prompt = {tuple(tiny.tokenizer(sample.input).input_ids): index for index, sample in enumerate(suite.samples)}

    class Answering:
        def __call__(self, *args, **kwargs):
            return tiny.tokenizer(*args, **kwargs)

        def decode(self, tokens, skip_special_tokens=True):
            return f"\x00 {texts[tokens[0]]}.\n"  # post-processing strips and keeps the words

    def answering(loaded, prompts_, budget, batch_size=1, on_done=None):
        return [decoding.Generation([by_prompt[tuple(prompt)]], True) for prompt in prompts_]

    monkeypatch.setattr("picli.ruler.run.greedy_generate", answering)
    report = run_suite(dataclasses.replace(tiny, tokenizer=Answering()), suite)
    assert report.table() == {"niah_multivalue": {1024: 100.0, 2048: 50.0}, "vt": {1024: 100.0, 2048: 40.0}}
    assert [(average.length, average.average, average.beyond_window) for average in report.averages] == \
        [(1024, 100.0, True), (2048, 45.0, True)]
    ruler, relative = report.effective
    assert (ruler.length, relative.length, ruler.longest_tested_passed) == (1024, 1024, False)
    assert all(result.stopped and result.generated_tokens == 1 for result in report.samples)


# --- the real model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    from picli.modeling import load_tokenizer

    return load_tokenizer(smollm2)


@pytest.mark.slow
@pytest.mark.parametrize("template", ["auto", "none"])
def test_smollm2_prompts_fit_every_length(smollm2_tokenizer, template):
    suite = build_suite(smollm2_tokenizer, RulerSettings(lengths=(1024, 4096, 8192), samples=2, chat_template=template))
    assert suite.protocol["template"]["used"] == ("chat" if template == "auto" else "plain")
    for sample in suite.samples:
        ids = smollm2_tokenizer(sample.input, add_special_tokens=template == "none").input_ids
        assert len(ids) == sample.prompt_tokens and sample.prompt_tokens + sample.budget <= sample.length
    assert suite.samples[0].input.startswith("<|im_start|>system\n") == (template == "auto")


@pytest.mark.slow
def test_smollm2_shortcut_equals_plain_generate_with_the_full_budget(smollm2):
    from picli.modeling import load_model

    loaded = load_model(smollm2, device="cpu")
    # With its chat template the model ends its answer itself; with the plain one it runs on to the budget.
    for template, task in (("auto", "niah_single_1"), ("none", "vt")):
        sample = build_suite(loaded.tokenizer, RulerSettings(lengths=(1024,), samples=1, tasks=(task,),
                                                             chat_template=template)).samples[0]
        prompt = loaded.tokenizer(sample.input, add_special_tokens=template == "none").input_ids
        assert decoding.greedy_generate(loaded, [prompt], sample.budget)[0] == \
            decoding.plain_generate(loaded, prompt, sample.budget)
