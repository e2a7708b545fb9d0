#!/usr/bin/env python
"""Copy a SPROUT-layout routing table into the package (carrot_hub/default_data/<name>), compactly.

    python scripts/package_table.py                       # regenerate the packaged zeroeval-2024 copy
    python scripts/package_table.py --source DIR --name NAME [--caveats FILE] [--overwrite]

The copy keeps every row and column of each split; only the parquet compression changes (zstd).
`prices.json` is copied byte for byte, `README.md` (the card: provenance, licences) is copied and
followed by the `--caveats` section (which the model card of a router built on the table quotes)
and a note on the copy. Then run `python scripts/build_default_embeddings.py --data NAME`.
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """`$CARROT_SHARED_DATA`, else the first `shared/data` beside or above the checkout."""
    import os

    if os.environ.get("CARROT_SHARED_DATA"):
        return Path(os.environ["CARROT_SHARED_DATA"])
    for folder in (ROOT, *ROOT.parents):
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def copy_table(source: Path, output: Path, caveats: Path | None) -> dict:
    """Write the compact copy; returns `{file name: bytes}`."""
    import pyarrow.parquet as pq

    (output / "data").mkdir(parents=True, exist_ok=True)
    for parquet in sorted((source / "data").glob("*.parquet")):
        table = pq.read_table(parquet)
        pq.write_table(table, output / "data" / parquet.name, compression="zstd", compression_level=19)
        if pq.read_table(output / "data" / parquet.name).to_pylist() != table.to_pylist():
            raise RuntimeError(f"The copy of {parquet.name} differs from its source.")
    shutil.copyfile(source / "prices.json", output / "prices.json")
    card = (source / "README.md").read_text(encoding="utf-8").rstrip() + "\n"
    if caveats is not None:
        card += "\n" + caveats.read_text(encoding="utf-8").strip() + "\n"
    card += (
        "\n## This copy\n\n"
        f"Packaged inside carrot_hub by `scripts/package_table.py` from `{source.name}`: the same rows and "
        "columns, parquet recompressed with zstd. `train_embeddings.safetensors` holds the train prompts' "
        "embeddings for the default router (`scripts/build_default_embeddings.py`), and "
        "`default_router.json` the settings it is built with.\n"
    )
    (output / "README.md").write_text(card, encoding="utf-8")
    return {str(p.relative_to(output)): p.stat().st_size for p in sorted(output.rglob("*")) if p.is_file()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(shared_data_dir() / "zeroeval-2024"), help="SPROUT-layout folder with data/, prices.json, README.md")
    parser.add_argument("--name", default=None, help="packaged table name (default: the source folder's name)")
    parser.add_argument("--caveats", default=str(ROOT / "scripts" / "zeroeval_caveats.md"),
                        help="a '## Caveats' markdown section appended to the card ('' for none)")
    parser.add_argument("--overwrite", action="store_true", help="replace the data files of an existing packaged copy")
    args = parser.parse_args(argv)
    source = Path(args.source)
    missing = [name for name in ("data", "prices.json", "README.md") if not (source / name).exists()]
    if missing:
        print(f"error: {source} lacks {', '.join(missing)}: give a SPROUT-layout folder (--source)", file=sys.stderr)
        return 2
    output = ROOT / "carrot_hub" / "default_data" / (args.name or source.name)
    if (output / "data").exists() and not args.overwrite:
        print(f"error: {output} already holds a table; pass --overwrite to replace its files", file=sys.stderr)
        return 2
    sizes = copy_table(source, output, Path(args.caveats) if args.caveats else None)
    for name, size in sizes.items():
        print(f"{size / 1e3:9.1f} kB  {name}")
    print(f"wrote {output}: {sum(sizes.values()) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
