"""Renders every k8s/ layout and checks it; exits non-zero on any problem.

For each kustomization folder (k8s/ and k8s/overlays/*) and each plain manifest in k8s/extras/:
1. schema: every resource validates (strict: unknown fields are errors) against the Kubernetes
   OpenAPI schemas of each pinned version, with the PyPI package kubernetes-validate;
2. policy: what k8s/README.md promises: no Secret and no token value in any manifest (the token comes
   from the evalfleet-worker-token Secret, and serve's control token from evalfleet-control-token,
   mounted as files; the control token never in a worker pod); non-root pods with a read-only root filesystem,
   an emptyDir on /tmp, all capabilities dropped, no service-account token; CPU/memory requests and
   limits; a terminationGracePeriodSeconds; gRPC readiness/liveness probes on the coordinator's port
   (`serve`) or on its --health-listen port (`run`, whose grpc port closes between fleets);
   one or more `nvidia.com/gpu` on every worker; volumes that name ConfigMaps/PVCs of the same layout;
   workers dialing the Service the coordinator is behind; a NetworkPolicy on the coordinator pods that
   admits only evalfleet worker pods and client pods (evalfleet.io/client) to its gRPC port and
   metrics scrapers (evalfleet.io/metrics-scraper) to its metrics port, and worker pods that carry the
   labels it admits;
3. command lines: every `--flag` in a container's args is one that the binary's clap definition has
   (coordinator/src/cli.rs, serve/cli.rs and rpc/limit_args.rs, worker/src/main.rs), and for a tensor-parallel group
   (`evalfleet-worker --tp-group K`) the flags its launcher (worker/src/tp/launch/pod.rs) adds to each
   rank's command line, so renaming a flag in the code fails here instead of in a user's cluster;
   a group's K must equal its container's `nvidia.com/gpu` and the job's `tensor_parallel_size`.
   Flags of commands that are documented but not written yet are listed in PENDING and reported,
   not failed.

Usage: validate.py REPO_ROOT KUBE_VERSION [KUBE_VERSION...]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
from kubernetes_validate.utils import VersionNotSupportedError
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kustomize_lite  # noqa: E402

# The worker token (every pod that talks to workers or is one) and serve's control token (only the
# serve Deployment: a worker host must not be able to submit or cancel jobs).
WORKER_SECRET = "evalfleet-worker-token"
CONTROL_SECRET = "evalfleet-control-token"
COORDINATOR_PORT = 50051
# The one-shot coordinator's --health-listen port (its probes' target).
HEALTH_PORT = 8081
# Names of env vars whose literal value would be a credential.
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.I)

# Flags k8s/ uses for commands that are documented but not implemented yet, as
# {program: {flag: why}}. Reported on every run until the code has them (none at present).
PENDING: dict[str, dict[str, str]] = {
    "evalfleet": {},
    "evalfleet-worker": {},
}
# The worker flag that makes a container one tensor-parallel group's launcher.
TP_GROUP_FLAG = "--tp-group"


class Report:
    """Collects failures and notes, printed as they come."""

    def __init__(self) -> None:
        self.failures = 0
        self.pending: set[str] = set()

    def fail(self, where: str, msg: str) -> None:
        self.failures += 1
        print(f"  FAIL {where}: {msg}")

    def note_pending(self, msg: str) -> None:
        self.pending.add(msg)


def clap_flags(source: Path) -> tuple[set[str], set[str]]:
    """(long flags, subcommands) a clap-derive source file defines.

    Long flags: every field of a struct that carries `#[arg(long...)]`, kebab-cased (clap's default,
    which the project does not override). Subcommands: the variants of `enum ...Command`.
    """
    text = source.read_text(encoding="utf-8")
    flags = set()
    for m in re.finditer(r"#\[arg\(([^\n]*)\)\]\s*(?:///[^\n]*\n\s*|#\[[^\n]*\n\s*)*(?:pub\s+)?(\w+)\s*:", text):
        if re.search(r"\blong\b", m.group(1)):
            flags.add("--" + m.group(2).replace("_", "-"))
    commands = set()
    for body in re.findall(r"pub enum \w*Command \{(.*?)\n\}", text, re.S):
        for variant in re.findall(r"^\s{4}(\w+)\s*[({,]", body, re.M):
            commands.add(re.sub(r"(?<!^)(?=[A-Z])", "-", variant).lower())
    return flags, commands


def merge_clis(*parts: tuple[set[str], set[str]]) -> tuple[set[str], set[str]]:
    """The (flags, subcommands) of one binary whose clap definitions span several files."""
    return set().union(*(p[0] for p in parts)), set().union(*(p[1] for p in parts))


def tp_group_flags(source: Path) -> set[str]:
    """The worker flags the group launcher adds to each rank's command line: the `("--flag", value)`
    pairs of its `rank_args` (worker/src/tp/launch/pod.rs)."""
    text = source.read_text(encoding="utf-8")
    body = re.search(r"pub fn rank_args\(.*?\n\}", text, re.S)
    return set(re.findall(r'\("(--[a-z][a-z-]+)",', body.group(0) if body else ""))


def pod_specs(res: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if res.get("kind") == "Pod":
        yield res["spec"]
    template = (res.get("spec") or {}).get("template")
    if isinstance(template, dict) and "spec" in template:
        yield template["spec"]


def component(res: dict[str, Any]) -> str | None:
    return (res.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component")


def check_schema(rep: Report, where: str, res: dict[str, Any], versions: list[str]) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(res, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            rep.fail(where, f"Kubernetes {version} schema: {path}: {e.message}")
        except (
            kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.InvalidSchemaError,
            VersionNotSupportedError,
        ) as e:
            rep.fail(where, f"Kubernetes {version}: {e}")


def check_no_token(rep: Report, where: str, res: dict[str, Any]) -> None:
    if res.get("kind") == "Secret":
        rep.fail(where, "a Secret in the manifests: the token Secret is created by hand")
    for pod in pod_specs(res):
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for env in c.get("env", []):
                if "value" in env and SECRETISH.search(env["name"]):
                    rep.fail(where, f"env {env['name']} has a literal value: use a file from the Secret")
            args = c.get("args", []) + c.get("command", [])
            for i, a in enumerate(args):
                if a in ("--token",) or a.startswith("--token="):
                    rep.fail(where, f"container {c['name']}: a token on the command line")
        programs = {
            Path(str((c.get("command") or [""])[0])).name
            for c in pod.get("containers", []) + pod.get("initContainers", [])
        }
        for vol in pod.get("volumes", []):
            secret = vol.get("secret")
            name = secret and secret.get("secretName")
            if secret and name not in (WORKER_SECRET, CONTROL_SECRET):
                rep.fail(where, f"volume {vol['name']}: unexpected Secret {name}")
            if name == CONTROL_SECRET and "evalfleet-worker" in programs:
                rep.fail(where, f"volume {vol['name']}: the control token in a worker pod")


def check_pod(rep: Report, where: str, res: dict[str, Any]) -> None:
    for pod in pod_specs(res):
        sc = pod.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            rep.fail(where, "pod securityContext.runAsNonRoot is not true")
        if pod.get("automountServiceAccountToken") is not False:
            rep.fail(where, "automountServiceAccountToken is not false (evalfleet needs no API access)")
        if res.get("kind") != "Pod" and "terminationGracePeriodSeconds" not in pod:
            rep.fail(where, "no terminationGracePeriodSeconds (must cover the graceful stop)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("containers", []):
            cw = f"{where} container {c['name']}"
            csc = c.get("securityContext") or {}
            if csc.get("readOnlyRootFilesystem") is not True:
                rep.fail(cw, "readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                rep.fail(cw, "allowPrivilegeEscalation is not false")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                rep.fail(cw, "capabilities.drop does not contain ALL")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (resources.get(kind) or {}):
                        rep.fail(cw, f"no resources.{kind}.{r}")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            tmp = mounts.get("/tmp")
            if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
                rep.fail(cw, "no emptyDir mounted on /tmp (the root filesystem is read-only)")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    rep.fail(cw, f"mounts volume {m['name']}, which the pod does not define")
                elif "secret" in volumes[m["name"]] and m.get("readOnly") is not True:
                    rep.fail(cw, f"the Secret volume {m['name']} is not mounted readOnly")


def check_roles(rep: Report, where: str, res: dict[str, Any]) -> None:
    role = component(res)
    for pod in pod_specs(res):
        for c in pod.get("containers", []):
            cw = f"{where} container {c['name']}"
            limits = (c.get("resources") or {}).get("limits") or {}
            requests = (c.get("resources") or {}).get("requests") or {}
            if role == "worker":
                gpus = limits.get("nvidia.com/gpu")
                if not isinstance(gpus, int) or gpus < 1:
                    rep.fail(cw, "a worker without limits.nvidia.com/gpu >= 1")
                elif requests.get("nvidia.com/gpu", gpus) != gpus:
                    rep.fail(cw, "nvidia.com/gpu request differs from its limit")
                args = c.get("args", [])
                url = args[args.index("--coordinator") + 1] if "--coordinator" in args else None
                if url != f"http://evalfleet-coordinator:{COORDINATOR_PORT}":
                    rep.fail(cw, f"--coordinator is {url!r}, not the evalfleet-coordinator Service")
            if role == "coordinator":
                ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                if ports.get("grpc") != COORDINATOR_PORT:
                    rep.fail(cw, f"no port named grpc = {COORDINATOR_PORT} (the Service targets it)")
                args = c.get("args", [])
                # `evalfleet run` closes its grpc port between fleets: its probes must use
                # --health-listen, which answers for the whole run; `serve` keeps its port open.
                probe_port = COORDINATOR_PORT
                if "run" in args:
                    health = args[args.index("--health-listen") + 1] if "--health-listen" in args else ""
                    if not health.endswith(f":{HEALTH_PORT}"):
                        rep.fail(cw, f"`evalfleet run` without --health-listen on port {HEALTH_PORT}")
                    elif ports.get("health") != HEALTH_PORT:
                        rep.fail(cw, f"no port named health = {HEALTH_PORT}")
                    probe_port = HEALTH_PORT
                for probe in ("readinessProbe", "livenessProbe"):
                    grpc = (c.get(probe) or {}).get("grpc") or {}
                    if grpc.get("port") != probe_port:
                        rep.fail(cw, f"{probe} is not a gRPC probe on port {probe_port}")
                listen = args[args.index("--listen") + 1] if "--listen" in args else ""
                if not listen.endswith(f":{COORDINATOR_PORT}"):
                    rep.fail(cw, f"--listen {listen!r} is not on port {COORDINATOR_PORT}")


# The peers the coordinator's NetworkPolicy may admit, as (pod labels, the only port they may reach).
WORKER_LABELS = {"app.kubernetes.io/name": "evalfleet", "app.kubernetes.io/component": "worker"}
ADMITTED = [
    (WORKER_LABELS, "grpc"),
    ({"evalfleet.io/client": "true"}, "grpc"),
    ({"evalfleet.io/metrics-scraper": "true"}, "metrics"),
]


def template_labels(res: dict[str, Any]) -> dict[str, str]:
    if res.get("kind") == "Pod":
        return res.get("metadata", {}).get("labels") or {}
    template = (res.get("spec") or {}).get("template") or {}
    return (template.get("metadata") or {}).get("labels") or {}


def check_network_policy(rep: Report, where: str, resources: list[dict[str, Any]]) -> None:
    """A layout with a coordinator has a NetworkPolicy selecting its pods that admits only the peers
    of ADMITTED, each to its port; its worker pods carry WORKER_LABELS."""
    coordinators = [r for r in resources if component(r) == "coordinator" and list(pod_specs(r))]
    if not coordinators:
        return
    for r in resources:
        if component(r) == "worker" and list(pod_specs(r)):
            labels = template_labels(r)
            if any(labels.get(k) != v for k, v in WORKER_LABELS.items()):
                rep.fail(f"{where} {kustomize_lite.resource_id(r)}", f"worker pods lack the labels {WORKER_LABELS}")
    policies = [r for r in resources if r.get("kind") == "NetworkPolicy"]
    for coord in coordinators:
        labels = template_labels(coord)
        covering = [
            p for p in policies
            if all(labels.get(k) == v for k, v in ((p.get("spec") or {}).get("podSelector") or {}).get("matchLabels", {}).items())
        ]
        if not covering:
            rep.fail(where, f"no NetworkPolicy selects the coordinator pods of {kustomize_lite.resource_id(coord)}")
    for p in policies:
        pw = f"{where} {kustomize_lite.resource_id(p)}"
        spec = p.get("spec") or {}
        if "Ingress" not in (spec.get("policyTypes") or []):
            rep.fail(pw, "policyTypes lacks Ingress")
        for rule in spec.get("ingress") or []:
            peers, ports = rule.get("from") or [], rule.get("ports") or []
            if not peers or not ports:
                rep.fail(pw, "an ingress rule without `from` or `ports` admits everyone or every port")
                continue
            names = {str(port.get("port")) for port in ports}
            for peer in peers:
                if "ipBlock" in peer:
                    rep.fail(pw, "an ipBlock peer (admits addresses, not evalfleet pods)")
                    continue
                selected = (peer.get("podSelector") or {}).get("matchLabels")
                allowed = [port for want, port in ADMITTED if selected == want]
                if not allowed:
                    rep.fail(pw, f"admits pods {selected!r}: only {[w for w, _ in ADMITTED]}")
                elif names != {allowed[0]}:
                    rep.fail(pw, f"admits {selected!r} to ports {sorted(names)}, not only {allowed[0]}")
                if "namespaceSelector" in peer and selected != ADMITTED[2][0]:
                    rep.fail(pw, f"admits {selected!r} from other namespaces")


def check_references(rep: Report, where: str, res: dict[str, Any], names: set[str]) -> None:
    for pod in pod_specs(res):
        for vol in pod.get("volumes", []):
            if "configMap" in vol and f"ConfigMap/{vol['configMap']['name']}" not in names:
                rep.fail(where, f"volume {vol['name']}: ConfigMap {vol['configMap']['name']} is not rendered")
            pvc = vol.get("persistentVolumeClaim")
            if pvc and f"PersistentVolumeClaim/{pvc['claimName']}" not in names:
                rep.fail(where, f"volume {vol['name']}: PVC {pvc['claimName']} is not rendered")


def check_command_lines(rep: Report, where: str, res: dict[str, Any], clis: dict[str, Any]) -> None:
    for pod in pod_specs(res):
        for c in pod.get("containers", []):
            cw = f"{where} container {c['name']}"
            program = Path((c.get("command") or [""])[0]).name
            args = list(c.get("args", []))
            extra = set()
            if program == "evalfleet-worker" and TP_GROUP_FLAG in args:
                extra = clis["tp-group"]
                if not extra:
                    rep.fail(cw, "no rank flags found in worker/src/tp/launch/pod.rs (rank_args)")
            if program not in clis:
                rep.fail(cw, f"unknown program {program!r} in command")
                continue
            flags, commands = clis[program]
            words = [a for a in args if a.startswith("--")] + list(extra)
            if program == "evalfleet" and args:
                words.insert(0, args[0])
            for w in words:
                known = w in flags if w.startswith("--") else w in commands
                if known:
                    continue
                if w in PENDING.get(program, {}):
                    rep.note_pending(f"{program} {w} ({PENDING[program][w]})")
                else:
                    rep.fail(cw, f"{program} has no {'flag' if w.startswith('--') else 'command'} {w}")


def job_tensor_parallel(resources: list[dict[str, Any]]) -> int | None:
    """`tensor_parallel_size` of the layout's job YAML (ConfigMap evalfleet-job), if it sets one."""
    for res in resources:
        if res.get("kind") == "ConfigMap" and res["metadata"]["name"] == "evalfleet-job":
            job = yaml.safe_load((res.get("data") or {}).get("job.yaml", "")) or {}
            tp = job.get("tensor_parallel_size")
            return int(tp) if tp is not None else None
    return None


def check_tp_groups(rep: Report, where: str, res: dict[str, Any], job_tp: int | None) -> None:
    """A `--tp-group K` container asks for exactly K GPUs, and the job splits its model K ways."""
    for pod in pod_specs(res):
        for c in pod.get("containers", []):
            args = [str(a) for a in c.get("args", [])]
            if TP_GROUP_FLAG not in args:
                continue
            cw = f"{where} container {c['name']}"
            i = args.index(TP_GROUP_FLAG)
            k = args[i + 1] if i + 1 < len(args) else ""
            if not k.isdigit():
                rep.fail(cw, f"{TP_GROUP_FLAG} needs a group size, got {k!r}")
                continue
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                gpus = (resources.get(part) or {}).get("nvidia.com/gpu")
                if str(gpus) != k:
                    rep.fail(cw, f"{TP_GROUP_FLAG} {k} but {part} nvidia.com/gpu is {gpus}: set both to K")
            if job_tp is not None and str(job_tp) != k:
                rep.fail(cw, f"{TP_GROUP_FLAG} {k} but the job's tensor_parallel_size is {job_tp}: set both to K")


def compare_with_kubectl(rep: Report, root: Path, folder: str, mine: list[dict[str, Any]]) -> None:
    """Where kubectl is installed, its built-in kustomize must render exactly what kustomize_lite does
    (same resources, same order, same content): this keeps the renderer honest. Needs no cluster."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return
    run = subprocess.run(
        [kubectl, "kustomize", str(root / folder)], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        rep.fail(folder, f"kubectl kustomize failed: {run.stderr.strip()}")
        return
    theirs = [d for d in yaml.safe_load_all(run.stdout) if d]
    if theirs != mine:
        ids = [kustomize_lite.resource_id(r) for r in theirs]
        differ = [
            kustomize_lite.resource_id(a) for a, b in zip(theirs, mine) if a != b
        ] or ["the list of resources"]
        rep.fail(folder, f"kubectl kustomize renders differently ({ids}); differs: {differ}")


def check_rendered_copy(rep: Report, root: Path, folder: str) -> None:
    """k8s/rendered/<overlay>.yaml (committed, read by the Rust rehearsal test) must be current."""
    overlay = root / folder
    if overlay.parent.name != "overlays":
        return
    copy = root / "k8s" / "rendered" / f"{overlay.name}.yaml"
    want = kustomize_lite.rendered_file(overlay.resolve())
    if not copy.is_file() or copy.read_text(encoding="utf-8") != want:
        rep.fail(folder, f"{copy.relative_to(root)} is stale: run scripts/k8s-render.sh --update")


def layouts(root: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    k8s = root / "k8s"
    folders = [k8s] + sorted(p for p in (k8s / "overlays").iterdir() if p.is_dir())
    for folder in folders:
        yield str(folder.relative_to(root)), kustomize_lite.render(folder)
    for path in sorted((k8s / "extras").glob("*.yaml")):
        with path.open(encoding="utf-8") as f:
            yield str(path.relative_to(root)), [d for d in yaml.safe_load_all(f) if d]


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, versions = Path(argv[1]), argv[2:]
    clis = {
        "evalfleet": merge_clis(
            # `serve`, `submit`, `status`, `cancel` keep their arguments next to their code.
            clap_flags(root / "coordinator/src/cli.rs"),
            clap_flags(root / "coordinator/src/serve/cli.rs"),
            # The per-client limit flags every fleet command flattens in.
            clap_flags(root / "coordinator/src/rpc/limit_args.rs"),
        ),
        "evalfleet-worker": clap_flags(root / "worker/src/main.rs"),
        "tp-group": tp_group_flags(root / "worker/src/tp/launch/pod.rs"),
    }
    rep = Report()
    total = 0
    kubectl = shutil.which("kubectl")
    print(
        f"renderer cross-check: {'kubectl kustomize (' + kubectl + ')' if kubectl else 'skipped: no kubectl on PATH'}"
    )
    for name, resources in layouts(root):
        names = {kustomize_lite.resource_id(r) for r in resources}
        if not name.startswith("k8s/extras"):
            compare_with_kubectl(rep, root, name, resources)
            check_rendered_copy(rep, root, name)
        print(f"{name}: {len(resources)} resources ({', '.join(sorted(names))})")
        job_tp = job_tensor_parallel(resources)
        if not name.startswith("k8s/extras"):
            check_network_policy(rep, name, resources)
        for res in resources:
            where = f"{name} {kustomize_lite.resource_id(res)}"
            check_schema(rep, where, res, versions)
            check_no_token(rep, where, res)
            check_pod(rep, where, res)
            check_roles(rep, where, res)
            # k8s/extras/ holds stand-alone helper pods (no evalfleet binary, volumes of a layout).
            if not name.startswith("k8s/extras"):
                check_references(rep, where, res, names)
                check_command_lines(rep, where, res, clis)
                check_tp_groups(rep, where, res, job_tp)
            total += 1
    for msg in sorted(rep.pending):
        print(f"  PENDING (documented, not in the code yet): {msg}")
    verdict = "FAILED" if rep.failures else "ok"
    print(
        f"k8s-validate: {total} rendered resources checked against Kubernetes "
        f"{', '.join(versions)} (strict) and the project's policy: {rep.failures} failures: {verdict}"
    )
    return 1 if rep.failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except kustomize_lite.KustomizeError as e:
        print(f"k8s-validate: rendering failed: {e}", file=sys.stderr)
        sys.exit(1)
