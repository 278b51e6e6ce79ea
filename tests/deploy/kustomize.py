"""deploy/kubernetes rendered as `kubectl apply -k` renders it, for the tests to read.

Only the Kustomization features the install uses are implemented (namespace, labels, images,
resources, ConfigMap and Secret generators); `render` refuses any other, so a new feature in
kustomization.yaml fails the tests until it is rendered here too. Generated names stay
without kustomize's content hash: kustomize rewrites every reference it knows of to the hashed
name, so references by the plain name are what the tests compare. (Checked by hand against
`kubectl kustomize deploy/kubernetes`, v5.5: the same resources, namespaces and references.)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RENDERED_FEATURES = {
    "apiVersion", "kind", "namespace", "labels", "resources", "images",
    "configMapGenerator", "secretGenerator",
}  # fmt: skip
CLUSTER_SCOPED = {"Namespace"}


@dataclass
class Install:
    resources: list[dict[str, Any]]
    namespace: str
    # generated ConfigMap/Secret name -> key -> the file it was read from
    generated: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [r for r in self.of_kind(kind) if r["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["kind"] in ("Deployment", "StatefulSet")]

    def workload_selected_by(self, labels: dict[str, str]) -> dict[str, Any]:
        """The one workload whose pods carry every label in `labels`."""
        found = [w for w in self.workloads() if labels.items() <= pod_labels(w).items()]
        assert len(found) == 1, f"{labels} selects {len(found)} workloads"
        return found[0]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def render(root: Path, secrets_dir: Path) -> Install:
    """The resources `kubectl apply -k root` would create, with secrets/ read from `secrets_dir`."""
    k = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(k) - RENDERED_FEATURES
    assert not unknown, f"kustomization.yaml uses {unknown}: render them in tests/deploy/kustomize.py"
    namespace = k["namespace"]
    install = Install(resources=[], namespace=namespace)
    for name in k["resources"]:
        install.resources.extend(d for d in yaml.safe_load_all((root / name).read_text()) if d)
    for kind, generators in (
        ("ConfigMap", k.get("configMapGenerator", [])),
        ("Secret", k.get("secretGenerator", [])),
    ):
        for gen in generators:
            assert set(gen) <= {"name", "files", "type"}, gen
            files: dict[str, Path] = {}
            for entry in gen["files"]:
                key, _, rel = entry.partition("=")
                rel = rel or key
                path = (
                    secrets_dir / rel.removeprefix("secrets/") if rel.startswith("secrets/") else root / rel
                )
                files[key.rsplit("/", 1)[-1]] = path
            install.generated[(kind, gen["name"])] = files
            data = {key: path.read_text() for key, path in files.items()}
            doc: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
            if kind == "Secret":
                doc["type"] = gen.get("type", "Opaque")
                doc["data"] = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
            else:
                doc["data"] = data
            install.resources.append(doc)
    for doc in install.resources:
        meta = doc["metadata"]
        if doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for label in k.get("labels", []):
            assert set(label) <= {"pairs"}, "only plain label pairs are rendered (no selectors, no templates)"
            meta["labels"] = {**meta.get("labels", {}), **label["pairs"]}
        for container in _containers(doc):
            for image in k.get("images", []):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return install


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        return []
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return _containers(workload)
