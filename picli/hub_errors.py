"""What picli knows about talking to the Hub, for downloads (checkpoint.py) and push (hub.py).

Two things, each in one place:

- `is_repo_id`: the Hub repo-id rule, namespace/name, exactly as huggingface_hub's own
  `validate_repo_id` checks it (so picli never sends a name the client would refuse).
- `translate`: the one table from huggingface_hub / network errors to a one-line
  `PicliError` whose hint names the next command. What picli was doing (downloading MODEL,
  or pushing) only changes the hint where the next step differs.

huggingface_hub and httpx2 are imported inside the functions: `picli --help` stays light.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import PicliError

PUSH_RETRY = "run the same command again: files already uploaded are not sent again"


def is_repo_id(text: str) -> bool:
    """namespace/name as the Hub accepts it: ASCII letters, digits, `-`, `_`, `.`; each part 1-96
    characters that neither start nor end with `-` or `.`; no `--` or `..`; no `.git` ending.

    The namespace is required: picli never guesses whose repo a bare name means (a bare
    name is a local path or an alias)."""
    if not text or text.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str, option: str = "REPO", usage: str = "picli push NAMESPACE/NAME [MODEL]") -> None:
    """A PicliError unless `repo_id` is a Hub repo id (is_repo_id): push's REPO, card's --repo."""
    if not is_repo_id(repo_id):
        raise PicliError(f"{option} must be a Hub repo id like your-name/model-16k, got {repo_id!r}",
                         hint=f"{usage} (NAMESPACE: your user name or an organization)")


def is_branch_name(text: str) -> bool:
    """A branch name git (and so the Hub) accepts, by `git check-ref-format --branch`'s rules:
    no `..`, `//`, `@{`, control characters, space, or any of ``~^:?*[\\``; no part that starts
    with `.` or ends with `.lock`; neither starting with `-` or `/` nor ending with `/` or `.`;
    not `@`. picli also keeps to ASCII letters, digits and `-_./`, and refuses `refs/...`."""
    if not text or text == "@" or text.startswith(("-", "/", "refs/")) or text.endswith(("/", ".")):
        return False
    if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", text) or ".." in text or "//" in text:
        return False
    return all(part and not part.startswith(".") and not part.endswith(".lock") for part in text.split("/"))


@dataclass(frozen=True)
class HubCall:
    """What picli asked the Hub, so the error can say which repo and what to do next."""

    repo_id: str
    action: str  # "download" (resolving MODEL) or "push"
    revision: str | None = None
    endpoint: str = "https://huggingface.co"

    def next_step(self, push: str, download: str) -> str:
        return push if self.action == "push" else download

    @property
    def fetch(self) -> str:
        return f"hf download {self.repo_id}" + (f" --revision {self.revision}" if self.revision else "")

    @property
    def retry(self) -> str:
        return self.next_step(PUSH_RETRY, f"try again later, or: {self.fetch}")


def translate(exc: BaseException, call: HubCall) -> PicliError | None:
    """The one table from huggingface_hub / network errors to messages that name the next step.

    One message per error type; only the hint depends on whether picli was downloading or
    pushing. None: not an error picli knows, so the caller re-raises it (a bug keeps its
    traceback)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (BadRequestError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        LocalTokenNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    repo, host, step = call.repo_id, call.endpoint, call.next_step
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, Exception) and "uploading" in str(exc):
        inner = translate(exc.__cause__, call)  # huggingface_hub wraps a failed LFS upload
        if inner is not None:
            return inner
    if isinstance(exc, json.JSONDecodeError):
        # A proxy, captive portal or wrong HF_ENDPOINT answering 200 with a web page.
        return PicliError(f"{host} answered with something that is not JSON, so it is not behaving like the "
                          "Hugging Face Hub", hint="check HF_ENDPOINT (unset it for huggingface.co) and any proxy, "
                          "then " + call.retry)
    if isinstance(exc, OfflineModeIsEnabled):
        return PicliError("offline mode is on (HF_HUB_OFFLINE=1)",
                          hint=step("unset HF_HUB_OFFLINE to push",
                                    f"fetch it on a connected machine with: {call.fetch}"))
    if isinstance(exc, LocalTokenNotFoundError):
        return PicliError("no Hugging Face token: not logged in",
                          hint=step("run `hf auth login`, set HF_TOKEN, or pass --token",
                                    "run `hf auth login` or set HF_TOKEN"))
    if isinstance(exc, GatedRepoError):
        return PicliError(f"{repo} is gated and this account has not been granted access",
                          hint=f"request access at {host}/{repo}, " + step("or push to a repo of your own",
                                                                           "then `hf auth login`"))
    if isinstance(exc, RevisionNotFoundError):
        return PicliError(f"{repo} has no revision {call.revision or 'main'!r}",
                          hint=step("check --revision; a new branch is created from main only when the repo exists",
                                    "check the revision after @ in MODEL"))
    if isinstance(exc, RepositoryNotFoundError):
        return PicliError(f"{repo} was not found on the Hub, or it is private and this token cannot see it",
                          hint=step("check the name; a private repo needs a token of its owner or organization",
                                    "check the spelling, or log in with `hf auth login`"))
    if isinstance(exc, LocalEntryNotFoundError):
        where = "picli is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        return PicliError(f"{repo} is not in the local Hugging Face cache and {where}",
                          hint=f"fetch it on a connected machine with: {call.fetch}")
    if isinstance(exc, BadRequestError) or (isinstance(exc, ValueError) and "Invalid metadata" in str(exc)):
        detail = _one_line(getattr(exc, "server_message", None) or str(exc).strip().splitlines()[-1])
        return PicliError(f"the Hub rejected the request: {detail}",
                          hint=step("if it is about README.md, run `picli card MODEL --overwrite-card` and push again",
                                    "check the repo id and the revision after @"))
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        namespace = repo.split("/")[0]
        if status == 401:
            return PicliError("the Hub rejected the token (401 Unauthorized): it is invalid or expired",
                              hint=step("pass a valid --token, set HF_TOKEN, or run `hf auth login`",
                                        "set a valid HF_TOKEN or run `hf auth login`")
                              + " (tokens: https://huggingface.co/settings/tokens)")
        if status == 403:
            return PicliError(f"forbidden: this token may not {step('write to', 'read from')} {namespace} (403)",
                              hint=step(f"use a token with write access to {namespace}, push to your own namespace, "
                                        "or pass --create-pr to propose the change",
                                        f"use a token that can read {repo}"))
        if status == 409:
            return PicliError(f"{repo} already exists (409 Conflict), possibly private to another account",
                              hint="choose another name, or use a token that can see it and pass --exist-ok")
        if status == 429:
            return PicliError("the Hub is rate-limiting this account (429)", hint="wait a minute, then " + call.retry)
        if status is not None and status >= 500:
            return PicliError(f"the Hub failed with {status}" + step(" during the push; nothing was committed", ""),
                              hint=call.retry)
        return PicliError(f"the Hub answered {status} for {repo}: {_one_line(exc.server_message) or 'no detail'}",
                          hint=step("check REPO and the token's permissions", call.retry))
    if isinstance(exc, httpx2.TransportError):
        kind = "timed out" if isinstance(exc, httpx2.TimeoutException) else "connection failed"
        return PicliError(f"could not reach {host} ({kind})",
                          hint="check the network (and HF_ENDPOINT if set), then " + call.retry)
    return None


def _one_line(text: str | None, limit: int = 300) -> str:
    """A server's own text in an error line: newlines folded, and not a whole web page."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
