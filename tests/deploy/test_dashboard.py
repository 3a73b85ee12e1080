"""deploy/grafana/tessera-dashboard.json loads as a Grafana dashboard model (grafana-foundation-sdk, generated
from Grafana's own dashboard schema), is laid out on Grafana's 24-column grid, and queries only metrics
Tessera and its drift service export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client import CollectorRegistry

from server.drift.metrics import MonitorMetrics, TapMetrics
from server.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tessera-dashboard.json"


def _data() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _exported() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    TapMetrics(registry)
    MonitorMetrics(registry)
    names = set()
    for family in registry.collect():
        names |= {sample.name for sample in family.samples} | {family.name}
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def _exprs(data: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def test_the_dashboard_loads_as_a_grafana_dashboard_model_and_round_trips():
    data = _data()
    model = Dashboard.from_json(data)
    assert model.title == "Tessera" and model.uid == "tessera-fleet"
    assert len(model.panels) == len(data["panels"])
    assert all(isinstance(p, RowPanel if d["type"] == "row" else Panel) for p, d in zip(model.panels, data["panels"],
                                                                                           strict=True))
    again = json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))
    assert [p["title"] for p in again["panels"]] == [p["title"] for p in data["panels"]]
    assert [len(p.get("targets", [])) for p in again["panels"]] == [len(p.get("targets", [])) for p in data["panels"]]
    assert again["schemaVersion"] == data["schemaVersion"] and again["templating"]["list"][0]["name"] == "datasource"


def test_panels_sit_on_the_grid_without_overlapping_and_have_unique_ids():
    panels = _data()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells


def test_every_query_reads_a_metric_tessera_exports():
    exported = _exported()
    variables = {v["name"] for v in _data()["templating"]["list"]}
    for expr in _exprs(_data()):
        for name in re.findall(r"\b(tessera_\w+)", expr):
            assert name in exported, f"{name} in {expr!r}"
        for quantile in re.finditer(r"histogram_quantile\([\d.]+, sum by \(le[,)][^(]*\(rate\((\w+)\[", expr):
            assert quantile.group(1).endswith("_bucket"), expr
        assert set(re.findall(r"\$(\w+)", expr)) <= variables | {"__rate_interval"}, expr


def test_the_dashboard_shows_what_operators_ask_for():
    exprs = " ".join(_exprs(_data()))
    for needed in ("tessera_request_success_total", "histogram_quantile(0.99, sum by (le, model) "
                   "(rate(tessera_request_duration_seconds_bucket", "tessera_batch_size", "tessera_pending_requests",
                   "tessera_queue_duration_seconds_bucket", "tessera_rollout_weight", "tessera_shadow_agreement",
                   "tessera_drift_score"):
        assert needed in exprs, needed
