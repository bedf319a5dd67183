"""Renders the k8s/ kustomizations without a kustomize binary.

Implements only the kustomization features k8s/ uses, with kustomize's semantics for them, and refuses
everything else with a message (so a feature added to k8s/ that this file does not understand fails
loudly instead of rendering wrongly):

- `resources`: files (one or more YAML documents) and folders holding a kustomization.yaml;
- `configMapGenerator` with `files` (`path` or `key=path`) and `literals`, and only with
  `disableNameSuffixHash: true` (in `generatorOptions` or the generator's `options`): no hash suffix,
  hence no name references to rewrite;
- `patches` given by `path`: strategic-merge patches, each document naming its target by kind and
  metadata.name; maps merge recursively, `null` deletes a key, lists of containers/volumes/env/...
  merge by their Kubernetes merge key, other lists are replaced;
- `labels` with `pairs` (plus `includeTemplates`; `includeSelectors` must stay false);
- `images` with `name`, `newName`, `newTag`, `digest`.

Used by scripts/k8s-render.sh (prints the YAML) and scripts/k8s/validate.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ALLOWED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "labels",
    "images",
}

# Strategic-merge keys of the lists k8s/ patches (from the Kubernetes API's patchMergeKey tags).
# `ports` is keyed by containerPort in a container and by port in a Service.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "envFrom": None,
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}

# Order of kinds in the output, as `kustomize build` sorts them (its legacy order): what others refer
# to comes first; kinds not listed go between the two lists, by kind; then by name.
KIND_ORDER_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
KIND_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class KustomizeError(Exception):
    """A kustomization this renderer cannot or will not render, naming the file and the problem."""


def render(path: str | Path) -> list[dict[str, Any]]:
    """Renders the kustomization in folder `path` into a list of resources, in kustomize's order."""
    resources = _build(Path(path), stack=())
    return sorted(resources, key=_kind_rank)


def resource_id(res: dict[str, Any]) -> str:
    """`Kind/name` of a resource, as used in messages."""
    return f"{res.get('kind')}/{res.get('metadata', {}).get('name')}"


def _kind_rank(res: dict[str, Any]) -> tuple[int, str, str]:
    kind = res.get("kind") or ""
    name = res.get("metadata", {}).get("name") or ""
    if kind in KIND_ORDER_FIRST:
        return (KIND_ORDER_FIRST.index(kind), "", name)
    if kind in KIND_ORDER_LAST:
        return (len(KIND_ORDER_FIRST) + 1 + KIND_ORDER_LAST.index(kind), "", name)
    return (len(KIND_ORDER_FIRST), kind, name)


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml in this folder")


def _load_docs(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise KustomizeError(f"{path}: {e}") from e
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise KustomizeError(f"{path}: expected Kubernetes objects with kind and metadata")
    return docs


def _build(folder: Path, stack: tuple[Path, ...]) -> list[dict[str, Any]]:
    folder = folder.resolve()
    if folder in stack:
        raise KustomizeError(f"{folder}: kustomization includes itself")
    kfile = _kustomization_file(folder)
    k = _load_docs_plain(kfile)
    unknown = set(k) - ALLOWED_KEYS
    if unknown:
        raise KustomizeError(
            f"{kfile}: unsupported kustomization keys {sorted(unknown)} "
            f"(scripts/k8s/kustomize_lite.py supports {sorted(ALLOWED_KEYS)})"
        )
    out: list[dict[str, Any]] = []
    for entry in k.get("resources") or []:
        target = folder / entry
        if target.is_dir():
            out.extend(_build(target, stack + (folder,)))
        elif target.is_file():
            out.extend(copy.deepcopy(_load_docs(target)))
        else:
            raise KustomizeError(f"{kfile}: resource `{entry}` is neither a file nor a folder")
    out.extend(_generate_configmaps(kfile, k))
    _check_unique(kfile, out)
    for patch in k.get("patches") or []:
        _apply_patch_file(kfile, folder, patch, out)
    for label in k.get("labels") or []:
        _apply_labels(kfile, label, out)
    for image in k.get("images") or []:
        _apply_image(kfile, image, out)
    return out


def _load_docs_plain(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            k = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise KustomizeError(f"{path}: {e}") from e
    if not isinstance(k, dict):
        raise KustomizeError(f"{path}: expected a mapping")
    return k


def _check_unique(kfile: Path, resources: list[dict[str, Any]]) -> None:
    seen = set()
    for res in resources:
        rid = resource_id(res)
        if rid in seen:
            raise KustomizeError(f"{kfile}: {rid} is defined twice")
        seen.add(rid)


def _generate_configmaps(kfile: Path, k: dict[str, Any]) -> list[dict[str, Any]]:
    gens = k.get("configMapGenerator") or []
    global_off = (k.get("generatorOptions") or {}).get("disableNameSuffixHash") is True
    out = []
    for gen in gens:
        name = gen.get("name")
        extra = set(gen) - {"name", "files", "literals", "options"}
        if not name or extra:
            raise KustomizeError(
                f"{kfile}: configMapGenerator entries need `name` and may have only files, "
                f"literals, options (got {sorted(gen)})"
            )
        if not (global_off or (gen.get("options") or {}).get("disableNameSuffixHash") is True):
            raise KustomizeError(
                f"{kfile}: configMapGenerator `{name}` must set disableNameSuffixHash: true "
                "(name hashes are not implemented here)"
            )
        data: dict[str, str] = {}
        for spec in gen.get("files") or []:
            key, _, rel = spec.rpartition("=")
            path = kfile.parent / rel
            try:
                data[key or Path(rel).name] = path.read_text(encoding="utf-8")
            except OSError as e:
                raise KustomizeError(f"{kfile}: configMapGenerator `{name}`: {e}") from e
        for spec in gen.get("literals") or []:
            key, sep, value = spec.partition("=")
            if not sep:
                raise KustomizeError(f"{kfile}: literal `{spec}` is not KEY=VALUE")
            data[key] = value
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    return out


def _apply_patch_file(
    kfile: Path, folder: Path, patch: dict[str, Any], resources: list[dict[str, Any]]
) -> None:
    if set(patch) != {"path"}:
        raise KustomizeError(
            f"{kfile}: only `patches: - path: FILE` (strategic merge, target from the patch's "
            f"kind and name) is supported, got {sorted(patch)}"
        )
    path = folder / patch["path"]
    for doc in _load_docs(path):
        rid = resource_id(doc)
        matches = [
            r
            for r in resources
            if r.get("kind") == doc["kind"]
            and r["metadata"].get("name") == doc["metadata"].get("name")
        ]
        if len(matches) != 1:
            raise KustomizeError(f"{path}: the patch targets {rid}, which is not in the resources")
        target = matches[0]
        merged = strategic_merge(target, doc, where=f"{path}: {rid}")
        target.clear()
        target.update(merged)


def strategic_merge(base: Any, patch: Any, where: str = "patch", field: str = "") -> Any:
    """Strategic merge of `patch` into `base` (a copy is returned; inputs are not changed)."""
    if isinstance(patch, dict):
        for directive in ("$patch", "$retainKeys", "$setElementOrder", "$deleteFromPrimitiveList"):
            if directive in patch:
                raise KustomizeError(f"{where}: `{directive}` is not supported")
        if not isinstance(base, dict):
            return _without_nulls(patch)
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, where, key)
            else:
                out[key] = _without_nulls(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = _merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        new = []
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"{where}: every `{field}` element needs `{key}`")
            for i, existing in enumerate(out):
                if existing.get(key) == item[key]:
                    out[i] = strategic_merge(existing, item, where, field)
                    break
            else:
                new.append(_without_nulls(item))
        # kustomize (kyaml) puts the elements only the patch has first, in the patch's order.
        return new + out
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        return "containerPort" if any("containerPort" in p for p in items) else "port"
    return MERGE_KEYS.get(field)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return copy.deepcopy(value)


def _apply_labels(kfile: Path, label: dict[str, Any], resources: list[dict[str, Any]]) -> None:
    extra = set(label) - {"pairs", "includeSelectors", "includeTemplates"}
    if extra or label.get("includeSelectors"):
        raise KustomizeError(
            f"{kfile}: labels entries support `pairs` and `includeTemplates` only "
            "(includeSelectors would change immutable selectors)"
        )
    pairs = label.get("pairs") or {}
    for res in resources:
        res["metadata"].setdefault("labels", {}).update(pairs)
        template = (res.get("spec") or {}).get("template")
        if label.get("includeTemplates") and isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _pod_specs(res: dict[str, Any]) -> list[dict[str, Any]]:
    spec = res.get("spec") or {}
    if res.get("kind") == "Pod":
        return [spec]
    template = spec.get("template")
    return [template["spec"]] if isinstance(template, dict) and "spec" in template else []


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/repo/name:tag@sha256:...` -> (name part, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _apply_image(kfile: Path, image: dict[str, Any], resources: list[dict[str, Any]]) -> None:
    extra = set(image) - {"name", "newName", "newTag", "digest"}
    if extra or "name" not in image:
        raise KustomizeError(f"{kfile}: images entries need `name`; unsupported: {sorted(extra)}")
    for res in resources:
        for pod in _pod_specs(res):
            for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                name, tag, digest = split_image(c.get("image", ""))
                if name != image["name"]:
                    continue
                name = image.get("newName", name)
                if "digest" in image:
                    c["image"] = f"{name}@{image['digest']}"
                else:
                    tag = str(image.get("newTag", tag)) if image.get("newTag", tag) else None
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the job YAML in the ConfigMap) as readable `|` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump(resources: list[dict[str, Any]]) -> str:
    """The resources as one multi-document YAML stream."""
    return yaml.dump_all(resources, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


RENDERED_HEADER = (
    "# GENERATED by `scripts/k8s-render.sh --update` from k8s/overlays/{name}: do not edit.\n"
    "# Apply with `kubectl apply -k k8s/overlays/{name}`; this copy is what the rehearsal test\n"
    "# (coordinator/tests/k8s_rehearsal.rs) starts as local processes.\n"
)


def rendered_file(overlay: Path) -> str:
    """The text of k8s/rendered/<overlay>.yaml: a header, then the overlay's manifests."""
    return RENDERED_HEADER.format(name=overlay.name) + dump(render(overlay))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: kustomize_lite.py KUSTOMIZATION_FOLDER", file=sys.stderr)
        return 2
    try:
        folder = Path(argv[1])
        if folder.resolve().parent.name == "overlays":
            sys.stdout.write(rendered_file(folder.resolve()))
        else:
            sys.stdout.write(dump(render(folder)))
    except KustomizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
