"""The shipped deployments trust their balancer and nothing else: docker-compose.scale.yml's
replicas believe X-Forwarded-For from the balancer's fixed address alone, and
deploy/kubernetes.yaml's from one network, never from everyone (`*`). How the replicas then
tell clients apart through real nginx: tests/deploy/test_client_identity.py."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from app.gate.identity import TrustedProxies
from app.settings import Settings
from tests.deploy.support import COMPOSE_SCALE

ROOT = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml", reason="PyYAML (a dev dependency) reads the files")


def compose() -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: None)
    return yaml.load(COMPOSE_SCALE.read_text(), Loader=Loader)


def compose_problems(document: dict[str, Any]) -> list[str]:
    """What lets the compose replicas believe anyone but the balancer."""
    services = document["services"]
    trusted = (services["serve"].get("environment") or {}).get("FORWARDED_ALLOW_IPS")
    if trusted is None:
        return ["the replicas set no FORWARDED_ALLOW_IPS: they would believe no balancer"]
    balancer = ((services["balancer"].get("networks") or {}).get("default") or {}).get(
        "ipv4_address"
    )
    if balancer is None:
        return ["the balancer has no fixed address"]
    ipam = document["networks"]["default"]["ipam"]["config"][0]
    subnet = ipaddress.ip_network(ipam["subnet"])
    dynamic = ipaddress.ip_network(ipam["ip_range"])
    problems = []
    proxies = TrustedProxies.parse(str(trusted).split(","))
    if proxies.everyone or set(map(str, proxies.addresses)) != {balancer} or proxies.networks:
        problems.append(f"FORWARDED_ALLOW_IPS is {trusted!r}, not the balancer ({balancer})")
    if ipaddress.ip_address(balancer) not in subnet:
        problems.append(f"the balancer's {balancer} is outside the subnet {subnet}")
    if ipaddress.ip_address(balancer) in dynamic:
        problems.append(f"a replica may be given {balancer}: it lies in ip_range {dynamic}")
    if proxies.trusts(ipam["gateway"]) or any(proxies.trusts(str(a)) for a in dynamic):
        problems.append("the gateway or a replica's address is trusted")
    return problems


def test_the_compose_replicas_trust_the_balancer_alone() -> None:
    assert compose_problems(compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "serve", "environment", "FORWARDED_ALLOW_IPS"), "*"),
        (("services", "serve", "environment", "FORWARDED_ALLOW_IPS"), "172.28.5.0/24"),
        (("services", "serve", "environment", "FORWARDED_ALLOW_IPS"), None),
        (("services", "balancer", "networks"), None),
        (("networks", "default", "ipam", "config", 0, "ip_range"), "172.28.5.0/25"),
    ],
)
def test_the_compose_check_catches_mistakes(path: tuple[Any, ...], value: Any) -> None:
    broken = copy.deepcopy(compose())
    *parents, last = path
    node = broken
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    assert compose_problems(broken)


def kubernetes_trusted() -> str:
    documents = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    deployment = next(doc for doc in documents if doc and doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    return env["FORWARDED_ALLOW_IPS"]


def test_kubernetes_trusts_a_private_network_not_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", kubernetes_trusted())
    proxies = Settings().trusted_proxies()  # read as the replica reads it
    assert not proxies.everyone and not proxies.addresses and proxies.networks
    assert all(network.is_private for network in proxies.networks)
