"""Publishing a SPROUT-layout dataset folder (from `write_sprout_dataset` or a converter) to the Hub."""

from __future__ import annotations

import os
from pathlib import Path

from ..hub_checks import HubAuthError, check_repo_id, check_revision, hub_refused, require_token
from .prices import PRICES_FILENAME, read_prices_file

UPLOADED = ["README.md", PRICES_FILENAME, "data/*.parquet"]


def check_dataset_folder(folder: str | os.PathLike) -> dict:
    """
    Check that `folder` is a publishable SPROUT-layout dataset: a README.md card with YAML `configs`, a
    licence and a models/prices section, parquet files under data/, and a valid prices.json if present.
    Returns `{"splits": [...], "files": [...]}`.
    """
    import yaml

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No dataset folder at {folder}.")
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise ValueError(f"{folder} has no README.md dataset card; write the folder with write_sprout_dataset().")
    card = card_path.read_text(encoding="utf-8")
    if not card.startswith("---"):
        raise ValueError(f"{card_path} has no YAML front matter (configs, license).")
    front = yaml.safe_load(card.split("---", 2)[1]) or {}
    if not front.get("license"):
        raise ValueError(f"{card_path} states no licence (YAML `license:`); say under which terms the data may be used.")
    configs = front.get("configs") or []
    splits = [entry["split"] for config in configs for entry in config.get("data_files", []) if isinstance(entry, dict)]
    if not splits:
        raise ValueError(f"{card_path} has no `configs` with data_files per split, so load_dataset would not see the splits.")
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").glob("*.parquet"))
    for split in splits:
        if not any(Path(name).name.startswith(f"{split}-") for name in files):
            raise ValueError(f"{folder}/data has no parquet file for split {split!r} named in the card.")
    if "## Models and prices" not in card:
        raise ValueError(f"{card_path} has no 'Models and prices' section.")
    if (folder / PRICES_FILENAME).is_file():
        read_prices_file(folder / PRICES_FILENAME)
        files.append(PRICES_FILENAME)
    return {"splits": splits, "files": ["README.md", *files]}


def push_routing_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """
    Push a SPROUT-layout dataset folder to the Hub dataset repo `repo_id` as one commit: README.md card,
    prices.json and data/*.parquet (nothing else in the folder is sent). Creates the repo if needed.
    The token comes from `token`, else HF_TOKEN / `hf auth login`. `revision`: a branch, or an open
    pull request `refs/pr/N` (checked as for routers, before anything is sent). Returns the commit info.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id)
    revision = check_revision(revision)
    summary = check_dataset_folder(folder)
    token = require_token(token)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="dataset",
            allow_patterns=UPLOADED,
            commit_message=commit_message or f"Upload routing data ({', '.join(summary['splits'])}) in SPROUT layout",
            revision=revision,
            create_pr=create_pr,
            token=token,
        )
    except (HfHubHTTPError, OSError, ValueError) as error:  # the cause is dropped: it may quote the token
        raise hub_refused(error, f"the upload to datasets/{repo_id}", token) from None


__all__ = ["HubAuthError", "UPLOADED", "check_dataset_folder", "push_routing_dataset"]
