"""`carrot train` / `python -m training.train`: routing data in, router folder out.

    python -m training.train --data carrot_hub/default_data/routerbench-0shot --split train \\
        --kind knn --out routers/rb-knn
    accelerate launch -m training.train --data ... --kind finetune --out routers/rb-ft   # GPUs

Data is read only through `carrot_hub.data.load_routing_table` (a local folder, files, or a Hub id,
`--streaming` for large Hub data sets). The router folder is written atomically and never over an
existing router unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from carrot_hub.cli_common import positive_int
from carrot_hub.building import DEFAULT_MAX_PROMPT_TOKENS, DEFAULT_STATIC_MAX_PROMPT_TOKENS
from carrot_hub.configuration_carrot import ENCODER_KINDS
from carrot_hub.distillation import DEFAULT_STATIC_DIMENSIONS, check_encoder_source
from carrot_hub.errors import BadInputError

from .knn import DEFAULT_K_GRID

KINDS = ("knn", "mlp", "finetune")


def _k_grid(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return values


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `train` options to `parser` (used by `carrot train` and by this module's `main`)."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="routing data: a packaged table name (routerbench-0shot, zeroeval-2024), a SPROUT-layout folder, files, or Hub id")
    data.add_argument("--split", default="train", help="split to train on (default: train)")
    data.add_argument("--validation-split", help="split for early stopping / validation (default: held out of --split)")
    data.add_argument("--streaming", action="store_true", help="stream the data set (Hub data sets)")
    data.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                      help="a bad line in a log (JSONL file or outcome-log folder): raise stops naming it (default); "
                           "skip leaves it out with a warning")
    data.add_argument("--drop-unscored-models", action="store_true",
                      help="leave out candidates whose scores are all missing (default: stop with an error)")
    out = parser.add_argument_group("output")
    out.add_argument("--kind", choices=KINDS, default="knn", help="predictor kind (default: knn)")
    out.add_argument("--out", required=True, help="router folder to write")
    out.add_argument("--overwrite", action="store_true", help="replace a router already in --out")
    model = parser.add_argument_group("model")
    model.add_argument("--encoder", default="transformer", metavar="{transformer,static}",
                       help="transformer: the sentence encoder itself; static: a token table distilled from it with "
                            "model2vec (about 100x cheaper per prompt) (default: transformer). A folder or Hub id "
                            "here means --encoder-model with a transformer encoder, as before")
    model.add_argument("--encoder-model", help="folder or Hub id of a BERT-family sentence encoder, used as is or "
                                               "distilled (default: all-MiniLM-L6-v2)")
    model.add_argument("--static-dimensions", type=positive_int, default=None,
                       help=f"static: width of the distilled table (PCA components; default {DEFAULT_STATIC_DIMENSIONS})")
    model.add_argument("--static-vocabulary", metavar="FILE",
                       help="static: a text file of extra whole words, one per line, each given its own row "
                            "(default: the encoder's subword vocabulary only)")
    model.add_argument("--max-prompt-tokens", type=int, help=f"prompt tokens kept before encoding (default: {DEFAULT_MAX_PROMPT_TOKENS}; {DEFAULT_STATIC_MAX_PROMPT_TOKENS} for --encoder static)")
    model.add_argument("--truncation-side", choices=("left", "right"),
                       help="which end of a long prompt to keep: left keeps the end, where a few-shot prompt's question is (default: left)")
    model.add_argument("--cost-scale", type=float, help="dollars per quality point at mu=0.5 (default: from the data)")
    model.add_argument("--seed", type=int, default=0)
    knn = parser.add_argument_group("knn")
    knn.add_argument("--k-grid", type=_k_grid, default=DEFAULT_K_GRID,
                     help=f"k values tried (default: {','.join(map(str, DEFAULT_K_GRID))})")
    knn.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    heads = parser.add_argument_group("mlp / finetune")
    heads.add_argument("--hidden", type=positive_int, default=256, help="hidden width of the heads (default: 256)")
    heads.add_argument("--dropout", type=float, default=0.1)
    heads.add_argument("--lr", type=float, help="learning rate (mlp: heads, default 1e-3; finetune: encoder, default 3e-5)")
    heads.add_argument("--weight-decay", type=float, default=1e-2)
    heads.add_argument("--max-epochs", type=int, help="mlp: epoch limit (default 300); finetune: epochs (default 3)")
    heads.add_argument("--patience", type=int, default=20, help="mlp: early-stopping patience in epochs")
    heads.add_argument("--ensemble", type=int, default=1, help="mlp: seeds averaged into one set of heads")
    heads.add_argument("--reliability-folds", type=int, default=5,
                       help="mlp: folds of the out-of-fold predictions that fit calibration and shrinkage "
                            "(the heads are trained once more per fold and per training task; 0: support only)")
    heads.add_argument("--batch-size", type=int, help="training batch size (default: mlp 64, finetune 16)")
    heads.add_argument("--checkpoint-every", type=int, default=100, help="finetune: optimizer steps between checkpoints")
    heads.add_argument("--max-steps", type=int, help="finetune: stop after this many optimizer steps")
    heads.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="finetune (default: bf16/fp16 on GPU, no on CPU)")
    heads.add_argument("--embeddings-cache", help="folder caching prompt embeddings between runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve_encoder_options(args) -> dict:
    """
    `--encoder`, `--encoder-model` and the static options → `new_router` keywords (`encoder`, and
    for a static encoder `encoder_kind`, `static_dimensions`, `static_vocabulary`); `ValueError`
    for a bad combination.
    """
    kind, model = args.encoder, args.encoder_model
    if kind not in ENCODER_KINDS:  # `--encoder FOLDER_OR_HUB_ID`, as before encoder kinds existed
        if model is not None:
            raise BadInputError(f"--encoder must be one of {', '.join(ENCODER_KINDS)} when --encoder-model is given, got {kind!r}.")
        try:
            check_encoder_source(kind)
        except ValueError:
            raise BadInputError(
                f"--encoder must be one of {', '.join(ENCODER_KINDS)} (or a sentence-encoder folder / Hub id), "
                f"got {kind!r}, which is neither."
            ) from None
        kind, model = "transformer", kind
    options = {"encoder": model}
    if kind == "static":
        if args.kind == "finetune":
            raise BadInputError("--kind finetune trains a transformer encoder; a static encoder trains with --kind knn or mlp.")
        options["encoder_kind"] = "static"
        options["static_dimensions"] = args.static_dimensions
        if args.static_vocabulary:
            options["static_vocabulary"] = _read_vocabulary(args.static_vocabulary)
    elif args.static_dimensions is not None or args.static_vocabulary:
        raise BadInputError("--static-dimensions and --static-vocabulary apply to --encoder static only.")
    return options


def _read_vocabulary(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            words = [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise BadInputError(f"Cannot read --static-vocabulary {path}: {error.strerror or error}.") from None
    if not words:
        raise BadInputError(f"--static-vocabulary {path} holds no words (one per line).")
    return words


def _config_fields(args) -> dict:
    fields = {}
    if args.max_prompt_tokens is not None:
        fields["max_prompt_tokens"] = args.max_prompt_tokens
    if args.truncation_side is not None:
        fields["truncation_side"] = args.truncation_side
    return fields


def _check_max_prompt_tokens(args, encoder_options: dict) -> None:
    """`--max-prompt-tokens` beyond the encoder's positions fails here, before the data is read."""
    if args.max_prompt_tokens is None:
        return
    from transformers import AutoConfig

    from carrot_hub.default_encoder import default_encoder_path
    from carrot_hub.configuration_carrot import check_max_prompt_tokens
    from carrot_hub.errors import BadInputError

    if args.max_prompt_tokens < 2:
        raise BadInputError(f"--max-prompt-tokens must be at least 2, got {args.max_prompt_tokens}.")
    if encoder_options.get("encoder_kind") == "static":  # a bag of tokens has no positions to run out of
        return
    encoder = encoder_options["encoder"] or default_encoder_path()
    try:
        encoder_config = AutoConfig.from_pretrained(encoder).to_dict()
    except Exception:  # an encoder that cannot be read fails later with its own message
        return
    try:
        check_max_prompt_tokens(args.max_prompt_tokens, encoder_config)
    except ValueError as error:
        raise BadInputError(f"--max-prompt-tokens: {error}") from None


def run_train(args) -> int:
    """Train the router `args` describe and write it to `args.out`; returns the exit code (0)."""
    from carrot_hub.data import load_routing_table, resolve_table_source

    from .output import check_output_dir, save_router_atomically

    check_output_dir(args.out, overwrite=args.overwrite)  # fail before any work
    encoder_options = resolve_encoder_options(args)
    _check_max_prompt_tokens(args, encoder_options)
    progress = not args.no_progress
    started = time.time()
    args.data = resolve_table_source(args.data, strict=False)  # a packaged table's name reads its folder
    table = load_routing_table(args.data, split=args.split, streaming=args.streaming, on_error=args.on_error,
                               progress=progress)
    table.metadata.setdefault("source", str(args.data))
    validation = None
    if args.validation_split:
        validation = load_routing_table(args.data, split=args.validation_split, streaming=args.streaming,
                                        on_error=args.on_error, progress=progress)
    common = dict(
        seed=args.seed,
        **encoder_options,
        cost_scale=args.cost_scale,
        drop_unscored_models=args.drop_unscored_models,
        cache_dir=args.embeddings_cache,
        progress=progress,
        **_config_fields(args),
    )
    if args.kind == "knn":
        from .knn import train_knn_router

        router, report = train_knn_router(table, k_grid=args.k_grid, folds=args.folds, **common)
    elif args.kind == "mlp":
        from .heads import train_heads_router

        router, report = train_heads_router(
            table,
            validation_table=validation,
            hidden=args.hidden,
            dropout=args.dropout,
            lr=args.lr or 1e-3,
            weight_decay=args.weight_decay,
            max_epochs=args.max_epochs or 300,
            patience=args.patience,
            ensemble=args.ensemble,
            reliability_folds=args.reliability_folds,
            batch_size=args.batch_size or 64,
            **common,
        )
    else:
        from .finetune import train_finetuned_router

        router, report = train_finetuned_router(
            table,
            args.out,
            validation_table=validation,
            hidden=args.hidden,
            dropout=args.dropout,
            encoder_lr=args.lr or 3e-5,
            weight_decay=args.weight_decay,
            epochs=args.max_epochs or 3,
            max_steps=args.max_steps,
            batch_size=args.batch_size or 16,
            checkpoint_every=args.checkpoint_every,
            mixed_precision=args.mixed_precision,
            overwrite=args.overwrite,
            **common,
        )
    report["data"] = {"source": str(args.data), "split": args.split, "n_prompts": len(table)}
    report["seconds"] = round(time.time() - started, 1)
    if args.kind != "finetune":  # the fine-tuning loop saves its own router (on the main process only)
        save_router_atomically(router, args.out, overwrite=args.overwrite, extra_json={"training_report.json": report})
    summary = {k: report[k] for k in ("predictor_kind", "k", "best_validation_loss", "steps") if k in report}
    print(f"wrote {args.out} ({args.kind}, {len(table.models)} candidates, {len(table)} prompts) {json.dumps(summary)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0]))
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except KeyboardInterrupt:
        print("training.train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"training.train: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2 if isinstance(error, (ValueError, FileExistsError)) else 1


if __name__ == "__main__":
    sys.exit(main())
