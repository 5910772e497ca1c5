"""Benchmarks: ``python -m bench ingest ...`` (see docs/performance.md)."""

from __future__ import annotations

import argparse
import sys

from bench import ingest


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    ingest.add_arguments(
        sub.add_parser("ingest", help=ingest.__doc__.splitlines()[0] if ingest.__doc__ else None)
    )
    args = parser.parse_args()
    if args.bench == "ingest":
        return ingest.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
