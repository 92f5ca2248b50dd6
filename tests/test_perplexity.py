"""Sliding-window perplexity against plain references (the text loaders: test_textdata.py).

The references here use the model's own forward pass and its own loss (full logits for every
window), so they check picli's body-then-head shortcut, its window bookkeeping and its
family-specific logit transforms all at once.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picli.errors import PicliError
from picli.modeling import LoadedModel
from picli.perplexity import evaluate_perplexity, evaluate_token_ids
from picli.textdata import Document, load_texts
from tests.helpers import FAMILY_CONFIGS

DATA = Path(__file__).parent / "data"
# initializer_range 0.2 (not 0.02) makes the random model's predictions depend strongly on context,
# so a window that sees the wrong tokens gives a visibly different perplexity.
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512,
              "initializer_range": 0.2}


class ByteTokenizer:
    """Token ids are the UTF-8 bytes, after a BOS of 1: enough tokenizer for a 256-token vocabulary."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + list(text.encode("utf-8"))}


def wrap(model) -> LoadedModel:
    return LoadedModel(model.eval(), ByteTokenizer(), torch.device("cpu"), torch.float32, "sdpa", Path("."))


def tiny_model(config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**copy.deepcopy(config)), dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return wrap(tiny_model({"model_type": "llama", **TINY_LLAMA}))


def random_ids(count: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference(model, ids: list[int], length: int, stride: int) -> tuple[float, int, int]:
    """(perplexity, tokens scored, windows) by the Hugging Face guide's loop: full logits, labels -100."""
    nll, scored, windows, previous_end = 0.0, 0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + length, len(ids))
        window = torch.tensor([ids[begin:end]])
        labels = window.clone()
        labels[:, :-(end - previous_end)] = -100
        count = int((labels[:, 1:] != -100).sum())  # the loss shifts labels left by one
        with torch.no_grad():
            nll += model(window, labels=labels).loss.item() * count
        scored, windows, previous_end = scored + count, windows + 1, end
        if end == len(ids):
            break
    return math.exp(nll / scored), scored, windows


# --- against the model's own full-sequence loss -------------------------------------------------------


def test_window_covering_the_document_equals_the_plain_loss(tiny):
    ids = random_ids(300, seed=1)
    with torch.no_grad():
        plain = math.exp(tiny.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())
    report = evaluate_token_ids(tiny, [ids], [512], stride=256)
    result = report.results[0]
    assert result.perplexity == pytest.approx(plain, rel=1e-5)
    assert (result.tokens_scored, result.windows, result.documents) == (299, 1, 1)
    assert result.nll == pytest.approx(math.log(plain), rel=1e-5)


# Strong random weights (as in TINY_LLAMA) give logits far from zero, where the softcap's tanh and the
# scales change every score; with the default init all three are close to no-ops.
FAMILY_CASES = {name: {**config, "initializer_range": 0.2} for name, config in {
    "llama_v5": FAMILY_CONFIGS["llama_v5"],
    "qwen3": FAMILY_CONFIGS["qwen3"],
    "gpt_neox": FAMILY_CONFIGS["gpt_neox"],
    "phi": FAMILY_CONFIGS["phi"],  # lm_head has a bias
    "gemma3_softcap": {**FAMILY_CONFIGS["gemma3_text"], "final_logit_softcapping": 2.0},
    "cohere_scale": {**FAMILY_CONFIGS["llama_v4"], "model_type": "cohere", "logit_scale": 0.25,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    "granite_scaling": {**FAMILY_CONFIGS["llama_v4"], "model_type": "granite", "logits_scaling": 4.0},
}.items()}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_each_family_head_path_equals_the_models_own_loss(family):
    model = tiny_model(FAMILY_CASES[family])
    ids = random_ids(200, seed=2)
    with torch.no_grad():
        plain = math.exp(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())
    result = evaluate_token_ids(wrap(model), [ids], [256], stride=64).results[0]
    assert result.perplexity == pytest.approx(plain, rel=1e-5)


# --- against the naive sliding-window loop ------------------------------------------------------------


@pytest.mark.parametrize("length, stride", [(64, 16), (100, 37), (128, 128), (299, 256)])
def test_sliding_windows_equal_the_naive_loop(tiny, length, stride):
    ids = random_ids(300, seed=3)  # 37 does not divide 300; 299 leaves a one-token last window
    expected, expected_scored, expected_windows = reference(tiny.model, ids, length, stride)
    result = evaluate_token_ids(tiny, [ids], [length], stride=stride).results[0]
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert (result.tokens_scored, result.windows) == (expected_scored, expected_windows)
    if stride < length:
        assert result.tokens_scored == 299  # every token but the first, exactly once
    else:
        # Non-overlapping windows: each window's first token has no predecessor inside it.
        assert result.tokens_scored == 300 - result.windows


def test_context_length_changes_the_answer(tiny):
    ids = random_ids(300, seed=3)
    short, long = evaluate_token_ids(tiny, [ids], [32, 300], stride=16).results
    # The random model depends on its context, so the windowing is visible in the result.
    assert abs(short.perplexity - long.perplexity) / long.perplexity > 0.01
    assert long.windows == 1 and short.windows == math.ceil((300 - 32) / 16) + 1


def test_documents_are_pooled_by_token(tiny):
    first, second = random_ids(150, seed=4), random_ids(90, seed=5)
    result = evaluate_token_ids(tiny, [first, second, [7]], [64], stride=32).results[0]
    ppl_first, scored_first, windows_first = reference(tiny.model, first, 64, 32)
    ppl_second, scored_second, windows_second = reference(tiny.model, second, 64, 32)
    pooled = math.exp((math.log(ppl_first) * scored_first + math.log(ppl_second) * scored_second)
                      / (scored_first + scored_second))
    assert result.perplexity == pytest.approx(pooled, rel=1e-5)  # a token-weighted mean, not a mean of ppls
    assert (result.tokens_scored, result.documents, result.windows) == (149 + 89, 2, windows_first + windows_second)


def test_public_function_tokenizes_and_spends_max_tokens_in_order(tiny):
    documents = [Document("a", "The grass is green. " * 10), Document("b", "The sky is blue. " * 10),
                 Document("c", "never read")]
    events = []
    report = evaluate_perplexity(tiny, documents, [64, 128], stride=32, max_tokens=250, on_event=events.append)
    first = ByteTokenizer()(documents[0].text)["input_ids"]  # 201 tokens
    second = ByteTokenizer()(documents[1].text)["input_ids"][:250 - len(first)]
    expected = evaluate_token_ids(tiny, [first, second], [64, 128], stride=32)
    assert [r.perplexity for r in report.results] == [r.perplexity for r in expected.results]
    assert [r.tokens_scored for r in report.results] == [len(first) - 1 + len(second) - 1] * 2
    assert report.results[0].documents == 2 and report.stride == 32
    for result in report.results:
        progress = [e for e in events if e.get("kind") == "progress" and e["task"] == f"perplexity {result.length}"]
        done = [e["done"] for e in progress]
        assert done == sorted(done) and done[0] == 0 and done[-1] == result.tokens_scored
        assert len(progress) == result.windows + 1 and {e["total"] for e in progress} == {result.tokens_scored}
    assert json.loads(json.dumps(report.to_dict()))["results"][1]["length"] == 128


# --- the paper's document choices (section 3.2) and shortened windows ------------------------------


def byte_ids(text: str) -> list[int]:
    return ByteTokenizer()(text)["input_ids"]


def lengths_documents() -> list[Document]:
    """Documents of 11, 41, 101, 201, 301 and 401 byte tokens (BOS included), named by their length."""
    return [Document(str(count + 1), "x" * count) for count in (10, 40, 100, 200, 300, 400)]


def test_min_doc_tokens_skips_and_counts_and_doc_tokens_cuts():
    from picli.perplexity import DocumentSelection, select_documents

    chosen, record = select_documents(byte_ids, lengths_documents(),
                                      DocumentSelection(min_doc_tokens=101, doc_tokens=150))
    assert [len(ids) for ids in chosen] == [101, 150, 150, 150]  # 11 and 41 skipped; 201, 301, 401 cut to 150
    assert chosen[1] == byte_ids("x" * 200)[:150]  # the FIRST 150 tokens
    assert (record["examined"], record["skipped_short"], record["truncated"], record["used"]) == (6, 2, 3, 4)
    assert record["tokens"] == 101 + 3 * 150 and record["seed"] is None


def test_sample_docs_is_a_seeded_random_subset_of_the_long_enough():
    from picli.perplexity import DocumentSelection, select_documents

    sizes = [index * 7 % 50 for index in range(40)]  # text bytes after the 2-digit name
    documents = [Document(str(index), f"{index:02d}" + "y" * size) for index, size in enumerate(sizes)]
    long_enough = {index for index, size in enumerate(sizes) if 1 + 2 + size >= 30}

    def picked(seed: int) -> list[int]:
        chosen, record = select_documents(byte_ids, documents, DocumentSelection(
            min_doc_tokens=30, doc_tokens=30, sample_docs=5, seed=seed))
        assert record["used"] == 5 and record["seed"] == seed and all(len(ids) == 30 for ids in chosen)
        assert record["skipped_short"] == record["examined"] - 5
        return [int(bytes(ids[1:3]).decode()) for ids in chosen]  # which documents, by name

    first = picked(0)
    assert picked(0) == first  # reproducible
    assert set(first) <= long_enough
    assert any(picked(seed) != first for seed in (1, 2, 3))  # a different seed draws differently


def test_too_few_long_documents_is_an_error_not_a_smaller_sample():
    from picli.perplexity import DocumentSelection, select_documents

    with pytest.raises(PicliError, match=r"--sample-docs 5 asks for more documents .* at least 200 tokens: 3 of 6"):
        select_documents(byte_ids, lengths_documents(), DocumentSelection(min_doc_tokens=200, sample_docs=5))
    with pytest.raises(PicliError, match="no document has at least 1000 tokens"):
        select_documents(byte_ids, lengths_documents(), DocumentSelection(min_doc_tokens=1000))
    with pytest.raises(PicliError, match="--doc-tokens must be at least 2"):
        select_documents(byte_ids, lengths_documents(), DocumentSelection(doc_tokens=1))


def test_proof_pile_recipe_scores_exactly_the_chosen_prefixes(tiny):
    from picli.perplexity import DocumentSelection

    documents = [Document(str(index), bytes(random_ids(90 + 40 * index, seed=index)).decode("latin-1"))
                 for index in range(6)]
    selection = DocumentSelection(min_doc_tokens=150, doc_tokens=150, sample_docs=3, seed=7)
    report = evaluate_perplexity(tiny, documents, [64], stride=32, selection=selection)
    from picli.perplexity import select_documents

    chosen, record = select_documents(byte_ids, documents, selection)
    expected = evaluate_token_ids(tiny, chosen, [64], stride=32).results[0]
    assert report.results[0].perplexity == expected.perplexity
    assert report.results[0].tokens_scored == 3 * 149 and report.selection == record
    assert report.to_dict()["selection"]["skipped_short"] == record["skipped_short"]
    assert record["used"] == 3 and {len(ids) for ids in chosen} == {150}


def test_documents_shorter_than_the_length_are_counted(tiny):
    long, short = random_ids(300, seed=8), random_ids(80, seed=9)
    at_128, at_512 = evaluate_token_ids(tiny, [long, short], [128, 512], stride=32).results
    assert (at_128.short_documents, at_128.tokens_scored_short, at_128.tokens_scored_full) == (1, 79, 299)
    assert (at_512.short_documents, at_512.tokens_scored_short, at_512.tokens_scored_full) == (2, 299 + 79, 0)
    assert at_128.tokens_scored == at_128.tokens_scored_short + at_128.tokens_scored_full
    # What "shortened" means: the short document's tokens were scored exactly as at its own length.
    alone_80 = evaluate_token_ids(tiny, [short], [80], stride=32).results[0]
    alone_512 = evaluate_token_ids(tiny, [short], [512], stride=32).results[0]
    assert alone_512.perplexity == pytest.approx(alone_80.perplexity, rel=1e-6)


def test_shortened_windows_reach_the_notes_the_table_prints():
    from picli.perplexity import PerplexityReport, PerplexityResult
    from picli.verify import ModelRun, _notes

    def result(length, short, scored_short, scored):
        return PerplexityResult(length=length, perplexity=5.0, nll=1.6, tokens_scored=scored, documents=3, windows=9,
                                seconds=1.0, tokens_per_second=1.0, short_documents=short,
                                tokens_scored_short=scored_short, tokens_scored_full=scored - scored_short)

    selection = {"documents": 40, "examined": 12, "used": 3, "skipped_short": 9, "truncated": 3, "tokens": 300,
                 "max_tokens": None, "doc_tokens": 100, "min_doc_tokens": 100, "sample_docs": 3, "seed": 4}
    perplexity = PerplexityReport(256, [result(64, 0, 0, 297), result(4096, 3, 297, 297)], selection).to_dict()
    runs = [ModelRun("model", "m", 4096, None, perplexity), ModelRun("baseline", "b", 2048, None, perplexity)]
    notes = _notes(runs, [64, 4096])
    assert ("perplexity text: 3 of 40 documents; drawn at random (seed 4); 9 of 12 examined skipped as shorter than "
            "100 tokens; 3 cut to their first 100 tokens") in notes
    assert ("perplexity at 4096: 3 of 3 documents are shorter than 4096 tokens, so 297 of 297 scored tokens had "
            "windows only as long as their document; 0 were scored at the full length") in notes
    assert not any("perplexity at 64" in note for note in notes)
    assert sum("perplexity at 4096" in note for note in notes) == 1  # the baseline scored the same text: once


# --- memory: logits only where scored ----------------------------------------------------------------


def head_rows(loaded, ids, lengths, stride, **kwargs) -> list[int]:
    rows: list[int] = []
    handle = loaded.model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: rows.append(output.reshape(-1, output.shape[-1]).shape[0]))
    try:
        evaluate_token_ids(loaded, [ids], lengths, stride=stride, **kwargs)
    finally:
        handle.remove()
    return rows


def test_lm_head_sees_only_scored_positions_in_chunks(tiny):
    ids = random_ids(300, seed=6)
    rows = head_rows(tiny, ids, [128], stride=32, chunk_size=16)
    assert max(rows) <= 16  # never a full window of logits
    assert sum(rows) == 299  # each scored position once, overlapping context never reaches the head


def test_default_chunk_bounds_a_long_window(tiny, monkeypatch):
    import picli.modeling

    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    # A budget of 600 rows of logits at this vocabulary: one 1500-token window takes three calls.
    monkeypatch.setattr(picli.modeling, "HEAD_ELEMENTS", 600 * vocab)
    rows = head_rows(tiny, random_ids(1500, seed=7), [1500], stride=256)
    assert rows == [600, 600, 299]


# --- checks and errors -------------------------------------------------------------------------------


def test_fit_is_checked_per_length_for_the_longest_real_window(tiny, monkeypatch):
    import picli.perplexity

    calls, events = [], []
    monkeypatch.setattr(picli.perplexity, "check_fits", lambda loaded, tokens, **kw: calls.append(tokens))
    evaluate_token_ids(tiny, [random_ids(100, seed=8)], [64, 4096], stride=32, on_event=events.append)
    assert calls == [64, 100]  # documents shorter than L only ever fill windows of their own length
    assert any(e["kind"] == "message" and "shorter than 4096" in e["text"] for e in events)


def test_out_of_memory_stops_before_any_window(tiny, monkeypatch):
    import picli.perplexity
    from picli.modeling import OutOfMemory

    def refuse(loaded, tokens, **kwargs):
        raise OutOfMemory("too long", hint="shorter")

    monkeypatch.setattr(picli.perplexity, "check_fits", refuse)
    events = []
    with pytest.raises(OutOfMemory):
        evaluate_token_ids(tiny, [random_ids(100, seed=8)], [64], stride=32, on_event=events.append)
    assert [e for e in events if e["kind"] == "progress"] == []


@pytest.mark.parametrize("lengths, stride, words", [([64], 128, "larger than --length 64"), ([64], 0, "at least 1"),
                                                    ([1], 1, "at least 2")])
def test_bad_windows_are_refused(tiny, lengths, stride, words):
    with pytest.raises(PicliError, match=words) as error:
        evaluate_token_ids(tiny, [random_ids(100, seed=9)], lengths, stride=stride)
    assert error.value.hint


def test_text_too_short_to_score(tiny):
    with pytest.raises(PicliError, match="too short"):
        evaluate_perplexity(tiny, [Document("a", "x" * 50)], [64], stride=32, max_tokens=1)


def test_importing_does_not_import_torch():
    code = "import sys, picli.perplexity, picli.textdata; print('torch' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


# --- the real model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2):
    from picli.modeling import load_model

    return load_model(smollm2, device="cpu", dtype="float32")


@pytest.mark.slow
def test_smollm2_perplexity_on_alice(smol):
    documents = load_texts(str(DATA / "alice.txt"))
    token_count = len(smol.tokenizer(documents[0].text)["input_ids"])
    result = evaluate_perplexity(smol, documents, [1024], stride=256).results[0]
    assert math.isfinite(result.perplexity) and 2 < result.perplexity < 100  # measured: about 20
    assert result.tokens_scored == token_count - 1 and result.windows == math.ceil((token_count - 1024) / 256) + 1


@pytest.mark.slow
def test_smollm2_matches_the_naive_loop(smol):
    documents = load_texts(str(DATA / "alice.txt"))
    ids = smol.tokenizer(documents[0].text, add_special_tokens=True)["input_ids"][:1500]
    expected, expected_scored, _ = reference(smol.model, ids, 1024, 256)
    result = evaluate_perplexity(smol, documents, [1024], stride=256, max_tokens=1500).results[0]
    assert result.perplexity == pytest.approx(expected, rel=1e-4)
    assert result.tokens_scored == expected_scored == 1499
