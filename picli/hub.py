"""`picli push`: publish a checkpoint to the Hugging Face Hub, after checking it.

Plan, then apply. `plan_push` is offline: it checks the folder (`preflight`: the config
reads and its two RoPE schemas agree, every shard the index names exists with the size its
header implies, a tokenizer is there), lists the files that will go up with their sizes,
and renders the model card (card.py). `--dry-run` shows that plan (render.push_plan) and
makes no network call at all. `push` then talks to the Hub through huggingface_hub only:

    whoami (a clear error for a missing, invalid or read-only token, before anything else)
    -> repo state (new / empty after an interrupted push / existing: refused without --exist-ok)
    -> create_repo (private unless --public) and, for a new --revision, create_branch from main
    -> README.md written atomically into the folder
    -> upload_folder (one commit; re-running after an interruption sends only what is missing:
       LFS / Xet objects already stored are skipped)

`push_command` is the whole command: REPO [MODEL] (refused in the old MODEL REPO order),
the plan, then the push unless --dry-run.

Every huggingface_hub / network error becomes one PicliError line with the next step (the
table in hub_errors.py, shared with downloads), with the token scrubbed from any text that
reaches the user. The token is never stored.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import card as card_module
from . import rope
from .checkpoint import index_shards, outside_links, read_config, resolve, safetensors_header
from .errors import NotACheckpoint, PicliError
from .files import broken_weight_links, holds_hf_token, not_model_reason
from .events import Events
from .hub_errors import PUSH_RETRY, HubCall, check_repo_id, is_branch_name, is_repo_id, translate
from .provenance import RecordError, is_picli_output

# Never published: training state, picli's own bookkeeping and half-written files. The
# patterns are fnmatch-style on the path relative to the checkpoint (`*` crosses `/`), the
# same matching huggingface_hub's upload_folder applies, so the plan lists what goes up.
IGNORE_PATTERNS = [
    ".picli/*", "*/.picli/*",
    # picli finetune: checkpoints/step-*/ (resumable training state), .final/ (export staging)
    "checkpoints/*", ".final/*", "checkpoint-*/*", "*/checkpoint-*/*", "global_step*/*",
    "optimizer.*", "*/optimizer.*", "scheduler.pt", "*/scheduler.pt", "rng_state*.pth", "*/rng_state*.pth",
    "trainer_state.json", "training_args.bin",
    "*.picli-tmp-*", "*.picli-tmp", "*.picli-tmp/*",
    "__pycache__/*", "*/__pycache__/*", ".cache/*", ".ipynb_checkpoints/*", "*/.ipynb_checkpoints/*",
    "wandb/*", "runs/*",
]
# Files a model on the Hub needs: one holding a token is refused, not left out.
NEEDED_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "tiktoken.model", "vocab.json")


class HubError(PicliError):
    """The Hub refused or could not be reached: auth, not found, gated, forbidden, network, offline."""


class PreflightFailed(PicliError):
    """The folder is not a checkpoint worth publishing yet."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int


@dataclass(frozen=True)
class PushPlan:
    checkpoint: Path
    repo_id: str
    revision: str | None  # None: main
    private: bool
    create_pr: bool
    exist_ok: bool
    commit_message: str
    commit_description: str
    endpoint: str
    files: list[FileEntry]
    ignored: list[str]
    card: str  # README.md as it will be uploaded
    card_action: str  # create | refresh | append | overwrite
    auth: str | None  # where the token will come from (never the token itself)
    warnings: list[str] = field(default_factory=list)
    withheld: list[dict] = field(default_factory=list)  # [{path, reason}]: not part of a model, never uploaded

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        data["total_bytes"] = self.total_bytes
        data["url"] = repo_url(self.endpoint, self.repo_id, self.revision)
        return data


@dataclass(frozen=True)
class PushResult:
    url: str
    repo_id: str
    revision: str | None
    private: bool
    created: bool  # the repo (or branch) was created by this push
    changed: bool  # False: the Hub already had these exact files, so no commit was made
    commit: str | None
    commit_url: str | None
    pr_url: str | None
    files: list[FileEntry]
    total_bytes: int
    card: str  # path of the README.md written

    def to_dict(self) -> dict:
        return asdict(self)


def repo_url(endpoint: str, repo_id: str, revision: str | None) -> str:
    return f"{endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")


# ---------------------------------------------------------------------------------------
# Pre-flight: everything that can be checked without the network.


def preflight(checkpoint_dir: Path) -> tuple[list[str], list[str]]:
    """(problems, warnings) for publishing this folder; problems block the push."""
    problems: list[str] = []
    warnings: list[str] = []
    if not checkpoint_dir.is_dir():
        return [f"{checkpoint_dir} is not a directory"], warnings
    try:
        record, verify_record, _ = card_module.load_inputs(checkpoint_dir)
    except RecordError as exc:  # the card would be built on it: a problem, listed with the others
        problems.append(exc.message)
        record, verify_record = {}, None
    try:
        config = read_config(checkpoint_dir)
    except NotACheckpoint as exc:
        problems.append(exc.message)
        config = None
    if config is not None:
        if not config.get("model_type"):
            problems.append("config.json has no model_type, so transformers cannot load it")
        try:
            state = rope.read_state(config)
        except PicliError as exc:
            problems.append(exc.message)
        else:
            if state.disagreement:
                problems.append(f"config.json: {state.disagreement}")
            edited = rope.edited_since_record(state, record.get("rope") or {})
            if edited:
                problems.append(f"{edited} (config.json was edited after picli wrote it), so the card would be wrong")
    # A link to a file elsewhere (a token, a key) would be uploaded as that file's contents.
    problems += outside_links(checkpoint_dir, skip=_not_uploaded)
    files = [entry.path for entry in list_files(checkpoint_dir)[0]]
    problems += _weight_problems(checkpoint_dir, files)
    # The card is built from README.md and always uploaded, and a model without its config or
    # tokenizer files is broken on the Hub: leaving such a file out cannot keep a token home.
    for name in (card_module.README, *NEEDED_FILES, *TOKENIZER_FILES):
        if holds_hf_token(checkpoint_dir / name):
            problems.append(f"{name} holds a Hugging Face token (hf_...); remove it from the file: the model "
                            "cannot go up without it")
    if not any(Path(name).name in TOKENIZER_FILES for name in files):
        problems.append("no tokenizer (tokenizer.json, tokenizer.model or vocab.json): the model could not be "
                        "used from the Hub")
    if not is_picli_output(checkpoint_dir):
        warnings.append("no picli.json here: the model card will have no provenance (what was done, by which "
                        "picli) and cannot say whether the model was fine-tuned")
    elif not verify_record and not record.get("verification"):
        warnings.append("not verified: the card will say so; run `picli verify --passkey` first to publish "
                        "measured numbers")
    return problems, warnings


def _weight_problems(checkpoint_dir: Path, files: list[str]) -> list[str]:
    problems = broken_weight_links(checkpoint_dir)
    weights = [name for name in files if name.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    if not weights and not problems:
        problems.append("no weight files (*.safetensors or *.bin)")
    for index_name in [name for name in files if name.endswith(".safetensors.index.json")]:
        try:
            shards = index_shards(checkpoint_dir / index_name)
        except NotACheckpoint as exc:
            problems.append(exc.message)
            continue
        for shard in shards:
            if shard not in files:
                problems.append(f"{index_name} names {shard}, which is missing")
    for name in weights:
        if name.endswith(".safetensors"):
            try:  # the header, and the file's size against it (a cut-off copy)
                safetensors_header(checkpoint_dir / name)
            except NotACheckpoint as exc:
                problems.append(exc.message)
    return problems


def _not_uploaded(relative: str, is_dir: bool) -> bool:
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    # A folder is left out when its contents are: "x/" matches the patterns "x/*".
    name = relative + "/" if is_dir else relative
    return not list(filter_repo_objects([name], ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))


def list_files(checkpoint_dir: Path) -> tuple[list[FileEntry], list[str], list[dict]]:
    """(files that will be uploaded, files upload_folder's ignore rules leave out, [{path, reason}]
    left out by files.not_model_reason (hidden files, keys, tokens), the rule extend copies by)."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    every = sorted(path.relative_to(checkpoint_dir).as_posix() for path in checkpoint_dir.glob("**/*")
                   if path.is_file())
    kept = list(filter_repo_objects(every, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))
    withheld = []
    for name in kept:
        reason = not_model_reason(name, checkpoint_dir / name)
        if reason:
            withheld.append({"path": name, "reason": reason})
    matched = set(kept)
    uploaded = matched - {entry["path"] for entry in withheld}
    return ([FileEntry(name, (checkpoint_dir / name).stat().st_size) for name in kept if name in uploaded],
            [name for name in every if name not in matched], withheld)


def exact_patterns(names: list[str]) -> list[str]:
    """fnmatch patterns that match exactly these paths (`[`, `*`, `?` taken literally), so
    upload_folder sends the files the plan listed and nothing else."""
    return [re.sub(r"([\[*?])", r"[\1]", name) for name in names]


# ---------------------------------------------------------------------------------------
# The plan.


def plan_push(
    repo_id: str,
    model: str | Path | None = None,
    *,
    revision: str | None = None,
    private: bool = True,
    create_pr: bool = False,
    exist_ok: bool = False,
    commit_message: str | None = None,
    overwrite_card: bool = False,
    token: str | None = None,
    on_event: Events = None,
) -> PushPlan:
    """What `push` will do: REPO, then MODEL (a checkpoint directory; None: the last one picli
    wrote here, as `hf upload REPO [PATH]` orders them). No network: `--dry-run` prints exactly this."""
    from huggingface_hub import constants

    _refuse_swapped(repo_id, model)
    checkpoint_dir = resolve(None, on_event=on_event).path if model is None else Path(model)
    checkpoint_dir = checkpoint_dir.expanduser().resolve()
    check_repo_id(repo_id)
    revision = None if revision in (None, "", "main") else revision
    if revision and not is_branch_name(revision):
        raise PicliError(f"--revision must be a branch name git accepts, got {revision!r}",
                         hint="letters, digits and -_./ without `..`, `//`, a leading `-`/`.` or a trailing `/`, "
                         "e.g. --revision pi-16k; use --create-pr to open a pull request")
    if create_pr and revision:
        raise PicliError("--create-pr opens a pull request against main; it cannot be combined with --revision",
                         hint="drop one of them")
    if not checkpoint_dir.exists():
        raise PicliError(f"{checkpoint_dir}: no such directory", hint="pass the checkpoint directory to publish")
    problems, warnings = preflight(checkpoint_dir)
    if problems:
        listed = "; ".join(f"({number}) {text}" for number, text in enumerate(problems, 1))
        raise PreflightFailed(f"{checkpoint_dir.name} is not ready to publish, {len(problems)} problem"
                              f"{'s' if len(problems) > 1 else ''}: {listed}",
                              hint="fix them and run again; nothing was uploaded")
    record, verify_record, existing = card_module.load_inputs(checkpoint_dir)
    card_text = card_module.render_card(checkpoint_dir, record, verify_record, existing, repo_id, overwrite_card)
    files, ignored, withheld = list_files(checkpoint_dir)
    readme = FileEntry(card_module.README, len(card_text.encode("utf-8")))
    files = sorted([entry for entry in files if entry.path != card_module.README] + [readme],
                   key=lambda entry: entry.path)
    return PushPlan(
        checkpoint=checkpoint_dir, repo_id=repo_id, revision=revision, private=private, create_pr=create_pr,
        exist_ok=exist_ok, commit_message=commit_message or default_commit_message(record),
        commit_description=f"Uploaded with picli {record.get('picli_version') or ''}".strip(),
        endpoint=constants.ENDPOINT.rstrip("/"), files=files, ignored=ignored, withheld=withheld, card=card_text,
        card_action=card_module.card_action(existing, overwrite_card), auth=token_source(token),
        warnings=warnings,
    )


def _refuse_swapped(repo_id: str, model: str | Path | None) -> None:
    """`picli push ./model org/name`, the order picli once took: REPO is a directory here and
    MODEL a repo id that names no directory. Refused, so nothing is read or sent with the two
    swapped (a repo id never names a directory to publish: MODEL is always local)."""
    if model is None or not Path(repo_id).expanduser().is_dir():
        return
    if Path(model).expanduser().exists() or not is_repo_id(str(model)):
        return
    given, meant = shlex.join([repo_id, str(model)]), shlex.join([str(model), repo_id])
    raise PicliError(f"REPO comes first: `picli push {meant}`, not `picli push {given}`",
                     hint="picli push takes REPO [MODEL], in the order of `hf upload REPO [PATH]`; nothing was uploaded")


def push_command(repo_id: str, model: str | Path | None = None, *, dry_run: bool = False, token: str | None = None,
                 on_event: Events = None, **plan_options: Any) -> dict:
    """`picli push`: the plan (plan_options go to plan_push), its warnings through on_event before
    any network call, then, unless dry_run, the push. Returns what --json prints: {dry_run, plan}
    for a dry run, {dry_run, **PushResult} after a push."""
    plan = plan_push(repo_id, model, token=token, on_event=on_event, **plan_options)
    if on_event:
        for text in plan.warnings:
            on_event({"kind": "warning", "text": text})
    if dry_run:
        return {"dry_run": True, "plan": plan.to_dict()}
    return {"dry_run": False, **push(plan, token=token, on_event=on_event).to_dict()}


def default_commit_message(record: dict) -> str:
    rope_record = record.get("rope") or {}
    if not rope_record:
        return "Upload model with picli"
    message = (f"PI x{rope_record['factor']:g}: {rope_record.get('original_window')} -> "
               f"{rope_record.get('target_window')} tokens")
    return message + (", fine-tuned" if record.get("finetune") else ", not fine-tuned")


def token_source(token: str | None) -> str | None:
    """Where the token will come from: --token, then HF_TOKEN, then the stored login."""
    from huggingface_hub import constants

    if token:
        return "--token"
    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    if os.path.isfile(constants.HF_TOKEN_PATH):
        return "stored login"
    return None


# ---------------------------------------------------------------------------------------
# The push.


def push(plan: PushPlan, token: str | None = None, on_event: Events = None) -> PushResult:
    from huggingface_hub import HfApi, constants, get_token

    def say(text: str) -> None:
        if on_event:
            on_event({"kind": "message", "text": text})

    if constants.is_offline_mode():
        raise HubError("offline mode is on (HF_HUB_OFFLINE=1), so nothing can be pushed",
                       hint="unset HF_HUB_OFFLINE to push, or use --dry-run to see the plan")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: not logged in",
                       hint="run `hf auth login`, set HF_TOKEN, or pass --token (write access needed)")
    api = HfApi(endpoint=plan.endpoint, token=token)
    with translate_errors(token, plan):
        user = api.whoami()
        role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubError(f"the token of {user.get('name')} is read-only; pushing needs write access",
                           hint="create a write token at https://huggingface.co/settings/tokens and pass it")
        say(f"Logged in as {user.get('name')} (token from {plan.auth or 'huggingface_hub'})")
        created, head, private = _prepare_target(api, plan, say)
        card_path = card_module.write_card(plan.checkpoint, plan.card)
        say(f"Uploading {len(plan.files)} files to {plan.repo_id}"
            + (f"@{plan.revision}" if plan.revision else "") + (" as a pull request" if plan.create_pr else ""))
        try:
            info = api.upload_folder(
                repo_id=plan.repo_id, folder_path=plan.checkpoint, revision=plan.revision,
                create_pr=plan.create_pr or None, commit_message=plan.commit_message,
                commit_description=plan.commit_description, ignore_patterns=list(IGNORE_PATTERNS),
                allow_patterns=exact_patterns([entry.path for entry in plan.files]),
            )
        except KeyboardInterrupt:
            # Not the CLI's generic "nothing was left behind": the repo may exist and objects be stored.
            raise HubError("interrupted during the upload; nothing was committed",
                           hint=PUSH_RETRY) from None
    files = list_files(plan.checkpoint)[0]
    return PushResult(
        url=info.pr_url or repo_url(plan.endpoint, plan.repo_id, plan.revision), repo_id=plan.repo_id,
        revision=plan.revision, private=private, created=created, changed=info.oid != head, commit=info.oid,
        commit_url=info.commit_url, pr_url=info.pr_url, files=files,
        total_bytes=sum(entry.size for entry in files), card=str(card_path),
    )


def _prepare_target(api, plan: PushPlan, say: Callable[[str], None]) -> tuple[bool, str | None, bool]:
    """Create what is missing; refuse to overwrite what exists.

    Returns (whether something was created, the head commit the upload starts from, private)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        main = api.repo_info(plan.repo_id)
    except GatedRepoError:
        raise
    except RepositoryNotFoundError:
        main = None
    if main is None:
        if plan.create_pr:
            raise HubError(f"{plan.repo_id} does not exist, so no pull request can be opened on it",
                           hint="drop --create-pr to create the repo, or check the name")
        api.create_repo(plan.repo_id, private=plan.private)
        say(f"Created {'private' if plan.private else 'public'} repo {plan.repo_id}")
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, revision="main")
        return True, None, plan.private
    if bool(main.private) != plan.private:
        say(f"{plan.repo_id} exists and stays {'private' if main.private else 'public'}; "
            "--public only applies when picli creates the repo")
    private = bool(main.private)
    if plan.create_pr:
        return False, main.sha, private
    if plan.revision:
        try:
            branch = api.repo_info(plan.repo_id, revision=plan.revision)
        except RevisionNotFoundError:
            api.create_branch(plan.repo_id, branch=plan.revision, revision="main")
            say(f"Created branch {plan.revision} from main")
            return True, main.sha, private
        if plan.exist_ok or branch.sha == main.sha:
            if not plan.exist_ok:
                say(f"Branch {plan.revision} exists with nothing pushed to it yet (an interrupted push?): resuming")
            return False, branch.sha, private
        raise HubError(f"branch {plan.revision} of {plan.repo_id} already exists and has commits",
                       hint="pass --exist-ok to add a commit to it, or choose a new --revision")
    remote_files = {sibling.rfilename for sibling in (main.siblings or [])}
    if plan.exist_ok:
        return False, main.sha, private
    if remote_files <= {".gitattributes"}:
        say(f"{plan.repo_id} exists but is empty (an interrupted push?): resuming")
        return False, main.sha, private
    raise HubError(f"{plan.repo_id} already exists on the Hub with {len(remote_files)} files",
                   hint="pass --exist-ok to upload into it (a new commit; also finishes a push of this folder that "
                        "was cut off mid-way), --revision NAME to push to a new branch, or --create-pr")


# ---------------------------------------------------------------------------------------
# Errors: one line and the next step, never the token.


def scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", "hf_***", text)


@contextlib.contextmanager
def translate_errors(token: str | None, plan: PushPlan) -> Iterator[None]:
    try:
        yield
    except PicliError as exc:
        raise type(exc)(scrub(exc.message, token), hint=scrub(exc.hint or "", token) or None) from None
    except Exception as exc:  # noqa: BLE001 - mapped below, or re-raised unchanged as a bug
        mapped = translate(exc, HubCall(plan.repo_id, "push", plan.revision, plan.endpoint))
        if mapped is None:
            raise
        raise HubError(scrub(mapped.message, token), hint=scrub(mapped.hint or "", token) or None) from exc
