"""
Publish a router (or a converted routing data set), re-price it, or change its candidates.
The same as `carrot publish | set-prices | add-model | remove-model`; errors print one line, exit 2.

    python scripts/publish.py publish runs/knn your-name/carrot-knn --eval-results runs/eval.json --plot runs/curve.png
    python scripts/publish.py set-prices runs/knn new_prices.yaml --output runs/knn-new-prices
    python scripts/publish.py add-model runs/knn my-finetune my_scores/ --input-price 0.2 --output-price 0.6 --output runs/knn-plus
    python scripts/publish.py remove-model runs/knn claude-v1 --output runs/knn-minus
"""

import argparse
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training import candidates  # noqa: E402
from carrot_hub import router_publishing as publishing  # noqa: E402

COMMANDS = {
    "publish": (publishing.add_publish_arguments, publishing.run_publish),
    "set-prices": (publishing.add_set_prices_arguments, publishing.run_set_prices),
    "add-model": (candidates.add_add_model_arguments, candidates.run_add_model),
    "remove-model": (candidates.add_remove_model_arguments, candidates.run_remove_model),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name)).set_defaults(run=run)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
