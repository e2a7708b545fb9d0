"""`carrot logs push`: a gateway's outcome log → a routing data set in a Hub dataset repo.

The log folder is converted by the routing-log converter (`convert_routing_logs`, which reads outcome
logs directly) into a temporary SPROUT-layout folder, which goes to the Hub through the data-set
publishing path (`push_routing_dataset`): one commit with the card, prices.json and the parquet file.
The log itself is only read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .dataset_publishing import HubAuthError, push_routing_dataset
from .logs import convert_routing_logs
from .outcome_log_reader import is_outcome_log
from .validation import RoutingDataError

DEFAULT_LICENSE = "other"


def push_outcome_log(
    log_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    license: str = DEFAULT_LICENSE,
    commit_message: str | None = None,
    on_error: str = "skip",
):
    """
    Convert the outcome log `log_dir` and push it to the Hub dataset repo `repo_id` (created if needed).

    Each answered request with its prompt becomes a cell (prompt × the model that answered: its
    label, when it got one, and its token counts); bad or torn lines are skipped (`on_error="skip"`)
    unless `on_error="raise"`. Returns `(commit_info, table)`: what the Hub answered and the table sent.
    """
    from carrot_hub.router_publishing import check_repo_id

    log_dir = Path(log_dir).expanduser()
    if not is_outcome_log(log_dir):
        raise FileNotFoundError(
            f"{log_dir} is not an outcome log (a folder of outcomes-*.jsonl shards written by `carrot serve`)."
        )
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="carrot-logs-push-") as scratch:
        folder = Path(scratch) / "routing-data"
        tables = convert_routing_logs(
            log_dir,
            folder,
            on_error=on_error,
            pretty_name=f"Routing data served by carrot ({log_dir.name})",
            description="Requests served by a `carrot serve` gateway, with the model that answered each, "
            "its token usage, and the quality labels sent to /v1/feedback (null = not labelled).",
            license=license,
            provenance=f"Converted from the outcome log {log_dir.name} of a carrot serve gateway by `carrot logs push`.",
        )
        commit_info = push_routing_dataset(
            folder,
            repo_id,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message or "Upload served routing data (carrot logs push)",
        )
    return commit_info, tables["train"]


def add_push_arguments(actions) -> argparse.ArgumentParser:
    """The `push` action of `carrot logs` (`actions`: its subparsers; see `carrot_hub.logs_command`)."""
    push = actions.add_parser(
        "push",
        help="send an outcome log to a Hub dataset repo",
        description="Convert a carrot serve outcome log into a SPROUT-layout routing data set and push it "
        "to a Hub dataset repo in one commit.",
    )
    push.add_argument("log_dir", help="the folder `carrot serve` writes its outcome log to")
    push.add_argument("repo_id", help="Hub dataset repo, e.g. your-name/served-routing-data (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to commit to; default main")
    push.add_argument("--license", default=DEFAULT_LICENSE, help=f"licence of the data for the card (default {DEFAULT_LICENSE})")
    push.add_argument("--token", help="Hub token (default: `hf auth login` or HF_TOKEN)")
    push.add_argument("--strict", action="store_true", help="stop at a bad log line instead of skipping it")
    push.add_argument("--debug", action="store_true", help="show tracebacks")
    return push


def run_push(args: argparse.Namespace) -> int:
    """`carrot logs push LOG_DIR REPO_ID`."""
    from carrot_hub.cli_common import UsageError
    from carrot_hub.router_publishing import PublishError

    try:
        commit_info, table = push_outcome_log(
            args.log_dir, args.repo_id, token=args.token, private=args.private, revision=args.revision,
            license=args.license, on_error="raise" if args.strict else "skip",
        )
    except (FileNotFoundError, RoutingDataError, PublishError) as error:
        raise UsageError(str(error)) from None
    except HubAuthError:
        raise
    summary = table.metadata.get("outcome_log", {})
    labelled = int(table.observed.sum())
    print(
        f"Pushed {len(table)} prompts × {len(table.models)} models ({labelled} labelled cells, from "
        f"{summary.get('served', '?')} served requests) to datasets/{args.repo_id}"
        + (f"@{args.revision}" if args.revision else "")
        + f": {getattr(commit_info, 'commit_url', commit_info)}"
    )
    return 0
