"""deploy/kubernetes: valid against the Kubernetes schemas, complete, consistent with the drain.

Offline: kubernetes-validate bundles the schemas. Also checks that docs/architecture.svg is the
rendering of docs/architecture.dot. Both tools are required: a missing one fails, never skips.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
DIAGRAM = ROOT / "docs" / "architecture.dot"
RENDERED = ROOT / "docs" / "architecture.svg"
# The oldest Kubernetes the manifests claim (autoscaling/v2, policy/v1 and node.k8s.io/v1 are
# all GA there) and the newest whose schemas the pinned kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CLUSTER_SCOPED = {"Namespace", "RuntimeClass"}

Resource = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in {".yaml", ".yml"})


def _resources() -> list[tuple[Path, Resource]]:
    """Every YAML document under deploy/kubernetes but the kustomization, with its file."""
    found = []
    for path in _manifest_files():
        if path == KUSTOMIZATION:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path, document))
    return found


def _kustomization() -> Resource:
    loaded: Resource = yaml.safe_load(KUSTOMIZATION.read_text())
    return loaded


def _one(kind: str) -> Resource:
    matches = [document for _, document in _resources() if document["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def _pod_spec() -> Resource:
    spec: Resource = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _node_container() -> Resource:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    container: Resource = containers[0]
    return container


def _option(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def _env(container: Resource) -> dict[str, Resource]:
    return {entry["name"]: entry for entry in container["env"]}


def _secrets() -> dict[str, Resource]:
    return {d["metadata"]["name"]: d for _, d in _resources() if d["kind"] == "Secret"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    """Every resource validates against that Kubernetes version's schemas, unknown fields refused."""
    resources = _resources()
    assert len(resources) >= 8
    for path, document in resources:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            where = ".".join(str(part) for part in getattr(e, "path", []))
            pytest.fail(f"{path.name} {document.get('kind')}: {where}: {e.message}")


def test_a_misspelt_field_fails_validation() -> None:
    """The validation is strict: a field the schema does not know is an error, not a warning."""
    pdb = _one("PodDisruptionBudget")
    wrong = {**pdb, "spec": {**pdb["spec"], "maxUnavailabel": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="maxUnavailabel"):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[0], strict=True)


def test_every_yaml_file_is_a_resource_or_the_kustomization() -> None:
    """Each YAML file holds only Kubernetes resources (apiVersion, kind, name), or is the kustomization."""
    for path, document in _resources():
        assert {"apiVersion", "kind", "metadata"} <= document.keys(), path.name
        assert document["metadata"].get("name"), path.name
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"


def test_the_kustomization_lists_exactly_the_resource_files() -> None:
    """kubectl apply -k applies every file: each one is listed, and each listed one exists."""
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {str(p.relative_to(MANIFESTS)) for p in _manifest_files() if p != KUSTOMIZATION}
    assert set(listed) == on_disk
    for name in listed:
        assert (MANIFESTS / name).is_file(), name


def test_every_namespaced_resource_is_in_the_shipped_namespace() -> None:
    """The kustomization's namespace is the shipped Namespace, and every resource names it."""
    namespace = _one("Namespace")["metadata"]["name"]
    assert _kustomization()["namespace"] == namespace
    for path, document in _resources():
        if document["kind"] not in CLUSTER_SCOPED:
            assert document["metadata"].get("namespace") == namespace, path.name


def test_probes_point_at_the_health_endpoints() -> None:
    """Readiness asks /readyz (false while draining), liveness /healthz, on the serving port."""
    container = _node_container()
    port = _option(container["command"], "--port")
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert str(named.get(get["port"], get["port"])) == port


def test_the_grace_period_covers_the_prestop_sleep_and_the_drain() -> None:
    """terminationGracePeriodSeconds exceeds the preStop sleep plus serve's --grace."""
    container = _node_container()
    assert container["command"][:2] == ["athena-sandbox", "serve"]
    grace = float(_option(container["command"], "--grace"))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert _pod_spec()["terminationGracePeriodSeconds"] > grace + float(pre_stop[1])


def test_the_hpa_scales_the_node_deployment_on_queue_depth() -> None:
    """The autoscaler targets the nodes' Deployment, keyed on the per-pod athena_queue_depth."""
    hpa = _one("HorizontalPodAutoscaler")
    deployment = _one("Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "athena_queue_depth"
    assert metric["pods"]["target"]["type"] == "AverageValue"


def test_secret_references_name_shipped_secrets_and_keys() -> None:
    """Every Secret the pods read (env and volumes) is shipped, with the key they read."""
    secrets = _secrets()
    spec = _pod_spec()
    read = []
    for container in spec["initContainers"] + spec["containers"]:
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                read.append((ref["name"], ref["key"]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in _node_container()["volumeMounts"]:
        source = volumes[mount["name"]].get("secret")
        if source:
            read.append((source["secretName"], mount["subPath"]))
    assert {name for name, _ in read} == set(secrets)
    for name, key in read:
        assert key in secrets[name]["stringData"], (name, key)


def test_the_tokens_file_is_the_mounted_secret_key() -> None:
    """serve's --tokens path is where the tokens Secret's key is mounted, as a file (subPath)."""
    container = _node_container()
    tokens = _option(container["command"], "--tokens")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert tokens in mounts
    assert mounts[tokens]["subPath"] == Path(tokens).name
    assert mounts[tokens]["readOnly"] is True


def test_the_node_uses_its_host_engine_and_advertises_its_pod_ip() -> None:
    """Both containers mount the host's Docker socket; the node id is the pod name."""
    spec = _pod_spec()
    (socket,) = [v for v in spec["volumes"] if "hostPath" in v]
    assert socket["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    for container in spec["initContainers"] + spec["containers"]:
        paths = {m["mountPath"] for m in container["volumeMounts"] if m["name"] == socket["name"]}
        assert paths == {"/var/run/docker.sock"}, container["name"]
    container = _node_container()
    env = _env(container)
    names = [entry["name"] for entry in container["env"]]
    assert env["ATHENA_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # $(POD_IP) expands only when POD_IP is defined earlier in the list.
    assert names.index("POD_IP") < names.index("ATHENA_ADVERTISE_URL")
    port = _option(container["command"], "--port")
    assert env["ATHENA_ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{port}"


def test_service_and_pdb_select_the_node_pods() -> None:
    """The Service and the budget select the Deployment's pods; MCP stays on one node."""
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    pdb = _one("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    ports = {p["name"] for p in _node_container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def _svg_texts(svg: str) -> Counter[str]:
    """The texts of an SVG (labels of nodes and edges): stable across Graphviz versions."""
    texts = (
        "".join(e.itertext()).strip() for e in ET.fromstring(svg).iter() if e.tag.endswith("}text")
    )
    return Counter(text for text in texts if text)


def test_the_committed_architecture_diagram_is_current() -> None:
    """docs/architecture.svg shows the labels docs/architecture.dot renders to (make diagram)."""
    dot = shutil.which("dot")
    if dot is None:
        pytest.fail("Graphviz's dot is needed: apt-get install graphviz (scripts/setup.sh does)")
    rendered = subprocess.run(
        [dot, "-Tsvg", str(DIAGRAM)], capture_output=True, text=True, check=True
    ).stdout
    expected = _svg_texts(rendered)
    assert "PostgreSQL (one, shared)" in expected
    assert _svg_texts(RENDERED.read_text()) == expected, "run `make diagram` and commit the SVG"
