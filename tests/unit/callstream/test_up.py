"""``callstream up``'s pure parts: its arguments and plan, what it reads (HTTP answers,
Prometheus text, XINFO GROUPS) and what it prints (log prefixes, the status line and block)."""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import re

import pytest

from callstream import up
from callstream.cli import build_parser, main
from callstream.shared.errors import ConfigError
from callstream.up import Console
from callstream.upview import (
    EXITED,
    GATEWAY,
    READY,
    RESTARTING,
    STARTING,
    STOPPING,
    UNREADY,
    Group,
    ProcessView,
    Snapshot,
    clean_line,
    connect_host,
    describe_exit,
    gateway_cell,
    groups_by_kind,
    kind_assignment,
    log_prefix,
    max_calls_by_kind,
    metric_value,
    parse_http_response,
    plan,
    render,
    replica_cell,
    replica_count,
    replica_counts,
    restart_delay_s,
    shell_env,
    status_block,
    status_line,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", *argv])


# ---------------------------------------------------------------- arguments


def test_by_default_one_replica_of_each_kind_and_the_gateway_on_8080() -> None:
    args = parse()
    assert (args.echo, args.transcribe, args.nlp) == (1, 1, 1)
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    assert args.worker == []
    assert args.max_calls == []
    assert args.status_interval == 1.0


def test_replica_counts_and_kinds_of_ones_own() -> None:
    args = parse("--transcribe", "2", "--nlp", "0", "--worker", "mine=3", "--max-calls", "echo=9")
    counts = replica_counts({"echo": args.echo, "transcribe": 2, "nlp": args.nlp}, args.worker)
    assert counts == {"echo": 1, "transcribe": 2, "nlp": 0, "mine": 3}
    assert list(counts) == ["echo", "transcribe", "nlp", "mine"]  # start and display order
    assert args.max_calls == [("echo", 9)]


def test_worker_names_a_builtin_kind_to_override_its_count() -> None:
    assert replica_counts({"echo": 1}, [("echo", 4)]) == {"echo": 4}


@pytest.mark.parametrize("argv", [["--transcribe", "-1"], ["--echo", "x"], ["--worker", "mine"]])
def test_bad_counts_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "callstream up: error" in capsys.readouterr().err


def test_replica_count_and_kind_assignment() -> None:
    assert replica_count("0") == 0
    assert replica_count("12") == 12
    assert kind_assignment("transcribe=3") == ("transcribe", 3)
    assert kind_assignment(" nlp =0") == ("nlp", 0)
    for bad in ("-1", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            replica_count(bad)
    for bad in ("transcribe", "=3", "nlp=x", "nlp=-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            kind_assignment(bad)


def test_max_calls_only_for_kinds_that_run_and_at_least_one() -> None:
    counts = {"echo": 1, "transcribe": 2, "nlp": 0}
    assert max_calls_by_kind([("transcribe", 1), ("echo", 80)], counts) == {
        "transcribe": 1,
        "echo": 80,
    }
    with pytest.raises(ValueError, match="no nlp replica"):
        max_calls_by_kind([("nlp", 5)], counts)
    with pytest.raises(ValueError, match="at least 1"):
        max_calls_by_kind([("echo", 0)], counts)


# ---------------------------------------------------------------- the plan


def test_the_plan_is_the_gateway_then_each_kinds_replicas_each_with_its_own_port() -> None:
    specs = plan(
        {"echo": 1, "transcribe": 2, "nlp": 0},
        host="127.0.0.1",
        port=8080,
        metrics_ports=itertools.count(9100),
        max_calls={"transcribe": 1},
        consumer_suffix="@up42",
    )
    assert [(s.name, s.kind, s.metrics_port) for s in specs] == [
        ("gateway", GATEWAY, 9100),
        ("echo-1", "echo", 9101),
        ("transcribe-1", "transcribe", 9102),
        ("transcribe-2", "transcribe", 9103),
    ]
    gateway, echo, transcribe, _ = specs
    assert gateway.argv == (
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        "8080",
        "--metrics-port",
        "9100",
        "--metrics-host",
        "127.0.0.1",
    )
    assert echo.argv == (
        "worker",
        "echo",
        "--consumer",
        "echo-1@up42",
        "--metrics-port",
        "9101",
        "--metrics-host",
        "127.0.0.1",
    )
    assert transcribe.argv[-2:] == ("--max-calls", "1")


def test_the_plan_passes_the_log_level_and_unauthenticated_on() -> None:
    specs = plan(
        {"echo": 1},
        host="0.0.0.0",
        port=80,
        metrics_ports=iter([1, 2]),
        allow_unauthenticated=True,
        log_level="DEBUG",
    )
    assert specs[0].argv[:3] == ("--log-level", "DEBUG", "gateway")
    assert specs[0].argv[-1] == "--allow-unauthenticated"
    assert specs[1].argv[:4] == ("--log-level", "DEBUG", "worker", "echo")
    assert "--allow-unauthenticated" not in specs[1].argv


def test_the_plan_with_no_worker_is_the_gateway_alone() -> None:
    specs = plan({"echo": 0}, host="h", port=1, metrics_ports=iter([5]))
    assert [s.name for s in specs] == ["gateway"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]"), ("h", "h")],
)
def test_where_to_connect(host: str, expected: str) -> None:
    assert connect_host(host) == expected


def test_exits_are_described_with_their_signal() -> None:
    assert describe_exit(0) == "exited 0"
    assert describe_exit(2) == "exited 2"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(-200) == "killed by signal 200"


def test_restarts_back_off_from_one_second_to_thirty() -> None:
    assert [restart_delay_s(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


# ---------------------------------------------------------------- what up reads


def test_http_responses() -> None:
    assert parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nready\n") == (
        200,
        "ready\n",
    )
    assert parse_http_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\ndraining") == (
        503,
        "draining",
    )
    assert parse_http_response(b"HTTP/1.0 404 Not Found\r\n\r\n") == (404, "")
    for bad in (b"", b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.0 OK\r\n\r\n"):
        with pytest.raises(ValueError, match="not an HTTP response"):
            parse_http_response(bad)


METRICS = """\
# HELP callstream_worker_calls_owned Calls owned
# TYPE callstream_worker_calls_owned gauge
callstream_worker_calls_owned{kind="transcribe"} 2.0
callstream_worker_calls_owned{kind="nlp"} 1.0
# HELP callstream_worker_calls_owned_total not the same metric
callstream_worker_calls_owned_total{kind="transcribe"} 7.0
callstream_ingress_connections 3.0
callstream_ingress_rejects_total{reason="a b} c \\" {x}"} 5.0
callstream_ingress_backlog_bytes NaN
"""


def test_metric_values_sum_over_labels_and_match_whole_names() -> None:
    assert metric_value(METRICS, "callstream_worker_calls_owned") == 3.0
    assert metric_value(METRICS, "callstream_worker_calls_owned_total") == 7.0
    assert metric_value(METRICS, "callstream_ingress_connections") == 3.0
    assert metric_value(METRICS, "callstream_ingress_rejects_total") == 5.0
    assert metric_value(METRICS, "callstream_ingress") is None
    assert metric_value(METRICS, "callstream_worker_calls_taken_total") is None
    assert metric_value("", "callstream_ingress_connections") is None
    value = metric_value(METRICS, "callstream_ingress_backlog_bytes")
    assert value is not None
    assert math.isnan(value)


def test_groups_by_kind_from_xinfo_groups() -> None:
    rows = [
        {"name": "cs:workers:echo", "consumers": 1, "pending": 2, "lag": 0},
        {"name": "cs:workers:transcribe", "consumers": 0, "pending": 0, "lag": None},
        {"name": "other:workers:nlp", "pending": 9, "lag": 9},
        {"name": "audit", "pending": 1, "lag": 1},
    ]
    assert groups_by_kind(rows, "cs") == {
        "echo": Group(pending=2, lag=0),
        "transcribe": Group(pending=0, lag=None),
    }
    assert groups_by_kind([{"name": "cs:workers:x", "pending": "3"}], "cs") == {
        "x": Group(pending=3, lag=None)
    }


# ---------------------------------------------------------------- the status


def snapshot(**kwargs: object) -> Snapshot:
    processes = (
        ProcessView("gateway", GATEWAY, READY, 1),
        ProcessView("echo-1", "echo", READY, 1),
        ProcessView("transcribe-1", "transcribe", READY, 0),
        ProcessView("transcribe-2", "transcribe", READY, 1),
        ProcessView("nlp-1", "nlp", STARTING),
    )
    groups = {"echo": Group(1, 0), "transcribe": Group(1, 2)}
    defaults: dict[str, object] = {
        "processes": processes,
        "groups": groups,
        "url": "ws://127.0.0.1:8080/ws",
        "phase": READY,
        "clock": "12:00:01",
    }
    return Snapshot(**{**defaults, **kwargs})  # type: ignore[arg-type]


def test_the_status_line_has_the_gateways_calls_each_group_and_each_replica() -> None:
    assert status_line(snapshot()) == (
        "status: gateway 1 call"
        " | echo pending 1 lag 0 (echo-1: 1)"
        " | transcribe pending 1 lag 2 (transcribe-1: 0, transcribe-2: 1)"
        " | nlp no group yet (nlp-1: starting)"
    )


def test_the_status_line_shows_kinds_with_a_group_and_no_replica_and_redis_trouble() -> None:
    line = status_line(
        snapshot(
            processes=(ProcessView("gateway", GATEWAY, STARTING),),
            groups={"transcribe": Group(0, 4)},
        )
    )
    assert line == "status: gateway starting | transcribe pending 0 lag 4 (no replica)"
    line = status_line(snapshot(redis_error="Connection refused"))
    assert "echo pending ? lag ? (echo-1: 1)" in line
    assert line.endswith(" | redis unavailable: Connection refused")


@pytest.mark.parametrize(
    ("process", "cell"),
    [
        (ProcessView("t-1", "t", READY, 2), "t-1: 2"),
        (ProcessView("t-1", "t", READY), "t-1: ?"),
        (ProcessView("t-1", "t", STARTING), "t-1: starting"),
        (
            ProcessView("t-1", "t", STARTING, 0, "consumer group x not created yet"),
            "t-1: 0 (starting: consumer group x not created yet)",
        ),
        (
            ProcessView("t-1", "t", UNREADY, 1, "Redis unavailable"),
            "t-1: 1 (unready: Redis unavailable)",
        ),
        (ProcessView("t-1", "t", STOPPING, 1, "draining"), "t-1: 1 (stopping: draining)"),
        (ProcessView("t-1", "t", STOPPING), "t-1: stopping"),
        (ProcessView("t-1", "t", EXITED, None, "exited 0"), "t-1: exited 0"),
        (ProcessView("t-1", "t", EXITED, 3, "killed by SIGKILL"), "t-1: killed by SIGKILL"),
        (ProcessView("t-1", "t", RESTARTING, None, "in 2 s"), "t-1: restarting in 2 s"),
    ],
)
def test_replica_cells(process: ProcessView, cell: str) -> None:
    assert replica_cell(process) == cell


def test_gateway_cells() -> None:
    assert gateway_cell(ProcessView("gateway", GATEWAY, READY, 0)) == "0 calls"
    assert gateway_cell(ProcessView("gateway", GATEWAY, READY, 1)) == "1 call"
    assert gateway_cell(ProcessView("gateway", GATEWAY, READY, 12)) == "12 calls"
    draining = ProcessView("gateway", GATEWAY, STOPPING, 1, "draining: 1 calls left")
    assert gateway_cell(draining) == "1 call (stopping: draining: 1 calls left)"
    assert gateway_cell(ProcessView("gateway", GATEWAY, EXITED, None, "exited 0")) == "exited 0"


def plain_block(snap: Snapshot, width: int = 200) -> list[str]:
    return [render(row, width, color=False) for row in status_block(snap)]


def test_the_status_block_has_a_title_the_gateway_and_a_row_per_kind() -> None:
    title, *rows = plain_block(snapshot(), width=100)
    assert title.startswith("── callstream up 12:00:01 · ws://127.0.0.1:8080/ws · Ctrl-C drains")
    assert len(title) == 100  # filled with rules to the width
    assert rows == [
        "  gateway     1 call",
        "  echo        pending 1 lag 0   echo-1: 1",
        "  transcribe  pending 1 lag 2   transcribe-1: 0  transcribe-2: 1",
        "  nlp         no group yet      nlp-1: starting",
    ]


def test_the_status_block_while_starting_and_stopping_and_without_redis() -> None:
    assert "· starting" in plain_block(snapshot(phase=STARTING))[0]
    assert "Ctrl-C again kills everything" in plain_block(snapshot(phase=STOPPING))[0]
    rows = plain_block(snapshot(redis_error="Connection refused"))
    assert rows[-1] == "  redis       unavailable: Connection refused"
    assert rows[2] == "  echo        pending ? lag ?   echo-1: 1"


def test_status_rows_are_cut_to_the_width_colours_and_all() -> None:
    block = status_block(snapshot())
    for width in (1, 10, 37, 80):
        for row in block:
            plain = render(row, width, color=False)
            coloured = render(row, width, color=True)
            assert len(plain) <= width
            assert ANSI.sub("", coloured) == plain
    # What is not ready stands out; what is, is plain.
    nlp = render(block[-1], 200, color=True)
    assert "\x1b[33mnlp-1: starting\x1b[0m" in nlp
    assert "\x1b[1m  nlp " in nlp


# ---------------------------------------------------------------- the log


def test_log_prefixes_are_one_width_and_coloured_only_when_asked() -> None:
    assert log_prefix("gateway", 12, None) == "gateway      | "
    assert log_prefix("transcribe-1", 12, None) == "transcribe-1 | "
    assert log_prefix("up", 12, "1") == "\x1b[1mup          \x1b[0m | "


def test_child_lines_are_cleaned() -> None:
    assert clean_line(b"hello\r\n") == "hello"
    assert clean_line(b"50%\r100%\n") == "50%100%"
    assert clean_line(b"caf\xc3\xa9 \xff\n") == "café \ufffd"


def test_the_environment_other_commands_need() -> None:
    default = "redis://127.0.0.1:6379/0"
    assert shell_env(default, "cs", default_url=default, default_prefix="cs") == ""
    assert (
        shell_env("redis://127.0.0.1:4242/0", "demo x", default_url=default, default_prefix="cs")
        == "REDIS_URL=redis://127.0.0.1:4242/0 CS_PREFIX='demo x' "
    )


# ---------------------------------------------------------------- the console


def test_into_a_pipe_the_status_is_a_line_when_it_changes_and_nothing_is_coloured() -> None:
    out = io.StringIO()
    console = Console(out, ["gateway", "echo-1"], tty=False, color=False)
    console.line("gateway", "listening")
    console.status(snapshot)
    console.status(snapshot)  # unchanged: not again
    console.status(lambda: snapshot(clock="12:00:02"))  # the clock is not in the line
    console.say("ready")
    console.status(lambda: snapshot(groups={}))
    console.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "gateway | listening"
    assert lines[1] == "up      | " + status_line(snapshot())
    assert lines[2] == "up      | ready"
    assert lines[3] == "up      | " + status_line(snapshot(groups={}))
    assert len(lines) == 4
    assert "\x1b" not in out.getvalue()


def test_on_a_terminal_the_status_block_is_redrawn_below_each_new_line() -> None:
    out = io.StringIO()
    console = Console(
        out,
        ["gateway"],
        tty=True,
        color=False,
        size=lambda: os.terminal_size((60, 40)),
    )
    console.status(snapshot)
    rows = len(status_block(snapshot()))
    drawn = out.getvalue()
    assert drawn.startswith("\x1b[?7l")  # the block alone: nothing to erase yet
    assert drawn.count("\n") == rows
    out.seek(0)
    out.truncate()
    console.line("gateway", "a line")
    redraw = out.getvalue()
    # Up to the block's first row, clear to the end, the new line, the block again (no wrap).
    assert redraw.startswith(f"\x1b[{rows}F\x1b[J" + "gateway | a line\n" + "\x1b[?7l")
    assert redraw.endswith("\x1b[?7h")
    block = redraw[redraw.index("\x1b[?7l") + 5 : -5].splitlines()
    assert len(block) == rows
    assert all(len(row) <= 59 for row in block)
    out.seek(0)
    out.truncate()
    console.close()
    assert out.getvalue() == f"\x1b[{rows}F\x1b[J"  # erased, the log stays
    console.say("stopped")
    assert out.getvalue().endswith("up      | stopped\n")


def test_on_a_short_terminal_the_block_is_cut_to_fit() -> None:
    out = io.StringIO()
    console = Console(
        out, ["gateway"], tty=True, color=False, size=lambda: os.terminal_size((80, 3))
    )
    console.status(snapshot)
    assert out.getvalue().count("\n") == 2


def test_a_closed_output_stops_the_console_quietly() -> None:
    out = io.StringIO()
    console = Console(out, ["gateway"], tty=False, color=False)
    out.close()
    console.say("nobody reads this")  # no exception
    console.line("gateway", "nor this")


# ---------------------------------------------------------------- before anything starts


def test_a_kind_whose_extra_is_missing_stops_up_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def load_kind(name: str) -> object:
        if name == "transcribe":
            raise ConfigError(
                "worker kind transcribe cannot be loaded (No module named 'pocketsphinx'); are "
                "its dependencies installed: pip install 'callstream[transcribe]'?"
            )
        return object()

    def never(*args: object) -> int:
        raise AssertionError("nothing may start")

    monkeypatch.setattr(up, "load_kind", load_kind)
    monkeypatch.setattr(up, "_up", never)
    assert main(["up", "--transcribe", "2"]) == 2
    err = capsys.readouterr().err
    assert "callstream up: configuration error: worker kind transcribe cannot be loaded" in err
    assert "pip install 'callstream[transcribe]'" in err
    assert err.rstrip().endswith("(or run without it: --transcribe 0)")
    # Without it, nothing of the transcribe extra is needed.
    up.check_kinds({"echo": 1, "transcribe": 0, "nlp": 1})


def test_bad_max_calls_and_status_interval_stop_up_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up, "load_kind", lambda name: object())
    assert main(["up", "--nlp", "0", "--max-calls", "nlp=3"]) == 2
    assert "--max-calls nlp=3: no nlp replica runs" in capsys.readouterr().err
    assert main(["up", "--status-interval", "0"]) == 2
    assert "--status-interval must be above 0" in capsys.readouterr().err
