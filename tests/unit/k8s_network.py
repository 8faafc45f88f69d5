"""Enough of Kubernetes NetworkPolicy semantics to ask "may this pod reach that port?".

Policies are additive: a pod selected by no policy of a direction is open in it; once
selected, a connection is allowed only if some selecting policy's rule matches the
peer and the port. Ingress is checked at the destination, egress at the source, and a
connection needs both. Supported: podSelector / namespaceSelector (matchLabels,
matchExpressions with In / NotIn / Exists / DoesNotExist), numeric ports; ipBlock
peers are treated as "anywhere outside the cluster". Used by the manifest tests only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Pod:
    labels: Labels
    namespace: str = "wallet"
    namespace_labels: Labels = field(default_factory=dict)

    @property
    def all_namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def selects(selector: Mapping[str, Any] | None, labels: Labels) -> bool:
    """Whether a label selector matches ``labels`` ({} matches everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], other: Pod | None, policy_namespace: str) -> bool:
    if other is None:  # a destination outside the cluster (a managed database, say)
        return "ipBlock" in peer
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.all_namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.labels)


def _rule_matches(rule: Mapping[str, Any], key: str, other: Pod | None, port: int, ns: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(key)
    if not peers:  # no from/to: every peer
        return True
    return any(_peer_matches(peer, other, ns) for peer in peers)


def _direction_allows(
    policies: Sequence[Mapping[str, Any]],
    direction: str,
    subject: Pod,
    other: Pod | None,
    port: int,
) -> bool:
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "wallet") == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"].get("podSelector"), subject.labels)
    ]
    if not selecting:
        return True
    return any(
        _rule_matches(rule, peers, other, port, subject.namespace)
        for policy in selecting
        for rule in policy["spec"].get(key) or []
    )


def allowed(policies: Sequence[Mapping[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether ``source`` may open a connection to ``target``'s ``port``."""
    return _direction_allows(policies, "Egress", source, target, port) and _direction_allows(
        policies, "Ingress", target, source, port
    )


def egress_outside(policies: Sequence[Mapping[str, Any]], source: Pod, port: int) -> bool:
    """Whether ``source`` may reach ``port`` on a host outside the cluster."""
    return _direction_allows(policies, "Egress", source, None, port)
