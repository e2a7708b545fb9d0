"""
Publishing routers to the Hugging Face Hub, and new revisions with new prices.

`publish_router` sends a saved router folder (config with `auto_map`, the two remote-code files,
`model.safetensors`, the tokenizer) plus a generated model card, and optionally the evaluation JSON
and its cost–quality plot, in ONE commit. Everything that can be checked locally (the folder, the
repo id, a token, the card) is checked before anything is sent, so a failure never leaves a
half-pushed repository.

`set_prices` writes a router folder (or publishes a revision) whose config and card carry a new
price table; `model.safetensors` is copied byte for byte.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError

from .atomic_writing import atomic_folder
from .configuration_carrot import CarrotConfig
from .hub_checks import CommitConflict, PublishError, check_repo_id, check_revision, hub_refused, is_pull_request, require_token
from .hub_code import code_files
from .router_folder import check_output_dir

CARD_FILENAME = "README.md"
PLOT_FILENAME = "cost_quality.png"
EVAL_FILENAME = "eval_results.json"
WEIGHTS_FILE = "model.safetensors"
# A tokenizer needs its config plus one vocabulary file; any of these found is sent along.
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
TOKENIZER_EXTRAS = ("special_tokens_map.json", "added_tokens.json", "merges.txt")


@dataclass
class PublishResult:
    """What a publish sent: the Hub's commit info and `(path_in_repo, bytes)` per file."""

    repo_id: str
    revision: str | None
    files: list[tuple[str, int]]
    commit_info: object = None
    card: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def commit_url(self) -> str | None:
        return getattr(self.commit_info, "commit_url", None)


# ------------------------------------------------------------------------------------ checks


def router_files(folder: str | os.PathLike) -> list[str]:
    """
    The files of a saved router that must travel to the Hub, relative to `folder`; raise
    `PublishError` listing every missing one (and saying how to produce them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(f"{folder} is not a folder; save the router first with router.save_pretrained('{folder}').")
    present = {path.name for path in folder.iterdir() if path.is_file()}
    # The code files are those the folder's own modeling_carrot.py imports (a router saved by an
    # older release carries fewer), found as transformers' loader will find them on the Hub.
    code, missing_code = code_files(folder)
    required = ["config.json", *code, WEIGHTS_FILE, TOKENIZER_CONFIG]
    missing = [*missing_code, *(name for name in required if name not in present)]
    vocabularies = [name for name in TOKENIZER_VOCABULARIES if name in present]
    if not vocabularies:
        missing.append(f"a tokenizer vocabulary ({' or '.join(TOKENIZER_VOCABULARIES[:2])})")
    if missing:
        raise PublishError(
            f"The router folder {folder} lacks {', '.join(missing)}. Save the whole router with "
            "`router.save_pretrained(folder)` (with carrot_hub imported, it writes the code files, "
            "auto_map and the tokenizer)."
        )
    _check_config(folder)
    extras = [name for name in TOKENIZER_EXTRAS if name in present]
    return sorted([*required, *vocabularies, *extras])


def _check_config(folder: Path) -> CarrotConfig:
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PublishError(f"{folder / 'config.json'} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if raw.get("model_type") != CarrotConfig.model_type:
        raise PublishError(f"{folder / 'config.json'} is not a CARROT router config (model_type {raw.get('model_type')!r}).")
    auto_map = raw.get("auto_map") or {}
    lacking = [key for key in ("AutoConfig", "AutoModel") if key not in auto_map]
    if lacking:
        raise PublishError(
            f"{folder / 'config.json'} has no auto_map entry for {', '.join(lacking)}, so AutoModel with "
            "trust_remote_code could not load it. Re-save the router with carrot_hub imported."
        )
    try:
        return CarrotConfig.from_pretrained(folder)
    except ValueError as error:
        raise PublishError(f"{folder / 'config.json'} is invalid: {str(error).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------- publish


def publish_router(
    router_folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    eval_results: str | os.PathLike | Mapping | None = None,
    plot: str | os.PathLike | None = None,
    card_date: str | None = None,
    encoder_id: str | None = None,
    datasets: list[str] | None = None,
    license: str = "mit",
    router_key: str | None = None,
    check_weights: bool = True,
    create_pr: bool = False,
    commit_description: str | None = None,
    tags: list[str] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    parent_commit: str | None = None,
) -> PublishResult:
    """
    Publish a saved router folder to the Hub in one commit, with a generated README.md card.

    Args:
        router_folder: a folder written by `router.save_pretrained` (with carrot_hub imported).
        repo_id: `"namespace/name"`; the repo is created if it does not exist.
        token: a Hub token with write access (default: the stored login or `HF_TOKEN`).
        private: create the repo private (an existing repo keeps its visibility).
        revision: a branch to commit to (created from main when missing), or an open pull request
            `refs/pr/N`; default main.
        commit_message: the commit's title (`commit_description`: its body).
        create_pr: open a pull request with the commit instead of committing to `revision`.
        eval_results: an evaluation JSON (path or dict): its metrics go into the card's model-index
            and the file is uploaded as `eval_results.json`.
        plot: the evaluation's cost–quality PNG, uploaded as `cost_quality.png` and shown in the card.
        card_date: date used in the card for undated changes (default today).
        check_weights: load the router once to make sure the weights match the config.
        tags: extra Hub tags for the card.
        extra_files: more files for the same commit, `{path in repo: content}` (`carrot learn` sends
            its learning.json this way, so a revision and its log position are one commit).
        parent_commit: commit only if the branch's head is still this commit hash; else
            `CommitConflict` and nothing is committed (`carrot learn` uses it so that a second writer
            of the same repo, on another machine, stops instead of publishing over the first).

    Returns:
        A [`PublishResult`] (files sent with their sizes, the card, the Hub's commit info).
    """
    from model_card.build import build_model_card, load_eval_results

    folder = Path(router_folder)
    repo_id = check_repo_id(repo_id)
    files = router_files(folder)
    revision = check_revision(revision)
    plot_path = None
    if plot is not None:
        plot_path = Path(plot)
        if not plot_path.is_file():
            raise PublishError(f"The plot {plot_path} does not exist; run the evaluation first or leave --plot out.")
        if plot_path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
            raise PublishError(f"The plot {plot_path} is not a PNG file.")
    token = require_token(token)
    try:
        results = load_eval_results(eval_results)
    except (OSError, ValueError) as error:
        raise PublishError(str(error)) from None
    config = CarrotConfig.from_pretrained(folder)
    if check_weights:
        _check_weights(folder)
    try:
        card = build_model_card(
            config,
            eval_results=results,
            plot_filename=PLOT_FILENAME if plot_path else None,
            repo_id=repo_id,
            encoder_id=encoder_id,
            datasets=datasets,
            license=license,
            router_key=router_key,
            card_date=card_date,
            tags=tags,
        )
    except ValueError as error:
        raise PublishError(f"Could not build the model card: {error}") from None

    card_bytes = card.encode("utf-8")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    sizes = [(name, (folder / name).stat().st_size) for name in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILENAME, path_or_fileobj=card_bytes))
    sizes.append((CARD_FILENAME, len(card_bytes)))
    if plot_path is not None:
        operations.append(CommitOperationAdd(path_in_repo=PLOT_FILENAME, path_or_fileobj=str(plot_path)))
        sizes.append((PLOT_FILENAME, plot_path.stat().st_size))
    for name, content in (extra_files or {}).items():
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=bytes(content)))
        sizes.append((name, len(content)))
    if results is not None:
        eval_bytes = (json.dumps(results, indent=2, sort_keys=True) + "\n").encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=EVAL_FILENAME, path_or_fileobj=eval_bytes))
        sizes.append((EVAL_FILENAME, len(eval_bytes)))

    api = HfApi(token=token)
    message = commit_message or f"Upload CARROT router ({config.num_candidates} candidates, {config.predictor_kind})"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main" and not is_pull_request(revision):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit_info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
            parent_commit=parent_commit,
        )
    except HfHubHTTPError as error:
        if parent_commit is not None and getattr(error.response, "status_code", None) == 412:
            raise CommitConflict(
                f"{repo_id} has moved past {parent_commit[:12]}: another writer committed to it since, so nothing "
                "was published. Run one writer per repo.") from None
        raise hub_refused(error, f"the upload to {repo_id}", token) from None
    except (OSError, ValueError) as error:  # the cause is dropped: it may quote the token
        raise hub_refused(error, f"the upload to {repo_id}", token) from None
    return PublishResult(repo_id=repo_id, revision=revision, files=sizes, commit_info=commit_info, card=card)


# ------------------------------------------------------------ the router's own save / push


def write_model_card(router, folder: str | os.PathLike) -> None:
    """
    Write the router's CARROT model card as `folder/README.md` (installed as
    `CarrotRouter.model_card_writer`, so `save_pretrained` gives a complete Hub repo). A README.md
    that carrot_hub did not write (no `carrot` tag in its metadata) is kept, with a warning.
    """
    from huggingface_hub import metadata_load

    from model_card.build import build_model_card

    path = Path(folder) / CARD_FILENAME
    if path.is_file():
        try:
            tags = (metadata_load(path) or {}).get("tags") or []
        except (ValueError, UnicodeDecodeError):
            tags = []
        if "carrot" not in tags:
            warnings.warn(f"{path} was not written by carrot_hub; it is kept, and no model card was written.", stacklevel=3)
            return
    path.write_text(build_model_card(router), encoding="utf-8")


def push_router(
    router,
    repo_id: str,
    *,
    eval_results: str | os.PathLike | Mapping | None = None,
    plot: str | os.PathLike | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    tags: list[str] | None = None,
    **card_options,
) -> PublishResult:
    """
    `router.push_to_hub(repo_id, ...)` with carrot_hub installed: the router is saved into a
    temporary folder and sent by [`publish_router`], the same path as `carrot publish`, so the
    commit holds the weights, config, remote code, tokenizer and the CARROT model card, plus
    `eval_results.json` and `cost_quality.png` when given. Everything that can be checked locally
    (repo id, revision, token, plot, evaluation JSON) is checked before anything is sent.

    `card_options`: `card_date`, `encoder_id`, `datasets`, `license`, `router_key`, `extra_files`,
    `parent_commit` (see [`publish_router`]). Returns a [`PublishResult`] (its `commit_url` is the Hub's).
    """
    check_repo_id(repo_id)
    check_revision(revision)
    token = require_token(None if token is True else token or None)
    with tempfile.TemporaryDirectory(prefix="carrot-push-") as staging:
        router.save_pretrained(staging)
        return publish_router(
            staging, repo_id, token=token, private=bool(private), revision=revision, commit_message=commit_message,
            commit_description=commit_description, create_pr=create_pr, eval_results=eval_results, plot=plot,
            tags=tags, check_weights=False, **card_options,
        )


def install_router_hooks() -> None:
    """Give `CarrotRouter` the CARROT card on `save_pretrained` and the CARROT `push_to_hub` (done on import)."""
    from .modeling_carrot import CarrotRouter

    CarrotRouter.model_card_writer = staticmethod(write_model_card)
    CarrotRouter.hub_publisher = staticmethod(push_router)


def _check_weights(folder: Path) -> None:
    from .modeling_carrot import CarrotRouter

    try:
        CarrotRouter.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise PublishError(f"The router in {folder} does not load: {str(error).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------ prices


def read_price_file(path: str | os.PathLike) -> tuple[dict[str, dict[str, float]], str | None]:
    """
    Read a price file (JSON, or YAML for .yaml/.yml): either `{model: {"input": $/M, "output": $/M}}`
    or the data sets' form `{"recorded_on": "YYYY-MM-DD", "prices": {...}}`. An entry may give only
    one of input/output. Returns `(prices, recorded_on)`; values are checked by [`validate_new_prices`].
    """
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"The price file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PublishError(f"The price file {path} is not valid YAML ({str(error).splitlines()[0]}).") from None
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise PublishError(f"The price file {path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(document, dict) or not document:
        raise PublishError(f"The price file {path} must map model names to {{input: $/M, output: $/M}}.")
    recorded_on = None
    if "prices" in document and isinstance(document["prices"], dict):
        recorded_on = document.get("recorded_on")
        document = document["prices"]
    return document, None if recorded_on is None else str(recorded_on)


def validate_new_prices(prices: Mapping, config: CarrotConfig) -> dict[str, dict[str, float]]:
    """
    Check a partial price table against a router's candidates: unknown models, non-numeric,
    negative, NaN or infinite prices raise `PublishError` naming the entry.
    Returns `{model: {"input"?: float, "output"?: float}}`.
    """
    known = config.candidate_models
    unknown = [name for name in prices if name not in known]
    if unknown:
        raise PublishError(f"The price file names {unknown}, which are not candidates of this router. Known: {', '.join(known)}.")
    clean = {}
    for name, entry in prices.items():
        if isinstance(entry, Mapping):
            extra = sorted(set(entry) - {"input", "output"})
            if extra or not entry:
                raise PublishError(f"The price of {name!r} must have keys 'input' and/or 'output', got {sorted(entry)}.")
            pairs = dict(entry)
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            pairs = {"input": entry[0], "output": entry[1]}
        else:
            raise PublishError(f"The price of {name!r} must be {{input: $/M, output: $/M}}, got {entry!r}.")
        clean[name] = {}
        for side, value in pairs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PublishError(
                    f"The {side} price of {name!r} is {value!r}: prices must be finite numbers ≥ 0 (US dollars per million tokens)."
                )
            clean[name][side] = float(value)
    return clean


def set_prices(
    router_folder: str | os.PathLike,
    prices: str | os.PathLike | Mapping,
    output_folder: str | os.PathLike | None = None,
    repo_id: str | None = None,
    recorded_on: str | None = None,
    overwrite: bool = False,
    card_date: str | None = None,
    **publish_kwargs,
) -> Path | PublishResult:
    """
    A new revision of a router with a new price table, without retraining.

    Args:
        router_folder: a saved router folder.
        prices: a price file (JSON or YAML) or a mapping; models not named keep their price.
        output_folder: where to write the new router (must not exist or be empty, unless `overwrite`).
            Writing into `router_folder` itself needs `overwrite=True`.
        repo_id: publish the new revision to this Hub repo instead of (or as well as) writing a folder;
            `publish_kwargs` (token, revision, commit_message, private, eval_results, plot) go to
            [`publish_router`]. Old evaluation results are NOT carried over: they were measured with
            the old prices.
        recorded_on: the date of the new prices (default: the file's `recorded_on`, else today).

    Returns:
        The output folder, or the [`PublishResult`] when `repo_id` is given.
    """
    source = local_router_folder(router_folder)
    files = router_files(source)
    config = CarrotConfig.from_pretrained(source)
    if isinstance(prices, Mapping):
        new_prices, file_date = dict(prices), None
    else:
        new_prices, file_date = read_price_file(prices)
    new_prices = validate_new_prices(new_prices, config)
    recorded_on = recorded_on or file_date or datetime.date.today().isoformat()
    if repo_id is not None:
        check_repo_id(repo_id)
        check_revision(publish_kwargs.get("revision"))
        require_token(publish_kwargs.get("token"))
    if output_folder is None and repo_id is None:
        raise PublishError("Say where the new router goes: an output folder, or a Hub repo id to publish it to.")

    def publish(folder: Path, changes: list[str]) -> PublishResult:
        publish_kwargs.setdefault(
            "commit_message", f"New price table recorded on {recorded_on}: " + "; ".join(changes)[:200]
        )
        return publish_router(folder, repo_id, card_date=card_date, **publish_kwargs)

    if output_folder is None:
        with tempfile.TemporaryDirectory(prefix="carrot-prices-") as staging:
            changes = _write_repriced(source, files, Path(staging), config, new_prices, recorded_on, card_date)
            return publish(Path(staging), changes)
    target = Path(output_folder)
    in_place = target.exists() and target.resolve() == source.resolve()
    if in_place and not overwrite:
        raise PublishError(f"{target} is the input router; choose a new folder or pass overwrite=True (--overwrite).")
    try:
        check_output_dir(target, overwrite=overwrite)
    except FileExistsError as error:
        raise PublishError(str(error)) from None
    # Written whole into a staging folder, then moved in: an interruption leaves the old router.
    with atomic_folder(target, replace=overwrite) as staging:
        if in_place:  # the router's other files (e.g. its training report) stay with it; not the old evaluation
            for path in source.iterdir():
                if path.is_file() and path.name not in (*files, CARD_FILENAME, EVAL_FILENAME, PLOT_FILENAME):
                    shutil.copy2(path, staging / path.name)
        changes = _write_repriced(source, files, staging, config, new_prices, recorded_on, card_date)
    return target if repo_id is None else publish(target, changes)


def local_router_folder(source: str | os.PathLike) -> Path:
    """A local folder as is; a Hub id is downloaded (to the Hub cache) and its snapshot folder returned."""
    path = Path(source)
    if path.exists() or os.sep in str(source) and str(source).count("/") != 1:
        return path
    repo_id = check_repo_id(str(source))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="model"))
    except Exception as error:  # offline, missing repo, no access: one line says which
        raise PublishError(f"{source} is neither a local folder nor a downloadable Hub router ({str(error).splitlines()[0]}).") from None


def _write_repriced(source, files, target: Path, config, new_prices, recorded_on, card_date) -> list[str]:
    """Copy the router with a new price table into `target` (weights byte for byte); return the changes."""
    from model_card.build import build_model_card

    raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
    names = config.candidate_models
    changes, changed_models = [], []
    for name, entry in new_prices.items():
        column = names.index(name)
        for side, field_name in (("input", "input_price_per_million"), ("output", "output_price_per_million")):
            if side in entry and raw[field_name][column] != entry[side]:
                changes.append(f"{name} {side} ${raw[field_name][column]:g} → ${entry[side]:g}/M")
                changed_models += [name] if name not in changed_models else []
                raw[field_name][column] = entry[side]
    raw["prices_recorded_on"] = recorded_on
    if changed_models and raw.get("prices_source"):
        raw["prices_source"] = f"{raw['prices_source']}; since changed by hand for {', '.join(changed_models)}"
    description = f"price table recorded on {recorded_on}: " + ("; ".join(changes) if changes else "no price changed")
    raw["router_changes"] = list(raw.get("router_changes") or []) + [{"date": card_date or recorded_on, "description": description}]
    for name in files:
        shutil.copyfile(source / name, target / name)  # the weights are copied, never re-saved
    (target / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    new_config = CarrotConfig.from_pretrained(target)  # validates the table end to end
    (target / CARD_FILENAME).write_text(build_model_card(new_config, card_date=card_date), encoding="utf-8")
    return changes or ["no price changed"]


# ---------------------------------------------------------------------------------------- CLI


def add_publish_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot publish`."""
    parser.add_argument(
        "router_folder",
        help="a router folder written by save_pretrained / carrot train, or a converted routing data set "
        "folder (data/*.parquet + README.md + prices.json), which goes to a dataset repo",
    )
    parser.add_argument("repo_id", help="Hub repo to publish to, e.g. your-name/my-router (created if missing)")
    parser.add_argument("--eval-results", help="evaluation JSON from `carrot evaluate` (metrics go into the card)")
    parser.add_argument("--plot", help="cost–quality PNG from `carrot evaluate` (uploaded and shown in the card)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to commit to (created when missing); default main")
    parser.add_argument("--commit-message", help="title of the Hub commit")
    parser.add_argument("--token", help="Hub token (default: `hf auth login` or HF_TOKEN)")
    parser.add_argument("--encoder-id", help="Hub id of the sentence encoder, for the card's base_model")
    parser.add_argument("--dataset", action="append", dest="datasets", help="Hub id of a training data set (repeatable)")
    parser.add_argument("--license", default="mit", help="licence identifier for the card (default mit)")
    return parser


def _is_dataset_folder(folder: Path) -> bool:
    return not (folder / "config.json").exists() and any((folder / "data").glob("*.parquet"))


def run_publish(args: argparse.Namespace) -> int:
    folder = Path(args.router_folder)
    if _is_dataset_folder(folder):
        # A converted routing data set (SPROUT layout): the data module owns its checks and card.
        from .data.dataset_publishing import push_routing_dataset

        check_repo_id(args.repo_id)
        info = push_routing_dataset(
            folder, args.repo_id, token=args.token, private=args.private,
            commit_message=args.commit_message, revision=args.revision,
        )
        print(f"Published the routing data set {folder} to datasets/{args.repo_id}: {getattr(info, 'commit_url', info)}")
        return 0
    result = publish_router(
        args.router_folder,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        eval_results=args.eval_results,
        plot=args.plot,
        encoder_id=args.encoder_id,
        datasets=args.datasets,
        license=args.license,
    )
    print(f"Published {len(result.files)} files ({result.total_bytes / 1e6:.1f} MB) to {result.repo_id}"
          + (f"@{result.revision}" if result.revision else "") + f": {getattr(result.commit_info, 'commit_url', '')}")
    for name, size in result.files:
        print(f"  {name:32s} {size:>12,d} bytes")
    return 0


def add_set_prices_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `carrot set-prices`."""
    parser.add_argument("router_folder", help="a saved router folder")
    parser.add_argument("price_file", help="JSON or YAML: {model: {input: $/M, output: $/M}}; unnamed models keep their price")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="write the re-priced router to this new folder")
    target.add_argument("--repo-id", help="publish the re-priced router to this Hub repo")
    parser.add_argument("--recorded-on", help="date of the new prices, YYYY-MM-DD (default: the file's, else today)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into an existing non-empty folder")
    parser.add_argument("--revision", help="with --repo-id: branch to commit to")
    parser.add_argument("--commit-message", help="with --repo-id: title of the Hub commit")
    parser.add_argument("--token", help="with --repo-id: Hub token")
    return parser


def run_set_prices(args: argparse.Namespace) -> int:
    publish = {}
    if args.repo_id:
        publish = {"token": args.token, "revision": args.revision, "commit_message": args.commit_message}
    result = set_prices(
        args.router_folder, args.price_file, output_folder=args.output, repo_id=args.repo_id,
        recorded_on=args.recorded_on, overwrite=args.overwrite, **publish,
    )
    config = CarrotConfig.from_pretrained(result) if isinstance(result, Path) else None
    where = str(result) if isinstance(result, Path) else f"{result.repo_id}"
    print(f"New price table written to {where}.")
    if config is not None:
        for name, price in config.prices.items():
            print(f"  {name:40s} input ${price['input']:g}/M  output ${price['output']:g}/M")
    return 0


__all__ = [
    "PublishError",
    "PublishResult",
    "check_repo_id",
    "publish_router",
    "push_router",
    "write_model_card",
    "install_router_hooks",
    "read_price_file",
    "router_files",
    "require_token",
    "set_prices",
    "local_router_folder",
    "validate_new_prices",
    "add_publish_arguments",
    "run_publish",
    "add_set_prices_arguments",
    "run_set_prices",
]
