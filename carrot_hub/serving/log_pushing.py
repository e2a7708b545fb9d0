"""`carrot serve --push-logs org/name --push-every 10m`: the outcome log shipped to a Hub data set.

huggingface_hub's `CommitScheduler` commits the log folder's changed shards (and prices.json) every
`every` to the dataset repo, under `path_in_repo` (default `replica-<host name>`, so replicas sharing
a repo never write the same files). Shards only grow, and the scheduler uploads each changed shard
capped at its size when listed, so a commit holds whole records except, at most, a last line being
written, which the reader (`carrot learn`, with `datasets`) leaves for the next commit. One pusher
per log folder: with `--workers N` the supervising process pushes the workers' shared folder.
"""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger("carrot_hub.serving")
PUSHED_PATTERNS = ["outcomes-*.jsonl", "prices.json"]


def default_path_in_repo() -> str:
    """`replica-<host name>`: each replica's shards in its own folder of the data set."""
    return "replica-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())


def start_log_pusher(log_dir, repo_id: str, every_s: float, token: str | None = None, private: bool = True,
                     path_in_repo: str | None = None):
    """
    Start pushing `log_dir` to the dataset repo `repo_id` every `every_s` seconds (the repo is
    created, private by default, if missing). Returns the scheduler; `stop_log_pusher` at shutdown.
    """
    from huggingface_hub import CommitScheduler

    return CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=str(log_dir), every=every_s / 60.0,
                           path_in_repo=path_in_repo or default_path_in_repo(), allow_patterns=PUSHED_PATTERNS,
                           private=private, token=token)


def stop_log_pusher(scheduler, timeout_s: float = 60.0) -> None:
    """Push what is left once more, then stop the scheduler."""
    try:
        scheduler.trigger().result(timeout=timeout_s)
    except Exception as error:  # noqa: BLE001  (shutting down: report, do not hide the stop)
        logger.error("the last push of the outcome log to %s failed: %s", scheduler.repo_id, error)
    scheduler.stop()
