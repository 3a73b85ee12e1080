"""The audit log's non-blocking `record`: bounded in lines queued and in lines per second, the rest
dropped, counted, and the count written down."""

from __future__ import annotations

from pathlib import Path

from server.audit import AuditLog


async def test_record_over_the_rate_drops_counts_and_reports_the_drops(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_records_per_s=10)
    for i in range(1000):
        audit.record("refused", "m", identity=f"token:{i}")
    await audit.flush()
    audit.record("refused", "m", identity="late")  # the next write carries the count of the dropped ones
    await audit.flush()
    lines = audit.read()
    refused = [e for e in lines if e["event"] == "refused"]
    assert 10 <= len(refused) <= 12
    assert audit.dropped == 1001 - len(refused)
    assert sum(e["count"] for e in lines if e["event"] == "audit_dropped") == audit.dropped


async def test_record_never_queues_more_than_its_bound(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_pending=5, max_records_per_s=1e9)
    for _ in range(50):  # no await in between: the writer cannot run, so the queue is what holds them
        audit.record("refused", "m")
    await audit.flush()
    assert len([e for e in audit.read() if e["event"] == "refused"]) == 5
    assert audit.dropped == 45


async def test_write_appends_at_once(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    await audit.write("admin", "m", actor="ops", action="load", outcome="ok")
    assert [(e["event"], e["actor"], e["action"]) for e in audit.read()] == [("admin", "ops", "load")]
