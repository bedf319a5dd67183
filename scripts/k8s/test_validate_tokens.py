"""validate.py's token checks: only the two token Secrets may be mounted, and the control token
(job submission and cancelling) never in a worker pod."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate  # noqa: E402


def pod(program: str, secrets: list[str]) -> dict:
    container = {"name": "c", "command": [f"/usr/local/bin/{program}"], "args": []}
    volumes = [{"name": f"v{i}", "secret": {"secretName": s}} for i, s in enumerate(secrets)]
    return {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [container], "volumes": volumes}}}}


class TokenChecks(unittest.TestCase):
    def failures(self, res: dict) -> int:
        rep = validate.Report()
        validate.check_no_token(rep, "t", res)
        return rep.failures

    def test_serve_may_mount_both_tokens(self) -> None:
        self.assertEqual(self.failures(pod("evalfleet", [validate.WORKER_SECRET, validate.CONTROL_SECRET])), 0)

    def test_a_worker_pod_gets_only_the_worker_token(self) -> None:
        self.assertEqual(self.failures(pod("evalfleet-worker", [validate.WORKER_SECRET])), 0)
        self.assertEqual(self.failures(pod("evalfleet-worker", [validate.CONTROL_SECRET])), 1)

    def test_other_secrets_are_refused(self) -> None:
        self.assertEqual(self.failures(pod("evalfleet", ["evalfleet-token"])), 1)


if __name__ == "__main__":
    unittest.main()
