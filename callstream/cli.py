"""``callstream`` console script: one sub-command per component.

Each component module exposes ``register(subparsers)``, which adds its sub-command and sets
``run`` to a function ``(args, settings) -> exit code``. Settings are read from the environment
here, once, and passed down.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from callstream import demo, simulate, tail, up
from callstream.ingress import cli as ingress_cli
from callstream.shared.errors import CallstreamError, ConfigError
from callstream.shared.settings import Settings
from callstream.workers import cli as workers_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream",
        description="ACS-compatible call-audio streaming over Redis Streams.",
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (env CS_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ingress_cli.register(sub)
    workers_cli.register(sub)
    simulate.register(sub)
    demo.register(sub)
    tail.register(sub)
    up.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"callstream: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=(args.log_level or settings.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every connection at INFO; the gateway logs calls itself.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        code: int = args.run(args, settings)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"callstream {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except CallstreamError as exc:
        print(f"callstream {args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
