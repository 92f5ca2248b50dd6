"""Passkey: prompt construction, the k grid, the k_max rule, scoring with stub models, the
shared-prefix cache against a naive computation, and the real SmolLM2 (`picli verify` through the
CLI: test_verify_cli.py)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from picli import passkey
from picli.passkey import FILLER, KEY_LINE, TASK, PromptBuilder, Protocol, k_max, prompt_text


def test_prompt_text_is_the_generators():
    """epfml/landmark-attention llama/run_test.py generate_prompt: "\n".join of task line,
    garbage_inf[:n_prefix], the key line, garbage_inf[:n_suffix], the question, where
    garbage_inf = " ".join([garbage] * 2000): the filler is cut by characters, mid-word too."""
    assert prompt_text(12345, 24, 9) == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.\n"
        "The grass is green. The \n"
        "The pass key is 12345. Remember it. 12345 is the pass key.\n"
        "The grass\n"
        "What is the pass key? The pass key is")
    # Both fillers start from the filler's beginning; repeats join with one space; empty is allowed.
    assert prompt_text(7, len(FILLER) + 2, 0).split("\n")[1:4] == [FILLER + " T", KEY_LINE.format(key=7), ""]


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A GPT-2 style byte-level BPE (SmolLM2's kind), trained here on passkey prompts: it keeps
    newlines and spaces, so its decoded prompts can be compared with the generator's bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>"], show_progress=False)
    model.train_from_iterator([prompt_text(10000 + 7 * index, 13 * index % 300, 29 * index % 300)
                               for index in range(60)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>")


def assert_generator_prompts(tokenizer, prompts, builder):
    """Every prompt decodes to generate_prompt's text (the filler cut at a token boundary) and
    is that text's own tokenization; the key line starts k tokens before the end."""
    for k, group in zip(prompts.ks, prompts.groups):
        for trial in group:
            ids = prompts.full_prompt(trial)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            parts = text.split("\n")
            assert len(parts) == 5, text
            assert text == prompt_text(trial.key, len(parts[1]), len(parts[3]))
            assert tokenizer(text, add_special_tokens=True).input_ids == ids
            assert tokenizer.decode(ids[len(ids) - k:]).startswith("\n" + KEY_LINE.format(key=trial.key) + "\n")


def test_prompts_are_the_generators_text(byte_level_tokenizer):
    builder = PromptBuilder(byte_level_tokenizer)
    prompts = builder.prompts(400, Protocol(positions=8, trials=3, seed=2), random.Random(2))
    assert_generator_prompts(byte_level_tokenizer, prompts, builder)
    # The deepest k: the key line right after the task line, with an empty filler before it
    # ("\n\n" stays two tokens in this tokenizer), as the generator allows.
    deepest = prompts.full_prompt(prompts.groups[-1][0])
    assert byte_level_tokenizer.decode(deepest).startswith(TASK + "\n\nThe pass key is")
    assert prompts.ks[-1] == len(deepest) - len(builder.task) - 1


def test_prompt_shape_and_key_distance(tokenizer):
    builder = PromptBuilder(tokenizer)
    prompts = builder.prompts(600, Protocol(positions=8, trials=3, seed=1), random.Random(1))
    lengths = set()
    for k, group in zip(prompts.ks, prompts.groups):
        for trial in group:
            prompt = prompts.full_prompt(trial)
            lengths.add(len(prompt))
            line = builder.key_line(trial.key)
            assert prompt[len(prompt) - k: len(prompt) - k + len(line)] == line  # key line starts k from the end
            assert len(prompt) + len(trial.answer) - 1 <= 600  # prompt and answer fit in the length
            assert tokenizer.decode(prompt[-len(builder.question):]) == tokenizer.decode(builder.question)
            assert trial.answer == [2 + int(digit) for digit in str(trial.key)]
    assert len(lengths) == 1  # every prompt of a length has the same number of tokens
    assert tokenizer.decode(prompts.prefix_stream[:len(builder.task)]) == tokenizer.decode(builder.task)


def test_k_grid_is_uniform_over_the_prompt(tokenizer):
    builder = PromptBuilder(tokenizer)
    prompts = builder.prompts(2000, Protocol(positions=32, trials=1), random.Random(0))
    ks = prompts.ks
    assert len(ks) == 32 and ks == sorted(ks)
    gaps = {b - a for a, b in zip(ks, ks[1:])}
    assert max(gaps) - min(gaps) <= 1
    prompt_length = len(prompts.full_prompt(prompts.groups[0][0]))
    largest = prompt_length - len(builder.task) - builder.filler_floor
    assert builder.filler_floor == 0  # the word tokenizer drops line breaks: no filler token is needed
    assert ks[-1] == largest and ks[0] == round(largest / 32)  # k_i = i/32 of the prompt
    assert ks[0] > len(builder.key_line(12345)) + len(builder.question)  # filler after the key


def test_keys_are_seeded_five_digit_numbers(tokenizer):
    builder = PromptBuilder(tokenizer)
    first = builder.prompts(500, Protocol(positions=4, trials=10, seed=7), random.Random(7))
    again = builder.prompts(500, Protocol(positions=4, trials=10, seed=7), random.Random(7))
    keys = [trial.key for group in first.groups for trial in group]
    assert keys == [trial.key for group in again.groups for trial in group]
    assert all(10000 <= key <= 99999 for key in keys) and len(set(keys)) > 30


def test_length_too_short(tokenizer):
    with pytest.raises(passkey.PicliError, match="too short"):
        PromptBuilder(tokenizer).prompts(40, Protocol(positions=2, trials=1), random.Random(0))


@pytest.mark.parametrize("rates, expected", [
    ([1.0, 1.0, 1.0], 300),
    ([0.0, 1.0, 1.0], 0),  # the nearest key already fails
    ([1.0, 0.1, 1.0], 100),  # a later success does not count past a failure
    ([0.2, 0.2, 0.19], 200),  # 20% is a pass
])
def test_k_max_rule(rates, expected):
    assert k_max([100, 200, 300], rates) == expected


def test_k_max_sorts_by_k():
    assert k_max([300, 100, 200], [0.0, 1.0, 1.0]) == 200


class Oracle(torch.nn.Module):
    """Reads the key from the key line in its input and predicts it (or never does)."""

    def __init__(self, tokenizer, knows: bool):
        super().__init__()
        from transformers import LlamaConfig

        self.config = LlamaConfig(hidden_size=8, num_attention_heads=1, num_hidden_layers=1, vocab_size=len(tokenizer),
                                  max_position_embeddings=4096)
        self.anchor = tokenizer.convert_tokens_to_ids("is")
        self.knows = knows
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        batch, length = input_ids.shape
        vocab = self.config.vocab_size
        logits = torch.zeros(batch, max(logits_to_keep, 1), vocab)
        if self.knows and logits_to_keep > 1:  # a trial's suffix: it starts with the key line
            for row in range(batch):
                start = (input_ids[row] == self.anchor).nonzero()[0].item() + 1
                key = input_ids[row, start:start + logits_to_keep]
                logits[row, torch.arange(logits_to_keep), key] = 1.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("knows, expected", [(True, 1.0), (False, 0.0)])
def test_stub_models_score_one_and_zero(tokenizer, knows, expected):
    from picli.modeling import LoadedModel

    loaded = LoadedModel(Oracle(tokenizer, knows), tokenizer, torch.device("cpu"), torch.float32, "eager", None)
    report = passkey.evaluate_passkey(loaded, [300, 600], Protocol(positions=5, trials=3))
    for result in report.results:
        assert result.success == [expected] * 5
        assert result.k_max == (result.ks[-1] if knows else 0)
    assert report.protocol["name"] == "custom" and report.protocol["trials"] == 3


def test_shared_prefix_cache_equals_full_prompts(tiny_model_dir, monkeypatch):
    """Cache reuse and batching change nothing: the same argmax as each full prompt alone."""
    from picli.modeling import load_model

    loaded = load_model(tiny_model_dir, device="cpu")
    prompts = PromptBuilder(loaded.tokenizer).prompts(400, Protocol(positions=5, trials=3), random.Random(3))
    copies = []
    real_deepcopy = passkey.copy.deepcopy

    def counting_deepcopy(value, memo=None):
        if memo is None:  # a top-level call, not deepcopy's own recursion
            copies.append(type(value).__name__)
        return real_deepcopy(value, memo)

    monkeypatch.setattr(passkey.copy, "deepcopy", counting_deepcopy)
    for batch_size in (1, 3):
        copies.clear()
        cached = passkey.predict_answers(loaded, prompts, batch_size=batch_size)
        # One trial at a time runs on the shared cache itself and restores the prefix; batches copy it.
        assert copies.count("DynamicCache") == (0 if batch_size == 1 else 5)
        for row, group in zip(cached, prompts.groups):
            for predicted, trial in zip(row, group):
                sequence = prompts.full_prompt(trial) + trial.answer[:-1]
                with torch.no_grad():
                    logits = loaded.model(torch.tensor([sequence])).logits[0, -len(trial.answer):]
                assert predicted.tokens == logits.argmax(-1).tolist()


def test_sliding_window_family_without_sdpa(tokenizer, tmp_path):
    """gemma2: transformers refuses SDPA for it (picli falls back to eager), and its sliding-window
    cache layers may drop past states, so each trial gets a copy of the prefix cache instead of
    the restore; the answers still equal each full prompt's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from picli.modeling import load_model

    torch.manual_seed(0)
    config = AutoConfig.for_model("gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer),
                                  max_position_embeddings=512, sliding_window=64, query_pre_attn_scalar=8)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma2")
    tokenizer.save_pretrained(tmp_path / "gemma2")
    loaded = load_model(tmp_path / "gemma2", device="cpu")
    assert loaded.attention == "eager"
    prompts = PromptBuilder(loaded.tokenizer).prompts(300, Protocol(positions=4, trials=2), random.Random(3))
    for row, group in zip(passkey.predict_answers(loaded, prompts, batch_size=1), prompts.groups):
        for predicted, trial in zip(row, group):
            with torch.no_grad():
                logits = loaded.model(torch.tensor([prompts.full_prompt(trial) + trial.answer[:-1]])).logits
            assert predicted.tokens == logits[0, -len(trial.answer):].argmax(-1).tolist()


def test_partial_credit_equals_a_plain_full_forward(tiny_model_dir):
    """Each trial's predicted tokens, digits right and key log-probability, from the cached and
    batched pass, against a plain reference: the whole prompt + key through the model once,
    log_softmax, the key tokens' log-probabilities summed."""
    from picli.modeling import load_model

    loaded = load_model(tiny_model_dir, device="cpu")
    protocol = Protocol(positions=4, trials=3, seed=5)
    result = passkey.evaluate_passkey(loaded, [300], protocol).results[0]
    prompts = PromptBuilder(loaded.tokenizer).prompts(300, protocol, random.Random(5))
    reference_logprobs, reference_right = [], []
    for k_index, group in enumerate(prompts.groups):
        for trial_index, trial in enumerate(group):
            sequence = prompts.full_prompt(trial) + trial.answer[:-1]
            with torch.no_grad():
                logits = loaded.model(torch.tensor([sequence])).logits[0, -len(trial.answer):].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            expected = sum(log_probs[position, token].item() for position, token in enumerate(trial.answer))
            argmax = logits.argmax(-1).tolist()
            # The word tokenizer gives one token per digit: digits right = key tokens matched in place.
            right = sum(predicted == wanted for predicted, wanted in zip(argmax, trial.answer))
            assert result.predicted[k_index][trial_index] == argmax
            assert result.predicted_text[k_index][trial_index] == loaded.tokenizer.decode(argmax)
            assert result.digits_right[k_index][trial_index] == right
            assert result.key_logprob[k_index][trial_index] == pytest.approx(expected, abs=2e-4)
            assert result.outcomes[k_index][trial_index] == (argmax == trial.answer)
            reference_logprobs.append(expected)
            reference_right.append(right)
    assert result.key_digits == 5
    assert result.mean_key_logprob == pytest.approx(sum(reference_logprobs) / 12, abs=2e-4)
    assert result.mean_digits_right == pytest.approx(sum(reference_right) / 12, abs=1e-4)
    # A random model is far from certain of any key: the log-probability is a real sum, not 0.
    assert max(reference_logprobs) < -1.0


@pytest.mark.parametrize("predicted, answer, right", [
    # SmolLM2's key tokens (a space, then one token per digit): the space is no digit.
    ([" ", "6", "8", "4", "2", "1"], [" ", "6", "8", "4", "2", "1"], 5),
    ([" ", "6", "4", "4", "1", "."], [" ", "6", "8", "4", "2", "1"], 2),  # 6 and the 4 in third place
    (["\n", "6", "8", "4", "2", "1"], [" ", "6", "8", "4", "2", "1"], 5),  # a wrong space costs no digit
    ([" 6", "8", "4", "2", "1"], [" 6", "8", "4", "2", "1"], 5),  # space and digit in one token
    (["6", "8", "4", "2", "1"], [" 6", "8", "4", "2", "1"], 4),  # "6" sits where the space goes: misses
    (["684", "22"], ["684", "21"], 4),  # multi-digit tokens: compared character by character
    (["68", "421"], ["684", "21"], 2),  # a split that differs costs only its own token's digits
    (["", "", ""], [" 1", "2", "3"], 0),
])
def test_digits_right_counts_key_digits_matched_in_place(predicted, answer, right):
    assert passkey.digits_right(predicted, answer) == right


def test_auto_batch_counts_the_attention_mask(monkeypatch):
    import picli.modeling
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, vocab_size=49152)
    loaded = SimpleNamespace(device=torch.device("cuda"), config=config, dtype=torch.bfloat16)
    monkeypatch.setattr(picli.modeling, "available_memory", lambda device: 80 * 2 ** 30)
    # At 32k a SmolLM2-sized trial needs ~2 GiB of cache and activations and 2 GiB of
    # [32k x 32k] mask: 10 fit in half of 80 GiB; the old cache-only estimate said 18.
    kv = 30 * 2 * 3 * 64 * 2
    per_trial = kv * 32768 * 2 + 32768 * (576 * 8 + 1536 * 3) * 2 + 32768 * 32768 * 2
    assert passkey._auto_batch(loaded, 32768, trials=40) == int(40 * 2 ** 30 // per_trial) == 10
    assert passkey._auto_batch(loaded, 4096, trials=10) == 10  # short prompts: every trial at once
    loaded.device = torch.device("cpu")
    assert passkey._auto_batch(loaded, 4096, trials=10) == 1


# --- the real model -------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_teacher_forced_equals_generate(smollm2):
    from picli.modeling import load_model

    loaded = load_model(smollm2, device="cpu")
    protocol = Protocol(positions=4, trials=2, seed=0)
    report = passkey.evaluate_passkey(loaded, [1024], protocol)
    prompts = PromptBuilder(loaded.tokenizer).prompts(1024, protocol, random.Random(0))
    generated = [[passkey.generate_success(loaded, prompts, trial) for trial in group] for group in prompts.groups]
    assert generated == report.results[0].outcomes
    # The real tokenizer: every prompt is generate_prompt's text, tokenized as that text.
    assert_generator_prompts(loaded.tokenizer, prompts, PromptBuilder(loaded.tokenizer))
    assert report.results[0].k_largest == prompts.ks[-1] < 1024
    # The unmodified model within its window: retrieved at every distance.
    assert report.results[0].k_max == report.results[0].ks[-1]
    assert sum(report.results[0].success) / 4 >= 0.75


def test_eager_attention_counts_its_score_matrix(monkeypatch):
    import picli.modeling
    from transformers import AutoConfig

    from picli.modeling import LoadedModel, OutOfMemory, check_fits

    config = AutoConfig.for_model("gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                  num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000)
    monkeypatch.setattr(picli.modeling, "available_memory", lambda device: 30 * 2 ** 30)
    loaded = LoadedModel(SimpleNamespace(config=config), None, torch.device("cuda"), torch.bfloat16, "sdpa", None)
    check_fits(loaded, 32768)  # SDPA: ~6 GiB of cache and activations fit in 30 GiB
    loaded.attention = "eager"  # + 2 x 8 heads x 32k x 32k x 2 bytes = 32 GiB of scores
    with pytest.raises(OutOfMemory, match="needs about"):
        check_fits(loaded, 32768)


def test_every_position_keeps_its_trials_at_tiny_lengths(tokenizer):
    prompts = PromptBuilder(tokenizer).prompts(128, Protocol(positions=8, trials=5), random.Random(0))
    assert len(prompts.ks) == 8 and len(prompts.groups) == 8 and prompts.ks == sorted(prompts.ks)
