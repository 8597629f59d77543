"""The Kubernetes manifests render, validate, and name what the code names.

No cluster here: ``kubectl kustomize`` renders each overlay of
``deploy/kubernetes``; ``kubernetes-validate --strict`` checks Kubernetes'
own kinds; KEDA's are checked against its vendored CRDs (``deploy/kubernetes/
crds``). The names a cluster and the code must agree on (the stream and its
consumer group, ports, probe paths, settings, secret keys) are read from the
code here, never restated, so renaming one in the code fails a test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from krypton.service import constants
from krypton.service.app import create_app
from krypton.service.config import Settings
from krypton.service.routes.health import ReadyScope

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.33"
"""A current release: what kubernetes-validate checks the rendered objects against."""
KEDA_REDIS_STREAMS_METADATA = {
    "stream", "consumerGroup", "lagCount", "activationLagCount", "pendingEntriesCount",
    "streamLength", "databaseIndex", "enableTLS", "unsafeSsl", "address", "addresses",
    "host", "hosts", "port", "ports", "username", "password"}
"""The trigger metadata KEDA v2.20.1's redis-streams scaler reads (pkg/scalers/
redis_streams_scaler.go and redis_scaler.go); the CRD types metadata as any map."""

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed: the manifests are rendered with `kubectl kustomize` "
           "(install kubectl, which bundles kustomize, to run these tests)")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def objects(overlay: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any],
                                                                  dict[str, Any]]]:
    """Every (pod spec, container) of every workload."""
    for workload in objects:
        if workload["kind"] in ("Deployment", "StatefulSet"):
            pod = workload["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield pod, container


def _crd_schema(kind: str) -> dict[str, Any]:
    for path in (KUBERNETES / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            [version] = [v for v in crd["spec"]["versions"] if v["storage"]]
            return dict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no vendored CRD for {kind}")


def _unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not name: Kubernetes drops them silently from a custom
    resource, so a misspelt field would do nothing without a word."""
    if isinstance(value, dict) and "properties" in schema:
        unknown = [f"{path}.{key}" for key in value if key not in schema["properties"]]
        return unknown + [found for key, item in value.items() if key in schema["properties"]
                          for found in _unknown_fields(item, schema["properties"][key],
                                                       f"{path}.{key}")]
    if isinstance(value, list) and "items" in schema:
        return [found for index, item in enumerate(value)
                for found in _unknown_fields(item, schema["items"], f"{path}[{index}]")]
    return []


# ---------------------------------------------------------------- render and validate


def test_every_overlay_renders_the_api_workers_redis_and_their_scaling(
        objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert kinds >= {("Deployment", "krypton-api"), ("Service", "krypton-api"),
                     ("PodDisruptionBudget", "krypton-api"),
                     ("HorizontalPodAutoscaler", "krypton-api"),
                     ("Deployment", "krypton-worker"), ("ScaledObject", "krypton-worker"),
                     ("TriggerAuthentication", "krypton-redis"),
                     ("StatefulSet", "krypton-redis"), ("Service", "krypton-redis"),
                     ("NetworkPolicy", "krypton-redis"),
                     ("NetworkPolicy", "krypton-worker")}
    # The registry's ConfigMap carries a hash of its content, so a changed registry
    # rolls the pods that mount it.
    assert any(kind == "ConfigMap" and name.startswith("krypton-registry-")
               for kind, name in kinds)


def test_every_kubernetes_object_validates_strictly(objects: list[dict[str, Any]]) -> None:
    for document in objects:
        if document["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind", ["ScaledObject", "TriggerAuthentication"])
def test_keda_objects_validate_against_kedas_own_schema(objects: list[dict[str, Any]],
                                                        kind: str) -> None:
    schema = _crd_schema(kind)
    for document in (o for o in objects if o["kind"] == kind):
        jsonschema.validate(document, schema)
        assert _unknown_fields(document["spec"], schema["properties"]["spec"], "spec") == []


def test_a_misspelt_keda_field_is_caught(objects: list[dict[str, Any]]) -> None:
    scaled = _one(objects, "ScaledObject", "krypton-worker")
    misspelt = {**scaled["spec"], "minReplicas": 0}
    assert _unknown_fields(misspelt, _crd_schema("ScaledObject")["properties"]["spec"],
                           "spec") == ["spec.minReplicas"]


# ---------------------------------------------------------------- the names the code uses


def test_workers_scale_on_the_stream_and_group_the_code_uses(
        objects: list[dict[str, Any]]) -> None:
    scaled = _one(objects, "ScaledObject", "krypton-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "krypton-worker"
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for trigger in triggers:
        assert trigger["metadata"]["stream"] == constants.STREAM
        assert trigger["metadata"]["consumerGroup"] == constants.GROUP
        assert set(trigger["metadata"]) <= KEDA_REDIS_STREAMS_METADATA
    modes = [{"lagCount", "pendingEntriesCount"} & set(t["metadata"]) for t in triggers]
    assert sorted(map(sorted, modes)) == [["lagCount"], ["pendingEntriesCount"]]


def _documented_secret_keys(name: str, text: str) -> set[str]:
    """The keys of the ``kubectl create secret generic NAME`` command in ``text``, which
    may go on over lines ending in a backslash."""
    lines = text[text.index(f"create secret generic {name} "):].splitlines()
    command = []
    for line in lines:
        command.append(line)
        if not line.rstrip().endswith("\\"):
            break
    return set(re.findall(r"--from-literal=(\w+)=", " ".join(command)))


def _secret_keys_used(objects: list[dict[str, Any]], name: str) -> set[str]:
    """Every key of Secret ``name`` a container or KEDA reads."""
    keys = {reference["key"] for o in objects if o["kind"] == "TriggerAuthentication"
            for reference in o["spec"]["secretTargetRef"] if reference["name"] == name}
    for _, container in _containers(objects):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference and reference["name"] == name:
                keys.add(reference["key"])
    return keys


def test_the_redis_secret_the_docs_create_has_every_key_the_manifests_read(
        objects: list[dict[str, Any]]) -> None:
    assert not [o for o in objects if o["kind"] == "Secret"], "secrets are never committed"
    documented = _documented_secret_keys("krypton-redis",
                                         (ROOT / "docs" / "deploy.md").read_text())
    assert _secret_keys_used(objects, "krypton-redis") == documented == {
        "password", "url", "address"}


def test_every_krypton_variable_is_a_setting_the_code_reads(
        objects: list[dict[str, Any]]) -> None:
    prefix = Settings.model_config["env_prefix"]
    known = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    for _, container in _containers(objects):
        names = {v["name"] for v in container.get("env", []) if v["name"].startswith(prefix)}
        assert names <= known, f"{container['name']}: {sorted(names - known)} are not settings"


def test_the_api_listens_where_its_service_and_probes_point(
        objects: list[dict[str, Any]]) -> None:
    api = _one(objects, "Deployment", "krypton-api")["spec"]["template"]["spec"]
    [container] = api["containers"]
    [port] = container["ports"]
    args = container["args"]
    assert args[:2] == ["krypton", "serve"]
    assert int(args[args.index("--port") + 1]) == port["containerPort"]
    service = _one(objects, "Service", "krypton-api")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]

    routes = set(create_app(Settings()).openapi()["paths"])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        path, _, query = container[probe]["httpGet"]["path"].partition("?")
        assert path in routes, f"{probe} {path} is no route of the app"
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            assert (name, value in ReadyScope.__args__) == ("scope", True)
    # Readiness must not wait for workers: KEDA starts them from the jobs this API queues.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz?scope=api"


def test_the_keys_file_is_where_the_secret_is_mounted(objects: list[dict[str, Any]]) -> None:
    api = _one(objects, "Deployment", "krypton-api")["spec"]["template"]["spec"]
    [container] = api["containers"]
    keys_file = next(v["value"] for v in container["env"] if v["name"] == "KRYPTON_KEYS_FILE")
    [mount] = [m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/")]
    [volume] = [v for v in api["volumes"] if v["name"] == mount["name"]]
    item = keys_file.removeprefix(mount["mountPath"] + "/")
    assert [i["path"] for i in volume["secret"]["items"]] == [item]


def test_the_registry_is_mounted_where_krypton_registry_points(
        objects: list[dict[str, Any]]) -> None:
    for pod, container in _containers(objects):
        env = {v["name"]: v.get("value") for v in container.get("env", [])}
        if "KRYPTON_REGISTRY" in env:
            [mount] = [m for m in container["volumeMounts"]
                       if m["mountPath"] == env["KRYPTON_REGISTRY"]]
            [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert "configMap" in volume and mount["readOnly"] is True


def test_checkpoints_are_mounted_read_only_in_workers_and_never_in_the_api(
        objects: list[dict[str, Any]]) -> None:
    for workload in ("krypton-api", "krypton-worker"):
        pod = _one(objects, "Deployment", workload)["spec"]["template"]["spec"]
        claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        if workload == "krypton-api":
            assert claims == []
        else:
            [models] = claims
            assert models["persistentVolumeClaim"]["readOnly"] is True


def test_redis_keeps_jobs_across_restarts_and_never_evicts_them(
        objects: list[dict[str, Any]]) -> None:
    redis = _one(objects, "StatefulSet", "krypton-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    arguments = shlex.join(container["args"])
    assert "--appendonly yes" in arguments and "--maxmemory-policy noeviction" in arguments
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


# ---------------------------------------------------------------- hardening and labels


def test_no_container_runs_as_root_or_can_gain_privileges(
        objects: list[dict[str, Any]]) -> None:
    for pod, container in _containers(objects):
        context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert context.get("runAsNonRoot") is True, container["name"]
        assert context.get("runAsUser", 0) != 0, container["name"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_every_container_has_requests_and_limits(objects: list[dict[str, Any]]) -> None:
    for _, container in _containers(objects):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]


def test_every_object_carries_the_recommended_labels(objects: list[dict[str, Any]]) -> None:
    for document in objects:
        labels = document["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "krypton", document["kind"]
        assert "app.kubernetes.io/managed-by" in labels
        if document["kind"] not in ("ConfigMap", "Secret"):
            assert labels.get("app.kubernetes.io/name") == "krypton", document["kind"]
            assert "app.kubernetes.io/component" in labels, document["kind"]


def test_workers_accept_no_connections_and_redis_only_krypton_and_keda(
        objects: list[dict[str, Any]]) -> None:
    worker = _one(objects, "NetworkPolicy", "krypton-worker")["spec"]
    assert worker["ingress"] == []
    redis = _one(objects, "NetworkPolicy", "krypton-redis")["spec"]
    assert (redis["policyTypes"], redis["egress"]) == (["Ingress", "Egress"], [])
    [rule] = redis["ingress"]
    peers = rule["from"]
    components = peers[0]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(components) == ["api", "worker"]
    assert peers[1]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keda"}


# ---------------------------------------------------------------- the overlays


def test_the_gpu_overlay_gives_each_worker_one_gpu_and_may_scale_to_zero() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / "overlays" / "gpu")],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    pod = _one(objects, "Deployment", "krypton-worker")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"])
    assert {"name": "KRYPTON_DEVICE", "value": "cuda"} in container["env"]
    assert _one(objects, "ScaledObject", "krypton-worker")["spec"]["minReplicaCount"] == 0
    api = _one(objects, "Deployment", "krypton-api")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in api["containers"][0]["resources"]["limits"]


def test_the_cpu_overlay_asks_for_no_gpu() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / "overlays" / "cpu")],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    assert "nvidia.com/gpu" not in rendered
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    pod = _one(objects, "Deployment", "krypton-worker")["spec"]["template"]["spec"]
    assert {"name": "KRYPTON_DEVICE", "value": "cpu"} in pod["containers"][0]["env"]
    assert _one(objects, "ScaledObject", "krypton-worker")["spec"]["minReplicaCount"] >= 1


@pytest.mark.parametrize("workload", ["api", "worker"])
def test_the_api_and_workers_connect_only_to_redis_and_dns(
        objects: list[dict[str, Any]], workload: str) -> None:
    policy = _one(objects, "NetworkPolicy", f"krypton-{workload}")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    to_redis, to_dns = policy["egress"]
    assert to_redis["to"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "krypton", "app.kubernetes.io/component": "redis"}}}]
    redis = _one(objects, "Service", "krypton-redis")["spec"]["ports"][0]["port"]
    assert to_redis["ports"] == [{"port": redis, "protocol": "TCP"}]
    assert {p["port"] for p in to_dns["ports"]} == {53}


def test_the_managed_redis_example_runs_no_redis_and_logs_keda_in() -> None:
    example = KUBERNETES / "examples" / "managed-redis"
    rendered = subprocess.run(["kubectl", "kustomize", str(example)], capture_output=True,
                              text=True, timeout=120, check=True).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert not [o for o in objects if o["metadata"]["name"] == "krypton-redis"
                and o["kind"] in ("StatefulSet", "Service", "NetworkPolicy", "Secret")]
    documented = _documented_secret_keys(
        "krypton-redis", (example / "kustomization.yaml").read_text().replace("#   ", ""))
    assert _secret_keys_used(objects, "krypton-redis") | {"url"} <= documented
    assert {"address", "password", "tls"} <= documented
    for workload in ("api", "worker"):
        egress = _one(objects, "NetworkPolicy", f"krypton-{workload}")["spec"]["egress"]
        assert egress[0]["to"][0]["ipBlock"]["except"] == ["169.254.0.0/16"]
    for document in objects:
        if not document["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_deployment_the_docs_write_renders_with_its_own_images_and_registry(
        tmp_path: Path) -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    start = text.index("cat > ../my-krypton/kustomization.yaml <<EOF\n")
    body = text[text.index("\n", start) + 1:text.index("\nEOF\n", start)]
    own = tmp_path / "my-krypton"
    own.mkdir()
    (own / "kustomization.yaml").write_text(
        body.replace('../$(basename "$PWD")', os.path.relpath(ROOT, own)) + "\n")
    (own / "registry.toml").write_text('[[models]]\nname = "chest"\narchitecture = "vgg16"\n'
                                       'labels = ["a", "b"]\n')
    rendered = subprocess.run(["kubectl", "kustomize", str(own)], capture_output=True,
                              text=True, timeout=120, check=False)
    assert rendered.returncode == 0, rendered.stderr
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    images = {c["image"] for _, c in _containers(objects)}
    assert {"registry.example.org/krypton-api:0.2.0",
            "registry.example.org/krypton-worker:0.2.0"} <= images
    [registry] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert 'name = "chest"' in registry["data"]["registry.toml"]
    mounted = {v["configMap"]["name"] for d in objects if d["kind"] == "Deployment"
               for v in d["spec"]["template"]["spec"]["volumes"] if "configMap" in v}
    assert mounted == {registry["metadata"]["name"]}
