"""The manifests' pods really run.

The image is built from this tree with ``./dev image``; the ``podman`` overlay's Deployments are
rendered with kustomize and played with ``podman kube play`` (host network, this test's Redis);
every container must become ready by its own readiness probe; ``callstream simulate`` streams a
call through the gateway pod and gets the echo back while the transcribe and nlp pods publish
its transcript and insights, and the agent pod greets the caller with Piper's voice (from the
image, as uid 10001 on a read-only root); then the pods are stopped as Kubernetes stops them
(SIGTERM, then the grace period) and every container must exit 0 by itself.

The slowest test of the suite (an image build, ~1 min with podman's layer cache warm).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from callstream.emulator.wav import load_wav, write_wav
from callstream.shared.audio import is_silent
from callstream.shared.events import Event
from callstream.shared.settings import Settings
from callstream.speech import say
from tests.helpers import events, free_port, wait_for_entry, wait_for_event, word_error_rate

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "k8s" / "overlays" / "podman"
RATE = 16000
SPOKEN = "can you please refund the second charge"
CALL_ID = "podman-call"
# The caller is silent this long before speaking, so that what the call hears before it speaks
# is the agent's greeting alone (the echo pod plays back non-silent frames only).
GREETING_S = 4

Manifest = dict[str, Any]


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "k8s" / "podman-containers.conf"))
    return env


def run(*cmd: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=podman_env(), check=False
    )


def render() -> list[Manifest]:
    kubectl = Path(sys.executable).with_name("kubectl")
    out = run(str(kubectl), "kustomize", str(OVERLAY), timeout_s=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def pod_specs(docs: list[Manifest]) -> Iterator[Manifest]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            yield doc["spec"]["template"]["spec"]


def containers(docs: list[Manifest]) -> Iterator[Manifest]:
    for spec in pod_specs(docs):
        yield from spec["containers"]


def probe_ports(container: Manifest) -> set[int]:
    ports = set()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            ports.add(int(container[probe]["httpGet"]["port"]))
    return ports


def localise(docs: list[Manifest], settings: Settings) -> dict[int, int]:
    """Point the rendered objects at this test: its Redis and key prefix, and free host ports
    instead of the overlay's (host network: a port in use here would fail the pod). Returns
    the mapping of ports."""
    ports: dict[int, int] = {}
    for container in containers(docs):
        for port in probe_ports(container):
            ports.setdefault(port, free_port())
    ours = {"REDIS_URL": settings.redis_url, "CS_PREFIX": settings.prefix}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            doc["data"].update({k: v for k, v in ours.items() if k in doc["data"]})
    for container in containers(docs):
        args = container.get("args", [])
        for i, arg in enumerate(args[:-1]):
            if arg in ("--port", "--metrics-port"):
                args[i + 1] = str(ports[int(args[i + 1])])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                get = container[probe]["httpGet"]
                get["port"] = ports[int(get["port"])]
        env = [e for e in container.get("env", []) if e["name"] not in ours]
        container["env"] = [*env, *({"name": k, "value": v} for k, v in ours.items())]
    return ports


def answers_200(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def pod_containers(pod: str) -> list[dict[str, Any]]:
    out = run("podman", "ps", "-a", "--filter", f"pod={pod}", "--format", "json", timeout_s=30)
    assert out.returncode == 0, out.stderr
    return [c for c in json.loads(out.stdout) if not c.get("IsInfra")]


def logs(name: str) -> str:
    out = run("podman", "logs", "--tail", "30", name, timeout_s=30)
    return out.stdout + out.stderr


async def wait_ready(docs: list[Manifest], pods: list[str]) -> None:
    """Every container's readiness probe answers 200 (bounded); fail at once, with its log, if a
    container exits instead."""
    waiting = {
        (int(c["readinessProbe"]["httpGet"]["port"]), c["readinessProbe"]["httpGet"]["path"])
        for c in containers(docs)
    }
    deadline = time.monotonic() + 180
    while waiting:
        for pod in pods:
            for c in pod_containers(pod):
                assert c["State"] == "running", (c["Names"], logs(c["Names"][0]))
        waiting = {probe for probe in waiting if not answers_200(*probe)}
        assert time.monotonic() < deadline, f"not ready: {waiting}"
        await asyncio.sleep(0.5)


def is_final_of_call(fields: dict[bytes, bytes]) -> bool:
    if fields.get(b"type") != b"transcript":
        return False
    event = Event.from_fields(fields)
    return event.call_id == CALL_ID and event.data["resultStatus"] == "Final"


def is_summary_of_call(fields: dict[bytes, bytes]) -> bool:
    return fields.get(b"type") == b"nlp.summary" and Event.from_fields(fields).call_id == CALL_ID


@pytest.mark.timeout(900)
async def test_the_podman_overlay_runs_a_call_through_its_pods(
    settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    build = await asyncio.to_thread(run, str(REPO / "dev"), "image", timeout_s=840)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-4000:]
    docs = render()
    kinds = {doc["kind"] for doc in docs}
    assert "Deployment" in kinds
    ports = localise(docs, settings)
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    gateway = next(c for c in containers(docs) if c["args"][0] == "gateway")
    gateway_port = int(gateway["args"][gateway["args"].index("--port") + 1])
    assert gateway_port in ports.values()

    played = await asyncio.to_thread(
        run, "podman", "kube", "play", "--replace", str(manifest), timeout_s=300
    )
    try:
        assert played.returncode == 0, played.stderr
        pods = pods_of(played)
        assert len(pods) == sum(1 for _ in pod_specs(docs))
        for pod in pods:  # the securityContext really applies
            for c in pod_containers(pod):
                inspect = json.loads(run("podman", "inspect", c["Id"], timeout_s=30).stdout)[0]
                assert inspect["Config"]["User"].split(":")[0] == "10001"
                assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        await wait_ready(docs, pods)

        wav = tmp_path / "caller.wav"
        pcm = await asyncio.to_thread(say, SPOKEN, RATE)
        lead = bytes(GREETING_S * RATE * 2)
        write_wav(str(wav), lead + pcm + bytes(RATE * 2), RATE)
        report = tmp_path / "report.json"
        recording = tmp_path / "heard.wav"
        simulate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callstream", "simulate", f"ws://127.0.0.1:{gateway_port}/ws",
            "--wav", str(wav), "--call-id", CALL_ID, "--report", str(report),
            "--record", str(recording), "--linger", "3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(simulate.communicate(), 120)
        assert simulate.returncode == 0, output.decode()
        [call] = json.loads(report.read_text())["calls"]
        assert call["frames_received"] > 0  # the echo pod played the call back
        # The agent pod greeted the caller before they spoke: at least a second of its voice.
        recorded = load_wav(str(recording), RATE)
        frame = RATE // 50 * 2
        before = recorded[: GREETING_S * RATE * 2]
        voiced = sum(
            not is_silent(before[i : i + frame]) for i in range(0, len(before) - frame + 1, frame)
        )
        assert voiced >= 50, voiced

        insights = settings.keys.insights
        fields = await wait_for_entry(redis, insights, is_final_of_call, 120)
        heard = Event.from_fields(fields).data["text"]
        # This speech, recognised (the recogniser may mishear a word from run to run: 'can
        # you please riff on the second charge' is 0.29).
        assert word_error_rate(SPOKEN, heard) <= 0.5, heard
        await wait_for_entry(redis, insights, is_summary_of_call, 120)  # the nlp pod's
        # The agent pod's greeting is turn 1; it published its turns, then its end of the call.
        call_events = settings.keys.call_events(CALL_ID)
        await wait_for_event(redis, call_events, "agent.done", 120)
        turns = [e for e in await events(redis, call_events) if e.type == "agent.turn"]
        assert turns, "no agent.turn"
        greeting = turns[0]
        assert greeting.data["turn"] == 1
        assert greeting.data["reply_to"] is None
        assert greeting.data["audio_ms"] > 1000
    finally:
        stopped = await asyncio.to_thread(
            run, "podman", "pod", "stop", "--time", "60", *pods_of(played), timeout_s=180
        )
        exits = {
            c["Names"][0]: c["ExitCode"] for pod in pods_of(played) for c in pod_containers(pod)
        }
        down = await asyncio.to_thread(run, "podman", "kube", "down", str(manifest), timeout_s=180)
    assert stopped.returncode == 0, stopped.stderr
    assert down.returncode == 0, down.stderr
    # SIGTERM: the gateway drained (no call left) and the workers handed back: all exit 0.
    assert len(exits) == len(list(containers(docs)))
    assert set(exits.values()) == {0}, exits


def pods_of(played: subprocess.CompletedProcess[str]) -> list[str]:
    """The pod ids `podman kube play` printed (each after a line `Pod:`)."""
    lines = played.stdout.splitlines()
    return [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line.strip() == "Pod:"]
