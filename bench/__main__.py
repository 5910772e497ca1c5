"""Benchmarks: ``python -m bench ingest|echo|egress|codec|transcribe|failover|soak|nlp|kafka|agent``
(see docs/performance.md)."""

from __future__ import annotations

import argparse
import sys

from bench import agent, codec, echo, egress, failover, ingest, kafka, nlp, soak, transcribe


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    ingest.add_arguments(
        sub.add_parser("ingest", help=ingest.__doc__.splitlines()[0] if ingest.__doc__ else None)
    )
    egress.add_arguments(
        sub.add_parser("egress", help=egress.__doc__.splitlines()[0] if egress.__doc__ else None)
    )
    transcribe.add_arguments(
        sub.add_parser(
            "transcribe", help=transcribe.__doc__.splitlines()[0] if transcribe.__doc__ else None
        )
    )
    failover.add_arguments(
        sub.add_parser(
            "failover", help=failover.__doc__.splitlines()[0] if failover.__doc__ else None
        )
    )
    soak.add_arguments(
        sub.add_parser("soak", help=soak.__doc__.splitlines()[0] if soak.__doc__ else None)
    )
    codec.add_arguments(
        sub.add_parser("codec", help=codec.__doc__.splitlines()[0] if codec.__doc__ else None)
    )
    echo.add_arguments(
        sub.add_parser("echo", help=echo.__doc__.splitlines()[0] if echo.__doc__ else None)
    )
    nlp.add_arguments(
        sub.add_parser("nlp", help=nlp.__doc__.splitlines()[0] if nlp.__doc__ else None)
    )
    kafka.add_arguments(
        sub.add_parser("kafka", help=kafka.__doc__.splitlines()[0] if kafka.__doc__ else None)
    )
    agent.add_arguments(
        sub.add_parser("agent", help=agent.__doc__.splitlines()[0] if agent.__doc__ else None)
    )
    args = parser.parse_args()
    if args.bench == "echo":
        return echo.main(args)
    if args.bench == "ingest":
        return ingest.main(args)
    if args.bench == "egress":
        return egress.main(args)
    if args.bench == "transcribe":
        return transcribe.main(args)
    if args.bench == "failover":
        return failover.main(args)
    if args.bench == "soak":
        return soak.main(args)
    if args.bench == "codec":
        return codec.main(args)
    if args.bench == "nlp":
        return nlp.main(args)
    if args.bench == "kafka":
        return kafka.main(args)
    if args.bench == "agent":
        return agent.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
