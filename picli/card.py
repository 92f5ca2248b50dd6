"""The model card (README.md) that `picli push` publishes and `picli card` writes.

Everything in it comes from the checkpoint's own records: picli.json (what was done: the
window L -> L', the factor, the fine-tune record, the base model) and picli-verify.json
(what was measured: passkey k_max and perplexity per length, the baseline beside it).
Nothing is claimed that was not recorded: a checkpoint without a fine-tune record says
"not fine-tuned" plainly, one without a verification record says "not verified".

`render_card` is pure apart from reading config.json (for the runtime flags). A README the
user wrote is kept: picli's text lives between `<!-- picli:begin -->` and
`<!-- picli:end -->`, a refresh replaces only that section, and a README without the
markers gets the section appended. Front matter is merged: the user's keys stay, picli
adds the ones missing. `base_model` / `base_model_relation` are the exception when
picli.json names the base model: a README copied from the source checkpoint names the
source's own parent there, which would be false for this repo.

base_model_relation is always "finetune" when the base model is known. The Hub allows
adapter, merge, quantized and finetune; a PI checkpoint is a full checkpoint derived from
one base model, which is what the Hub itself infers as "finetune" when the key is absent.
Whether it was actually trained is said in the body, not in this key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import provenance, rope
from .checkpoint import outside_links, read_config, resolve
from .errors import NotACheckpoint, PicliError
from .events import Events
from .files import atomic_write_bytes
from .hub_errors import check_repo_id
from .kv_cache import kv_cache_bytes

BEGIN = "<!-- picli:begin -->"
END = "<!-- picli:end -->"
README = "README.md"
TAGS = ["picli", "position-interpolation", "long-context", "rope-scaling"]
# Licenses of base models picli knows without reading their card (the embedded model).
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


class CardError(PicliError):
    """README.md cannot be merged with picli's section (e.g. its front matter is not YAML)."""


# ---------------------------------------------------------------------------------------
# Reading the inputs (the only I/O besides config.json and writing the result).


def load_inputs(checkpoint_dir: Path) -> tuple[dict, dict | None, str | None]:
    """(picli.json, picli-verify.json or None, README.md text or None) of a checkpoint.

    A record that exists but is broken (invalid JSON, wrong types) raises provenance's
    RecordError naming the file: a card built without it would say "no provenance" or "not
    verified", which would be false.
    """
    checkpoint_dir = Path(checkpoint_dir)
    record = provenance.read_record(checkpoint_dir)
    verify_record = provenance.read_verify_record(checkpoint_dir)
    if _measured(verify_record):
        path = provenance.verify_record_path(checkpoint_dir)
        provenance.shown_summary(provenance.verify_runs(verify_record, path), path)
    try:
        existing = (checkpoint_dir / README).read_text(encoding="utf-8")
    except OSError:
        existing = None
    except UnicodeDecodeError as exc:  # merging into it would mangle the user's text
        raise CardError(f"{checkpoint_dir / README} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"offset {exc.start})", hint="save README.md as UTF-8 (e.g. iconv -f latin1 -t utf-8), or "
                        "move it away and picli writes a new card") from exc
    return record, verify_record, existing


def write_card(checkpoint_dir: Path, text: str) -> Path:
    path = checkpoint_dir / README
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def card_action(existing_readme: str | None, overwrite: bool) -> str:
    """create | refresh (replace picli's marked section) | append (to the user's README) | overwrite."""
    if existing_readme is None or not existing_readme.strip():
        return "create"
    if overwrite:
        return "overwrite"
    return "refresh" if section_span(existing_readme) else "append"


def section_span(text: str) -> tuple[int, int] | None:
    """(start, end) of picli's section in `text`, or None when there is none (then it is appended).

    Every byte outside the span is the user's and is kept. A begin marker without an end
    marker after it, or a second begin marker, leaves the section's end unknown: replacing up
    to some later marker could take the user's text with it, so it is refused (CardError).
    An end marker alone is the user's text (a section is appended after it).
    """
    start = text.find(BEGIN)
    if start < 0:
        return None
    end = text.find(END, start)
    if end < 0 or text.count(BEGIN) > 1:
        problem = "has no `<!-- picli:end -->` after it" if end < 0 else "appears more than once"
        raise CardError(f"README.md: picli's section marker `<!-- picli:begin -->` {problem}, so picli cannot "
                        "tell its section from your text", hint="put `<!-- picli:end -->` where picli's section "
                        "ends (or remove the extra begin marker); --overwrite-card replaces the whole README")
    return start, end + len(END)


@dataclass(frozen=True)
class CardResult:
    """What `picli card` did: the card's text, how it met the README there, where it went."""

    checkpoint: Path
    card: str
    action: str  # create | refresh | append | overwrite
    path: Path | None  # None: a dry run, nothing written
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The --json shape: {path, action, written, card}."""
        return {"path": str(self.path) if self.path else None, "action": self.action,
                "written": self.path is not None, "card": self.card}


def write_model_card(model: str | None, repo_id: str | None = None, overwrite: bool = False, dry_run: bool = False,
                     on_event: Events = None) -> CardResult:
    """`picli card`: README.md of a local checkpoint directory, built and (unless dry_run) written.

    MODEL is a directory, never resolved as a Hub id or alias: the card is written into it, and
    a download cache is not a place to write. None: the last checkpoint picli wrote here.
    """
    checkpoint_dir = resolve(None, on_event=on_event).path if model is None else Path(model)
    if not (checkpoint_dir / "config.json").is_file():
        raise NotACheckpoint(f"{checkpoint_dir} is not a checkpoint directory (no config.json)",
                             hint="pass the directory picli extend wrote")
    if repo_id is not None:
        check_repo_id(repo_id, option="--repo", usage="picli card [MODEL] --repo NAMESPACE/NAME")  # it is written into the card's code snippets
    # push's rule for links: a README.md leading outside would bring that file's text in, to be pushed.
    outside = outside_links(checkpoint_dir, skip=lambda relative, _: relative != README)
    if outside:
        raise NotACheckpoint(f"{outside[0]}; picli reads and writes only the checkpoint's own files",
                             hint="replace the link with the file itself, or remove it")
    record, verify_record, existing = load_inputs(checkpoint_dir)
    warnings = [] if record else ["no picli.json here: the card has no provenance"]
    if on_event:
        for text in warnings:
            on_event({"kind": "warning", "text": text})
    text = render_card(checkpoint_dir, record, verify_record, existing, repo_id, overwrite)
    path = None if dry_run else write_card(checkpoint_dir, text)
    return CardResult(checkpoint=checkpoint_dir, card=text, action=card_action(existing, overwrite), path=path,
                      warnings=warnings)


# ---------------------------------------------------------------------------------------
# The card.


def render_card(checkpoint_dir: Path, record: dict, verify_record: dict | None, existing_readme: str | None,
                repo_id: str | None, overwrite: bool = False) -> str:
    """README.md: merged front matter, then the user's text with picli's section in place."""
    checkpoint_dir = Path(checkpoint_dir)
    config = read_config(checkpoint_dir)
    user_meta, user_body = split_front_matter(existing_readme or "")
    license_id = user_meta.get("license") or _source_license(record)
    metadata = _metadata(record, license_id)
    section = "\n".join([BEGIN, _body(checkpoint_dir, config, record, verify_record, repo_id), END])
    action = card_action(existing_readme, overwrite)
    if action in ("create", "overwrite"):
        return _join(metadata, section + "\n")
    merged = _merge_metadata(user_meta, metadata, authoritative=bool(record.get("base_model")))
    if action == "refresh":
        start, end = section_span(user_body)
        body = user_body[:start] + section + user_body[end:]
    else:
        body = user_body.rstrip() + "\n\n" + section + "\n"
    return _join(merged, body)


def split_front_matter(text: str) -> tuple[dict, str]:
    """({front matter}, the rest). A README without front matter is all body."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        data = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise CardError(f"README.md front matter is not valid YAML ({str(exc).splitlines()[0]})",
                        hint="fix the block between the --- lines, or pass --overwrite-card") from exc
    if not isinstance(data, dict):
        raise CardError("README.md front matter is not a mapping of keys to values",
                        hint="fix the block between the --- lines, or pass --overwrite-card")
    return data, text[match.end():]


def _join(metadata: dict, body: str) -> str:
    import yaml

    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, default_flow_style=False).strip()
    return f"---\n{front}\n---\n\n{body.lstrip()}"


def _metadata(record: dict, license_id: str | None) -> dict:
    metadata: dict[str, Any] = {}
    if license_id:
        metadata["license"] = license_id
    base_model = record.get("base_model")
    if base_model:
        metadata["base_model"] = base_model
        metadata["base_model_relation"] = "finetune"
    metadata["library_name"] = "transformers"
    metadata["pipeline_tag"] = "text-generation"
    metadata["tags"] = list(TAGS)
    return metadata


def _merge_metadata(user: dict, ours: dict, authoritative: bool) -> dict:
    merged = dict(user)
    for key, value in ours.items():
        if key == "tags":
            existing = user.get("tags") or []
            existing = existing if isinstance(existing, list) else [existing]
            merged["tags"] = existing + [tag for tag in value if tag not in existing]
        elif key in ("base_model", "base_model_relation") and authoritative:
            merged[key] = value
        else:
            merged.setdefault(key, value)
    return merged


def _source_license(record: dict) -> str | None:
    """The base model's license: a local source's README front matter, else a known base model."""
    source_path = (record.get("source") or {}).get("path")
    if source_path:
        try:
            meta, _ = split_front_matter((Path(source_path) / README).read_text(encoding="utf-8"))
            if isinstance(meta.get("license"), str):
                return meta["license"]
        except (OSError, UnicodeDecodeError, CardError):  # the source's card is only a hint for the license
            pass
    return KNOWN_LICENSES.get(record.get("base_model") or "")


def _body(checkpoint_dir: Path, config: dict, record: dict, verify_record: dict | None, repo_id: str | None) -> str:
    rope_record = record.get("rope") or {}
    state = rope.read_state(config)
    target = rope.effective_window(config, provenance.recorded_window(record))
    original = rope_record.get("original_window") or round(target / state.factor)
    factor = rope_record.get("factor") or state.factor
    name = repo_id or f"./{checkpoint_dir.name}"
    base = record.get("base_model")
    title = repo_id.split("/")[-1] if repo_id else checkpoint_dir.name
    parts = [f"# {title}", ""]
    named = rope_record.get("type", "linear")
    method = _method_of(record)
    if rope_record:
        origin = f"[{base}](https://huggingface.co/{base})" if base else _source_label(record)
        parts.append(f"{origin} with its context window extended from **{original:,} to {target:,} tokens** by "
                     f"{method.title if named in rope.METHODS else named}, factor **{factor:g}**. "
                     f"Made with picli {record.get('picli_version', '')}".rstrip() + ".")
    else:
        parts.append("No picli.json was found beside this checkpoint, so this card has no provenance: what was "
                     f"done to it is not recorded. Its config says RoPE {state.scaling_type}, factor "
                     f"{state.factor:g}, window {state.window:,} tokens.")
    parts += ["", *_what_was_done(config, record, state, original, target, factor)]
    method_section = method.card_method(rope_record, state.theta, state.rotary_dim, state.model_type, original,
                                        target, factor)
    if method_section:
        parts += ["", *method_section]
    parts += ["", *_verification(record, verify_record, target)]
    parts += ["", *_how_to_run(config, record, state, name, target, factor)]
    parts += ["", *_limitations(config, record, verify_record, original, target, factor)]
    return "\n".join(parts).rstrip() + "\n"


def _method_of(record: dict) -> rope.Method:
    """The method picli.json names (linear PI when it names none, or one picli does not write)."""
    return rope.METHODS.get((record.get("rope") or {}).get("type", "linear"), rope.METHODS["linear"])


def _self_check_row(record: dict) -> str:
    check = record.get("self_check") or {}
    if not check.get("ok"):
        return "not recorded"
    return _method_of(record).card_self_check(check)


def _source_label(record: dict) -> str:
    source = record.get("source") or {}
    if source.get("repo"):
        return f"`{source['repo']}`"
    if source.get("path"):
        return f"`{Path(source['path']).name}`"  # a local path says nothing useful to readers
    return "The source model"


def _source_note(record: dict) -> str | None:
    """What the source's own record says about its weights (the embedded model: dequantized GGUF)."""
    source = record.get("source") or {}
    try:
        note = provenance.read_json_quiet(provenance.record_path(Path(source["path"]))).get("note")
    except (KeyError, TypeError):
        note = None
    if not note and source.get("embedded"):
        note = "imported from a GGUF file"
    return note if isinstance(note, str) else None


def _what_was_done(config: dict, record: dict, state, original: int, target: int, factor: float) -> list[str]:
    lines = ["## What was done", ""]
    if not record.get("rope"):
        return lines + ["Unknown: no picli.json record."]
    versions = record.get("versions") or {}
    rows = [
        ("base model", f"`{record['base_model']}`" if record.get("base_model") else _source_label(record)),
        ("method", _method_of(record).summary.format(factor=factor)),
        ("window", f"{original:,} -> {target:,} tokens (factor {factor:g}, RoPE theta {state.theta:g})"),
        ("config", f"`rope_scaling` = `{json.dumps(config.get('rope_scaling'))}` (transformers 4.x, vLLM, TGI, "
                   f"llama.cpp); `rope_parameters` = `{json.dumps(config.get('rope_parameters'))}` (transformers "
                   f"5.x); `max_position_embeddings` = {config.get('max_position_embeddings')}"),
        ("weights", "fine-tuned at the new window (below)" if record.get("finetune")
         else "**unchanged** by picli: the source checkpoint's weights; only the config was changed"
         + (f" (the source was {note}, so they are not bit-identical to the base model's)"
            if (note := _source_note(record)) else "")),
        ("self-check", _self_check_row(record)),
        ("tools", ", ".join(f"{name} {versions[name]}" for name in ("picli", "transformers") if versions.get(name))
         or "-"),
    ]
    for step in record.get("history") or []:
        earlier = step.get("rope") or {}
        if earlier:
            rows.append(("earlier step", f"{earlier.get('original_window')} -> {earlier.get('target_window')} "
                                         f"tokens, factor {earlier.get('factor'):g}"))
    lines += ["| | |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows], ""]
    finetune = record.get("finetune")
    if finetune:
        lines += ["### Fine-tune", "", "| setting | value |", "|---|---|",
                  *[f"| {key} | {_cell(value)} |" for key, value in _finetune_rows(finetune)]]
    else:
        lines.append("**Not fine-tuned.** This checkpoint has the source's weights; only its RoPE configuration "
                     f"changed. {_method_of(record).card_untrained()}")
    return lines


def _finetune_rows(finetune: Any) -> list[tuple[str, Any]]:
    """The fine-tune record (finetune.py's `record`) as readable rows; unknown scalar keys as they are."""
    if not isinstance(finetune, dict):
        return [("record", finetune)]
    record = dict(finetune)
    rows: list[tuple[str, Any]] = []

    def take(key: str, label: str, shown=lambda value: value) -> None:
        value = record.pop(key, None)
        if value is not None:
            rows.append((label, shown(value)))

    data = record.pop("data", None)
    if data:
        rows.append(("data", data if str(data).startswith("hf:") else Path(str(data)).name))
    record.pop("text_field", None)
    steps, planned = record.pop("steps", None), record.pop("planned_steps", None)
    if steps is not None:
        rows.append(("steps", f"{steps} of {planned} planned" if planned and planned != steps else steps))
    tokens, unique, epochs = record.pop("tokens", None), record.pop("unique_tokens", None), record.pop("epochs", None)
    train_sequences = record.pop("train_sequences", None)
    if tokens is not None:
        # A corpus smaller than steps x batch x seq-len is cycled: repeats are not new data.
        rows.append(("tokens trained", f"{tokens:,}" if unique is None or unique >= tokens else
                     f"{tokens:,}, of which {unique:,} unique (the data was repeated)"))
    if epochs is not None:
        rows.append(("epochs over the data", f"{epochs:.2f}" + (f" ({train_sequences:,} training sequences)"
                                                               if train_sequences is not None else "")))
    take("seq_len", "sequence length", lambda value: f"{value:,}")
    take("batch_size", "global batch (sequences)")
    take("micro_batch_size", "micro batch")
    take("processes", "processes")
    take("lr", "learning rate", lambda value: f"{value:g}")
    take("warmup_steps", "warmup steps")
    take("optimizer", "optimizer")
    # picli finetune's loop: stated as picli's, since the paper names neither.
    rows += [("LR after warmup", "constant: picli's choice (the paper does not say)"),
             ("gradient clipping", "none: picli's choice (the paper does not say)")]
    lora = record.pop("lora", None)
    rows.append(("weights trained", f"LoRA rank {lora.get('rank')}, alpha {lora.get('alpha')}, "
                                    f"{'merged into the weights' if lora.get('merged') else 'kept as an adapter'}"
                 if isinstance(lora, dict) else "all (full fine-tune)"))
    take("final_loss", "final training loss", lambda value: f"{value:.4f}")
    take("eval_loss", "held-out loss", lambda value: f"{value:.4f}")
    history = record.pop("eval_history", None)
    if history:
        rows.append(("evaluations during training", len(history)))
    take("stopped_when_verified_at", "stopped early at step",
         lambda value: f"{value} (passkey retrieved at every depth tested by the quick protocol, 4 depths x 2 keys)")
    hardware = record.pop("hardware", None)
    if isinstance(hardware, dict):
        rows.append(("hardware", f"{hardware.get('processes', 1)} x {hardware.get('name') or hardware.get('device')}"))
    take("wall_seconds", "wall time", lambda value: f"{value / 60:.1f} min")
    take("seed", "seed")
    take("finished", "finished")
    rows += [(key, value) for key, value in record.items() if isinstance(value, (str, int, float, bool))]
    return rows


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _measured(verify_record: dict | None) -> bool:
    runs = provenance.verify_runs(verify_record)
    return bool(runs) and isinstance(runs[0].get("model"), dict)


def verification_summary(record: dict, verify_record: dict | None) -> dict | None:
    """From picli-verify.json when present (every run it keeps: per protocol and length the
    newest), else the summary picli.json keeps (the same shape)."""
    if not _measured(verify_record):
        return record.get("verification")
    return provenance.shown_summary(provenance.verify_runs(verify_record))


def _verification(record: dict, verify_record: dict | None, target: int) -> list[str]:
    lines = ["## Verification", ""]
    summary = verification_summary(record, verify_record)
    if not summary or not summary.get("model"):
        return lines + [f"**Not verified.** No `picli verify` record is stored with this checkpoint, so nothing "
                        f"here shows that it works at {target:,} tokens. Measure it with "
                        "`picli verify MODEL --passkey --baseline BASE` before relying on the window."]
    model, baseline = summary["model"], summary.get("baseline")
    rows = {name: _rows(summary, name) for name in provenance.PROTOCOL_TABLES}
    finetune = record.get("finetune")
    trained = isinstance(finetune, dict) and (finetune.get("finished") or finetune.get("created"))
    dates = [str(row["created"]) for table in rows.values() for row in table.values() if row.get("created")]
    if trained and dates and str(trained) > min(dates):
        lines += ["> The verification below predates the fine-tune: it measured the weights before training.", ""]
    lines += ["Each row is the newest `picli verify` measurement at that length, dated in its *measured* column "
              "(picli-verify.json keeps every run).", ""]
    if model.get("passkey_k_max"):
        newest = _newest(rows["passkey"])
        protocol = newest["settings"].get("protocol") or {}
        threshold = protocol.get("threshold", 0.2)
        lines += ["### Passkey retrieval", ""]
        lines += [f"Mohtashami & Jaggi's prompt as in the PI paper (section 3.3): {_passkey_protocol(protocol)}. "
                  "k_max is the largest depth k (tokens from the key line to the end of the prompt) such that every "
                  f"depth up to k succeeds in at least {threshold:.0%} of trials. k_max cannot equal the length: the "
                  "deepest key sits after the task line and before the question, so it is shown beside the "
                  "deepest depth tested, with the lowest success rate at any depth up to k_max.", ""]
        header = "| length | k_max | deepest k tested | lowest success up to k_max | mean success |"
        rule = "|---:|---:|---:|---:|---:|"
        if baseline and baseline.get("passkey_k_max"):
            header += " baseline k_max | baseline success |"
            rule += "---:|---:|"
        lines += [header + " measured |", rule + "---|"]
        for length, k_max in model["passkey_k_max"].items():
            deepest = (model.get("passkey_k_largest") or {}).get(length)
            lowest = (model.get("passkey_lowest_success") or {}).get(length)
            row = (f"| {int(length):,} | {k_max:,} | {'-' if deepest is None else f'{deepest:,}'} | "
                   f"{'-' if lowest is None else f'{lowest:.0%}'} | {_rate(model, length)} |")
            if baseline and baseline.get("passkey_k_max"):
                base_k = baseline["passkey_k_max"].get(length)
                row += f" {'-' if base_k is None else f'{base_k:,}'} | {_rate(baseline, length)} |"
            lines.append(row + f" {_date(rows['passkey'].get(length))} |")
        lines += ["", *_other_settings(rows["passkey"], newest, lambda row: _passkey_protocol(
            row["settings"].get("protocol") or {}))]
    if model.get("perplexity"):
        newest = _newest(rows["perplexity"])
        lines += ["### Perplexity", "", f"Sliding window {_perplexity_settings(newest)}; lower is better.", ""]
        header, rule = "| length | perplexity |", "|---:|---:|"
        if baseline and baseline.get("perplexity"):
            header += " baseline | delta |"
            rule += "---:|---:|"
        lines += [header + " measured |", rule + "---|"]
        for length, value in model["perplexity"].items():
            row = f"| {int(length):,} | {value:.3f} |"
            if baseline and baseline.get("perplexity"):
                base_value = baseline["perplexity"].get(length)
                row += (" - | - |" if base_value is None else f" {base_value:.3f} | {value - base_value:+.3f} |")
            lines.append(row + f" {_date(rows['perplexity'].get(length))} |")
        lines += ["", *_other_settings(rows["perplexity"], newest, _perplexity_settings)]
    lines += _baselines(record, rows)
    for note in summary.get("notes") or []:
        lines.append(f"- Note: {note}")
    return lines


def _rows(summary: dict, protocol: str) -> dict[str, dict]:
    """Length -> when, how and beside which baseline that row was measured. A summary from before
    picli kept every run ("measured" absent) is one run: its own date and settings for every row."""
    measured = (summary.get("measured") or {}).get(protocol)
    if measured is not None:
        return {length: {**row, "settings": row.get("settings") or {}} for length, row in measured.items()}
    model, baseline = summary.get("model") or {}, summary.get("baseline")
    settings = ({"protocol": summary.get("passkey_protocol") or {}} if protocol == "passkey"
                else {"stride": model.get("stride")})
    row = {"created": summary.get("created"), "data": summary.get("perplexity_data"), "settings": settings,
           "baseline": {key: baseline.get(key) for key in ("path", "source", "window")} if baseline else None}
    return {length: row for length in model.get(provenance.PROTOCOL_TABLES[protocol][0]) or {}}


def _newest(rows: dict[str, dict]) -> dict:
    return max(rows.values(), key=lambda row: str(row.get("created") or ""), default={"settings": {}})


def _date(row: dict | None) -> str:
    created = (row or {}).get("created")
    return str(created)[:10] if created else "-"


def _passkey_protocol(protocol: dict) -> str:
    if not protocol:
        return "protocol not recorded"
    described = (f"{protocol.get('positions')} key depths x {protocol.get('trials')} random 5-digit keys "
                 f"(seed {protocol.get('seed')})")
    if protocol.get("name") == "quick":
        described += "; the *quick* smoke test, not the paper's 32 x 10"
    return described


def _perplexity_settings(row: dict) -> str:
    data = row.get("data")
    label = data if isinstance(data, str) and data.startswith("hf:") else (Path(data).name if data else "?")
    return f"(stride {row['settings'].get('stride') or 256}) on `{label}`"


def _other_settings(rows: dict[str, dict], newest: dict, describe) -> list[str]:
    """A line for the rows measured otherwise than the text above the table says."""
    shown = describe(newest)
    other = [f"{int(length):,} tokens ({_date(row)}): {describe(row)}" for length, row in rows.items()
             if describe(row) != shown]
    return ["Rows measured with other settings: " + "; ".join(other) + ".", ""] if other else []


def _baselines(record: dict, rows: dict[str, dict[str, dict]]) -> list[str]:
    """Who each shown row was measured beside: one line per baseline."""
    found: list[tuple[dict, list[str]]] = []
    for protocol, table in rows.items():
        for length, row in table.items():
            baseline = row.get("baseline")
            if not baseline:
                continue
            for known, where in found:
                if known == baseline:
                    where.append(f"{protocol} {int(length):,}")
                    break
            else:
                found.append((baseline, [f"{protocol} {int(length):,}"]))
    lines = []
    for baseline, where in found:
        window = baseline.get("window")
        window_text = f"window {window:,} tokens" if isinstance(window, int) else "window not recorded"
        if _is_recorded_source(record, baseline):
            who = f"the model before interpolation ({_baseline_name(baseline)}, {window_text})"
        else:
            who = f"{_baseline_name(baseline)} ({window_text}; not the source recorded in picli.json)"
        rows_text = "" if len(found) == 1 else f" (rows: {', '.join(where)})"
        lines.append(f"Baseline{rows_text}: {who}, measured with the same prompts, keys and text.")
    return lines


def _is_recorded_source(record: dict, baseline: dict) -> bool:
    """Whether the verify baseline is the checkpoint picli.json names as this one's source."""
    source = record.get("source") or {}
    measured = baseline.get("source") or {}
    if source.get("repo"):
        if measured.get("repo"):
            return (measured["repo"], measured.get("revision")) == (source["repo"], source.get("revision"))
        # A record from before baselines kept their source: a Hub snapshot's path names repo and revision.
        path = Path(str(baseline.get("path") or ""))
        return (f"models--{source['repo'].replace('/', '--')}" in path.parts
                and path.name == source.get("revision"))
    path = measured.get("path") or baseline.get("path")
    return bool(source.get("path") and path) and Path(source["path"]).resolve() == Path(path).resolve()


def _baseline_name(baseline: dict) -> str:
    """The baseline as a reader can identify it: a Hub id, or a directory name (never a local path)."""
    measured = baseline.get("source") or {}
    if measured.get("repo"):
        return f"`{measured['repo']}`"
    if measured.get("embedded"):
        return f"`{measured['embedded']}`"
    path = measured.get("path") or baseline.get("path")
    return f"`{Path(path).name}`" if path else "a baseline whose path was not recorded"


def _rate(run: dict, length: str) -> str:
    rate = (run.get("passkey_success") or {}).get(length)
    return "-" if rate is None else f"{rate:.0%}"


def _how_to_run(config: dict, record: dict, state, name: str, target: int, factor: float) -> list[str]:
    method = _method_of(record)
    legacy = rope.predict_transformers4(config)
    local = name if name.startswith(".") else name.split("/")[-1]
    vllm = rope.predict_vllm(config, intended_window=target)
    llama = rope.predict_llama_cpp(config, intended_window=target)
    lines = ["## How to run it", "", "**transformers** (5.x reads `rope_parameters`; 4.x reads `rope_scaling` and "
             f"needs >= {legacy['min_version']} for `{state.model_type}`, older releases ignore the scaling "
             "silently):", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
             f'model = AutoModelForCausalLM.from_pretrained("{name}", dtype="auto")  # < 4.56: torch_dtype="auto"',
             "```", "",
             f"**vLLM**: pass the window explicitly. {method.card_vllm()}, so on its own it would allow "
             f"{vllm['derived_max_model_len']:,} tokens" + (", past the interpolated window" if vllm["over_claims"]
                                                            else "") + ":", "",
             "```bash", f"vllm serve {name} {vllm['flag']}", "```", "",
             f"**llama.cpp**: {method.card_llama_cpp()}; name the context, since builds differ in its default:",
             "", "```bash", *([f"hf download {name} --local-dir {local}"] if "/" in name and not name.startswith(".")
                              else []),
             f"python convert_hf_to_gguf.py {local} --outfile model.gguf",
             f"llama-cli -m model.gguf -c {target}",
             "# a GGUF converted without the scaling keys:",
             f"llama-cli -m model.gguf {llama['flags']}",
             "```", "",
             "**Text Generation Inference** reads `rope_scaling` from config.json but caps the request length "
             "on its own; raise the limits to the window:", "",
             "```bash",
             "docker run --gpus all -p 8080:80 ghcr.io/huggingface/text-generation-inference \\",
             f"  --model-id {name} \\",
             f"  --max-input-tokens {target - 1} --max-total-tokens {target} --max-batch-prefill-tokens {target}",
             method.card_tgi(factor),
             "```"]
    return lines


def _limitations(config: dict, record: dict, verify_record: dict | None, original: int, target: int,
                 factor: float) -> list[str]:
    """What the window does not give: past it and inside the old one (the method's own limits), and the
    limits every method shares."""
    method = _method_of(record)
    lines = ["## Limitations", "",
             f"- {method.card_past_window(original, target, factor)}",
             "- **A passkey pass is not full long-context understanding.** Retrieving one number shows the "
             "positions are usable, not that the model reasons over the whole window (RULER found 32k PI models "
             "effective at about 4k).",
             f"- {method.card_short_range(original, factor, _short_range_measured(record, verify_record, original))}"]
    try:
        kv_bytes = kv_cache_bytes(config, target)
    except (KeyError, TypeError, ZeroDivisionError):
        kv_bytes = 0
    if kv_bytes:
        size = f"{kv_bytes / 2**30:.1f} GiB" if kv_bytes >= 2**30 else f"{kv_bytes / 2**20:.1f} MiB"
        lines.append(f"- **Memory.** The KV cache of one {target:,}-token sequence takes about {size} in "
                     "16-bit precision, on top of the weights.")
    return lines


def _short_range_measured(record: dict, verify_record: dict | None, original: int) -> str | None:
    """What picli-verify.json measured inside the original window (perplexity, passkey), beside
    the baseline where it has one; None when it measured nothing there."""
    summary = verification_summary(record, verify_record) or {}
    model, baseline = summary.get("model") or {}, summary.get("baseline") or {}
    found = []
    for table, label, shown in (("perplexity", "perplexity", lambda value: f"{value:.3f}"),
                                ("passkey_success", "passkey success", lambda value: f"{value:.0%}")):
        cells = []
        for length, value in (model.get(table) or {}).items():
            if int(length) <= original:
                base = (baseline.get(table) or {}).get(length)
                cells.append(f"{shown(value)} at {int(length):,} tokens"
                             + (f" (baseline {shown(base)})" if base is not None else ""))
        if cells:
            found.append(f"{label} " + ", ".join(cells))
    if not found:
        return None
    return "Measured for this model by picli (Verification above): " + "; ".join(found)
