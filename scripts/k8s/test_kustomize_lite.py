"""Tests of kustomize_lite: the kustomize semantics k8s/ relies on, and refusals of the rest.

Run by scripts/k8s-validate.sh (`python -m unittest discover -s scripts/k8s`).
"""

from __future__ import annotations

import tempfile
import textwrap
import unittest
from pathlib import Path

import kustomize_lite as kl


def write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


JOB = """\
    apiVersion: batch/v1
    kind: Job
    metadata: {name: w, labels: {a: "1"}}
    spec:
      completions: 4
      template:
        spec:
          containers:
            - name: worker
              image: registry.example:5000/team/evalfleet-worker:old
              args: [--x, "1"]
              env: [{name: A, value: "1"}, {name: B, value: "2"}]
              volumeMounts: [{name: tmp, mountPath: /tmp}]
            - name: sidecar
              image: busybox
          volumes: [{name: tmp, emptyDir: {}}]
    """


class StrategicMergeTest(unittest.TestCase):
    def test_lists_merge_by_key_and_others_are_replaced(self) -> None:
        base = {
            "containers": [
                {"name": "a", "args": ["1", "2"], "env": [{"name": "X", "value": "1"}]},
                {"name": "b"},
            ]
        }
        patch = {"containers": [{"name": "a", "args": ["3"], "env": [{"name": "Y", "value": "2"}]}]}
        out = kl.strategic_merge(base, patch)
        self.assertEqual(out["containers"][0]["args"], ["3"])
        # New elements first, as kustomize writes them.
        self.assertEqual([e["name"] for e in out["containers"][0]["env"]], ["Y", "X"])
        self.assertEqual(out["containers"][1], {"name": "b"})
        # The inputs are left alone.
        self.assertEqual(base["containers"][0]["args"], ["1", "2"])

    def test_null_deletes_and_directives_are_refused(self) -> None:
        self.assertEqual(kl.strategic_merge({"a": 1, "b": 2}, {"a": None}), {"b": 2})
        with self.assertRaises(kl.KustomizeError):
            kl.strategic_merge({"a": [1]}, {"$patch": "replace"})

    def test_ports_key_depends_on_the_kind_of_list(self) -> None:
        svc = kl.strategic_merge(
            {"ports": [{"port": 1, "name": "a"}]}, {"ports": [{"port": 1, "name": "b"}]}, field=""
        )
        self.assertEqual(svc["ports"], [{"port": 1, "name": "b"}])
        c = kl.strategic_merge(
            {"ports": [{"containerPort": 1}]}, {"ports": [{"containerPort": 2}]}, field=""
        )
        self.assertEqual(len(c["ports"]), 2)


class RenderTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.root = Path(self.tmp.name)

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_overlay_over_base(self) -> None:
        write(
            self.root,
            {
                "base/kustomization.yaml": """\
                    resources: [job.yaml]
                    labels: [{pairs: {part-of: x}}]
                    """,
                "base/job.yaml": JOB,
                "ov/kustomization.yaml": """\
                    resources: [../base]
                    patches: [{path: p.yaml}]
                    configMapGenerator:
                      - name: cfg
                        files: [job.yaml, renamed=other.txt]
                        literals: [k=v]
                    generatorOptions: {disableNameSuffixHash: true}
                    labels: [{pairs: {inst: ov}, includeTemplates: true}]
                    images: [{name: registry.example:5000/team/evalfleet-worker, newTag: "2"}]
                    """,
                "ov/job.yaml": "a: 1\n",
                "ov/other.txt": "text\n",
                "ov/p.yaml": """\
                    apiVersion: batch/v1
                    kind: Job
                    metadata: {name: w}
                    spec:
                      completions: 2
                      template:
                        spec:
                          containers:
                            - name: worker
                              args: [--y]
                              env: [{name: B, value: "3"}]
                    """,
            },
        )
        out = kl.render(self.root / "ov")
        self.assertEqual([kl.resource_id(r) for r in out], ["ConfigMap/cfg", "Job/w"])
        cm, job = out
        self.assertEqual(cm["data"], {"job.yaml": "a: 1\n", "renamed": "text\n", "k": "v"})
        self.assertEqual(job["spec"]["completions"], 2)
        worker, sidecar = job["spec"]["template"]["spec"]["containers"]
        self.assertEqual(worker["args"], ["--y"])
        self.assertEqual(worker["env"], [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}])
        self.assertEqual(worker["volumeMounts"], [{"name": "tmp", "mountPath": "/tmp"}])
        self.assertEqual(worker["image"], "registry.example:5000/team/evalfleet-worker:2")
        self.assertEqual(sidecar["image"], "busybox")
        self.assertEqual(job["metadata"]["labels"], {"a": "1", "part-of": "x", "inst": "ov"})
        self.assertEqual(job["spec"]["template"]["metadata"]["labels"], {"inst": "ov"})
        self.assertEqual(cm["metadata"]["labels"], {"inst": "ov"})

    def test_refuses_what_it_does_not_implement(self) -> None:
        cases = {
            "namePrefix: x-\n": "unsupported kustomization keys",
            "configMapGenerator: [{name: c, literals: [a=b]}]\n": "disableNameSuffixHash",
            "labels: [{pairs: {a: b}, includeSelectors: true}]\n": "includeSelectors",
            "resources: [missing.yaml]\n": "neither a file nor a folder",
            "resources: [job.yaml, job.yaml]\n": "defined twice",
            "resources: [job.yaml]\npatches: [{path: p.yaml, target: {kind: Job}}]\n": "only",
        }
        for kustomization, message in cases.items():
            with self.subTest(kustomization=kustomization):
                write(self.root, {"kustomization.yaml": kustomization, "job.yaml": JOB})
                with self.assertRaises(kl.KustomizeError) as e:
                    kl.render(self.root)
                self.assertIn(message, str(e.exception))

    def test_patch_must_hit_a_resource(self) -> None:
        write(
            self.root,
            {
                "kustomization.yaml": "resources: [job.yaml]\npatches: [{path: p.yaml}]\n",
                "job.yaml": JOB,
                "p.yaml": "apiVersion: batch/v1\nkind: Job\nmetadata: {name: typo}\n",
            },
        )
        with self.assertRaises(kl.KustomizeError) as e:
            kl.render(self.root)
        self.assertIn("Job/typo", str(e.exception))

    def test_split_image(self) -> None:
        self.assertEqual(kl.split_image("a/b:1@sha256:f"), ("a/b", "1", "sha256:f"))
        self.assertEqual(kl.split_image("host:5000/b"), ("host:5000/b", None, None))


if __name__ == "__main__":
    unittest.main()
