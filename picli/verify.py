"""`picli verify`: passkey k_max, sliding-window perplexity and RULER's synthetic tasks, for one
model or several side by side, and optionally a baseline, all measured with exactly the same
protocol (same lengths, prompts, seed and text), loaded one at a time.

Side by side (`run_side_by_side`). Every MODEL gets the report a single-model run with the
same --length list and --baseline would give it (a `VerifyReport`, and its own records under
the rules below); the baseline is measured once and shared. Without --length the lengths are
the union of the MODELs' windows (not the baseline's), so every model is measured at every
length and the table's rows line up; lengths past a model's window are marked. The passkey
keys are drawn per length list in order, so a model's row is reproduced alone by passing the
same --length list.

Where the record goes. A checkpoint picli wrote (it has picli.json) gets the full record as
picli-verify.json and a summary in its picli.json, which is what `picli push` turns into the
model card's tables. A checkpoint picli did not write is the user's own and is only read:
the numbers are printed, and `--save` writes the records into it anyway, `-o FILE` writes
the full record to FILE. A model in a cache (Hub id, the embedded model) is never written.

RULER keeps every sample (the exact input, prediction, references, score). A record written
to disk keeps them beside it in a gzipped JSONL file that it names (in a checkpoint
picli-ruler-samples-<sha256>.jsonl.gz, one per run; FILE's stem + .ruler-samples.jsonl.gz
for -o FILE); the report returned
(--json) names that file, or holds the samples itself when nothing was written. Every RULER
prompt is built, for every model and the baseline, before any weights load: a bad task, a
length too short for a task, a haystack too small or a chat model without a chat template
stops the run first.
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import passkey as passkey_module
from . import provenance
from .checkpoint import Checkpoint, effective_window, read_config, resolve
from .errors import PicliError
from .events import Events
from .files import atomic_write_json, check_output, check_writable_parent
from .ruler import RulerSettings


@dataclass(frozen=True)
class VerifySettings:
    """What `picli verify` measures, on what, and how the model runs (cli.py builds it)."""

    # None: passkey unless perplexity or RULER alone was asked for (bare `picli verify` measures
    # passkey); decided here once, so the CLI and a library caller get the same default.
    passkey: bool | None = None
    perplexity: bool = False
    ruler: bool = False
    # RULER's options (None: RulerSettings' defaults: every synthetic task, 500 samples, the
    # tokenizer's chat template when it has one, picli's built-in haystack).
    ruler_tasks: tuple[str, ...] | str | None = None
    ruler_samples: int | None = None
    haystack: str | None = None
    chat_template: str | None = None
    lengths: tuple[int, ...] | None = None  # None: the model's window
    data: str | None = None  # perplexity text: file, folder, JSONL or hf:NAME
    text_field: str = "text"
    stride: int = 256
    max_tokens: int | None = None
    # The paper's document choices (section 3.2); --seed (protocol.seed) also seeds sample_docs.
    doc_tokens: int | None = None
    min_doc_tokens: int | None = None
    sample_docs: int | None = None
    protocol: passkey_module.Protocol = passkey_module.Protocol()
    baseline: str | None = None  # a second model measured with the same protocol
    # How the model runs; the report records these five as its `settings`.
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "sdpa"
    device_map: str | None = None
    batch_size: int | None = None

    def __post_init__(self):
        if self.passkey is None:
            object.__setattr__(self, "passkey", not (self.perplexity or self.ruler))

    def ruler_settings(self, lengths: tuple[int, ...]) -> RulerSettings:
        given = {"tasks": self.ruler_tasks, "samples": self.ruler_samples, "haystack": self.haystack,
                 "chat_template": self.chat_template}
        return RulerSettings(lengths=tuple(lengths), **{key: value for key, value in given.items() if value is not None})

    def selection(self):
        from .perplexity import DocumentSelection

        return DocumentSelection(max_tokens=self.max_tokens, doc_tokens=self.doc_tokens,
                                 min_doc_tokens=self.min_doc_tokens, sample_docs=self.sample_docs,
                                 seed=self.protocol.seed)

    def runtime(self) -> dict:
        return {"device": self.device, "dtype": self.dtype, "attention": self.attention,
                "device_map": self.device_map, "batch_size": self.batch_size}

    def validate(self) -> None:
        """Every option, before MODEL is resolved or loaded: a typo costs a second, not a load."""
        from .modeling import check_options

        if not self.passkey and not self.perplexity and not self.ruler:
            raise PicliError("nothing to verify", hint="pass --passkey, --perplexity --data FILE, --ruler, or several")
        if self.perplexity and not self.data:
            raise PicliError("--perplexity needs text to score", hint="pass --data FILE|DIR|JSONL|hf:NAME")
        for option, value in (("--tasks", self.ruler_tasks), ("--samples", self.ruler_samples),
                              ("--haystack", self.haystack), ("--chat-template", self.chat_template)):
            if value is not None and not self.ruler:
                raise PicliError(f"{option} is a RULER option", hint="add --ruler")
        if self.ruler:
            # The lengths are checked above; a stand-in lets RULER check its own options now.
            self.ruler_settings(self.lengths or (1,)).check()
        if any(not _whole(length) or length < 1 for length in self.lengths or ()):
            raise PicliError(f"--length must be a positive number of tokens, got {list(self.lengths)}",
                             hint="e.g. --length 8192")
        for option, value, least, hint in (
                ("--stride", self.stride, 1, "the paper uses 256"),
                ("--max-tokens", self.max_tokens, 1, "omit it to score all of --data"),
                ("--positions", self.protocol.positions, 1, "the paper uses 32"),
                ("--trials", self.protocol.trials, 1, "the paper uses 10"),
                ("--batch-size", self.batch_size, 1, "omit it: picli fits as many trials as memory allows")):
            if value is not None and (not _whole(value) or value < least):
                raise PicliError(f"{option} must be a whole number of at least {least}, got {value!r}", hint=hint)
        for length in (self.lengths or ()) if self.perplexity else ():
            # perplexity.evaluate_token_ids says the same, but only after the model has loaded.
            if length < 2:
                raise PicliError(f"--length must be at least 2 tokens for perplexity, got {length}",
                                 hint="e.g. --length 4096")
            if self.stride > length:
                raise PicliError(f"--stride {self.stride} is larger than --length {length}: some tokens would "
                                 "never be scored", hint=f"use --stride {min(256, length)} or less")
        check_options(self.device, self.dtype, self.attention, self.device_map)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelRun:
    model: str
    path: str
    window: int
    passkey: dict | None
    perplexity: dict | None
    source: dict | None = None  # checkpoint.source: lets the card tell the recorded source from another baseline
    loaded_as: str | None = None  # how it was run when that is not its own weights as stored (a GGUF)
    ruler: dict | None = None  # picli.ruler's RulerReport.to_dict(); its samples inline or named (module docstring)


@dataclass(frozen=True)
class VerifyReport:
    model: ModelRun
    baseline: ModelRun | None
    passkey_lengths: list[int]
    perplexity_lengths: list[int]
    settings: dict
    notes: list[str] = field(default_factory=list)
    saved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(model: str | None, on_event: Events) -> Checkpoint:
    from .modeling import check_loadable

    checkpoint = resolve(model, on_event=on_event)
    if checkpoint.kind == "gguf":
        from .gguf_io import transformers_rope

        transformers_rope(checkpoint.path)  # whole, and a RoPE scaling transformers can be given
        return checkpoint
    check_loadable(checkpoint.path)  # safetensors and a tokenizer, before minutes of anything
    _check_weights(checkpoint.path)
    return checkpoint


def _check_weights(path: Path) -> None:
    """Every shard the index names present, every safetensors header readable and the file as
    long as it says: a cut-off download fails here, in one line naming the file, not as a
    traceback after the models before it were measured."""
    from .checkpoint import index_shards, safetensors_header

    for index_path in sorted(path.glob("*.safetensors.index.json")):
        missing = [shard for shard in index_shards(index_path) if not (path / shard).is_file()]
        if missing:
            raise PicliError(f"{path}: {index_path.name} names shards that are missing: {', '.join(missing[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}", hint="download the complete checkpoint")
    for weight_file in sorted(path.glob("*.safetensors")):
        try:
            safetensors_header(weight_file)
        except PicliError as exc:
            # The message begins with the file's name; the full path says which model it is.
            named = exc.message.startswith(weight_file.name)
            raise PicliError(f"{path}{os.sep}{exc.message}" if named else f"{weight_file}: {exc.message}",
                             hint=exc.hint) from None


@dataclass(frozen=True)
class SideBySide:
    """Several models measured with one protocol: each one's own report, in the order given."""

    names: list[str]  # one per report: what the table and --json call each model
    baseline_name: str | None
    reports: list[VerifyReport]  # reports[i].baseline is the one shared baseline run
    notes: list[str] = field(default_factory=list)  # the reports' notes, each naming its model

    def to_dict(self) -> dict:
        """The multi-model --json shape: each `reports` entry is what `picli verify MODEL
        --baseline B --json` prints for that model (same --length list), plus its `name`."""
        first = self.reports[0]
        return {"models": self.names, "baseline": self.baseline_name,
                "passkey_lengths": first.passkey_lengths, "perplexity_lengths": first.perplexity_lengths,
                "settings": first.settings, "notes": self.notes,
                "reports": [{"name": name, **report.to_dict()} for name, report in zip(self.names, self.reports)]}


def run_verify(model: str | None, settings: VerifySettings = VerifySettings(), *, save: bool | None = None,
               save_to: Path | None = None, command: str = "picli verify", on_event: Events = None) -> VerifyReport:
    """One model (and the optional baseline): the report, its records saved under the rules above."""
    return _run([model], settings, save=save, save_to=save_to, command=command, on_event=on_event).reports[0]


def run_side_by_side(models: list[str | None], settings: VerifySettings = VerifySettings(), *,
                     save: bool | None = None, save_to: Path | None = None, command: str = "picli verify",
                     on_event: Events = None) -> SideBySide:
    """Several models, one protocol; -o FILE gets one record holding every report."""
    return _run(list(models), settings, save=save, save_to=save_to, command=command, on_event=on_event)


def _run(models: list[str | None], settings: VerifySettings, *, save: bool | None, save_to: Path | None,
         command: str, on_event: Events) -> SideBySide:
    settings.validate()
    chosen = [option for option, value in (("--doc-tokens", settings.doc_tokens),
                                           ("--min-doc-tokens", settings.min_doc_tokens),
                                           ("--sample-docs", settings.sample_docs)) if value is not None]
    if chosen and not settings.perplexity:
        raise PicliError(f"{chosen[0]} chooses the documents perplexity scores", hint="add --perplexity --data ...")
    settings.selection().check()  # before minutes of loading
    if len(models) > 1 and None in models:
        raise PicliError("several MODELs, one of them empty", hint="name every model to compare")
    # Every MODEL and the baseline resolved (missing, GGUF, pickle-only, no tokenizer) before
    # any weight loads: the third model's typo costs a second, not two models' measurements.
    checkpoints = [resolve_model(model, on_event) for model in models]
    _refuse_duplicates(models, checkpoints)
    baseline_checkpoint = resolve_model(settings.baseline, on_event) if settings.baseline else None
    if baseline_checkpoint is not None:
        for model, checkpoint in zip(models, checkpoints):
            if checkpoint.path.resolve() == baseline_checkpoint.path.resolve():
                # Refused rather than measured once: a model beside itself shows nothing.
                raise PicliError(f"{model or checkpoint.path} is both a MODEL and the --baseline",
                                 hint="list it once, as --baseline: it gets its own column group" if len(models) > 1
                                 else "a model compared with itself measures nothing: drop --baseline, or name "
                                 "the model it was made from")
    measured = checkpoints + ([baseline_checkpoint] if baseline_checkpoint else [])
    if settings.device_map and any(checkpoint.kind == "gguf" for checkpoint in measured):
        raise PicliError("--device-map does not apply to a GGUF file: it is loaded whole onto one device",
                         hint="omit --device-map, or verify the safetensors checkpoint the GGUF was made from")
    if save_to is not None:
        save_to = _check_save_to(Path(save_to), measured, samples=settings.ruler)
    # Decided (and a broken record refused) now; said once every other check has passed, so a
    # bad option's error is the first line printed.
    held: list[dict] = []
    into_models = [_saves_into_model(checkpoint, save, save_to, held.append) for checkpoint in checkpoints]
    windows = [_window(checkpoint.path) for checkpoint in checkpoints]
    # One length list for all (see the module docstring): one MODEL keeps its own window.
    lengths = sorted(set(settings.lengths or windows))
    if settings.passkey:
        _check_passkey_lengths(measured, lengths, settings)
    documents = None
    if settings.perplexity:
        from .textdata import load_texts

        documents = load_texts(settings.data, text_field=settings.text_field)
    suites = _ruler_suites(measured, settings.ruler_settings(tuple(lengths)), on_event) if settings.ruler else {}
    for event in held if on_event else ():
        on_event(event)

    names = _names(checkpoints)
    runs = []
    for name, checkpoint in zip(names, checkpoints):
        if on_event:
            label = "model" if len(checkpoints) == 1 else f"model {name}"
            on_event({"kind": "message", "text": f"Loading {label} {checkpoint.path}"})
        runs.append(_measure(checkpoint, "model", lengths, documents, settings, on_event, suites.get(checkpoint.path)))
    baseline_run = None
    if baseline_checkpoint is not None:
        if on_event:
            on_event({"kind": "message", "text": f"Loading baseline {baseline_checkpoint.path}"})
        baseline_run = _measure(baseline_checkpoint, "baseline", lengths, documents, settings, on_event,
                                suites.get(baseline_checkpoint.path))

    reports = [VerifyReport(model=run, baseline=baseline_run,
                            passkey_lengths=lengths if settings.passkey else [],
                            perplexity_lengths=lengths if settings.perplexity else [],
                            settings=settings.runtime(),
                            notes=_notes([run] + ([baseline_run] if baseline_run else []), lengths))
               for run in runs]
    records = [provenance.verify_record(report.to_dict(), command=command, data=settings.data) for report in reports]
    baseline_name = _names(checkpoints + [baseline_checkpoint])[-1] if baseline_checkpoint else None
    saved_reports = _write_records(reports, records, checkpoints, into_models, save_to,
                                   SideBySide(names, baseline_name, reports), command, settings.data)
    labelled = list(zip(names, runs)) + ([(baseline_name, baseline_run)] if baseline_run else [])
    return SideBySide(names, baseline_name, saved_reports,
                      notes=_notes([run for _, run in labelled], lengths, labels=[name for name, _ in labelled]))


def _write_records(reports: list[VerifyReport], records: list[dict], checkpoints: list[Checkpoint],
                   into_models: list[bool], save_to: Path | None, together: SideBySide, command: str,
                   data: str | None) -> list[VerifyReport]:
    """Every record written (-o FILE, each checkpoint picli may write into), after every model
    was measured; the reports as --json prints them: saved_to set, RULER samples named by the
    file that holds them."""
    written: dict[int, Path] = {}  # report index -> the samples file that holds its RULER samples
    if save_to is not None:
        record = records[0] if len(reports) == 1 else provenance.verify_record(together.to_dict(), command=command,
                                                                               data=data)
        companion = provenance.save_verify_record(save_to, record, provenance.ruler_samples_path(save_to))
        if companion:
            written = dict.fromkeys(range(len(reports)), companion)
    saved_reports = []
    for index, (report, record, checkpoint, into_model) in enumerate(zip(reports, records, checkpoints, into_models)):
        if into_model:
            saved, companion = provenance.add_verification(checkpoint.path, record)
            report = VerifyReport(**{**report.__dict__, "saved_to": str(saved)})
            written[index] = companion or written.get(index)
        if written.get(index):
            report = _samples_named(report, written[index])
        saved_reports.append(report)
    return saved_reports


def _check_save_to(save_to: Path, measured: list[Checkpoint], samples: bool = False) -> Path:
    """-o FILE: a file outside every measured checkpoint, in a writable folder; its absolute path.

    Inside a checkpoint it would overwrite the model's own files (config.json, a weight file,
    a link into a Hub cache's blobs), and its picli-verify.json is verify's own history there.
    """
    written = Path(os.path.abspath(save_to.expanduser()))
    resolved = written.resolve()
    for checkpoint in measured:
        roots = {checkpoint.path.absolute(), checkpoint.path.resolve()}
        children = checkpoint.path.iterdir() if checkpoint.path.is_dir() else [checkpoint.path]
        files = {child.resolve() for child in children if child.is_file()}
        if resolved in files or any(path == root or path.is_relative_to(root)
                                    for path in (written, resolved) for root in roots):
            raise PicliError(f"-o {save_to} lies inside the checkpoint {checkpoint.path}, which verify measures",
                             hint="write the record outside the model, e.g. -o verify.json (a checkpoint picli "
                             f"wrote keeps its own {provenance.VERIFY_RECORD})")
    if resolved.is_dir():
        raise PicliError(f"-o {resolved} is a directory", hint="name a file, e.g. -o verify.json")
    # Rewritten on every run (no --force): only a record picli verify wrote, never another file.
    check_output(resolved, force=True, sources=[checkpoint.path for checkpoint in measured],
                 ours=provenance.is_verify_record, mark="picli verify record in it", option="-o")
    if samples:  # RULER's samples file beside it, by the same rule
        check_output(provenance.ruler_samples_path(resolved), force=True,
                     sources=[checkpoint.path for checkpoint in measured], ours=provenance.is_ruler_samples,
                     mark="picli RULER samples in it", option="-o")
    check_writable_parent(resolved)
    return resolved


def _check_passkey_lengths(measured: list[Checkpoint], lengths: list[int], settings: VerifySettings) -> None:
    """Every length long enough for the passkey prompt of every model's tokenizer, before any weight loads."""
    from .modeling import load_tokenizer

    for checkpoint in measured:
        try:
            passkey_module.check_lengths(load_tokenizer(checkpoint.path), lengths, settings.protocol)
        except PicliError as exc:
            raise PicliError(exc.message if len(measured) == 1 else f"{checkpoint.path.name}: {exc.message}",
                             hint=exc.hint) from None


def _refuse_duplicates(models: list[str | None], checkpoints: list[Checkpoint]) -> None:
    seen: dict[Path, str | None] = {}
    for model, checkpoint in zip(models, checkpoints):
        if checkpoint.path in seen:
            earlier = seen[checkpoint.path]
            what = f"{model} is given twice" if model == earlier else f"{earlier} and {model} are the same model"
            raise PicliError(f"{what} ({checkpoint.path})",
                             hint="list each model once: every MODEL is measured with the same protocol")
        seen[checkpoint.path] = model


def _names(checkpoints: list[Checkpoint]) -> list[str]:
    """Short names for tables (a directory's name, an alias, a repo); the full path where two clash."""
    short = [checkpoint.name or checkpoint.path.name for checkpoint in checkpoints]
    return [name if short.count(name) == 1 else str(checkpoint.path) for name, checkpoint in zip(short, checkpoints)]


def _saves_into_model(checkpoint: Checkpoint, save: bool | None, save_to: Path | None, on_event: Events) -> bool:
    """Decided before measuring: a checkpoint picli wrote gets the records; a user's own only with --save.

    A broken picli.json fails here too, before minutes of measuring, not after them.
    """
    if save is False:
        return False
    elsewhere = "" if save_to is None else f"; the record goes to {save_to}"
    if checkpoint.kind == "gguf":
        if on_event:
            on_event({"kind": "message", "text": f"Not saving into {checkpoint.path.name}: a GGUF file keeps no "
                      f"{provenance.VERIFY_RECORD}" + (elsewhere or " (-o FILE keeps the record)")})
        return False
    if checkpoint.source.get("repo") or checkpoint.source.get("embedded"):
        # A cache is not the user's checkpoint: the report is printed (and written to -o FILE).
        if on_event:
            on_event({"kind": "message", "text": f"Not saving into {checkpoint.path}: it is a cache, not your "
                      "checkpoint" + (elsewhere or " (-o FILE keeps the record)")})
        return False
    if save is None and not provenance.is_picli_output(checkpoint.path):
        if on_event:
            on_event({"kind": "message", "text": f"Not saving into {checkpoint.path}: picli did not write it (no "
                      f"{provenance.RECORD}){elsewhere}. To keep the results: --save writes "
                      f"{provenance.VERIFY_RECORD} and {provenance.RECORD} into it, -o FILE writes the record to FILE"})
        return False
    provenance.read_record(checkpoint.path)
    # The earlier runs the new one joins: a broken picli-verify.json fails now, not after measuring.
    path = provenance.verify_record_path(checkpoint.path)
    provenance.shown_summary(provenance.verify_runs(provenance.read_verify_record(checkpoint.path), path), path)
    return True


def _window(path: Path) -> int:
    if path.suffix == ".gguf" and path.is_file():
        from .gguf_io import read_gguf, rope_settings

        return rope_settings(read_gguf(path)).context_length or 0
    try:
        return effective_window(path)
    except provenance.RecordError:
        # Only reachable with --no-save (saving refuses a broken record before this): the
        # record is not used there, so the config's own reading of the window stands.
        from . import rope

        return rope.effective_window(read_config(path))


def _ruler_suites(checkpoints: list[Checkpoint], ruler: RulerSettings, on_event: Events) -> dict:
    """{checkpoint path: its RULER suite}, every prompt built before any weights load. Checkpoints
    whose tokenizer files are byte-identical share one suite (an extension keeps its source's)."""
    from .modeling import load_tokenizer
    from .ruler import build_suite

    suites, by_tokenizer = {}, {}
    for checkpoint in checkpoints:
        key = _tokenizer_fingerprint(checkpoint.path)
        if key not in by_tokenizer:
            names = tuple(dict.fromkeys(filter(None, (checkpoint.path.name, checkpoint.name, checkpoint.base_model,
                                                      checkpoint.source.get("repo")))))
            by_tokenizer[key] = build_suite(load_tokenizer(checkpoint.path), ruler, on_event, names=names)
        suites[checkpoint.path] = by_tokenizer[key]
    return suites


def _tokenizer_fingerprint(path: Path) -> str:
    """sha256 over the files a tokenizer (and its chat template) is read from; the path when unreadable."""
    import hashlib

    digest = hashlib.sha256()
    prefixes = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "chat_template", "spiece")
    try:
        for file in sorted(path.iterdir()):
            if file.is_file() and (file.name.startswith(prefixes) or file.suffix in (".model", ".tiktoken")):
                digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    except OSError:
        return str(path)
    return digest.hexdigest()


def _samples_named(report: VerifyReport, companion: Path) -> VerifyReport:
    """The report as --json prints it once its RULER samples were written to `companion`."""
    def named(run: ModelRun | None) -> ModelRun | None:
        if run is None or not run.ruler or "samples" not in run.ruler:
            return run
        ruler = {key: value for key, value in run.ruler.items() if key != "samples"}
        return ModelRun(**{**run.__dict__, "ruler": {**ruler, "samples_file": str(companion),
                                                     "samples_count": len(run.ruler["samples"])}})
    return VerifyReport(**{**report.__dict__, "model": named(report.model), "baseline": named(report.baseline)})


def _measure(checkpoint: Checkpoint, label: str, lengths: list[int], documents, settings: VerifySettings,
             on_event: Events, suite=None) -> ModelRun:
    from .modeling import load_model

    window = _window(checkpoint.path)
    loaded_as = None
    if checkpoint.kind == "gguf":
        from .gguf_io import transformers_rope
        from .modeling import load_gguf_model

        if on_event:
            on_event({"kind": "message", "text": f"{checkpoint.path.name} is a GGUF: loading it as picli loads the "
                      "embedded model, through transformers' GGUF import, dequantized"})
        scaling = transformers_rope(checkpoint.path)
        loaded = load_gguf_model(checkpoint.path, device=settings.device, dtype=settings.dtype,
                                 attention=settings.attention, scaling=scaling)
        loaded_as = (f"GGUF {checkpoint.path.name} through transformers' GGUF import, dequantized to "
                     f"{str(loaded.dtype).removeprefix('torch.')}"
                     + (f", RoPE {scaling['rope_type']} x{scaling['factor']:g} from its metadata" if scaling else "")
                     + " (llama.cpp runs the quantized weights themselves)")
    else:
        loaded = load_model(checkpoint.path, device=settings.device, dtype=settings.dtype,
                            attention=settings.attention, device_map=settings.device_map)
    try:
        passkey_report = passkey_module.evaluate_passkey(
            loaded, lengths, settings.protocol, batch_size=settings.batch_size,
            on_event=on_event, window=window).to_dict() if settings.passkey else None
        perplexity_report = None
        if settings.perplexity:
            from .perplexity import evaluate_perplexity

            perplexity_report = evaluate_perplexity(loaded, documents, lengths, stride=settings.stride,
                                                    selection=settings.selection(), on_event=on_event).to_dict()
        ruler_report = None
        if suite is not None:
            from .ruler import run_suite

            ruler_report = run_suite(loaded, suite, batch_size=settings.batch_size, on_event=on_event,
                                     window=window).to_dict()
    finally:
        del loaded
        gc.collect()
        _empty_cuda_cache()
    return ModelRun(model=label, path=str(checkpoint.path), window=window, passkey=passkey_report,
                    perplexity=perplexity_report, source=checkpoint.source, loaded_as=loaded_as, ruler=ruler_report)


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _notes(runs: list[ModelRun], lengths: list[int], labels: list[str] | None = None) -> list[str]:
    """Notes naming each run by `labels` (default: its role, "model" or "baseline")."""
    labels = labels or [run.model for run in runs]
    notes = [f"{label}: {run.loaded_as}" for label, run in zip(labels, runs) if run.loaded_as]
    for label, run in zip(labels, runs):
        beyond = [length for length in lengths if length > run.window]
        if beyond:
            notes.append(f"{label}: {', '.join(map(str, beyond))} tokens lie beyond its window of {run.window} "
                         "tokens (extrapolation, no interpolation there)")
    shown: set[str] = set()
    for label, run in zip(labels, runs):
        for note in perplexity_notes(run.perplexity):
            if note not in shown:  # the baseline usually scores the same text: say it once
                notes.append(note if run is runs[0] else f"{label}: {note}")
                shown.add(note)
    return notes


def perplexity_notes(perplexity: dict | None) -> list[str]:
    """What a perplexity table cannot show: which documents were scored, and which were too short."""
    if not perplexity:
        return []
    notes = []
    selection = perplexity.get("selection") or {}
    if selection.get("sample_docs") or selection.get("min_doc_tokens") or selection.get("doc_tokens"):
        parts = [f"perplexity text: {selection['used']} of {selection['documents']} documents"]
        if selection.get("sample_docs"):
            parts.append(f"drawn at random (seed {selection['seed']})")
        if selection.get("min_doc_tokens"):
            parts.append(f"{selection['skipped_short']} of {selection['examined']} examined skipped as shorter than "
                         f"{selection['min_doc_tokens']} tokens")
        if selection.get("doc_tokens"):
            parts.append(f"{selection['truncated']} cut to their first {selection['doc_tokens']} tokens")
        notes.append("; ".join(parts))
    for result in perplexity.get("results") or []:
        short = result.get("short_documents") or 0
        if short:
            notes.append(f"perplexity at {result['length']}: {short} of {result['documents']} documents are shorter "
                         f"than {result['length']} tokens, so {result['tokens_scored_short']:,} of "
                         f"{result['tokens_scored']:,} scored tokens had windows only as long as their document; "
                         f"{result['tokens_scored_full']:,} were scored at the full length")
    return notes
