"""
What both publishing paths (routers: `router_publishing`, routing data sets:
`data.dataset_publishing`) check before anything reaches the Hub, and how they relay its errors.

Everything here is local: a bad repo id, branch name or missing token is reported before a repo
is created or a byte is sent, and a Hub error is relayed without the token it may quote.
"""

from __future__ import annotations

import re

import huggingface_hub
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


class PublishError(ValueError):
    """Publishing or re-pricing cannot proceed; the message says what is wrong and what to do."""


class HubAuthError(PublishError):
    """No Hugging Face token to publish with."""


class CommitConflict(PublishError):
    """The branch moved past the commit a publish was based on (`parent_commit`): another writer committed."""


# What may name a Hub repo rather than a local path: `namespace/name` (a router or encoder), and
# `name` or `namespace/name` (a data set). The one home of this pattern; `check_repo_id` validates fully.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_ID_OR_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PULL_REQUEST = re.compile(r"^refs/pr/[1-9][0-9]*$")
# git's rules for a branch name (git check-ref-format), which the Hub applies.
_BAD_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[/.-]|[/.]$|\.lock$|/\.")
# Hugging Face tokens as the Hub and its error messages write them.
_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{6,}")


def check_repo_id(repo_id) -> str:
    """Return `repo_id` if it is a valid Hub id (`name` or `namespace/name`), else raise `PublishError`."""
    if not isinstance(repo_id, str) or not repo_id:
        raise PublishError(f"The repo id must be a non-empty string like 'your-name/my-router', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).splitlines()[0].replace(" Use `repo_type` argument if needed.", "").rstrip(".")
        raise PublishError(
            f"{repo_id!r} is not a valid Hub repo id ({reason}). Use 'namespace/name' with letters, digits, "
            "'-', '_' or '.', e.g. 'your-name/my-router'."
        ) from None
    return repo_id


def check_revision(revision) -> str | None:
    """
    `revision` if it can be committed to: None (main), a branch name git accepts (created from main
    when missing), or an open pull request `refs/pr/N`; else raise `PublishError`.
    """
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision:
        raise PublishError(f"revision must be a branch name like 'prices-2025-06' (or refs/pr/N), got {revision!r}.")
    if revision.startswith("refs/"):
        if _PULL_REQUEST.match(revision):
            return revision
        raise PublishError(
            f"revision {revision!r} is not a branch name or an open pull request 'refs/pr/N' (N = its number)."
        )
    if _BAD_BRANCH.search(revision):
        raise PublishError(
            f"revision {revision!r} is not a valid branch name (no spaces, '..', '~', '^', ':', '?', '*', '[', "
            "'\\', '@{', and no leading '-', '/' or '.'): use e.g. 'prices-2025-06'. Nothing was sent."
        )
    return revision


def is_pull_request(revision: str | None) -> bool:
    """Whether `revision` names an existing pull request (`refs/pr/N`) rather than a branch."""
    return bool(revision) and bool(_PULL_REQUEST.match(revision))


def require_token(token: str | None = None) -> str:
    """The token to publish with: `token`, else the one `hf auth login` stored or `HF_TOKEN`; else raise."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubAuthError(
            "No Hugging Face token found: run `hf auth login` (or set HF_TOKEN=hf_...) with a token that "
            "has write access, then publish again. Nothing was sent."
        )
    return token


def redact(text: str, token: str | None = None) -> str:
    """`text` with `token` and anything shaped like a Hugging Face token replaced by `hf_***`."""
    if token:
        text = text.replace(token, "hf_***")
    return _TOKEN_PATTERN.sub("hf_***", text)


def hub_refused(error: BaseException, what: str, token: str | None) -> PublishError:
    """A one-line `PublishError` for a Hub error during `what`, with any token in it redacted."""
    lines = str(error).strip().splitlines()
    detail = redact(lines[0] if lines else type(error).__name__, token)
    return PublishError(
        f"The Hub refused {what}: {detail}. Check that your token has write access to this namespace "
        "(`hf auth whoami`)."
    )


__all__ = [
    "CommitConflict", "HubAuthError",
    "PublishError", "check_repo_id", "check_revision", "hub_refused", "is_pull_request", "redact", "require_token"]
