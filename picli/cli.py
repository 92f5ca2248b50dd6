"""The `picli` command line: parse options, call one core function, render its result.

No math, file formats or Hub calls live here. Every command runs inside `boundary`, the
one place where user-fixable errors become `Error: ...` + a hint on stderr and exit 1;
anything else is a bug and keeps its traceback (always shown with PICLI_DEBUG=1).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import __version__, render
from .errors import PicliError

# Typer bundles its own Click (never `import click`): its UsageError is BadParameter's base,
# and ClickException the base of that.
_UsageError = typer.BadParameter.__mro__[1]
_ClickException = _UsageError.__mro__[1]


def usage_error(exc) -> PicliError:
    """A Click usage error (bad value, missing or unknown option) in picli's Error:/Hint: form."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    context = getattr(exc, "ctx", None)
    if context is None:
        return PicliError(message, hint="`picli -h` lists the commands")
    usage = " ".join(context.get_usage().split())
    usage = usage[len("Usage: "):] if usage.startswith("Usage: ") else usage
    return PicliError(message, hint=f"usage: {usage}; `{context.command_path} -h` explains every option")


class PicliGroup(TyperGroup):
    """The app's group: usage errors print as one `Error:` line and a `Hint:`, like picli's
    own errors (Click would print its usage block first), and still exit 2 (docs/design.md,
    "One error boundary")."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Non-standalone: Click raises its errors to us instead of printing them itself.
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `picli`: the help text itself
                exc.show()
            else:
                render.error(usage_error(exc))
            sys.exit(exc.exit_code)
        except _ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            render.message("Aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=PicliGroup,
    name="picli",
    help="Extend the context window of RoPE language models by Position Interpolation "
    "(arXiv 2306.15595), verify the result, and publish it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# Options several commands share, declared once (as the hf CLI does): the same flag means the
# same thing, with the same help, on every command that has it. --dtype is not one of them:
# verify loads the weights in that dtype, finetune keeps fp32 weights and picks the autocast.
ModelArg = Annotated[str, typer.Argument(help="Checkpoint directory, .gguf file, Hub id (org/name[@rev]) or alias.")]
LastModelArg = Annotated[Optional[str], typer.Argument(help="Checkpoint directory, Hub id (org/name[@rev]) or alias. "
                                                       "Default: the last one picli wrote in this directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TextFieldOpt = Annotated[str, typer.Option("--text-field", help="JSONL / dataset field holding the text.")]
AttnOpt = Annotated[str, typer.Option(
    "--attn", help="sdpa, flash_attention_2 or eager (sdpa falls back to eager for families without it).")]
OverwriteCardOpt = Annotated[bool, typer.Option("--overwrite-card", help="Replace README.md entirely instead of "
                                                "keeping the user's text around picli's section.")]


@contextlib.contextmanager
def _quiet_third_party(json_output: bool, hub_bars: bool = False):
    """transformers and huggingface_hub draw their own bars on stderr; picli draws its own.

    Loading and saving weights ("Loading weights", "Writing model shards") would interleave
    with picli's progress, so those go everywhere; only push keeps huggingface_hub's upload
    bars (hub_bars), and --json means none at all. Restores the environment afterwards, so
    one command's settings never leak into the next in the same process (tests, notebooks).
    """
    changes = {"TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error")}
    if not hub_bars:
        # transformers reads this once, at import; picli imports it late, inside the command.
        changes["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if json_output:
        # TQDM_DISABLE: transformers' GGUF import and weight loading use plain tqdm.
        changes.update({"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"})
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def boundary(command):
    """The error boundary: PicliError and OS errors -> one line, exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PicliError as exc:
            if os.environ.get("PICLI_DEBUG") == "1":
                raise
            render.error(exc)
            raise typer.Exit(1) from None
        except OSError as exc:
            known = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                     errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
            if os.environ.get("PICLI_DEBUG") == "1":
                raise
            if exc.errno in known:
                where = f" writing {exc.filename}" if exc.filename else ""
                render.error(PicliError(f"{known[exc.errno]}{where}; nothing was left behind",
                                        hint="free space or choose another -o/--output, then run again"))
            else:
                # Not the user's to fix (EIO, a vanished mount): still one line, the OS's own words.
                where = f" ({exc.filename})" if exc.filename else ""
                render.error(PicliError(f"the operating system failed: {exc.strerror or exc}{where}",
                                        hint="check the disk or mount, then run again; PICLI_DEBUG=1 shows the "
                                        "traceback"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            render.message("Interrupted; nothing was left behind.")
            raise typer.Exit(130) from None
        except Exception as exc:
            # torch's CUDA OOM, matched by name so the boundary never imports torch itself.
            if type(exc).__name__ != "OutOfMemoryError" or os.environ.get("PICLI_DEBUG") == "1":
                raise
            render.error(PicliError(
                "out of GPU memory", hint="lower --micro-batch-size / --batch-size / --length, try --lora, "
                "--gradient-checkpointing on, --dtype bfloat16 or --device-map auto; `picli finetune --plan` estimates"))
            raise typer.Exit(1) from None

    return wrapper


def _command_line() -> str:
    """The command as typed, shell-quoted so it can be run again: the `command` every record
    (picli.json, picli-verify.json) stores, made here once for every command."""
    return shlex.join(["picli", *sys.argv[1:]])


def parse_window(text: str, option: str = "--to") -> int:
    """'16384', '16k', '16K' -> 16384. A non-number is a user error, not a usage error."""
    match = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", text or "")
    if not match:
        raise PicliError(f"{option} must be a number of tokens like 16384 or 16k, got {text!r}",
                         hint=f"e.g. {option} 16384")
    from .rope import values

    digits = match.group(1).lstrip("0") or "0"
    # Compared as text first: int() of thousands of digits raises, and a float factor overflows.
    tokens = int(digits) * (1024 if match.group(2) else 1) if len(digits) <= 12 else values.MAX_WINDOW + 1
    if tokens <= 0:
        raise PicliError(f"{option} must be positive, got {text!r}", hint=f"e.g. {option} 16384")
    if tokens > values.MAX_WINDOW:
        raise PicliError(values.window_limit_message(option, text.strip()), hint=f"pass {option} {values.MAX_WINDOW} or less")
    return tokens


def _version(value: bool) -> None:
    if value:
        typer.echo(f"picli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """picli: Position Interpolation for RoPE models."""


@app.command()
@boundary
def inspect(
    model: ModelArg,
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 when any runtime (transformers 4.x, vLLM, llama.cpp) would read the checkpoint "
        "differently from transformers 5, or rope_scaling and rope_parameters disagree. For CI.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """What a checkpoint is, and what each runtime will do with it.

    Reads config files and tensor headers only; weights are never loaded. Every RoPE type
    (linear, dynamic, yarn, llama3, longrope, M-RoPE) is read, from config.json or GGUF.

    Examples:

      picli inspect smollm2-135m

      picli inspect ./llama-7b-16k --json

      picli inspect ./m --check

      picli inspect model.Q4_K_M.gguf
    """
    from .inspector import inspect_model

    with _quiet_third_party(json_output), render.progress(bars=not json_output) as on_event:
        report = inspect_model(model, on_event=on_event).to_dict()
    render.emit(report, json_output=json_output, human=functools.partial(render.inspection, check=check))
    if check and not report["check"]["ok"]:
        raise typer.Exit(1)


@app.command()
@boundary
def extend(
    model: ModelArg,
    to: Annotated[str, typer.Option("--to", help="Target context window in tokens (16384 or 16k).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output",
                                                   help="Output directory (or .gguf file). Default: ./<name>-<N/1024>k.")] = None,
    from_window: Annotated[Optional[str], typer.Option("--from",
                                                       help="The model's real current window, when config.json is wrong.")] = None,
    weights: Annotated[str, typer.Option(
        "--weights", help="copy (default; a reflink where the filesystem can), hardlink or symlink. Links share "
        "storage with the source: a tool that later writes a weight file in place writes into the source too.")] = "copy",
    max_position_embeddings: Annotated[str, typer.Option(
        "--max-position-embeddings", help="target (default: transformers and llama.cpp convention) or original "
        "(keeps the old value, for vLLM-first users: vLLM multiplies it by the factor).")] = "target",
    method: Annotated[str, typer.Option(
        "--method", help="linear (Position Interpolation, the default), yarn (YaRN: ramp between kept and "
        "interpolated frequencies, attention x(0.1 ln s + 1)) or ntk (static NTK-aware: a larger rope_theta). "
        "See docs/concepts.md.")] = "linear",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and config diff; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output picli wrote (it holds picli.json; "
                                        "nothing else is ever replaced); allow replacing another "
                                        "scheme (llama3/yarn/dynamic, or linear/ntk for another method) with "
                                        "this method, from the pretraining window (with a warning).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Write Position Interpolation (linear RoPE scaling), yarn or ntk into a new checkpoint.

    The config is written in both schemas (rope_parameters for transformers 5, top-level
    rope_theta + rope_scaling for 4.x, vLLM, TGI, llama.cpp), then the installed
    transformers reloads it and must compute the inverse frequencies and attention scaling
    picli computes for the method (linear: the source's divided by the factor). The source
    checkpoint is never modified.

    Examples:

      picli extend smollm2-135m --to 16384

      picli extend ./llama-7b --to 16k -o ./llama-7b-16k

      picli extend huggyllama/llama-7b --to 32768 --dry-run

      picli extend model.Q4_K_M.gguf --to 16384

      picli extend Qwen/Qwen2.5-7B-Instruct --to 131072 --method yarn
    """
    from .extend import extend_command

    target_window = parse_window(to)
    current = parse_window(from_window, "--from") if from_window is not None else None
    with _quiet_third_party(json_output), render.progress(bars=not json_output) as on_event:
        payload = extend_command(model, target_window, dry_run=dry_run, command=_command_line(), on_event=on_event,
                                 output=output, from_window=current, weights=weights,
                                 max_position=max_position_embeddings, force=force, method=method)
    render.emit(payload, json_output=json_output, dry_run=dry_run, plan=render.extend_dry_run,
                human=render.extend_written)


@app.command()
@boundary
def verify(
    models: Annotated[Optional[list[str]], typer.Argument(
        metavar="MODEL", help="Checkpoint directories, GGUF files, Hub ids (org/name[@rev]) or aliases, measured "
        "side by side with the same protocol, one at a time. Default: the last one picli wrote in this directory.")] = None,
    passkey: Annotated[bool, typer.Option("--passkey", help="Passkey retrieval, the PI paper's protocol (k_max).")] = False,
    perplexity: Annotated[bool, typer.Option("--perplexity", help="Sliding-window perplexity on --data.")] = False,
    ruler: Annotated[bool, typer.Option("--ruler", help="RULER's 11 synthetic long-context tasks (NVIDIA/RULER), "
                                        "offline: score per task and length, two effective lengths.")] = False,
    tasks: Annotated[Optional[str], typer.Option(
        "--tasks", help="RULER tasks, comma-separated (niah_single_1,...,vt,cwe,fwe), or all (the default).")] = None,
    samples: Annotated[Optional[int], typer.Option(
        "--samples", help="RULER samples per task and length (default: RULER's 500).")] = None,
    haystack: Annotated[Optional[str], typer.Option(
        "--haystack", help="RULER's essay haystack: FILE, DIR or hf:NAME (default: Alice in Wonderland, built "
        "in).")] = None,
    chat_template: Annotated[Optional[str], typer.Option(
        "--chat-template", help="RULER prompts: auto (the tokenizer's chat template when it has one), chat (the chat "
        "template, refused when the tokenizer has none) or none (RULER's plain template).")] = None,
    length: Annotated[Optional[list[str]], typer.Option(
        "--length", help="Evaluated length in tokens (repeatable, e.g. --length 8k --length 16k). Default: the "
        "model's window; with several MODELs, every window among them (each model at every length, past its "
        "own window marked *).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Text for perplexity: file, folder, JSONL, or hf:NAME.")] = None,
    text_field: TextFieldOpt = "text",
    stride: Annotated[int, typer.Option("--stride", help="Sliding-window stride (PI and YaRN use 256).")] = 256,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Score at most this many tokens of --data "
                                                      "in all (after the document choices below).")] = None,
    doc_tokens: Annotated[Optional[str], typer.Option("--doc-tokens", help="Cut each document to its first N tokens "
                                                      "(the paper's proof-pile protocol: 32768).")] = None,
    min_doc_tokens: Annotated[Optional[str], typer.Option(
        "--min-doc-tokens", help="Skip documents shorter than N tokens; the report counts them (paper's proof-pile: "
        "32768).")] = None,
    sample_docs: Annotated[Optional[int], typer.Option(
        "--sample-docs", help="Score N documents drawn at random (--seed) among those kept (paper's proof-pile: "
        "128).")] = None,
    positions: Annotated[int, typer.Option("--positions", help="Values of k per length (paper: 32).")] = 32,
    trials: Annotated[int, typer.Option("--trials", help="Random keys per k (paper: 10).")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the passkey keys (the same seed gives the same "
                                      "prompts) and for --sample-docs.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="4 positions x 2 trials: a smoke test, not the paper's protocol.")] = False,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Also measure this model (usually the source) "
                                                    "with the same protocol, side by side (once, shown last).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")] = "auto",
    attn: AttnOpt = "sdpa",
    device_map: Annotated[Optional[str], typer.Option("--device-map", help="auto: shard a large model across the "
                                                      "visible GPUs (accelerate).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Passkey trials per forward pass "
                                                      "(default: as many as memory allows).")] = None,
    heatmap: Annotated[Optional[Path], typer.Option("--heatmap", help="Also write the passkey grid as a PNG "
                                                    "(needs matplotlib): one figure, a panel per model.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also write RULER's task x length scores as a PNG "
                                                 "(needs matplotlib): a panel per model.")] = None,
    save: Annotated[Optional[bool], typer.Option(
        "--save/--no-save", help="Write picli-verify.json (and the summary in picli.json) into MODEL, or never. "
        "Default: only into a checkpoint picli wrote (it has picli.json).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the full record "
                                                   "(picli-verify.json's content) to this file; with several MODELs, "
                                                   "one file holding every model's report. Never a file inside a measured model, nor an existing "
                                                   "file that is not a picli verify record.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Prove the extended window works: passkey k_max, long-context perplexity, RULER.

    Passkey follows the PI paper (section 3.3): the key sits k tokens from the end of a
    prompt of each --length; 32 values of k x 10 random 5-digit keys; k_max is the largest
    k such that every k' <= k succeeds in at least 20% of trials. k_max never equals the
    length (the deepest key sits after the task line), so the table shows the deepest k
    tested beside it and the lowest success at any depth up to k_max. Scoring is one
    teacher-forced pass per trial (equal to greedy decoding), sharing the prompt prefix's
    KV cache. The record is saved as picli-verify.json in the model directory when picli
    wrote that checkpoint; a checkpoint of your own is only read unless you pass --save
    (or -o FILE to keep the record elsewhere).

    --ruler runs RULER's synthetic tasks (needles in haystacks, variable tracking, common and
    frequent words) with its templates, generators and scoring, offline: greedy decoding with
    the KV cache, a score per task and length, and two effective lengths (RULER's: average
    above 85.6; relative: at least 85% of the model's own average at the shortest length).
    Every sample (the exact input, prediction, references, score) is kept: in --json, or in a
    .ruler-samples.jsonl.gz file beside each record written. docs/verify.md lists where picli
    differs from RULER.

    Several MODELs are measured side by side: the same lengths, prompts, seed and text for
    each (and for --baseline, measured once), one model in memory at a time; one table per
    measure with a column group per model (#1, #2, ... in the order given, the baseline last
    as `base`), and each MODEL's own picli-verify.json under the rules above. --json then
    prints {"models", "baseline", ..., "reports": [one model's report + "name", ...]}; with
    one MODEL it prints that model's report, as always. Every MODEL and the baseline are
    checked before any loads: a missing one, cut-off weights, one given twice (or as its own
    --baseline), a too short --length or -o inside a measured checkpoint stops the run first.
    Each run is added to picli-verify.json (newest first); the card shows per measure and
    length the newest. A GGUF file is loaded as the embedded model is: transformers' GGUF
    import, dequantized, with its metadata's RoPE scaling (the report says so).

    Weights load from safetensors only: picli never unpickles a file, so a checkpoint with
    only pytorch_model.bin is refused with the command that converts it (docs/safety.md).
    Every option is checked before the model loads.

    Examples:

      picli verify --passkey

      picli verify ./llama-7b-16k --passkey --length 8192 --length 16384

      picli verify ./llama-7b-16k --passkey --baseline llama-7b

      picli verify ./llama-7b-16k --perplexity --data pg19_book.txt --length 2048 --length 16384

      picli verify ./m --perplexity --data pp.jsonl --sample-docs 128 --min-doc-tokens 32k --doc-tokens 32k

      picli verify ./m --passkey --quick --heatmap passkey.png --json

      picli verify ./m-16k --ruler --samples 20 --length 4k --length 16k --baseline ./m --plot ruler.png

      picli verify ./m --ruler --tasks niah_single_1,vt --samples 5 --haystack essays/ --chat-template none

      picli verify ./my-own-model --passkey -o verify.json

      picli verify ./m-16k ./m-16k-yarn ./m-16k-ntk --baseline ./m --passkey --perplexity --data book.txt
    \f
    Long because a Typer command declares each option as a parameter and its --help as this
    docstring: the body, which builds VerifySettings and calls one core function, is about 30 lines.
    """
    from .passkey import QUICK, Protocol
    from .verify import VerifySettings, run_side_by_side, run_verify

    if quick:
        positions, trials = QUICK
    settings = VerifySettings(
        passkey=passkey or None, perplexity=perplexity, ruler=ruler, ruler_tasks=tasks, ruler_samples=samples,
        haystack=haystack, chat_template=chat_template,
        lengths=tuple(parse_window(value, "--length") for value in length) if length else None,
        data=data, text_field=text_field, stride=stride, max_tokens=max_tokens,
        doc_tokens=parse_window(doc_tokens, "--doc-tokens") if doc_tokens is not None else None,
        min_doc_tokens=parse_window(min_doc_tokens, "--min-doc-tokens") if min_doc_tokens is not None else None,
        sample_docs=sample_docs,
        protocol=Protocol(positions=positions, trials=trials, seed=seed), baseline=baseline,
        device=device, dtype=dtype, attention=attn, device_map=device_map, batch_size=batch_size,
    )
    if heatmap and not settings.passkey:
        raise PicliError("--heatmap draws the passkey grid", hint="add --passkey")
    if heatmap:
        render.check_heatmap(heatmap)
    if plot and not settings.ruler:
        raise PicliError("--plot draws RULER's scores", hint="add --ruler")
    if plot:
        render.check_heatmap(plot, "--plot", "ruler.png")
    side_by_side = bool(models) and len(models) > 1
    run = run_side_by_side if side_by_side else run_verify
    with _quiet_third_party(json_output), render.progress(bars=not json_output) as on_event:
        report = run(models if side_by_side else (models[0] if models else None), settings, save=save,
                     save_to=output, command=_command_line(), on_event=on_event).to_dict()
    if output:
        render.message(f"Wrote {output}")
    if heatmap:
        render.passkey_heatmap_png(report, str(heatmap))
        render.message(f"Wrote {heatmap}")
    if plot:
        render.ruler_heatmap_png(report, str(plot))
        render.message(f"Wrote {plot}")
    render.emit(report, json_output=json_output, human=render.verification)


@app.command()
@boundary
def finetune(
    ctx: typer.Context,
    model: LastModelArg = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Text files, a folder, JSONL, or hf:NAME.")] = None,
    text_field: TextFieldOpt = "text",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output directory. Default: ./<name>-ft.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps (paper: 1000; ~200 already reach the window).")] = 1000,
    seq_len: Annotated[Optional[str], typer.Option("--seq-len", help="Tokens per sequence. Default: the model's window.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate. Default: 2e-5, or 1e-5 above 30B parameters.")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(
        "--warmup-steps", help="Linear warmup from 10% of the LR. Default: the paper's 20, capped at a tenth of "
        "--steps (5 of 50; none below 10 steps); fixed when the run starts, so --resume keeps it.",
        show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="Global batch in sequences, reached by gradient accumulation. Default: the paper's "
        "(section 3.1): 64 when the sequence length is 8192 and the model has at most 40B parameters (its "
        "7B/13B/33B runs at 8192), otherwise 128.",
        show_default=False)] = None,
    micro_batch_size: Annotated[int, typer.Option("--micro-batch-size", help="Sequences per forward pass per process.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data order and initialisation.")] = 0,
    lora: Annotated[bool, typer.Option("--lora", help="LoRA on attention plus trainable embeddings and norms (LongLoRA).")] = False,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="LoRA rank.")] = 16,
    keep_adapter: Annotated[bool, typer.Option("--keep-adapter", help="Save the LoRA adapter instead of merging it.")] = False,
    gradient_checkpointing: Annotated[str, typer.Option("--gradient-checkpointing",
                                                        help="auto (on above 4k tokens), on or off.")] = "auto",
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Every N steps: held-out loss and a quick "
                                                      "passkey at the training length.")] = None,
    stop_when_verified: Annotated[bool, typer.Option("--stop-when-verified", help="Stop once the passkey retrieves "
                                                     "at every depth tested by the quick protocol (4 depths x 2 "
                                                     "keys; needs --eval-every, default 50).")] = False,
    save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0: only the final "
                                            "model).")] = 100,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the output directory exactly, from "
                                         "its own source and data (MODEL, if given, must be that checkpoint).")] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Estimate memory per device (full and LoRA, 1 to 64 devices, "
                                       "DDP and FSDP) from config.json alone, and the schedule; time one step "
                                       "when the weights are here and fit. Trains nothing.")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 autocast on GPUs that have it), bfloat16, float16, "
                                       "float32.")] = "auto",
    attn: AttnOpt = "sdpa",
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even when a GPU is visible.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train into an existing output directory "
                                        "picli wrote (picli.json or checkpoints/ there).")] = False,
    json_output: JsonOpt = False,
) -> None:
    """The PI paper's short fine-tune at the new window.

    Defaults are the paper's recipe: AdamW (0.9, 0.95), no weight decay, LR 2e-5, 20 warmup
    steps from 10% of the LR, 1000 steps, sequence length = the window. picli's default
    global batch follows the paper (section 3.1): 64 when extending 7B/13B/33B models to
    8192, 128 in all other cases; so 64 at --seq-len 8192 (up to 40B parameters) and 128
    otherwise. Data smaller than steps x batch x seq-len is cycled, with a warning; the
    record counts unique tokens and epochs. picli ships no training data: the paper used
    the Pile (docs/finetune.md shows how to point --data at it).
    Runs unchanged under `accelerate launch` or `torchrun` (DDP, FSDP); --batch-size is
    global and the LR a function of the optimizer step, whatever the number of processes.
    Checkpoints are atomic; Ctrl-C or SIGTERM saves one after the step under way and exits
    130 or 143; --resume continues exactly, on any number of processes.
    The output keeps the PI config.

    Weights load from safetensors only, and resume state is picli's own safetensors and
    JSON: picli never unpickles a file, so a checkpoint with only pytorch_model.bin is
    refused with the command that converts it (docs/safety.md). Every option is checked
    before the model loads.

    Examples:

      picli finetune --data ./books/ --steps 1000

      picli finetune ./llama-7b-16k --data corpus.jsonl --text-field text -o ./llama-7b-16k-ft

      picli finetune ./m --data ./books --lora --eval-every 50 --stop-when-verified

      picli finetune ./m --data ./books --plan

      picli finetune ./m --resume

      accelerate launch --config_file fsdp.yaml -m picli finetune ./m --data ./books
    \f
    Long because a Typer command declares each option as a parameter and its --help as this
    docstring: the body, which builds TrainSettings and calls one core function, is about 20 lines.
    """
    from .finetune import SIGNAL_EXIT, finetune_command
    from .training import TrainSettings

    settings = TrainSettings(
        data=data, text_field=text_field, steps=steps, seq_len=parse_window(seq_len, "--seq-len") if seq_len else None,
        lr=lr, warmup_steps=warmup_steps, batch_size=batch_size, micro_batch_size=micro_batch_size, seed=seed,
        lora=lora, lora_rank=lora_rank, keep_adapter=keep_adapter, gradient_checkpointing=gradient_checkpointing,
        eval_every=eval_every, stop_when_verified=stop_when_verified, save_every=save_every, dtype=dtype,
        attention=attn, cpu=cpu,
    )
    with _quiet_third_party(json_output), render.progress(bars=not json_output) as on_event:
        # On --resume the run's settings win, except the steps and micro-batch given here
        # (training.RESUME_MAY_CHANGE). Compared by name: typer vendors its own click.
        given = {name for name in ("steps", "micro_batch_size")
                 if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
        result = finetune_command(model, output, settings, resume=resume, plan_only=plan, force=force,
                                  command=_command_line(), on_event=on_event, given=given)
    interrupted = SIGNAL_EXIT.get(result.get("signal"), 0)
    if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch, one report: the main process's
        render.emit(result, json_output=json_output, dry_run=plan, plan=render.finetune_plan,
                    human=render.finetune_result)
    if interrupted:
        raise typer.Exit(interrupted)  # 130 / 143: scripts see the interruption; the checkpoint is saved


@app.command()
@boundary
def push(
    repo: Annotated[str, typer.Argument(
        metavar="REPO", help="Hub repo id, namespace/name (first, as in `hf upload REPO [PATH]`).",
        show_default=False)],
    model: Annotated[Optional[str], typer.Argument(
        metavar="MODEL", help="Checkpoint directory to publish. Default: the last one picli wrote in this "
        "directory.", show_default=False)] = None,
    public: Annotated[bool, typer.Option("--public", help="Create the repo public (default: private).")] = False,
    revision: Annotated[Optional[str], typer.Option(
        "--revision", help="Push to this branch; a new branch is created from main.")] = None,
    commit_message: Annotated[Optional[str], typer.Option(
        "--commit-message", help="Commit title (default: the PI factor and windows).")] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request against main instead "
                                            "of committing to it.")] = False,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Allow uploading into a repo (or branch) that "
                                           "already has files.")] = False,
    overwrite_card: OverwriteCardOpt = False,
    token: Annotated[Optional[str], typer.Option(
        "--token", help="Hub token with write access (default: HF_TOKEN, then the stored `hf auth login`). "
        "Prefer HF_TOKEN: options are visible to other local users.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, sizes, repo, branch, model "
                                          "card) and exit; no network call.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Publish a checkpoint to the Hugging Face Hub with an honest model card.

    Before any network call the folder is checked (config and its two RoPE schemas agree,
    every shard exists with the size its header implies, a tokenizer is there) and README.md
    is generated from picli.json and picli-verify.json: what was done, the verification
    tables, how to run it in transformers / vLLM / llama.cpp / TGI, and the limitations. A
    README you wrote is kept; picli's section sits between markers. Then the repo is created
    (private unless --public) and the folder uploaded with huggingface_hub; running the same
    command again after an interruption finishes the upload. Training checkpoints,
    optimizer state and .picli/ are never uploaded.

    REPO comes first and MODEL second, as in `hf upload REPO [PATH]`; the other order (a
    directory, then a repo id) is refused before anything is read or sent.

    Examples:

      picli push org/model-16k

      picli push org/model-16k ./llama-7b-16k --public

      picli push org/model-16k ./m --revision pi-16k --commit-message "PI x8, 200 steps"

      picli push org/model-16k ./m --create-pr

      picli push org/model-16k ./m --dry-run
    """
    from .hub import push_command

    with _quiet_third_party(json_output, hub_bars=True), render.progress(bars=not json_output) as on_event:
        payload = push_command(repo, model, dry_run=dry_run, token=token, on_event=on_event, revision=revision,
                               private=not public, create_pr=create_pr, exist_ok=exist_ok,
                               commit_message=commit_message, overwrite_card=overwrite_card)
    render.emit(payload, json_output=json_output, dry_run=dry_run, plan=render.push_dry_run, human=render.push_result)


@app.command()
@boundary
def card(
    model: Annotated[Optional[str], typer.Argument(
        help="Checkpoint directory. Default: the last one picli wrote in this directory.")] = None,
    repo: Annotated[Optional[str], typer.Option("--repo", help="Hub repo id the card's snippets should name "
                                                "(default: the local path).")] = None,
    overwrite_card: OverwriteCardOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the card; write nothing.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Write or refresh README.md, the model card, without pushing.

    The card is built from picli.json (what was done: window, factor, fine-tune record) and
    picli-verify.json (passkey k_max and perplexity per length, baseline beside them), with
    runtime snippets and limitations. picli's text sits between <!-- picli:begin --> and
    <!-- picli:end -->; running it again replaces only that section, and a README without the
    markers gets the section appended, its front matter merged.

    Examples:

      picli card ./llama-7b-16k

      picli card ./m --repo org/model-16k --dry-run

      picli card --overwrite-card --json
    """
    from .card import write_model_card

    with render.progress(bars=False) as on_event:
        result = write_model_card(model, repo_id=repo, overwrite=overwrite_card, dry_run=dry_run, on_event=on_event)
    render.emit(result.to_dict(), json_output=json_output, dry_run=dry_run, plan=render.card_preview,
                human=render.card_written)


def main() -> None:
    app(prog_name="picli")


if __name__ == "__main__":
    main()
