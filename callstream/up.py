"""``callstream up``: the whole system as local processes, to try it on a laptop.

Runs one gateway and N replicas of each worker kind (``--echo``, ``--transcribe``, ``--nlp``, 1
each by default; ``--worker KIND=N`` for a kind of your own), each as its own
``python -m callstream`` process with a metrics port on 127.0.0.1, against the Redis at
``REDIS_URL`` (or a private ``redis-server`` started here when none answers). Their output
is one log, each line prefixed with the process's name; below it, on a terminal, a status
redrawn every second: calls per replica, each kind's group pending and lag, the gateway's
calls (one line when it changes, when the output is not a terminal).

Ctrl-C (or SIGTERM) drains the gateway first — its live calls go on until they end or
CS_DRAIN_TIMEOUT_S — then stops the workers, which hand their calls back; a second Ctrl-C
kills everything at once. A process that exits on its own once everything was ready is
restarted (after 1 s, doubling up to 30 s while it fails to get ready); one that exits before
that stops everything. Exit status 0 when every process stopped cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from callstream.bus.url import redact
from callstream.localredis import DIE_WITH_PARENT, ensure_redis
from callstream.shared.errors import ConfigError
from callstream.shared.keys import Keys
from callstream.shared.settings import DEFAULT_REDIS_URL, Settings
from callstream.tail import use_color
from callstream.upview import (
    BOLD,
    BUILTIN_KINDS,
    EXITED,
    GATEWAY,
    GATEWAY_CALLS,
    GREEN,
    READY,
    RED,
    RESET,
    RESTARTING,
    STARTING,
    STOPPING,
    UNREADY,
    UP,
    WORKER_CALLS,
    YELLOW,
    ChildSpec,
    Group,
    ProcessView,
    Snapshot,
    clean_line,
    connect_host,
    describe_exit,
    groups_by_kind,
    kind_assignment,
    log_prefix,
    max_calls_by_kind,
    metric_value,
    name_color,
    parse_http_response,
    plan,
    render,
    replica_count,
    replica_counts,
    restart_delay_s,
    shell_env,
    status_block,
    status_line,
)
from callstream.workers.cli import EXTRAS, load_kind

HTTP_TIMEOUT_S = 1.0  # a probe of /readyz or /metrics
STARTING_POLL_S = 0.25  # how often processes are probed until all are ready
DRAIN_GRACE_S = 15.0  # beyond CS_DRAIN_TIMEOUT_S, before a gateway that does not exit is killed
WORKER_STOP_S = 30.0  # before a worker that does not exit after SIGTERM is killed
FINISH_TIMEOUT_S = 60.0  # for the workers to finish the calls that ended, before they stop
FINISH_POLL_S = 0.2
LINE_LIMIT = 1 << 20  # longest output line read whole; longer ones are printed in pieces


# --------------------------------------------------------------------------- the console


class Console:
    """Everything ``up`` prints: its processes' lines and its own, each prefixed with a name,
    and on a terminal the status block, kept below the log (erased, the new lines written,
    redrawn: one write each time)."""

    def __init__(
        self,
        out: TextIO,
        names: Sequence[str],
        *,
        tty: bool,
        color: bool,
        size: Callable[[], os.terminal_size] = shutil.get_terminal_size,
    ) -> None:
        self._out = out
        self._size = size
        self.tty = tty
        self._color = color
        self._width = max(len(name) for name in [*names, UP])
        self._codes = {name: name_color(i) for i, name in enumerate(names)}
        self._source: Callable[[], Snapshot] | None = None  # the status, on a terminal
        self._drawn = 0  # rows of the block on the screen now
        self._last_status = ""
        self._broken = False

    def line(self, name: str, text: str) -> None:
        """One line of a process's output."""
        code = self._codes.get(name) if self._color else None
        self._emit([log_prefix(name, self._width, code) + text])

    def say(self, text: str, code: str | None = None) -> None:
        """One line of up's own."""
        if self._color and code:
            text = f"\x1b[{code}m{text}{RESET}"
        self._emit([log_prefix(UP, self._width, BOLD if self._color else None) + text])

    def status(self, source: Callable[[], Snapshot]) -> None:
        """On a terminal, redraw the status block (and from now on each time a line is
        written, from ``source``: it is never stale); otherwise log the status line if it
        changed."""
        if self.tty:
            self._source = source
            self._emit([])
            return
        line = status_line(source())
        if line != self._last_status:
            self._last_status = line
            self.say(line)

    def close(self) -> None:
        """Erase the status block (a terminal keeps only the log)."""
        self._source = None
        self._emit([])

    def _emit(self, lines: list[str]) -> None:
        parts: list[str] = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's first row, clear
            self._drawn = 0
        parts.extend(f"{line}\n" for line in lines)
        if self._source is not None:
            columns, rows = self._size()
            block = status_block(self._source())[: max(1, rows - 1)]
            parts.append("\x1b[?7l")  # no wrapping: each row stays one row
            parts.extend(render(row, columns - 1, color=self._color) + "\n" for row in block)
            parts.append("\x1b[?7h")
            self._drawn = len(block)
        if not parts or self._broken:
            return
        try:
            self._out.write("".join(parts))
            self._out.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``), a terminal gone, a closed file
            self._broken = True
            self._drawn = 0


# --------------------------------------------------------------------------- processes


@dataclass(eq=False)
class Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    state: str = STARTING
    why: str = ""
    calls: int | None = None
    started_at: float = 0.0
    ready_once: bool = False  # this run of it has been ready
    failures: int = 0  # runs in a row that exited before they were ready
    returncode: int | None = None
    stopped_cleanly: bool = False  # exited 0 after up's SIGTERM
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def view(self) -> ProcessView:
        return ProcessView(self.name, self.spec.kind, self.state, self.calls, self.why)


@dataclass(frozen=True)
class Probe:
    ready: bool | None  # None: /readyz did not answer
    why: str
    calls: int | None


async def http_get(port: int, path: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, str]:
    """GET ``http://127.0.0.1:{port}{path}`` over HTTP/1.0: (status, body)."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()  # HTTP/1.0: the server closes after its answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return parse_http_response(data)


async def probe(port: int, gauge: str) -> Probe:
    """A process's /readyz and the gauge of its calls from /metrics."""

    async def get(path: str) -> tuple[int, str] | None:
        try:
            return await http_get(port, path)
        except (OSError, TimeoutError, ValueError):
            return None

    readyz, metrics = await asyncio.gather(get("/readyz"), get("/metrics"))
    calls = None
    if metrics is not None and metrics[0] == 200:
        value = metric_value(metrics[1], gauge)
        calls = int(value) if value is not None and math.isfinite(value) else None
    if readyz is None:
        return Probe(None, "not answering", calls)
    return Probe(readyz[0] == 200, readyz[1].strip(), calls)


async def read_groups(redis: aioredis.Redis, keys: Keys) -> tuple[dict[str, Group], str | None]:
    """Each kind's consumer group on ``{prefix}:calls``; (groups, error)."""
    try:
        rows = await redis.xinfo_groups(keys.calls)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return {}, None  # no call yet and no worker registered
        return {}, str(exc)
    except (RedisError, OSError) as exc:
        return {}, str(exc) or type(exc).__name__
    return groups_by_kind(rows, keys.prefix), None


class Up:
    """Runs the processes of ``specs`` until a signal, then stops them in order."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        console: Console,
        *,
        env: dict[str, str],
        redis_url: str,
        keys: Keys,
        call_url: str,
        drain_timeout_s: float,
        status_interval_s: float = 1.0,
    ) -> None:
        self._children = [Child(spec) for spec in specs]
        self._console = console
        self._env = env
        self._redis_url = redis_url
        self._keys = keys
        self._call_url = call_url
        self._drain_timeout_s = drain_timeout_s
        self._interval_s = status_interval_s
        self._stop = asyncio.Event()
        self._stopping = False
        self._forced = False
        self._failed: str | None = None
        self._all_ready = False
        self._groups: dict[str, Group] = {}
        self._redis_error: str | None = None
        self._redis: aioredis.Redis | None = None  # for the status, while running

    # ---------------------------------------------------------------- the whole

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        for sig in signals:
            loop.add_signal_handler(sig, self._signal, sig)
        redis = self._redis = aioredis.Redis.from_url(
            self._redis_url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
        )
        watch: asyncio.Task[None] | None = None
        try:
            for child in self._children:
                child.task = asyncio.create_task(self._keep(child), name=f"up-{child.name}")
            watch = asyncio.create_task(self._watch(redis), name="up-status")
            await self._stop.wait()
            return await self._shutdown()
        finally:
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            for child in self._children:  # only after an error of up's own
                if child.running and child.proc is not None:
                    child.proc.kill()
                    await child.proc.wait()
            for sig in signals:
                loop.remove_signal_handler(sig)
            await redis.aclose()

    def _signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            self._console.say(f"{sig.name}: stopping (again to kill everything at once)", BOLD)
            self._stop.set()
        elif not self._forced:
            self._forced = True
            self._console.say(f"{sig.name} again: killing every process", RED)
            for child in self._children:
                if child.running and child.proc is not None:
                    child.proc.kill()

    def _fail(self, why: str) -> None:
        if self._failed is None and not self._stopping:
            self._failed = why
            self._console.say(f"{why}: stopping everything", RED)
            self._stop.set()

    async def _shutdown(self) -> int:
        self._stopping = True
        gateways = [c for c in self._children if c.spec.kind == GATEWAY]
        workers = [c for c in self._children if c.spec.kind != GATEWAY]
        if any(c.running for c in gateways):
            self._console.say(
                "stopping the gateway: no new calls; the live ones go on until they end "
                f"(at most CS_DRAIN_TIMEOUT_S = {self._drain_timeout_s:g} s)"
            )
        await self._terminate(gateways, self._drain_timeout_s + DRAIN_GRACE_S)
        if any(c.running for c in workers) and not self._forced:
            await self._finish(workers)
        if any(c.running for c in workers) and not self._forced:
            self._console.say("stopping the workers: they hand their calls back")
        await self._terminate(workers, WORKER_STOP_S)
        await self._refresh_status(self._redis)
        self._console.close()
        unclean = [c for c in self._children if not c.stopped_cleanly]
        if self._failed is None and not self._forced and not unclean:
            self._console.say(f"stopped: all {len(self._children)} processes exited 0", GREEN)
            return 0
        details = ", ".join(
            f"{c.name} {describe_exit(c.returncode) if c.returncode is not None else 'not run'}"
            for c in unclean
        )
        self._console.say(f"stopped, not cleanly: {details or 'killed'}", RED)
        return 1

    async def _finish(self, workers: Sequence[Child]) -> None:
        """Before the workers stop, let them finish the calls that have ended (bounded by
        FINISH_TIMEOUT_S): a worker told to stop hands its calls back, and here no other
        replica would take them until the next ``up``, so the last transcripts, insights and
        summaries would wait until then."""
        if self._redis is None:
            return
        kinds = {c.spec.kind for c in workers if c.running}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_TIMEOUT_S
        said = ""
        while not self._forced:
            groups, error = await read_groups(self._redis, self._keys)
            busy = {
                kind: (group.pending or 0) + (group.lag or 0)
                for kind, group in groups.items()
                if kind in kinds and (group.pending or 0) + (group.lag or 0) > 0
            }
            if error is None and not busy:
                return
            why = error or ", ".join(f"{kind} {n}" for kind, n in sorted(busy.items()))
            if loop.time() >= deadline:
                self._console.say(f"calls still unfinished ({why}): the workers hand them back")
                return
            if why != said:
                said = why
                self._console.say(
                    f"waiting for the workers to finish their calls ({why}; at most "
                    f"{FINISH_TIMEOUT_S:g} s, Ctrl-C again to kill everything now)"
                )
            await asyncio.sleep(FINISH_POLL_S)

    async def _terminate(self, children: Sequence[Child], timeout_s: float) -> None:
        """SIGTERM to ``children`` and wait for them; SIGKILL after ``timeout_s``."""
        for child in children:
            if child.running and child.proc is not None:
                child.state, child.why = STOPPING, ""
                with contextlib.suppress(ProcessLookupError):
                    child.proc.terminate()
        tasks = [c.task for c in children if c.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            for child in children:
                if child.running and child.proc is not None:
                    self._console.say(
                        f"{child.name} did not stop within {timeout_s:g} s: killing it", RED
                    )
                    child.proc.kill()
            await asyncio.wait(pending)

    # ---------------------------------------------------------------- one process

    async def _keep(self, child: Child) -> None:
        """Run ``child``; when it exits on its own, restart it (or stop everything if it never
        got ready the first time)."""
        while True:
            try:
                await self._spawn(child)
            except OSError as exc:
                self._fail(f"cannot start {child.name}: {exc}")
                child.state, child.why = EXITED, str(exc)
                return
            proc = child.proc
            assert proc is not None
            assert proc.stdout is not None
            assert proc.stderr is not None
            if self._stopping:  # stopped while it was being started
                child.state = STOPPING
                with contextlib.suppress(ProcessLookupError):
                    if self._forced:
                        proc.kill()
                    else:
                        proc.terminate()
            pumps = [
                asyncio.create_task(self._pump(child.name, proc.stdout)),
                asyncio.create_task(self._pump(child.name, proc.stderr)),
            ]
            code = await proc.wait()
            # Its output ends with it (unless something it started holds the pipes).
            _, late = await asyncio.wait(pumps, timeout=2.0)
            for task in late:
                task.cancel()
            child.returncode = code
            child.calls = None
            if self._stopping:
                child.stopped_cleanly = code == 0 and not self._forced
                child.state, child.why = EXITED, describe_exit(code)
                self._console.say(f"{child.name} {describe_exit(code)}", None if code == 0 else RED)
                return
            child.state, child.why = EXITED, describe_exit(code)
            self._console.say(
                f"{child.name} (pid {proc.pid}) {describe_exit(code)} UNEXPECTEDLY", RED
            )
            if not self._all_ready:
                self._fail(f"{child.name} {describe_exit(code)} before everything was ready")
                return
            child.failures = 0 if child.ready_once else child.failures + 1
            delay_s = restart_delay_s(child.failures)
            child.state, child.why = RESTARTING, f"in {delay_s:g} s"
            self._console.say(f"restarting {child.name} in {delay_s:g} s", YELLOW)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stop.wait()
            if self._stopping or self._stop.is_set():
                return

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callstream",
            *child.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            limit=LINE_LIMIT,
            # Its own process group: the terminal's Ctrl-C reaches up alone, which stops the
            # processes in order (the gateway first).
            process_group=0,
            preexec_fn=DIE_WITH_PARENT,
        )
        child.state, child.why, child.calls = STARTING, "", None
        child.ready_once = False
        child.started_at = time.monotonic()
        self._console.say(
            f"started {child.name}: pid {child.proc.pid}, "
            f"metrics http://127.0.0.1:{child.spec.metrics_port}/metrics"
        )

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Every line ``stream`` gives, prefixed with ``name``, into the log."""
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end
                if exc.partial:
                    self._console.line(name, clean_line(exc.partial))
                return
            except asyncio.LimitOverrunError as exc:  # a very long line: in pieces
                raw = await stream.readexactly(exc.consumed)
            self._console.line(name, clean_line(raw))

    # ---------------------------------------------------------------- the status

    async def _watch(self, redis: aioredis.Redis) -> None:
        """Probe every process and Redis, log what changed, redraw the status; forever."""
        failed = False
        while True:
            try:
                await self._refresh_status(redis)
            except Exception as exc:  # a bug of up's own: say it (once), keep the processes
                if not failed:
                    self._console.say(f"status: {exc!r}", RED)
                failed = True
            await asyncio.sleep(self._interval_s if self._all_ready else STARTING_POLL_S)

    async def _refresh_status(self, redis: aioredis.Redis | None = None) -> None:
        running = [(c, c.proc) for c in self._children if c.running]
        gauges = {c: GATEWAY_CALLS if c.spec.kind == GATEWAY else WORKER_CALLS for c, _ in running}
        probes = asyncio.gather(*(probe(c.spec.metrics_port, gauges[c]) for c, _ in running))
        if redis is not None:
            results, (self._groups, self._redis_error) = await asyncio.gather(
                probes, read_groups(redis, self._keys)
            )
        else:
            results = await probes
        for (child, proc), result in zip(running, results, strict=True):
            if child.proc is proc and child.running:  # not another run of it by now
                self._update(child, result)
        if (
            not self._all_ready
            and not self._stop.is_set()
            and all(c.state == READY for c in self._children)
        ):
            self._all_ready = True
            self._announce()
        self._console.status(self._snapshot)

    def _update(self, child: Child, result: Probe) -> None:
        child.calls = result.calls
        if child.state == STOPPING:
            child.why = result.why if result.ready is False else ""
            return
        if result.ready:
            if child.state != READY:
                took = time.monotonic() - child.started_at
                again = " again" if child.ready_once else f" ({took:.1f} s)"
                self._console.say(f"{child.name} ready{again}")
                child.state, child.why, child.ready_once = READY, "", True
            return
        if child.state == READY:
            self._console.say(f"{child.name} not ready: {result.why}", YELLOW)
            child.state = UNREADY
        # Starting, a process says why it is not ready once it answers at all.
        child.why = result.why if child.state == UNREADY or result.ready is False else ""

    def _announce(self) -> None:
        names = ", ".join(c.name for c in self._children)
        self._console.say(
            f"ready — {len(self._children)} processes: {names}; Redis {redact(self._redis_url)}, "
            f"prefix {self._keys.prefix}",
            GREEN,
        )
        env = shell_env(
            self._redis_url, self._keys.prefix, default_url=DEFAULT_REDIS_URL, default_prefix="cs"
        )
        self._console.say(f"place a call:    {env}callstream simulate {self._call_url} --wav a.wav")
        self._console.say(f"follow insights: {env}callstream tail")
        self._console.say("Ctrl-C drains the gateway, then stops the workers")

    def _snapshot(self) -> Snapshot:
        phase = STOPPING if self._stop.is_set() else READY if self._all_ready else STARTING
        return Snapshot(
            tuple(c.view() for c in self._children),
            self._groups,
            self._redis_error,
            url=self._call_url,
            phase=phase,
            clock=time.strftime("%H:%M:%S"),
        )


# --------------------------------------------------------------------------- Redis, ports


def free_ports(exclude: Sequence[int] = ()) -> Iterator[int]:
    """Distinct TCP ports nothing listens on (yet) on 127.0.0.1."""
    seen = set(exclude)
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in seen:
            seen.add(port)
            yield port


def check_port_free(host: str, port: int) -> None:
    """ConfigError when the gateway could not listen on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"the gateway cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "is another gateway running? Choose another port with --port"
            ) from None


def check_kinds(counts: dict[str, int]) -> None:
    """Import every kind that is to run here, so that one whose extra is missing stops
    ``up`` before anything starts (ConfigError with the ``pip install`` that fixes it)."""
    for kind, n in counts.items():
        if n == 0:
            continue
        try:
            load_kind(kind)
        except ConfigError as exc:
            hint = f" (or run without it: --{kind} 0)" if kind in EXTRAS else ""
            raise ConfigError(f"{exc}{hint}") from None


# --------------------------------------------------------------------------- the command


async def _up(
    settings: Settings, args: argparse.Namespace, specs: list[ChildSpec], console: Console
) -> int:
    async with ensure_redis(settings.redis_url, own_process_group=True) as url:
        if url != settings.redis_url:
            console.say(
                f"no Redis answers at {redact(settings.redis_url)}: started a private "
                f"redis-server at {url} (nothing kept on disk)"
            )
        env = {**os.environ, "REDIS_URL": url, "CS_PREFIX": settings.prefix}
        env["PYTHONUNBUFFERED"] = "1"
        call_url = f"ws://{connect_host(args.host)}:{args.port}/ws"
        up = Up(
            specs,
            console,
            env=env,
            redis_url=url,
            keys=settings.keys,
            call_url=call_url,
            drain_timeout_s=settings.drain_timeout_s,
            status_interval_s=args.status_interval,
        )
        return await up.run()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    builtin = {kind: getattr(args, kind) for kind in BUILTIN_KINDS}
    counts = replica_counts(builtin, args.worker)
    try:
        limits = max_calls_by_kind(args.max_calls, counts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.status_interval <= 0:
        raise ConfigError(f"--status-interval must be above 0, got {args.status_interval}")
    check_kinds(counts)
    check_port_free(args.host, args.port)
    specs = plan(
        counts,
        host=args.host,
        port=args.port,
        metrics_ports=free_ports(exclude=[args.port]),
        max_calls=limits,
        allow_unauthenticated=args.allow_unauthenticated,
        log_level=args.log_level,
        consumer_suffix=f"@up{os.getpid()}",
    )
    out = sys.stdout
    tty = out.isatty() and os.environ.get("TERM") != "dumb"
    color = use_color(isatty=tty, env=os.environ, no_color=args.no_color)
    console = Console(out, [spec.name for spec in specs], tty=tty, color=color)
    return asyncio.run(_up(settings, args, specs, console))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run the whole system locally: a gateway and worker replicas, one log, a status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for kind in BUILTIN_KINDS:
        parser.add_argument(
            f"--{kind}",
            type=replica_count,
            default=1,
            metavar="N",
            help=f"{kind} replicas (default 1; 0: none)",
        )
    parser.add_argument(
        "--worker",
        type=kind_assignment,
        action="append",
        default=[],
        metavar="KIND=N",
        help="N replicas of another worker kind (one of your own); repeatable",
    )
    parser.add_argument(
        "--max-calls",
        type=kind_assignment,
        action="append",
        default=[],
        metavar="KIND=N",
        help="a kind's --max-calls per replica (default: the kind's own); repeatable",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the gateway's address (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="let the gateway accept calls without a token on a non-loopback --host",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between status refreshes (default 1)",
    )
    parser.add_argument("--no-color", action="store_true", help="no ANSI colours (or NO_COLOR=1)")
    parser.set_defaults(run=_run)
