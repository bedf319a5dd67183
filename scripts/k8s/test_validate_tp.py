"""validate.py's tensor-parallel checks: a `--tp-group K` container must ask for K GPUs and match the
job's tensor_parallel_size, and the flags the launcher gives each rank are read from its source."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def job(k: str, gpus: int) -> dict:
    container = {
        "name": "worker",
        "command": ["/usr/local/bin/evalfleet-worker"],
        "args": ["--device", "cuda:0", "--tp-group", k],
        "resources": {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}},
    }
    return {"kind": "Job", "spec": {"template": {"spec": {"containers": [container]}}}}


class TpGroupChecks(unittest.TestCase):
    def failures(self, res: dict, job_tp: int | None) -> int:
        rep = validate.Report()
        validate.check_tp_groups(rep, "t", res, job_tp)
        return rep.failures

    def test_matching_sizes_pass(self) -> None:
        self.assertEqual(self.failures(job("2", 2), 2), 0)

    def test_gpu_count_or_job_size_that_differs_fails(self) -> None:
        self.assertEqual(self.failures(job("2", 4), 2), 2)  # requests and limits
        self.assertEqual(self.failures(job("4", 4), 2), 1)

    def test_rank_flags_come_from_the_launcher_source(self) -> None:
        flags = validate.tp_group_flags(ROOT / "worker/src/tp/launch/pod.rs")
        self.assertEqual(flags, {"--device", "--tp-size", "--tp-rank", "--tp-init-file"})

    def test_bracketed_clap_attributes_are_read(self) -> None:
        flags, _ = validate.clap_flags(ROOT / "worker/src/main.rs")
        self.assertIn("--tp-group", flags)
        self.assertIn("--tp-size", flags)


if __name__ == "__main__":
    unittest.main()
