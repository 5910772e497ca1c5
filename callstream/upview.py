"""The pure parts of ``callstream up``: what to run, and the text of its log and status view.

Nothing here starts a process or opens a socket: :mod:`callstream.up` does, and hands what it
read (HTTP answers, Prometheus text, ``XINFO GROUPS``) to these functions.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

GATEWAY = "gateway"
UP = "up"
BUILTIN_KINDS = ("echo", "transcribe", "nlp")

# What a process is doing, as the status view shows it.
STARTING = "starting"  # running, its /readyz has not answered 200 yet
READY = "ready"
UNREADY = "unready"  # was ready; /readyz answers 503 now (the reason is in ``why``)
STOPPING = "stopping"  # sent SIGTERM
EXITED = "exited"
RESTARTING = "restarting"  # exited on its own; started again after a delay

# Gauges read from each process's /metrics.
GATEWAY_CALLS = "callstream_ingress_connections"
WORKER_CALLS = "callstream_worker_calls_owned"

# Foreground colours of the processes' names (SGR codes), in start order; up's own is bold.
PALETTE = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94", "91")
RESET = "\x1b[0m"
BOLD = "1"
DIM = "2"
RED = "1;31"
GREEN = "1;32"
YELLOW = "33"


# --------------------------------------------------------------------------- arguments


def replica_count(text: str) -> int:
    """argparse type of ``--transcribe N`` and the like: an integer from 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of replicas: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"replicas cannot be negative: {value}")
    return value


def kind_assignment(text: str) -> tuple[str, int]:
    """argparse type of ``--worker KIND=N`` and ``--max-calls KIND=N``."""
    kind, sep, number = text.partition("=")
    kind = kind.strip()
    if not sep or not kind:
        raise argparse.ArgumentTypeError(f"expected KIND=N, got {text!r}")
    try:
        value = int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=N with a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{kind}: cannot be negative ({value})")
    return kind, value


def replica_counts(builtin: Mapping[str, int], others: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Replicas per worker kind, in the order they are started and shown: the built-in kinds,
    then ``--worker KIND=N`` ones (a built-in kind named there takes that count)."""
    counts = dict(builtin)
    for kind, n in others:
        counts[kind] = n
    return counts


def max_calls_by_kind(
    pairs: Sequence[tuple[str, int]], counts: Mapping[str, int]
) -> dict[str, int]:
    """``--max-calls KIND=N`` pairs checked against the kinds that run; ValueError if not."""
    limits: dict[str, int] = {}
    for kind, n in pairs:
        if n < 1:
            raise ValueError(f"--max-calls {kind}={n}: must be at least 1")
        if counts.get(kind, 0) == 0:
            raise ValueError(f"--max-calls {kind}={n}: no {kind} replica runs")
        limits[kind] = n
    return limits


@dataclass(frozen=True)
class ChildSpec:
    """One process ``callstream up`` runs: ``python -m callstream`` + ``argv``."""

    name: str  # gateway, echo-1, transcribe-2, …: its log prefix and its row in the status
    kind: str  # GATEWAY or a worker kind
    argv: tuple[str, ...]
    metrics_port: int


def plan(
    counts: Mapping[str, int],
    *,
    host: str,
    port: int,
    metrics_ports: Iterator[int],
    max_calls: Mapping[str, int] | None = None,
    allow_unauthenticated: bool = False,
    log_level: str | None = None,
    consumer_suffix: str = "",
) -> list[ChildSpec]:
    """The gateway, then ``counts[kind]`` replicas of each kind, each with a metrics port of
    its own from ``metrics_ports``. A replica's consumer name in its group is its name plus
    ``consumer_suffix`` (unique per ``callstream up``, so two of them can share a Redis)."""
    common = ("--log-level", log_level) if log_level else ()
    gateway_port = next(metrics_ports)
    gateway = (
        *common,
        "gateway",
        "--host",
        host,
        "--port",
        str(port),
        "--metrics-port",
        str(gateway_port),
        "--metrics-host",
        "127.0.0.1",
    )
    if allow_unauthenticated:
        gateway = (*gateway, "--allow-unauthenticated")
    specs = [ChildSpec(GATEWAY, GATEWAY, gateway, gateway_port)]
    for kind, n in counts.items():
        for i in range(1, n + 1):
            name = f"{kind}-{i}"
            metrics_port = next(metrics_ports)
            argv = (
                *common,
                "worker",
                kind,
                "--consumer",
                name + consumer_suffix,
                "--metrics-port",
                str(metrics_port),
                "--metrics-host",
                "127.0.0.1",
            )
            if max_calls and kind in max_calls:
                argv = (*argv, "--max-calls", str(max_calls[kind]))
            specs.append(ChildSpec(name, kind, argv, metrics_port))
    return specs


def connect_host(host: str) -> str:
    """The address to connect to a server bound to ``host`` (any address: loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def describe_exit(code: int) -> str:
    """``exited 0``, ``exited 2``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


def restart_delay_s(failures: int, cap_s: float = 30.0) -> float:
    """Seconds before a process that exited on its own starts again: 1 s after it had been
    ready, then doubling with each start that failed before becoming ready, up to ``cap_s``."""
    return float(min(cap_s, 2 ** max(0, failures)))


# --------------------------------------------------------------------------- HTTP, Prometheus


def parse_http_response(data: bytes) -> tuple[int, str]:
    """(status, body) of a whole HTTP/1.x response; ValueError if it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0].strip()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:80]!r}")
    return int(parts[1]), body.decode("utf-8", "replace")


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")


def metric_value(text: str, name: str) -> float | None:
    """The sum over labels of metric ``name``'s samples in Prometheus text; None if absent."""
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = _SAMPLE.match(_without_label_values(line))
        if match is None or match.group(1) != name:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        total = value if total is None else total + value
    return total


def _without_label_values(line: str) -> str:
    """``line`` with every quoted label value emptied (they may hold spaces, braces, quotes)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', line)


def groups_by_kind(rows: Sequence[Mapping[str, object]], prefix: str) -> dict[str, Group]:
    """``XINFO GROUPS {prefix}:calls`` (decoded) → each worker kind's group figures."""
    start = f"{prefix}:workers:"
    groups: dict[str, Group] = {}
    for row in rows:
        name = str(row.get("name", ""))
        if not name.startswith(start):
            continue
        groups[name[len(start) :]] = Group(
            pending=_int_or_none(row.get("pending")),
            lag=_int_or_none(row.get("lag")),
        )
    return groups


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return None


# --------------------------------------------------------------------------- the status


@dataclass(frozen=True)
class ProcessView:
    name: str
    kind: str
    state: str
    calls: int | None = None  # its gauge, when /metrics answered
    why: str = ""  # /readyz's reason when not ready, how it exited, when it restarts


@dataclass(frozen=True)
class Group:
    """A kind's consumer group on ``{prefix}:calls``: calls being served and waiting."""

    pending: int | None
    lag: int | None  # None: Redis cannot tell (or older than 7.0)


@dataclass(frozen=True)
class Snapshot:
    processes: tuple[ProcessView, ...]
    groups: Mapping[str, Group] = field(default_factory=dict)
    redis_error: str | None = None  # XINFO GROUPS failed
    url: str = ""  # where to place a call
    phase: str = STARTING  # STARTING, READY or STOPPING (of the whole)
    clock: str = ""  # HH:MM:SS, shown on a terminal only


def _number(value: int | None) -> str:
    return "?" if value is None else str(value)


def _calls(n: int | None) -> str:
    if n is None:
        return "? calls"
    return f"{n} call" if n == 1 else f"{n} calls"


def _state_text(process: ProcessView) -> str:
    if not process.why:
        return process.state
    if process.state == EXITED:
        return process.why  # "exited 1", "killed by SIGKILL"
    if process.state == RESTARTING:
        return f"restarting {process.why}"  # "restarting in 2 s"
    if process.state in (UNREADY, STOPPING, STARTING):
        return f"{process.state}: {process.why}"
    return process.state


def replica_cell(process: ProcessView) -> str:
    """``transcribe-1: 2`` (ready, serving 2 calls), ``transcribe-2: starting``,
    ``nlp-1: 1 (stopping: draining)``, ``echo-1: restarting in 2 s``."""
    if process.state == READY:
        return f"{process.name}: {_number(process.calls)}"
    if process.calls is None or process.state in (EXITED, RESTARTING):
        return f"{process.name}: {_state_text(process)}"
    return f"{process.name}: {process.calls} ({_state_text(process)})"


def gateway_cell(process: ProcessView) -> str:
    """``1 call`` (ready), ``starting``, ``1 call (stopping: draining: 1 calls left)``."""
    if process.state == READY:
        return _calls(process.calls)
    if process.calls is None or process.state in (EXITED, RESTARTING):
        return _state_text(process)
    return f"{_calls(process.calls)} ({_state_text(process)})"


def group_cell(group: Group | None, redis_error: str | None) -> str:
    if redis_error is not None:
        return "pending ? lag ?"
    if group is None:
        return "no group yet"
    return f"pending {_number(group.pending)} lag {_number(group.lag)}"


def _rows(snapshot: Snapshot) -> list[tuple[str, str, list[ProcessView]]]:
    """(kind, its group's cell, its replicas) for every kind that runs or has a group."""
    kinds: dict[str, list[ProcessView]] = {}
    for process in snapshot.processes:
        if process.kind != GATEWAY:
            kinds.setdefault(process.kind, []).append(process)
    for kind in snapshot.groups:
        kinds.setdefault(kind, [])
    return [
        (kind, group_cell(snapshot.groups.get(kind), snapshot.redis_error), replicas)
        for kind, replicas in kinds.items()
    ]


def status_line(snapshot: Snapshot) -> str:
    """The whole status on one line (for a log that is not a terminal)."""
    parts = [f"gateway {gateway_cell(p)}" for p in snapshot.processes if p.kind == GATEWAY]
    for kind, group, replicas in _rows(snapshot):
        cells = ", ".join(replica_cell(r) for r in replicas) or "no replica"
        parts.append(f"{kind} {group} ({cells})")
    if snapshot.redis_error is not None:
        parts.append(f"redis unavailable: {snapshot.redis_error}")
    return "status: " + " | ".join(parts)


Segment = tuple[str, str | None]  # text, SGR code (None: default colour)


def status_block(snapshot: Snapshot) -> list[list[Segment]]:
    """The status as rows of coloured segments, for a terminal (:func:`render` draws one)."""
    if snapshot.phase == STOPPING:
        hint = "stopping: Ctrl-C again kills everything"
    elif snapshot.phase == READY:
        hint = "Ctrl-C drains and stops"
    else:
        hint = "starting"
    title = f"── callstream up {snapshot.clock} · {snapshot.url} · {hint} "
    rows: list[list[Segment]] = [[(title, DIM), ("─" * 200, DIM)]]
    kind_rows = _rows(snapshot)
    width = max([len(GATEWAY), *(len(kind) for kind, _, _ in kind_rows)]) + 2
    group_width = max([0, *(len(group) for _, group, _ in kind_rows)]) + 3
    for process in snapshot.processes:
        if process.kind == GATEWAY:
            rows.append(
                [(f"  {GATEWAY:<{width}}", BOLD), (gateway_cell(process), _color_of(process))]
            )
    for kind, group, replicas in kind_rows:
        row: list[Segment] = [(f"  {kind:<{width}}", BOLD), (f"{group:<{group_width}}", None)]
        if not replicas:
            row.append(("no replica", YELLOW))
        for i, replica in enumerate(replicas):
            row.append(("  " if i else "", None))
            row.append((replica_cell(replica), _color_of(replica)))
        rows.append(row)
    if snapshot.redis_error is not None:
        rows.append(
            [(f"  {'redis':<{width}}", BOLD), (f"unavailable: {snapshot.redis_error}", RED)]
        )
    return rows


def _color_of(process: ProcessView) -> str | None:
    if process.state == READY or (process.state == EXITED and process.why == "exited 0"):
        return None
    if process.state in (EXITED, RESTARTING):
        return RED
    return YELLOW


def render(segments: Sequence[Segment], width: int, *, color: bool) -> str:
    """One row of segments cut to ``width`` characters (so it never wraps on a terminal)."""
    out: list[str] = []
    left = width
    for text, code in segments:
        if left <= 0:
            break
        piece = text[:left]
        left -= len(piece)
        out.append(f"\x1b[{code}m{piece}{RESET}" if color and code and piece else piece)
    return "".join(out)


# --------------------------------------------------------------------------- the log


def name_color(index: int) -> str:
    """The colour of the ``index``-th process's name."""
    return PALETTE[index % len(PALETTE)]


def log_prefix(name: str, width: int, code: str | None) -> str:
    """``transcribe-1 | `` padded to ``width``, its name coloured when ``code`` is given."""
    label = f"{name:<{width}}"
    if code:
        label = f"\x1b[{code}m{label}{RESET}"
    return f"{label} | "


def clean_line(raw: bytes) -> str:
    """A child's output line as text to print: decoded, without its line end or carriage
    returns (a progress bar's ``\\r`` would overwrite the prefix)."""
    return raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")


def shell_env(redis_url: str, prefix: str, *, default_url: str, default_prefix: str) -> str:
    """The ``REDIS_URL=… CS_PREFIX=… `` another command needs to reach the same system."""
    parts = []
    if redis_url != default_url:
        parts.append(f"REDIS_URL={shlex.quote(redis_url)}")
    if prefix != default_prefix:
        parts.append(f"CS_PREFIX={shlex.quote(prefix)}")
    return "".join(f"{p} " for p in parts)
