"""deploy/kubernetes.yaml: valid against Kubernetes' own schema (strict: an unknown or
misplaced field is an error), and in step with the image and the service it runs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
# The oldest Kubernetes the manifest is meant for, and the newest the validator knows.
OLDEST = "1.30.0"

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (a dev dependency) has the schemas"
)
yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) reads the manifest")


def documents() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [str(error)]
    return []


@pytest.mark.parametrize("version", [OLDEST, kubernetes_validate.latest_version()])
def test_manifest_follows_the_kubernetes_schema(version):
    docs = documents()
    assert set(docs) == {"Deployment", "Service"}
    for kind, doc in docs.items():
        assert not errors(doc, version), (kind, errors(doc, version))


def test_the_schema_check_catches_mistakes():
    deployment = copy.deepcopy(documents()["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo: unknown field
    assert errors(deployment, OLDEST)
    deployment = copy.deepcopy(documents()["Deployment"])
    deployment["spec"]["replicas"] = "two"  # wrong type
    assert errors(deployment, OLDEST)


def pod(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return docs["Deployment"]["spec"]["template"]["spec"]


def test_runs_as_the_images_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid, gid = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)[-1]
    context = pod(documents())["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid)


def test_probes_ask_the_health_route_on_the_service_port():
    from app.http.routes import router
    from app.settings import Settings

    container = pod(documents())["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": Settings.model_fields["port"].default}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["port"] == "http", probe
        assert check["path"] in {route.path for route in router.routes}, probe
    service = documents()["Service"]
    assert service["spec"]["selector"] == docs_labels()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def docs_labels() -> dict[str, str]:
    return documents()["Deployment"]["spec"]["selector"]["matchLabels"]


def test_checkpoint_comes_from_a_read_only_volume():
    spec = pod(documents())
    container = spec["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    mount = mounts["checkpoints"]
    assert mount["readOnly"] is True
    assert Path(env["CHECKPOINT"]).parent == Path(mount["mountPath"])
    assert "checkpoints" in {volume["name"] for volume in spec["volumes"]}


def test_pods_get_time_to_drain():
    spec = pod(documents())
    container = spec["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(env["SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > pause + grace


def test_the_api_key_secret_is_required():
    """Without its Secret the pod must not start (and serve everyone without a key)."""
    (container,) = pod(documents())["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    secret = env["API_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == "charrnn" and secret.get("optional", False) is False
