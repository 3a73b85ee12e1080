"""deploy/: every manifest validates against the Kubernetes schemas (or the vendored CRD schema), and the
settings that make the pods safe and the drain clean hold (what checkov checks, kept here structurally)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.cli import build_parser
from server.metrics import Metrics

from .manifests import (
    DEPLOY,
    Manifest,
    containers,
    every_manifest,
    find,
    kustomization,
    load,
    pod_spec,
    render_base,
    render_overlay,
)

KUBERNETES_VERSION = "1.32"
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"):
               Path(__file__).with_name("schemas") / "servicemonitor-monitoring-v1.json"}
MANIFESTS = every_manifest()
ACCEPTED_CHECKOV = {"CKV_K8S_43"}  # image digests: see deploy/README.md, "checkov"


def _validate(doc: Manifest) -> None:
    crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        jsonschema.validate(doc, json.loads(crd.read_text()))
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("doc", [pytest.param(doc, id=f"{f}:{doc['kind']}/{doc['metadata']['name']}")
                                 for f, doc in MANIFESTS])
def test_manifest_validates_against_its_schema(doc: Manifest) -> None:
    _validate(doc)


def test_a_typo_is_caught_by_the_schemas() -> None:
    deployment = find(render_base(), "Deployment", "tessera")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    monitor = find(render_base(), "ServiceMonitor", "tessera")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        _validate(monitor)


def test_the_kustomization_lists_every_base_manifest() -> None:
    listed = set(kustomization(DEPLOY / "base")["resources"])
    assert listed == {p.name for p in (DEPLOY / "base").glob("*.yaml") if p.name != "kustomization.yaml"}
    kinds = {d["kind"] for d in render_base()}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "NetworkPolicy", "ServiceAccount", "Namespace"} <= kinds


def test_the_gpu_variant_asks_for_a_gpu_on_gpu_nodes_and_validates() -> None:
    rendered = render_overlay("gpu")
    for doc in rendered:
        _validate(doc)
    server = find(rendered, "Deployment", "tessera")
    spec = server["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["containers"][0]["image"].endswith("-gpu")
    assert not find(rendered, "Deployment", "tessera-drift")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("-gpu")  # the drift service needs no GPU


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for `kubectl kustomize`) not installed")
@pytest.mark.parametrize("directory", ["base", "overlays/gpu"])
def test_kubectl_kustomize_renders_what_the_tests_check(directory: str) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / directory)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    ours = render_base() if directory == "base" else render_overlay("gpu")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    for doc in theirs:
        _validate(doc)
        assert doc == next(o for o in ours if key(o) == key(doc))


@pytest.mark.parametrize("doc", [pytest.param(d, id=d["metadata"]["name"]) for d in render_overlay("gpu")
                                 if pod_spec(d) is not None])
def test_pods_run_unprivileged_on_a_read_only_root(doc: Manifest) -> None:
    spec = pod_spec(doc)
    assert spec is not None
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 10000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec.get("automountServiceAccountToken") is False
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in containers(doc):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]} and context["privileged"] is False
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {m["name"] for m in container.get("volumeMounts", [])} <= empty_dirs  # writable: emptyDirs only
        assert re.search(r":[\w.-]+$", container["image"]) and not container["image"].endswith(":latest")
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        assert "readinessProbe" in container and "livenessProbe" in container


def test_probes_and_drain_match_the_servers_flags() -> None:
    rendered = render_base()
    flags = find(rendered, "ConfigMap", "tessera-config")["data"]
    spec = find(rendered, "Deployment", "tessera")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(flags["TESSERA_DRAIN_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(flags["TESSERA_HTTP_PORT"]), "grpc": int(flags["TESSERA_GRPC_PORT"])}
    service = find(rendered, "Service", "tessera")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert flags["TESSERA_HOST"] == "0.0.0.0"  # the server's default is loopback: pods must listen on all
    assert flags["TESSERA_STATE_DIR"] in {m["mountPath"] for m in container["volumeMounts"]}
    assert {e["name"] for e in container["env"]} == {"TESSERA_REPLICA_ID"}


def test_every_configmap_key_is_a_flag_of_tessera_serve() -> None:
    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()  # type: ignore[union-attr]
                 if a[0] == "serve")[1]
    flags = {o for action in serve._actions for o in action.option_strings if o.startswith("--")}
    data = find(render_base(), "ConfigMap", "tessera-config")["data"]
    for key in data:
        assert "--" + key.removeprefix("TESSERA_").lower().replace("_", "-") in flags, key


def test_the_hpa_scales_on_a_metric_the_adapter_derives_from_tesseras_own() -> None:
    hpa = find(render_base(), "HorizontalPodAutoscaler", "tessera")
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(load(DEPLOY / "prometheus-adapter" / "rules.yaml")[0]["data"]["config.yaml"])["rules"]
    rule = next(r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"])
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
    exported = {m.name for m in Metrics().registry.collect()}
    assert series in exported
    assert hpa["spec"]["minReplicas"] >= 2  # with a PodDisruptionBudget of one, never down to nothing
    pdb = find(render_base(), "PodDisruptionBudget", "tessera")
    assert pdb["spec"]["selector"] == find(render_base(), "Deployment", "tessera")["spec"]["selector"]


def test_dockerfile_builds_a_non_root_image_with_a_healthcheck() -> None:
    text = (DEPLOY.parent / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*/v2/health/ready", text, re.MULTILINE)
    assert "TESSERA_HOST=0.0.0.0" in text


def _checkov() -> str | None:
    """CHECKOV, else the venv .ci/setup makes for it, else one on PATH."""
    local = DEPLOY.parent / ".venv-checkov" / "bin" / "checkov"
    return os.environ.get("CHECKOV") or (str(local) if local.exists() else None) or shutil.which("checkov")


@pytest.mark.skipif(_checkov() is None, reason="checkov not installed (set CHECKOV=path; deploy/README.md has "
                                               "the command and its last result)")
def test_checkov_finds_nothing_beyond_the_accepted_findings(tmp_path: Path) -> None:
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump_all(render_overlay("gpu")))
    failed: set[str] = set()
    for target in (["-d", str(DEPLOY)], ["-f", str(gpu)]):
        result = subprocess.run([str(_checkov()), *target, "--framework", "kubernetes", "--output", "json",
                                 "--quiet", "--skip-download"], capture_output=True, text=True, timeout=120)
        report = json.loads(result.stdout)
        for section in report if isinstance(report, list) else [report]:
            failed |= {c["check_id"] for c in section.get("results", {}).get("failed_checks", [])}
    assert failed <= ACCEPTED_CHECKOV, failed - ACCEPTED_CHECKOV
