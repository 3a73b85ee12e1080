"""deploy/ as data: every manifest loaded, the base kustomization rendered, overlays' JSON patches applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
Manifest = dict[str, Any]


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> Manifest:
    return dict(yaml.safe_load((directory / "kustomization.yaml").read_text()))


def every_manifest() -> list[tuple[str, Manifest]]:
    """(file, object) for every Kubernetes object under deploy/ (kustomizations aside)."""
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            found.extend((str(path.relative_to(DEPLOY)), doc) for doc in load(path))
    return found


def render_base() -> list[Manifest]:
    """What `kubectl kustomize deploy/base` gives, for the transformers the base uses (namespace, images)."""
    base = DEPLOY / "base"
    spec = kustomization(base)
    tags = {image["name"]: image["newTag"] for image in spec.get("images", [])}
    rendered = []
    for resource in spec["resources"]:
        for doc in load(base / resource):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = spec["namespace"]
            for container in containers(doc):
                name, _, _ = container["image"].partition(":")
                if name in tags:
                    container["image"] = f"{name}:{tags[name]}"
            rendered.append(doc)
    return rendered


def render_overlay(name: str) -> list[Manifest]:
    """The base with the overlay's inline JSON 6902 patches applied to their targets."""
    overlay = kustomization(DEPLOY / "overlays" / name)
    assert overlay["resources"] == ["../../base"]
    rendered = render_base()
    for patch in overlay["patches"]:
        target = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        for i, doc in enumerate(rendered):
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                rendered[i] = jsonpatch.apply_patch(doc, ops)
    return rendered


def pod_spec(doc: Manifest) -> Manifest | None:
    return doc["spec"]["template"]["spec"] if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet") else None


def containers(doc: Manifest) -> list[Manifest]:
    spec = pod_spec(doc)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
