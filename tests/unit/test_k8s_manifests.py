"""Offline checks of deploy/k8s (in place of kubeconform, which needs a download and vendored
CRD schemas): each manifest is well formed for its kind, the pieces refer to each other
correctly, the settings exist, and no secret is written in them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.console.settings import ConsoleSettings
from services.dispatcher.settings import DispatcherSettings
from services.scheduler.settings import SchedulerSettings
from services.tracker.settings import TrackerSettings
from shared import topics

K8S = Path(__file__).parents[2] / "deploy" / "k8s"
SETTINGS = {"scheduler": SchedulerSettings, "dispatcher": DispatcherSettings,
            "tracker": TrackerSettings, "console": ConsoleSettings}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|USERNAME|DATABASE_URL|_KEY$")


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((K8S / "kustomization.yaml").read_text()))


def manifests() -> list[dict[str, Any]]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def by_name(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(kind)}


def test_the_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_manifest_has_a_kind_and_a_valid_name() -> None:
    for doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        name = doc["metadata"]["name"]
        assert _NAME.match(name) and len(name) <= 63, name
    kinds = {d["kind"] for d in manifests()}
    assert kinds == {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "Kafka", "KafkaNodePool", "KafkaTopic", "Cluster", "ScaledObject"}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_is_a_probed_resourced_deployment_with_a_service_and_a_budget(
    service: str,
) -> None:
    deployment = by_name("Deployment")[service]
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", f"services.{service}"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ports, probe
    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory")
    env = {e["name"]: e for e in container["env"]}
    assert env["SENDOUT_HTTP_PORT"]["value"] == str(ports["http"])
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["http"])

    # Every variable is a setting of the service (a typo would be ignored silently).
    config = by_name("ConfigMap")["sendout-config"]["data"]
    fields = SETTINGS[service].model_fields
    for name in [*env, *config]:
        assert name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") or (
            name.startswith("SENDOUT_")
            and name.removeprefix("SENDOUT_").lower() in fields), name
    # Secrets come from Secrets.
    for name, var in env.items():
        if _SECRET_LIKE.search(name):
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], name

    service_doc = by_name("Service")[service]
    assert service_doc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service_doc["spec"]["ports"]} <= set(ports)

    budget = by_name("PodDisruptionBudget")[service]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert ("minAvailable" in budget) != ("maxUnavailable" in budget)
    if "minAvailable" in budget:
        assert budget["minAvailable"] < spec["replicas"], "a budget that blocks every drain"


def test_no_secret_is_written_in_the_manifests() -> None:
    assert of_kind("Secret") == []
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "postgresql://" not in text and "password:" not in text.lower()


def test_kafka_topics_are_sendouts_sized_for_the_dispatchers() -> None:
    (kafka,) = of_kind("Kafka")
    cluster = kafka["metadata"]["name"]
    (pool,) = of_kind("KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    kafka_topics = of_kind("KafkaTopic")
    names = {t["spec"]["topicName"]: t for t in kafka_topics}
    assert set(names) == {n for t in topics.ALL for n in (t, topics.dlq(t))}
    for topic in kafka_topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert 1 <= topic["spec"]["replicas"] <= pool["spec"]["replicas"]
        assert all(isinstance(v, str) for v in topic["spec"].get("config", {}).values())
    assert names[topics.IDENTITY]["spec"]["config"]["cleanup.policy"] == "compact"
    # The partitions Sendout creates itself (DLQs if missing) match.
    config = by_name("ConfigMap")["sendout-config"]["data"]
    assert {t["spec"]["partitions"] for t in kafka_topics} == {
        int(config["SENDOUT_KAFKA_PARTITIONS"])}
    bootstrap = config["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.startswith(f"{cluster}-kafka-bootstrap:")


def test_dispatchers_scale_on_their_groups_lag_up_to_the_partitions() -> None:
    (scaled,) = of_kind("ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in by_name("Deployment")
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "sendout-dispatcher"
    assert trigger["metadata"]["topic"] == topics.SEND_REQUESTED
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in of_kind("KafkaTopic")}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions[
        topics.SEND_REQUESTED]
    assert by_name("PodDisruptionBudget")["dispatcher"]["spec"]["minAvailable"] < spec[
        "minReplicaCount"]


def test_postgres_is_a_cluster_whose_secret_the_services_read() -> None:
    (cluster,) = of_kind("Cluster")
    assert cluster["spec"]["instances"] >= 2
    name = cluster["metadata"]["name"]
    for deployment in of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for var in container["env"]:
                if var["name"] == "DATABASE_URL":
                    assert var["valueFrom"]["secretKeyRef"] == {"name": f"{name}-app",
                                                                "key": "uri"}
