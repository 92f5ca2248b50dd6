"""`picli finetune` on a tiny Llama: data packing, the recipe's schedule, the loop's seams (setup,
one step), exact resume from picli's own pickle-free checkpoints and the run's own source and
data, the PI config surviving training, LoRA merge, the plan from config.json alone, 2
processes == 1 process (DDP and FSDP on CPU), interruption, and clean errors."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from picli import finetune, finetune_plan, finetune_steps, textdata, training
from picli.cli import app
from picli.passkey import FILLER, KEY_LINE, QUESTION, TASK
from tests.helpers import ROOT, assert_clean_error, load_benchmark, run, tree_hash

EXAMPLES = ROOT / "examples"
PLAN_CONFIGS = ROOT / "tests" / "data" / "plan_configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for index in range(3):
        body = " ".join([TASK, FILLER * 8, KEY_LINE.format(key=10000 + index * 7919), FILLER * 8, QUESTION] * 6)
        (folder / f"doc{index}.txt").write_text(body)
    return folder


def extend(model: Path, window: int, output: Path) -> Path:
    result = run("extend", str(model), "--to", str(window), "-o", str(output))
    assert result.exit_code == 0, result.stderr
    return output


@pytest.fixture(scope="module")
def extended(tiny_model_dir, tmp_path_factory) -> Path:
    return extend(tiny_model_dir, 1024, tmp_path_factory.mktemp("ext") / "tiny-1k")


@pytest.fixture(scope="module")
def other_model(tiny_model_dir, tmp_path_factory) -> Path:
    """Another checkpoint of the same weights with other RoPE: what must never be mistaken for `extended`."""
    return extend(tiny_model_dir, 2048, tmp_path_factory.mktemp("ext2") / "tiny-2k")


RECIPE = ["--seq-len", "128", "--batch-size", "4", "--micro-batch-size", "2", "--lr", "1e-3", "--cpu", "--json"]


def train(model: Path, output: Path, *extra: str):
    return run("finetune", str(model), "--data", str(Path(extra[0])), "-o", str(output), *RECIPE,
               *extra[1:])


def resume(output: Path, *extra: str):
    return run("finetune", "-o", str(output), "--resume", "--cpu", "--json", *extra)


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def losses(output: Path) -> list[float]:
    return [metric["loss"] for metric in metrics(output)]


def settings_for(corpus: Path, **changes) -> training.TrainSettings:
    return training.TrainSettings(**{"data": str(corpus), "seq_len": 128, "batch_size": 4, "micro_batch_size": 2,
                                     "lr": 1e-3, "cpu": True, **changes})


def stop_at(step: int, how):
    """An on_event that interrupts the run as the given step's report arrives: the seam a test
    uses where a user presses Ctrl-C (no monkeypatching of the loop)."""
    def on_event(event):
        if event.get("kind") == "step" and event["step"] == step:
            how()
    return on_event


def raise_interrupt():
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------
# Data, schedule, settings


def test_pack_sequences_joins_documents_with_eos():
    packed = textdata.pack_sequences([[1, 2, 3], [4, 5], [6, 7, 8, 9]], eos_token_id=0, seq_len=4)
    assert packed == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert textdata.pack_sequences([[1, 2]], eos_token_id=0, seq_len=4) == []


def test_batches_are_a_function_of_the_step():
    train_ids, held_out = textdata.split_and_order(100, seed=3, eval_fraction=0.05)
    assert len(held_out) == 5 and not set(train_ids) & set(held_out)
    assert textdata.split_and_order(100, seed=3, eval_fraction=0.05)[0] == train_ids
    assert textdata.split_and_order(100, seed=4, eval_fraction=0.05)[0] != train_ids
    assert textdata.batch_indices(train_ids, 2, 8) == [train_ids[(16 + i) % 95] for i in range(8)]


def test_sequences_fingerprint_changes_with_any_token():
    assert textdata.sequences_fingerprint([[1, 2], [3, 4]]) == textdata.sequences_fingerprint([[1, 2], [3, 4]])
    assert textdata.sequences_fingerprint([[1, 2], [3, 4]]) != textdata.sequences_fingerprint([[1, 2], [3, 5]])
    assert textdata.sequences_fingerprint([[1, 2], [3, 4]]) != textdata.sequences_fingerprint([[1, 2, 3, 4]])


def test_paper_warmup_schedule():
    assert training.warmup_multiplier(0, 20, 0.1) == pytest.approx(0.1)
    assert training.warmup_multiplier(10, 20, 0.1) == pytest.approx(0.55)
    assert training.warmup_multiplier(20, 20, 0.1) == 1.0 and training.warmup_multiplier(999, 20, 0.1) == 1.0
    assert training.default_lr(7_000_000_000) == 2e-5 and training.default_lr(65_000_000_000) == 1e-5
    settings = training.TrainSettings(lr=2e-5, warmup_steps=20)
    assert [training.learning_rate(settings, step) for step in (0, 10, 20, 500)] == pytest.approx(
        [2e-6, 1.1e-5, 2e-5, 2e-5])


def test_warmup_default_is_at_most_a_tenth_of_the_run():
    """The paper's 20 steps are 2% of its 1000; a short run keeps a tenth at most."""
    assert [training.default_warmup(steps) for steps in (1000, 200, 199, 50, 10, 9, 1)] == [20, 20, 19, 5, 1, 0, 0]
    resolved = training.TrainSettings(steps=50).resolve(window=1024, parameters=10 ** 6)
    assert resolved.warmup_steps == 5 and "over 5 warmup steps (10% of 50)" in training.schedule_text(resolved)
    assert training.TrainSettings(steps=50, warmup_steps=20).resolve(window=1024, parameters=1).warmup_steps == 20
    assert training.TrainSettings(steps=9).resolve(window=1024, parameters=1).warmup_steps == 0


def test_settings_resolve_once_and_the_library_default_is_the_cli_default():
    import typer

    resolved = training.TrainSettings(stop_when_verified=True).resolve(window=8192, parameters=7_000_000_000)
    assert (resolved.seq_len, resolved.batch_size, resolved.lr, resolved.warmup_steps, resolved.eval_every) == (
        8192, 64, 2e-5, 20, 50)
    assert resolved.resolve(window=8192, parameters=7_000_000_000) == resolved  # resolving twice changes nothing
    command = typer.main.get_command(app).commands["finetune"]
    cli_defaults = {param.name: param.default for param in command.params}
    assert training.TrainSettings().save_every == cli_defaults["save_every"] == 100  # a library caller gets checkpoints
    assert cli_defaults["warmup_steps"] is None and training.TrainSettings().warmup_steps is None


def test_resume_keeps_the_recorded_settings_except_steps_and_micro_batch():
    recorded = training.TrainSettings(steps=10, seq_len=128, batch_size=4, lr=1e-3, warmup_steps=1,
                                      data="/abs/data").recorded()
    asked = training.TrainSettings(steps=20, seq_len=256, lr=5.0, micro_batch_size=1)
    resumed = asked.resolve(window=1024, parameters=1, recorded=recorded, given={"steps", "micro_batch_size"})
    assert (resumed.steps, resumed.micro_batch_size) == (20, 1)
    assert (resumed.seq_len, resumed.lr, resumed.warmup_steps, resumed.data) == (128, 1e-3, 1, "/abs/data")
    assert asked.resolve(window=1024, parameters=1, recorded=recorded).steps == 10  # not given: the run's own


def test_default_global_batch_follows_the_papers_target_window():
    """PI paper section 3.1: 64 for 7B/13B/33B extended to 8192, 128 in all other cases."""
    assert training.default_batch_size(8192, 7_000_000_000) == 64
    assert training.default_batch_size(8192, 32_500_000_000) == 64  # LLaMA "33B"
    assert training.default_batch_size(8192, 65_200_000_000) == 128  # the 65B at 8192: "all other cases"
    for window in (2048, 4096, 16384, 32768):
        assert training.default_batch_size(window, 7_000_000_000) == 128


def test_data_reuse_counts_unique_tokens_and_epochs():
    assert textdata.data_reuse(10, steps=3, batch_size=4, seq_len=128) == {
        "train_sequences": 10, "unique_tokens": 10 * 128, "epochs": 1.2}
    assert textdata.data_reuse(100, steps=3, batch_size=4, seq_len=128)["unique_tokens"] == 12 * 128


def test_sharding_rules_and_accumulation_hold_before_anything_loads():
    settings = training.TrainSettings(batch_size=8, micro_batch_size=2)
    assert finetune_steps.accumulation_steps(settings, 1) == 4 and finetune_steps.accumulation_steps(settings, 2) == 2
    with pytest.raises(finetune.PicliError, match="not a multiple of --micro-batch-size x processes"):
        finetune_steps.accumulation_steps(settings, 3)
    finetune_steps.check_sharding(training.TrainSettings(lora=True, eval_every=5), sharded=False)  # DDP: fine
    with pytest.raises(finetune.PicliError, match="cannot merge the adapter under FSDP"):
        finetune_steps.check_sharding(training.TrainSettings(lora=True), sharded=True)
    finetune_steps.check_sharding(training.TrainSettings(lora=True, keep_adapter=True), sharded=True)
    with pytest.raises(finetune.PicliError, match="FSDP's sharded weights"):
        finetune_steps.check_sharding(training.TrainSettings(eval_every=1), sharded=True)


# ---------------------------------------------------------------------------------------
# The loss and the loop's seams


def test_chunked_loss_equals_transformers_loss(extended, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from picli import modeling

    model = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(modeling, "HEAD_ELEMENTS", 0)  # the 64-row floor: several chunks, one ragged
    ours = training.build_loss_module(model)(ids)
    reference = model(ids, labels=ids).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family, extra", [
    ("gemma2", {"sliding_window": 64, "query_pre_attn_scalar": 8, "final_logit_softcapping": 0.1}),  # small: it bites
    ("cohere", {"logit_scale": 0.25}),
    ("granite", {"logits_scaling": 4.0}),
    ("qwen2", {}),
])
def test_chunked_loss_applies_each_familys_logit_transform(family, extra, monkeypatch):
    """Soft-capping, logit scale and logit divisor happen after lm_head; the chunked loss must apply them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from picli import modeling

    monkeypatch.setattr(modeling, "HEAD_ELEMENTS", 0)
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=300,
                                  max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                                  **extra)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ids = torch.randint(0, 300, (2, 150), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(training.build_loss_module(model)(ids), model(ids, labels=ids).loss,
                               rtol=1e-5, atol=1e-6)


def test_head_chunk_scales_with_vocabulary():
    from picli.modeling import head_chunk

    assert head_chunk(32_000) == 1048 and head_chunk(49_152) == 682 and head_chunk(151_936) == 220
    assert head_chunk(49_152, batch=4) == 170 and head_chunk(10 ** 9) == 64


def test_setup_and_one_step_train_in_train_mode_with_checkpointing(extended, corpus):
    """from_pretrained returns eval mode, in which transformers silently skips gradient
    checkpointing: setup's module trains with it, and one step moves the weights at the step's LR."""
    import torch

    settings = finetune.resolve_settings(extended, settings_for(corpus, gradient_checkpointing="on", warmup_steps=4))
    run = finetune_steps.setup(extended, settings)
    layer = run.loss_module.language_model.model.layers[0]
    seen = []
    run.loss_module.register_forward_pre_hook(lambda module, args: seen.append(
        (module.training, layer.training, layer.gradient_checkpointing, torch.is_grad_enabled())))
    before = [parameter.detach().clone() for parameter in run.trainable]
    loss = finetune_steps.train_step(run, 2)
    assert seen == [(True, True, True, True)] * run.accumulation and loss > 0
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (0.1 + 0.9 * 2 / 4))  # step 2 of 4 warmup
    assert all(not torch.equal(old, new) for old, new in zip(before, run.trainable))
    assert finetune_steps.eval_loss(run) > 0 and seen[-1][:2] == (False, False)  # held-out loss: eval mode, no grad


def test_finetune_keeps_pi_config_and_records_training(extended, corpus, workdir):
    before = tree_hash(extended)
    output = workdir / "ft"
    result = train(extended, output, str(corpus), "--steps", "3", "--warmup-steps", "2")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps_done"] == 3 and report["interrupted"] is False and report["signal"] is None
    # The same command again: the run's output exists, and --resume is what the user most likely meant.
    again = train(extended, output, str(corpus), "--steps", "3")
    assert_clean_error(again, "already exists")
    assert "Hint: pass --resume to continue it" in again.stderr
    config = json.loads((output / "config.json").read_text())
    assert config == json.loads((extended / "config.json").read_text())  # both schemas, untouched
    steps = metrics(output)
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert [m["lr"] for m in steps] == pytest.approx([1e-4, 5.5e-4, 1e-3])  # warmup from 10%
    assert all(m["tokens_per_second"] > 0 for m in steps)
    record = json.loads((output / "picli.json").read_text())
    assert record["rope"]["factor"] == 2.0 and record["finetune"]["steps"] == 3
    assert record["finetune"]["tokens"] == 3 * 4 * 128 and record["finetune"]["distributed"] == "NO"
    assert record["finetune"]["final_loss"] == pytest.approx(steps[-1]["loss"])
    assert record["finetune"]["data"] == str(corpus.resolve())  # absolute: a resume elsewhere finds the same data
    # 12 sequences read from a corpus of more: no repeats, so every token trained is unique.
    train_sequences = record["finetune"]["train_sequences"]
    assert train_sequences > 12 and record["finetune"]["unique_tokens"] == 3 * 4 * 128
    assert record["finetune"]["epochs"] == pytest.approx(12 / train_sequences)
    assert report["unique_tokens"] == report["tokens"] and "Warning" not in result.stderr
    assert json.loads((workdir / ".picli" / "last.json").read_text())["path"] == str(output)
    assert tree_hash(extended) == before

    from transformers import AutoConfig, AutoModelForCausalLM

    reloaded = AutoConfig.from_pretrained(output)
    assert reloaded.rope_parameters["rope_type"] == "linear" and reloaded.rope_parameters["factor"] == 2.0
    AutoModelForCausalLM.from_pretrained(output)  # weights load


def test_a_small_corpus_is_cycled_with_one_warning_and_recorded(extended, tmp_path, workdir):
    small = tmp_path / "small.txt"
    small.write_text(" ".join([FILLER] * 30))
    output = workdir / "ft-small"
    result = train(extended, output, str(small), "--steps", "3")  # batch 4: 12 sequences read
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    finetune_record = json.loads((output / "picli.json").read_text())["finetune"]
    train_sequences = finetune_record["train_sequences"]
    assert 1 <= train_sequences < 12
    assert result.stderr.count("Warning:") == 1
    assert f"cycles through it {12 / train_sequences:.2f} times" in " ".join(result.stderr.split())
    assert report["tokens"] == finetune_record["tokens"] == 12 * 128  # processed, repeats included
    assert report["unique_tokens"] == finetune_record["unique_tokens"] == train_sequences * 128
    assert report["epochs"] == finetune_record["epochs"] == pytest.approx(12 / train_sequences)
    card = run("card", str(output), "--dry-run")
    assert card.exit_code == 0, card.stderr
    assert (f"| tokens trained | 1,536, of which {train_sequences * 128:,} unique (the data was repeated) |"
            in card.stdout)
    assert f"| epochs over the data | {12 / train_sequences:.2f} ({train_sequences} training sequences) |" in card.stdout


def test_export_writes_a_gathered_state_dict(extended, workdir):
    """Under FSDP the weights come gathered from every shard, keyed by the loss module's names."""
    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from picli.finetune_output import export_model

    model = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32)
    module = training.build_loss_module(model)
    gathered = {name: torch.full_like(value, 0.5) for name, value in module.state_dict().items()}
    output = workdir / "exported"
    output.mkdir()
    export_model(Accelerator(cpu=True), module, extended, output, training.TrainSettings(), {}, "test", 0,
                 state_dict=gathered)
    saved = load_file(str(output / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in saved  # the "language_model." prefix is gone
    assert all(bool((tensor == 0.5).all()) for tensor in saved.values())  # the gathered weights, not the live ones
    assert json.loads((output / "config.json").read_text()) == json.loads((extended / "config.json").read_text())


def test_lora_merges_into_a_full_checkpoint(extended, corpus, workdir):
    output = workdir / "lora"
    result = train(extended, output, str(corpus), "--steps", "2", "--lora", "--lora-rank", "4")
    assert result.exit_code == 0, result.stderr
    from safetensors import safe_open

    with safe_open(str(output / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert not any("lora" in name for name in names) and "model.embed_tokens.weight" in names
    record = json.loads((output / "picli.json").read_text())["finetune"]
    assert record["lora"] == {"rank": 4, "alpha": 32, "merged": True}


def test_eval_every_and_stop_when_verified(extended, corpus, workdir, monkeypatch, capsys):
    import picli.passkey

    real = picli.passkey.evaluate_passkey
    calls = []

    def passes_from_second_eval(loaded, lengths, protocol, **kwargs):
        report = real(loaded, lengths, protocol, **kwargs)
        calls.append(lengths)
        if len(calls) < 2:
            return report
        result = report.results[0]
        verified = type(result)(**{**result.__dict__, "k_max": result.ks[-1]})
        return type(report)(protocol=report.protocol, window=report.window, results=[verified])

    monkeypatch.setattr(picli.passkey, "evaluate_passkey", passes_from_second_eval)
    output = workdir / "verified"
    result = train(extended, output, str(corpus), "--steps", "10", "--eval-every", "2", "--stop-when-verified")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["steps_done"] == 4 and report["stopped_early_at"] == 4
    assert calls == [[128], [128]]  # a quick passkey at the training length, every 2 steps
    steps = metrics(output)
    assert [m["step"] for m in steps if "eval_loss" in m] == [2, 4]
    assert steps[-1]["passkey_k_max"] == steps[-1]["passkey_target"]
    record = json.loads((output / "picli.json").read_text())["finetune"]
    assert record["stopped_when_verified_at"] == 4 and len(record["eval_history"]) == 2
    # What a person reads: the quick protocol's depths, never "reached the window" (k_max
    # cannot equal the length, and 4 depths x 2 keys is not the paper's protocol).
    from picli import render

    render.finetune_result(report)
    said = capsys.readouterr().out
    assert "every depth tested by the quick protocol (4 depths x 2 keys" in said and "window" not in said


# ---------------------------------------------------------------------------------------
# Interruption and resume


@pytest.mark.parametrize("resume_args", [[], ["--micro-batch-size", "1"]])
def test_resume_equals_uninterrupted(extended, corpus, workdir, resume_args):
    straight = workdir / "straight"
    assert train(extended, straight, str(corpus), "--steps", "5").exit_code == 0
    resumed = workdir / "resumed"
    result = finetune.finetune_command(str(extended), resumed, settings_for(corpus, steps=5),
                                       on_event=stop_at(3, raise_interrupt))
    assert result["interrupted"] is True and result["signal"] == "SIGINT" and result["steps_done"] == 3
    assert (resumed / "checkpoints" / "step-0000003").is_dir() and not (resumed / "model.safetensors").exists()
    result = run("finetune", str(extended), "-o", str(resumed), "--resume", "--cpu", "--json",
                 *resume_args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["steps_done"] == 5  # the run's own 5 steps: --steps was not given
    micro = json.loads((resumed / "training_args.json").read_text())["micro_batch_size"]
    if not resume_args:
        assert micro == 2  # the interrupted run's settings, not the CLI default of 1
        assert losses(resumed) == losses(straight)  # model, optimizer, RNG and data position restored
    else:
        # A smaller micro-batch (the way past an OOM) splits the same batch differently:
        # the same data and math, summed in another order.
        assert micro == 1
        assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)


@pytest.mark.parametrize("signal_number, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_a_signal_stops_after_the_step_under_way_and_saves_it(extended, corpus, workdir, signal_number, name,
                                                             capsys):
    """The signal arrives during step 2 (as its report is made): step 2 completes and is saved,
    nothing after it runs, and the result names the signal (the CLI exits 130 / 143 with it)."""
    from picli import render

    output = workdir / "signalled"
    result = finetune.finetune_command(str(extended), output, settings_for(corpus, steps=6),
                                       on_event=stop_at(2, lambda: os.kill(os.getpid(), signal_number)))
    assert result["interrupted"] is True and result["signal"] == name and result["steps_done"] == 2
    assert [metric["step"] for metric in metrics(output)] == [1, 2]
    assert (output / "checkpoints" / "step-0000002").is_dir()
    assert finetune.SIGNAL_EXIT[name] == {"SIGINT": 130, "SIGTERM": 143}[name]
    render.finetune_result(result)
    said = " ".join(capsys.readouterr().out.split())
    assert f"Interrupted by {name} after step 2" in said
    assert f"Continue with: picli finetune -o {output} --resume" in said


@pytest.mark.parametrize("signal_number, name, status", [(signal.SIGTERM, "SIGTERM", 143),
                                                         (signal.SIGINT, "SIGINT", 130)])
def test_the_command_exits_130_or_143_after_saving(extended, corpus, workdir, monkeypatch, signal_number, name,
                                                   status):
    """Scripts see the interruption: `picli finetune` saves the checkpoint, reports, and exits with
    the shell's 128 + signal (it exited 0). The signal arrives through the CLI's own event seam."""
    import contextlib

    from picli import render

    @contextlib.contextmanager
    def progress(bars=True):
        yield stop_at(2, lambda: os.kill(os.getpid(), signal_number))

    monkeypatch.setattr(render, "progress", progress)
    output = workdir / f"cli-{name}"
    result = train(extended, output, str(corpus), "--steps", "6")
    assert result.exit_code == status, result.stderr
    report = json.loads(result.stdout)
    assert report["interrupted"] is True and report["signal"] == name and report["steps_done"] == 2
    assert (output / "checkpoints" / "step-0000002").is_dir()


def test_lora_resume_equals_uninterrupted(extended, corpus, workdir):
    """Only the trainable part is saved (adapters, embeddings, norms); the frozen weights come from the source."""
    lora = ["--lora", "--lora-rank", "4"]
    straight = workdir / "lora-straight"
    assert train(extended, straight, str(corpus), "--steps", "3", *lora).exit_code == 0
    output = workdir / "lora-rounds"
    assert train(extended, output, str(corpus), "--steps", "2", "--save-every", "2", *lora).exit_code == 0
    from safetensors import safe_open

    with safe_open(str(output / "checkpoints" / "step-0000002" / "trainable.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    assert any("lora_A" in name for name in saved) and not any(name.endswith("q_proj.base_layer.weight")
                                                               for name in saved)
    result = resume(output, "--steps", "3")
    assert result.exit_code == 0, result.stderr
    assert losses(output) == losses(straight)


def test_checkpoints_are_safetensors_and_json_and_resume_never_unpickles(extended, corpus, workdir, monkeypatch):
    """picli never unpickles a file: its resume state is its own safetensors and JSON."""
    import pickle

    import torch

    output = workdir / "no-pickle"
    assert train(extended, output, str(corpus), "--steps", "2", "--save-every", "2").exit_code == 0
    files = sorted(path.name for path in (output / "checkpoints" / "step-0000002").iterdir())
    assert files == ["optimizer.safetensors", "rng-0.safetensors", "trainable.safetensors", "trainer_state.json"]

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled a file on resume")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    result = resume(output, "--steps", "3")
    assert result.exit_code == 0, result.stderr
    assert [metric["step"] for metric in metrics(output)] == [1, 2, 3]


def test_rounds_keep_the_first_runs_schedule(extended, corpus, workdir):
    """--steps 10 resolves a warmup of 1; --resume --steps 20 keeps it (--steps 20 from the start would give 2)."""
    output = workdir / "rounds"
    common = ["--seq-len", "64", "--batch-size", "2", "--micro-batch-size", "2", "--lr", "1e-3", "--cpu", "--json"]
    first = run("finetune", str(extended), "--data", str(corpus), "-o", str(output), "--steps", "10",
                "--save-every", "10", *common)
    assert first.exit_code == 0, first.stderr
    second = resume(output, "--steps", "20")
    assert second.exit_code == 0, second.stderr
    assert [metric["lr"] for metric in metrics(output)] == pytest.approx([1e-4] + [1e-3] * 19)
    assert json.loads((output / "picli.json").read_text())["finetune"]["warmup_steps"] == 1


def test_resume_without_model_trains_from_the_runs_own_source(extended, other_model, corpus, workdir):
    """Not from .picli/last.json, which another command may have pointed elsewhere since."""
    output = workdir / "own-source"
    assert train(extended, output, str(corpus), "--steps", "2", "--save-every", "2").exit_code == 0
    extend(other_model, 4096, workdir / "elsewhere")
    assert json.loads((workdir / ".picli" / "last.json").read_text())["path"] == str(workdir / "elsewhere")
    result = resume(output, "--steps", "3")
    assert result.exit_code == 0, result.stderr
    assert json.loads((output / "config.json").read_text()) == json.loads((extended / "config.json").read_text())


def test_resume_refuses_another_model_and_accepts_a_moved_copy(extended, other_model, corpus, workdir):
    output = workdir / "checked-source"
    assert train(extended, output, str(corpus), "--steps", "2", "--save-every", "2").exit_code == 0
    result = run("finetune", str(other_model), "-o", str(output), "--resume", "--steps", "3",
                 "--cpu")
    assert_clean_error(result, f"was trained from {extended}, not {other_model}")
    # A fine-tune of the source keeps its config.json and every safetensors header: only the bytes differ.
    tuned = workdir / "tuned-source"
    assert train(extended, tuned, str(corpus), "--steps", "1").exit_code == 0
    assert (tuned / "config.json").read_bytes() == (extended / "config.json").read_bytes()
    result = run("finetune", str(tuned), "-o", str(output), "--resume", "--steps", "3", "--cpu")
    assert_clean_error(result, f"was trained from {extended}, not {tuned}")
    assert [metric["step"] for metric in metrics(output)] == [1, 2]  # nothing trained
    copy = Path(shutil.copytree(extended, workdir / "moved-copy"))
    result = run("finetune", str(copy), "-o", str(output), "--resume", "--steps", "3", "--cpu",
                 "--json")
    assert result.exit_code == 0, result.stderr
    assert "is the run's source" in result.stderr


def test_resume_refuses_a_source_that_moved_or_changed(extended, corpus, tmp_path, workdir):
    """Without MODEL the recorded source is used; gone or edited since, one line says which."""
    source = Path(shutil.copytree(extended, tmp_path / "source"))
    output = workdir / "vanishing-source"
    assert train(source, output, str(corpus), "--steps", "2", "--save-every", "2").exit_code == 0
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "rope_theta": config["rope_theta"] * 2}))
    assert_clean_error(resume(output, "--steps", "3"), f"the run's source {source} changed since the run started")
    source.rename(tmp_path / "moved")
    assert_clean_error(resume(output, "--steps", "3"), f"the run's source {source} no longer exists")
    assert [metric["step"] for metric in metrics(output)] == [1, 2]  # nothing trained


def test_resume_from_another_folder_trains_on_the_runs_data(extended, corpus, tmp_path, workdir, monkeypatch):
    """The data path is recorded absolute: a relative --data resumed elsewhere must not name another file."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    for folder in (here, elsewhere):
        folder.mkdir()
    shutil.copytree(corpus, here / "data")
    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "other.txt").write_text(" ".join(["the quick brown fox"] * 400))
    monkeypatch.chdir(here)
    output = tmp_path / "run"
    assert train(extended, output, "data", "--steps", "2", "--save-every", "2").exit_code == 0
    straight = tmp_path / "straight"
    assert train(extended, straight, str(corpus), "--steps", "3").exit_code == 0
    monkeypatch.chdir(elsewhere)
    result = resume(output, "--steps", "3")
    assert result.exit_code == 0, result.stderr
    assert losses(output) == losses(straight)  # the run's own data, not ./data of this folder
    assert json.loads((output / "training_args.json").read_text())["data"] == str(here / "data")


def test_resume_refuses_changed_data_and_another_data_option(extended, corpus, tmp_path, workdir):
    data = Path(shutil.copytree(corpus, tmp_path / "data"))
    output = workdir / "changing"
    assert train(extended, output, str(data), "--steps", "2", "--save-every", "2").exit_code == 0
    result = resume(output, "--steps", "3", "--data", str(corpus))
    assert_clean_error(result, f"--resume continues the run on its own data ({data})")
    (data / "doc0.txt").write_text((data / "doc0.txt").read_text() + " " + FILLER * 20)
    result = resume(output, "--steps", "3")
    # Known only once the data is tokenized (the "Tokenizing" line comes first), before any weight loads.
    assert_clean_error(result, f"the run's data {data} no longer gives the sequences it trained on")
    assert [metric["step"] for metric in metrics(output)] == [1, 2]  # nothing trained


def test_two_runs_into_one_output_are_refused(extended, corpus, workdir):
    """A second finetune into an output a live run is writing would interleave its metrics."""
    output = workdir / "locked"
    lock_path = workdir / f".{output.name}.picli-lock"
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running picli holds
        result = train(extended, output, str(corpus), "--steps", "1")
        assert_clean_error(result, f"another picli run is writing {output}")
        result = resume(output)
        assert_clean_error(result, f"another picli run is writing {output}")
    finally:
        os.close(descriptor)
    assert not output.exists()


@pytest.mark.parametrize("damage, said", [
    ("truncate", "trainable.safetensors has"),
    ("delete", "optimizer.safetensors is missing"),
    ("corrupt", "trainer_state.json is unreadable"),
])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(extended, corpus, workdir, damage, said):
    output = workdir / f"damaged-{damage}"
    straight = workdir / f"straight-{damage}"
    assert train(extended, straight, str(corpus), "--steps", "5").exit_code == 0
    assert train(extended, output, str(corpus), "--steps", "4", "--save-every", "2").exit_code == 0
    newest = output / "checkpoints" / "step-0000004"
    if damage == "truncate":
        path = newest / "trainable.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "delete":
        (newest / "optimizer.safetensors").unlink()
    else:
        (newest / "trainer_state.json").write_text('{"step": 4, "tok')
    result = resume(output, "--steps", "5")
    assert result.exit_code == 0, result.stderr
    assert "checkpoint step-0000004" in result.stderr and said in result.stderr
    assert "resuming from step-0000002" in " ".join(result.stderr.split())
    assert losses(output) == losses(straight)  # steps 3 and 4 trained again from step 2's state


def test_no_intact_checkpoint_and_the_old_pickled_format_are_one_line(extended, corpus, workdir):
    output = workdir / "all-damaged"
    assert train(extended, output, str(corpus), "--steps", "2", "--save-every", "2").exit_code == 0
    (output / "checkpoints" / "step-0000002" / "trainer_state.json").write_text("not json")
    assert_clean_error(resume(output, "--steps", "3"), "no intact checkpoint to resume")
    old = output / "checkpoints" / "step-0000002"
    shutil.rmtree(old)
    old.mkdir()
    (old / "pytorch_model.bin").write_bytes(b"\x80\x04 pickled by accelerate")
    (old / "trainer_state.json").write_text(json.dumps({"step": 2, "tokens": 1024, "settings": {}}))
    assert_clean_error(resume(output, "--steps", "3"), "accelerate's pickled format")


@pytest.mark.parametrize("edit, said", [
    (lambda state: [state], "lacks format, step"),
    (lambda state: {**state, "step": "2"}, "lacks step"),
    (lambda state: {**state, "source": {"fingerprint": "x"}}, "lacks the source's or the data's path"),
    (lambda state: {**state, "data": {"path": 5}}, "lacks the source's or the data's path"),
    (lambda state: {**state, "files": {"../../etc/passwd": 1}}, "not a file picli writes"),
    (lambda state: {**state, "files": {"trainable.safetensors": "big"}}, "not a file picli writes"),
    (lambda state: {**state, "format": "picli-checkpoint/0"}, "has format"),
])
def test_an_edited_trainer_state_is_a_reason_not_a_traceback(tmp_path, edit, said):
    """What read_checkpoint says of each kind of damage: the reason the resume prints."""
    from picli.finetune_output import FORMAT, read_checkpoint

    state = {"format": FORMAT, "step": 2, "tokens": 512, "settings": {}, "files": {},
             "source": {"path": "/m", "fingerprint": "f"}, "data": {"path": "/d", "fingerprint": "g"}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(edit(state)))
    found, reason = read_checkpoint(tmp_path)
    assert found is None and said in reason


def test_out_of_memory_gives_the_estimate_and_leaves_nothing(extended, corpus, workdir):
    import torch

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(finetune.PicliError) as caught:
        finetune.finetune_command(str(extended), workdir / "oom", settings_for(corpus, steps=3),
                                  on_event=stop_at(1, out_of_memory))
    message = str(caught.value.message)
    assert "out of memory at step 2: this run needs about" in message  # step 1 was done; step 2 was under way
    assert "--gradient-checkpointing on" in caught.value.hint and "--micro-batch-size 1" in caught.value.hint
    assert not (workdir / "oom").exists()  # nothing half-written: the retry needs no --force


@pytest.mark.parametrize("args, needle", [
    (["--data", "/no/such/data"], "no such"),
    ([], "no training data"),
    (["--resume"], "nothing to resume"),
    (["--seq-len", "100000"], "shorter than one sequence"),
    (["--batch-size", "3", "--micro-batch-size", "2"], "not a multiple"),
])
def test_errors(extended, corpus, workdir, args, needle):
    if args[:1] == ["--seq-len"] or args[:1] == ["--batch-size"]:
        args = ["--data", str(corpus), *args]
    result = run("finetune", str(extended), "-o", str(workdir / "out"), "--cpu", *args)
    assert needle in assert_clean_error(result).lower(), result.stderr


def test_unknown_text_field(extended, tmp_path, workdir):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"content": "hello"}) + "\n")
    result = run("finetune", str(extended), "--data", str(data), "--text-field", "text", "--cpu")
    assert_clean_error(result, "content")


# ---------------------------------------------------------------------------------------
# The plan: from config.json alone


PUBLISHED_PARAMETERS = {"Llama-3.2-1B": 1_235_814_400, "Llama-2-7b-hf": 6_738_415_616, "Llama-3.1-8B": 8_030_261_248,
                        "Llama-2-13b-hf": 13_015_864_320, "Llama-3.1-70B": 70_553_706_496}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_plan_from_config_json_alone(name, tmp_path, workdir):
    """No weights, no tokenizer: the shape comes from transformers' meta-device build of config.json."""
    from picli.modeling import kv_cache_bytes

    folder = Path(shutil.copytree(PLAN_CONFIGS / name, tmp_path / name))
    result = run("finetune", str(folder), "--plan", "--seq-len", "16k", "--steps", "50",
                 "--dtype", "bfloat16", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["parameters"] == PUBLISHED_PARAMETERS[name]
    assert plan["parameters_from"].startswith("config.json") and plan["probe"] is None
    assert plan["probe_skipped"] == "no weights here (config.json only)" and plan["estimated_hours"] is None
    config = json.loads((folder / "config.json").read_text())
    assert plan["shape"]["kv_values_per_token"] == kv_cache_bytes(config, 1, bytes_per_value=1)  # the one formula
    assert plan["schedule"]["warmup_steps"] == 5 and "over 5 warmup steps (10% of 50)" in plan["schedule"]["text"]
    rows = {(row["mode"], row["gradient_checkpointing"]): row for row in plan["memory"]}
    for row in rows.values():
        fsdp = [row["fsdp"][str(count)] for count in (2, 4, 8, 16, 32, 64)]
        assert fsdp == sorted(fsdp, reverse=True) and fsdp[0] < row["bytes"] < row["ddp"]
    assert rows[("lora", True)]["bytes"] < rows[("full", True)]["bytes"] < rows[("full", False)]["bytes"]
    assert list(workdir.iterdir()) == []  # nothing written


def test_plan_counts_what_lora_trains_and_what_fsdp_shards(tmp_path):
    """Llama-2-7B: LoRA trains both embedding matrices, the norms and r x (in + out) per projection."""
    shape = finetune_plan.model_shape(PLAN_CONFIGS / "Llama-2-7b-hf")
    assert shape.embeddings_and_norms == 2 * 32000 * 4096 + (2 * 32 + 1) * 4096
    assert shape.lora_values_per_rank == 32 * 4 * (4096 + 4096) and shape.layer_parameters == 202_383_360
    one = finetune_plan.estimate_memory(shape, 8192, checkpointing=True)
    sharded = finetune_plan.estimate_memory(shape, 8192, checkpointing=True, strategy="fsdp", devices=8)
    assert sharded["weights"] == one["weights"] / 8 and sharded["optimizer"] == one["optimizer"] / 8
    assert sharded["activations"] == one["activations"]  # FSDP shards states, not activations


def test_plan_memory_model_matches_the_measured_benchmark(tmp_path):
    """benchmarks/finetune.py measured SmolLM2 at 2048 tokens, fp32 on CPU: 7.0 GB peak without
    gradient checkpointing, 4.2 GB with it (docs/benchmarks.md). The estimate stays within 25%."""
    smollm2 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
               "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
               "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
               "tie_word_embeddings": True, "rope_theta": 100000.0}
    (tmp_path / "config.json").write_text(json.dumps(smollm2))
    shape = finetune_plan.model_shape(tmp_path)
    assert shape.parameters == 134_515_008
    without = finetune_plan.estimate_memory(shape, 2048, checkpointing=False, bytes_per_value=4)
    with_checkpointing = finetune_plan.estimate_memory(shape, 2048, checkpointing=True, bytes_per_value=4)
    assert without["total"] == pytest.approx(7.0e9, rel=0.25)
    assert with_checkpointing["total"] == pytest.approx(4.2e9, rel=0.25)


def test_plan_times_a_step_where_the_weights_are(extended, workdir):
    result = run("finetune", str(extended), "--plan", "--seq-len", "8192", "--cpu", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["batch_size"] == 64 and plan["parameters_from"] == "safetensors headers"
    assert plan["probe"]["seconds"] > 0 and plan["estimated_seconds_per_step"] == pytest.approx(
        plan["probe"]["seconds"] * 8192 / 512 * 64)
    human = run("finetune", str(extended), "--plan", "--seq-len", "256", "--cpu")
    assert human.exit_code == 0, human.stderr
    text = " ".join(human.stdout.split())
    assert "Schedule: LR 2e-06 -> 2e-05 over 20 warmup steps (2% of 1000), then constant for 980" in text
    assert "Estimated GB per device" in text and "Time: not measured" not in text
    assert list(workdir.iterdir()) == []


def test_the_hardware_table_in_the_docs_is_pictured_by_picli():
    script = load_benchmark("plan_table")
    table = script.table(script.plans())
    assert table in (ROOT / "docs" / "finetune.md").read_text()
    assert script.COMMAND in (ROOT / "docs" / "finetune.md").read_text()


# ---------------------------------------------------------------------------------------
# Several processes (subprocesses on this machine's CPU cores, over gloo): slow


DISTRIBUTED = ["--seq-len", "64", "--batch-size", "4", "--micro-batch-size", "1", "--lr", "1e-3",
               "--warmup-steps", "3", "--cpu", "--json"]
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(prefix: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """In `cwd`, so that the .picli/last.json a finished run leaves is not written into the checkout."""
    return subprocess.run([*prefix, *args], capture_output=True, text=True, env=SINGLE_THREAD, timeout=600, cwd=cwd)


def picli_module() -> list[str]:
    return [sys.executable, "-m", "picli"]


def accelerate(config: str, port: int, script: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(EXAMPLES / config),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port), *script]


@pytest.fixture(scope="module")
def one_process(extended, corpus, tmp_path_factory) -> Path:
    """The reference: 5 steps (3 of warmup) on one process."""
    output = tmp_path_factory.mktemp("one") / "out"
    single = launch(picli_module(), "finetune", str(extended), "--data", str(corpus), *DISTRIBUTED, "--steps", "5",
                    "-o", str(output), cwd=output.parent)
    assert single.returncode == 0, single.stderr
    return output


def assert_same_run(output: Path, reference: Path) -> None:
    """The LR of every step exactly, and the losses: step 1 sees identical weights; later steps
    differ only by reduction order, which Adam's per-coordinate normalisation amplifies for
    near-zero gradients (measured: < 1e-3)."""
    ours, theirs = metrics(output), metrics(reference)
    assert [m["step"] for m in ours] == [m["step"] for m in theirs]
    assert [m["lr"] for m in ours] == [m["lr"] for m in theirs]
    assert ours[0]["loss"] == pytest.approx(theirs[0]["loss"], rel=1e-6)
    assert [m["loss"] for m in ours] == pytest.approx([m["loss"] for m in theirs], rel=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_equal_one(extended, corpus, one_process, tmp_path, launcher):
    """2 CPU processes (gloo) with the same global batch give the same LR by step and the same
    losses, under either launcher, past the warmup (accelerate's prepared scheduler stepped the
    warmup twice per step here)."""
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                  "-m", "picli"]
    else:
        # The shipped DDP example, on 2 CPU processes: accelerate starts them through torchrun,
        # and picli's --cpu makes them train on CPU over gloo.
        prefix = accelerate("ddp.yaml", 29534, ["-m", "picli"])
    double = launch(prefix, "finetune", str(extended), "--data", str(corpus), *DISTRIBUTED, "--steps", "5",
                    "--save-every", "3", "-o", str(tmp_path / "two"), cwd=tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())[
        "processes"] == 2
    assert json.loads(double.stdout)["steps_done"] == 5  # one report, from the main process
    record = json.loads((tmp_path / "two" / "picli.json").read_text())["finetune"]
    assert record["processes"] == 2 and record["distributed"] == "MULTI_CPU"
    assert_same_run(tmp_path / "two", one_process)


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_equals_one_and_resumes_on_two_or_one(extended, corpus, one_process, tmp_path):
    """examples/fsdp.yaml (FSDP2, full state dicts) on 2 CPU processes over gloo, accelerate's FSDP
    path forced on CPU (tests/fsdp_on_cpu.py says why): 3 steps, then --resume to 5 on 2
    processes under FSDP and, from the same checkpoint, on 1 process (2 -> 1)."""
    sharded = accelerate("fsdp.yaml", 29535, [str(ROOT / "tests" / "fsdp_on_cpu.py")])
    first = tmp_path / "fsdp"
    started = launch(sharded, "finetune", str(extended), "--data", str(corpus), *DISTRIBUTED, "--steps", "3",
                     "--save-every", "3", "-o", str(first), cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-3000:]
    assert json.loads((first / "training_args.json").read_text())["distributed"] == "FSDP"
    alone = Path(shutil.copytree(first, tmp_path / "fsdp-then-one"))
    resumed = launch(sharded, "finetune", "-o", str(first), "--resume", "--steps", "5", "--cpu", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((first / "picli.json").read_text())["finetune"]["distributed"] == "FSDP"
    assert_same_run(first, one_process)
    from safetensors.torch import load_file

    exported = load_file(str(first / "model.safetensors"))
    assert "model.layers.1.mlp.down_proj.weight" in exported  # the gathered weights, full names
    single = launch(picli_module(), "finetune", "-o", str(alone), "--resume", "--steps", "5", "--cpu", "--json",
                    cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads((alone / "picli.json").read_text())["finetune"]["processes"] == 1
    assert_same_run(alone, one_process)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_exits_nonzero_after_saving_and_resume_finishes(extended, corpus, tmp_path, signal_number, status):
    import time

    output = tmp_path / "term"
    command = [*picli_module(), "finetune", str(extended), "--data", str(corpus), "--seq-len", "128",
               "--batch-size", "4", "--steps", "500", "--cpu", "--json", "-o", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and not ((output / "metrics.jsonl").exists()
                                          and (output / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.2)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == status, stderr[-2000:]  # scripts see the interruption
    report = json.loads(stdout)
    assert report["interrupted"] is True and 2 <= report["steps_done"] < 500
    assert (output / "checkpoints" / f"step-{report['steps_done']:07d}").is_dir()
    if signal_number == signal.SIGINT:
        return  # resuming is the same after either signal
    resumed = subprocess.run([*picli_module(), "finetune", "-o", str(output), "--resume", "--steps",
                              str(report["steps_done"] + 1), "--cpu", "--json"],
                             capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["steps_done"] == report["steps_done"] + 1
    assert (output / "model.safetensors").exists()


@pytest.mark.slow
def test_log_output_has_step_lines_and_no_third_party_bars(extended, corpus, tmp_path):
    """In a log file (no terminal) each step is one line, and transformers' weight-loading and
    shard-writing bars stay out of it; an interruption says how to resume."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_DISABLE_PROGRESS_BARS",
                                                                           "TQDM_DISABLE")}
    run = subprocess.run([*picli_module(), "finetune", str(extended), "--data", str(corpus), "-o",
                          str(tmp_path / "out"), "--seq-len", "128", "--batch-size", "2", "--steps", "2", "--cpu"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "step 1/2  loss " in run.stderr and "step 2/2  loss " in run.stderr
    assert "Loading weights" not in run.stderr and "Writing model shards" not in run.stderr
    assert "Fine-tuned 2 steps" in run.stdout
