"""Codec microbenchmark: the ACS codec with the stdlib's json and base64, orjson and pybase64.

Times the real codec (``shared/protocols/acs.py``) with each combination of JSON parser
(``json`` or ``orjson``) and base64 (the stdlib's or pybase64's), swapped in for the run:

* parse — ``InboundSession.receive`` on the messages ACS sends: ``AudioMetadata`` and
  ``AudioData`` at 16 and 24 kHz, unmixed (timestamp, participantRawID), mixed (timestamp) and
  bare (neither), byte for byte as ``callstream simulate`` writes them; and, for comparison,
  the bare server's own stdlib parse (``bench/bare_server.py``, the ingest benchmark's ceiling);
* build — ``build_audio_data`` for 20 ms frames: the codec's string concatenation, and
  ``json.dumps`` / ``orjson.dumps`` of the same object, each with either base64.

Every combination runs in each of ``--repeat`` rounds (in a rotating order), so all see the
same noise; reported are the min and the median of the rounds, in µs per message, and the
speedups over the codec's stdlib combination: of the median and of the min (on a shared
machine the min is the closest to the cost of the code alone).

    python -m bench codec --number 3000 --repeat 15 --json out.json
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson
import pybase64

from bench import bare_server
from callstream.shared.audio import frame_bytes_for
from callstream.shared.events import iso_time
from callstream.shared.protocols import acs
from callstream.simulate import metadata_message, participant_ids

JSON_LIBS: dict[str, Callable[[str | bytes | bytearray], Any]] = {
    "json": json.loads,
    "orjson": orjson.loads,
}
B64_DECODERS: dict[str, Callable[[str], bytes]] = {
    "base64": partial(binascii.a2b_base64, strict_mode=True),
    "pybase64": partial(pybase64.b64decode, validate=True),
}
B64_ENCODERS: dict[str, Callable[[bytes], str]] = {
    "base64": lambda pcm: base64.b64encode(pcm).decode("ascii"),
    "pybase64": pybase64.b64encode_as_string,
}
PARSERS = [("json", "base64"), ("orjson", "base64"), ("json", "pybase64"), ("orjson", "pybase64")]
BARE = ("bare server", "base64")  # the ingest benchmark's reference: stdlib, its own parse
BUILDERS = ["concat", "json", "orjson"]
MESSAGES_PER_SHAPE = 50  # distinct frames cycled through, as a call's would be


@contextlib.contextmanager
def codec(json_lib: str, b64_lib: str) -> Iterator[None]:
    """The codec with the given JSON parser and base64 for the duration of the block."""
    saved = acs._loads, acs._b64decode, acs._b64encode
    acs._loads = JSON_LIBS[json_lib]
    acs._b64decode = B64_DECODERS[b64_lib]
    acs._b64encode = B64_ENCODERS[b64_lib]
    try:
        yield
    finally:
        acs._loads, acs._b64decode, acs._b64encode = saved


@dataclass(frozen=True)
class Case:
    """Messages of one shape, and the session (with its AudioMetadata) that receives them."""

    name: str
    rate_hz: int
    texts: list[str]
    metadata: bool = False


def _pcm(rate_hz: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(rate_hz)
    samples = frame_bytes_for(rate_hz) // 2
    return [
        rng.normal(0, 3000, samples).clip(-32768, 32767).astype("<i2").tobytes()
        for _ in range(count)
    ]


def _audio_message(pcm: bytes, timestamp: str | None, raw_id: str | None) -> str:
    # As callstream/simulate.py writes them (build_script and _stream).
    head = '{"kind":"AudioData","audioData":{'
    if timestamp is not None:
        head += f'"timestamp":"{timestamp}",'
    pid = f'"participantRawID":"{raw_id}",' if raw_id else ""
    data = base64.b64encode(pcm).decode()
    return f'{head}{pid}"data":"{data}","silent":false}}}}'


def cases() -> list[Case]:
    raw_id = participant_ids(1)[0]
    wall0_ms = 1_731_698_172_925
    out = []
    for rate in (16000, 24000):
        kilo = rate // 1000
        out.append(Case(f"AudioMetadata {kilo} kHz", rate, [metadata_message(rate)], True))
        frames = _pcm(rate, MESSAGES_PER_SHAPE)
        stamps = [iso_time(wall0_ms + 20 * k) for k in range(len(frames))]
        for shape, with_time, with_id in (
            ("unmixed", True, True),
            ("mixed", True, False),
            ("bare", False, False),
        ):
            texts = [
                _audio_message(pcm, stamp if with_time else None, raw_id if with_id else None)
                for pcm, stamp in zip(frames, stamps, strict=True)
            ]
            out.append(Case(f"AudioData {kilo} kHz {shape}", rate, texts))
    return out


def _receiver(case: Case, parser: tuple[str, str]) -> Callable[[str], object]:
    metadata = metadata_message(case.rate_hz)
    if parser == BARE:
        bare = bare_server.Session()
        bare.receive(metadata)
        return bare.receive
    session = acs.InboundSession()
    with codec(*parser):
        session.receive(metadata)
    return session.receive


def _time(func: Callable[[Any], object], args: list[Any], number: int) -> float:
    """µs per call of ``func`` on each of ``args``, ``number`` calls in all."""
    loops = max(1, number // len(args))
    timer = timeit.Timer("for a in args: func(a)", globals={"func": func, "args": args})
    return timer.timeit(loops) / (loops * len(args)) * 1e6


def _check(all_cases: list[Case]) -> None:
    """Every combination parses and builds what the stdlib codec does."""
    for case in all_cases:
        expected = [_receiver(case, PARSERS[0])(t) for t in case.texts]
        for parser in PARSERS[1:]:
            receive = _receiver(case, parser)
            with codec(*parser):
                assert [receive(t) for t in case.texts] == expected, (case.name, parser)
        if not case.metadata:
            receive = _receiver(case, BARE)
            assert [receive(t) for t in case.texts] == [
                bare_server.Frame(m.pcm, m.timestamp, m.participant_raw_id, m.silent)
                for m in expected
                if isinstance(m, acs.AudioData)
            ]
    for rate in (16000, 24000):
        pcm = _pcm(rate, 1)[0]
        reference = acs.build_audio_data(pcm)
        for builder in BUILDERS:
            for b64 in B64_ENCODERS:
                text = _builder(builder, b64)(pcm)
                assert json.loads(text) == json.loads(reference), (builder, b64)
                if builder == "concat":
                    assert text == reference


def _builder(builder: str, b64: str) -> Callable[[bytes], str]:
    encode = B64_ENCODERS[b64]
    if builder == "concat":

        def build(pcm: bytes) -> str:
            with codec("json", b64):
                return acs.build_audio_data(pcm)

        return build
    if builder == "json":
        return lambda pcm: json.dumps(
            {"kind": "AudioData", "audioData": {"data": encode(pcm)}}, separators=(",", ":")
        )
    return lambda pcm: orjson.dumps(
        {"kind": "AudioData", "audioData": {"data": encode(pcm)}}
    ).decode()


def _summary(samples: list[float]) -> dict[str, float]:
    return {"min_us": min(samples), "median_us": statistics.median(samples)}


def _speedups(samples: list[float], baseline: list[float]) -> dict[str, float]:
    return {
        "speedup_median": statistics.median(baseline) / statistics.median(samples),
        "speedup_min": min(baseline) / min(samples),
    }


def run(number: int, repeat: int) -> dict[str, Any]:
    all_cases = cases()
    _check(all_cases)
    parsers = [*PARSERS, BARE]
    parse: dict[tuple[str, str, str], list[float]] = {}
    build: dict[tuple[int, str, str], list[float]] = {}
    builders = [(b, e) for b in BUILDERS for e in B64_ENCODERS]
    frames = {rate: _pcm(rate, MESSAGES_PER_SHAPE) for rate in (16000, 24000)}
    # The combinations compared with each other run right after one another, in an order that
    # rotates from round to round.
    for r in range(repeat):
        for case in all_cases:
            for i in range(len(parsers)):
                parser = parsers[(i + r) % len(parsers)]
                if case.metadata and parser == BARE:
                    continue
                receive = _receiver(case, parser)
                with codec(*(PARSERS[0] if parser == BARE else parser)):
                    us = _time(receive, case.texts, number)
                parse.setdefault((case.name, *parser), []).append(us)
        for rate, pcms in frames.items():
            for i in range(len(builders)):
                builder, b64 = builders[(i + r) % len(builders)]
                with codec("json", b64):
                    func = acs.build_audio_data if builder == "concat" else _builder(builder, b64)
                    us = _time(func, pcms, number)
                build.setdefault((rate, builder, b64), []).append(us)
    parse_rows = []
    for (name, json_lib, b64), samples in parse.items():
        row: dict[str, Any] = {"message": name, "json": json_lib, "base64": b64}
        row |= _summary(samples) | _speedups(samples, parse[(name, *PARSERS[0])])
        parse_rows.append(row)
    build_rows = []
    for (rate, builder, b64), samples in build.items():
        row = {"frame": f"{frame_bytes_for(rate)} B ({rate // 1000} kHz)", "build": builder}
        row |= {"base64": b64} | _summary(samples)
        row |= _speedups(samples, build[(rate, "concat", "base64")])
        build_rows.append(row)
    order = {p: i for i, p in enumerate([*PARSERS, BARE])}
    parse_rows.sort(key=lambda r: (r["message"], order[(r["json"], r["base64"])]))
    build_rows.sort(key=lambda r: (r["frame"], BUILDERS.index(r["build"]), r["base64"]))
    return {
        "environment": {
            "python": sys.version.split()[0],
            "machine": platform.processor() or platform.machine(),
            "cpu": _cpu_model(),
            "orjson": orjson.__version__,
            "pybase64": pybase64.get_version(),
        },
        "number": number,
        "repeat": repeat,
        "parse": parse_rows,
        "build": build_rows,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def report(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"Python {env['python']}, orjson {env['orjson']}, pybase64 {env['pybase64']}",
        f"CPU {env['cpu']}; {results['repeat']} rounds of {results['number']} messages each",
        "",
        f"{'parse (InboundSession.receive)':<28} {'json':<12} {'base64':<9}"
        f" {'min µs':>7} {'median µs':>10} {'× median':>9} {'× min':>6}",
    ]
    previous = None
    for row in results["parse"]:
        name = row["message"] if row["message"] != previous else ""
        previous = row["message"]
        lines.append(
            f"{name:<28} {row['json']:<12} {row['base64']:<9} {row['min_us']:>7.2f}"
            f" {row['median_us']:>10.2f} {row['speedup_median']:>9.2f} {row['speedup_min']:>6.2f}"
        )
    lines += [
        "",
        f"{'build (build_audio_data)':<28} {'build':<12} {'base64':<9}"
        f" {'min µs':>7} {'median µs':>10} {'× median':>9} {'× min':>6}",
    ]
    previous = None
    for row in results["build"]:
        name = row["frame"] if row["frame"] != previous else ""
        previous = row["frame"]
        lines.append(
            f"{name:<28} {row['build']:<12} {row['base64']:<9} {row['min_us']:>7.2f}"
            f" {row['median_us']:>10.2f} {row['speedup_median']:>9.2f} {row['speedup_min']:>6.2f}"
        )
    lines.append("")
    lines.append(
        "× median, × min: the codec with json + base64 (parse), or its concatenation with base64"
        " (build), over this row"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--number", type=int, default=3000, help="messages per timing (default 3000)"
    )
    parser.add_argument("--repeat", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--json", help="also write the results to this file")


def main(args: argparse.Namespace) -> int:
    results = run(args.number, args.repeat)
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0
