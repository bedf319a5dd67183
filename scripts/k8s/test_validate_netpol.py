"""validate.py's NetworkPolicy check: the coordinator's pods admit only workers and clients (gRPC)
and metrics scrapers (metrics port)."""

import copy
import sys
import unittest
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def layout() -> list[dict]:
    coordinator = {
        "kind": "Deployment",
        "metadata": {"name": "c", "labels": {"app.kubernetes.io/component": "coordinator"}},
        "spec": {"template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "evalfleet", "app.kubernetes.io/component": "coordinator"}},
            "spec": {"containers": []},
        }},
    }
    worker = {
        "kind": "StatefulSet",
        "metadata": {"name": "w", "labels": {"app.kubernetes.io/component": "worker"}},
        "spec": {"template": {"metadata": {"labels": dict(validate.WORKER_LABELS)}, "spec": {"containers": []}}},
    }
    policy = yaml.safe_load((ROOT / "k8s/base/coordinator-networkpolicy.yaml").read_text(encoding="utf-8"))
    return [coordinator, worker, policy]


class NetworkPolicyChecks(unittest.TestCase):
    def failures(self, resources: list[dict]) -> int:
        rep = validate.Report()
        validate.check_network_policy(rep, "t", resources)
        return rep.failures

    def test_the_committed_policy_passes(self) -> None:
        self.assertEqual(self.failures(layout()), 0)

    def test_no_policy_fails(self) -> None:
        self.assertEqual(self.failures(layout()[:2]), 1)

    def test_a_rule_admitting_everyone_fails(self) -> None:
        res = layout()
        res[2]["spec"]["ingress"].append({"ports": [{"port": "grpc"}]})
        self.assertEqual(self.failures(res), 1)

    def test_other_pods_or_ports_fail(self) -> None:
        res = layout()
        res[2]["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app": "x"}}})
        self.assertEqual(self.failures(res), 1)
        res = layout()
        res[2]["spec"]["ingress"][1]["ports"].append({"port": "grpc"})
        self.assertEqual(self.failures(res), 1)
        res = layout()
        res[2]["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}})
        self.assertEqual(self.failures(res), 1)

    def test_workers_without_the_admitted_labels_fail(self) -> None:
        res = copy.deepcopy(layout())
        res[1]["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/component": "worker"}
        self.assertEqual(self.failures(res), 1)


if __name__ == "__main__":
    unittest.main()
