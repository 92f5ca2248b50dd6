"""The `picli` command line: parse options, call one core function, render its result.

No math, file formats or Hub calls live here. Every command runs inside `boundary`, the
one place where user-fixable errors become `Error: ...` + a hint on stderr and exit 1;
anything else is a bug and keeps its traceback (always shown with PICLI_DEBUG=1).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, render
from .errors import PicliError

app = typer.Typer(
    name="picli",
    help="Extend the context window of RoPE language models by Position Interpolation "
    "(arXiv 2306.15595), verify the result, and publish it.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _quiet_third_party(json_output: bool) -> None:
    # transformers and huggingface_hub draw their own bars on stderr; --json means quiet.
    if json_output:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["PICLI_QUIET"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def boundary(command):
    """The error boundary: PicliError and the OS errors a user can fix -> one line, exit 1."""

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
            if exc.errno not in known or os.environ.get("PICLI_DEBUG") == "1":
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            render.error(PicliError(f"{known[exc.errno]}{where}; nothing was left behind",
                                    hint="free space or choose another -o/--output, then run again"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            render.message("Interrupted; nothing was left behind.")
            raise typer.Exit(130) from None

    return wrapper


def parse_window(text: str, option: str = "--to") -> int:
    """'16384', '16k', '16K' -> 16384. A non-number is a user error, not a usage error."""
    match = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", text or "")
    if not match:
        raise PicliError(f"{option} must be a number of tokens like 16384 or 16k, got {text!r}",
                         hint=f"e.g. {option} 16384")
    tokens = int(match.group(1)) * (1024 if match.group(2) else 1)
    if tokens <= 0:
        raise PicliError(f"{option} must be positive, got {text!r}", hint=f"e.g. {option} 16384")
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
    model: Annotated[str, typer.Argument(help="Checkpoint directory, .gguf file, Hub id (org/name[@rev]) or alias.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """What a checkpoint is, and what each runtime will do with it.

    Reads config files and tensor headers only; weights are never loaded.

    Examples:

      picli inspect smollm2-135m

      picli inspect ./llama-7b-16k --json

      picli inspect model.Q4_K_M.gguf
    """
    from .inspector import inspect_model

    _quiet_third_party(json_output)
    with render.progress(enabled=not json_output) as on_event:
        report = inspect_model(model, on_event=on_event).to_dict()
    if json_output:
        render.print_json(report)
    else:
        render.inspection(report)


@app.command()
@boundary
def extend(
    model: Annotated[str, typer.Argument(help="Checkpoint directory, .gguf file, Hub id (org/name[@rev]) or alias.")],
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and config diff; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output; allow replacing a "
                                        "llama3/yarn/dynamic scheme with linear PI (with a warning).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """Write Position Interpolation (linear RoPE scaling) into a new checkpoint.

    The config is written in both schemas (rope_parameters for transformers 5, top-level
    rope_theta + rope_scaling for 4.x, vLLM, TGI, llama.cpp), then the installed
    transformers reloads it and must compute the source's inverse frequencies divided by
    the factor. The source checkpoint is never modified.

    Examples:

      picli extend smollm2-135m --to 16384

      picli extend ./llama-7b --to 16k -o ./llama-7b-16k

      picli extend huggyllama/llama-7b --to 32768 --dry-run

      picli extend model.Q4_K_M.gguf --to 16384
    """
    from .extend import apply_extend, plan_extend
    from .provenance import remember_last

    _quiet_third_party(json_output)
    target_window = parse_window(to)
    current = parse_window(from_window, "--from") if from_window is not None else None
    with render.progress(enabled=not json_output) as on_event:
        plan = plan_extend(model, target_window, output=output, from_window=current, weights=weights,
                           max_position=max_position_embeddings, force=force, on_event=on_event)
        for text in plan.warnings:
            render.warning(text)
        if plan.source.resolved_from:
            render.message(f"MODEL: {plan.source.resolved_from}")
        if dry_run:
            payload = {"dry_run": True, "plan": _plan_dict(plan)}
        else:
            result = apply_extend(plan, command=["picli", *sys.argv[1:]], on_event=on_event)
            remember_last(plan.output, "extend")
            payload = {"dry_run": False, "plan": _plan_dict(plan), "self_check": result.self_check}
    if json_output:
        render.print_json(payload)
    elif dry_run:
        render.extend_plan(payload["plan"], dry_run=True)
    else:
        render.extend_result(payload)
        render.message(f"Wrote {plan.output}; `picli verify` and `picli push` will use it from this directory.")


def _plan_dict(plan) -> dict:
    return {
        "source": str(plan.source.path), "source_record": plan.source.source, "output": str(plan.output),
        "current_window": plan.current_window, "target_window": plan.target_window,
        "original_window": plan.original_window, "factor": plan.factor, "previous_factor": plan.previous_factor,
        "theta": plan.theta, "weights": plan.weights, "max_position_embeddings": plan.max_position,
        "changes": {name: [{"key": k, "before": b, "after": a} for k, b, a in diffs]
                    for name, diffs in plan.changes.items()},
        "files": [dataclasses.asdict(action) for action in plan.files],
        "warnings": plan.warnings,
    }


def main() -> None:
    app(prog_name="picli")


if __name__ == "__main__":
    main()
