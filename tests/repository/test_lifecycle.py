"""Model lifecycle through ModelManager: poll-mode reloads, version policy, failure isolation, overrides,
release of unloaded versions. Transports are covered in tests/e2e/test_lifecycle.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.errors import ModelLoadError, ModelNotFound, ModelNotReady, Unsupported
from server.executor.runner import INLINE_RUN_US_MANY_CPUS, INLINE_RUN_US_ONE_CPU
from server.metrics import Metrics
from server.repository.manager import ModelManager
from server.settings import ServerSettings

from . import models
from .models import CONFIG, expected, make_model, make_version

X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


class Harness:
    """A ModelManager over a temporary repository, with its metrics."""

    def __init__(self, root: Path, mode: str = "poll") -> None:
        self.root = root
        self.metrics = Metrics()
        settings = ServerSettings(model_repository=str(root), model_control_mode=mode, drain_timeout_s=5.0,
                                  repository_cache_dir=root.parent / f"{root.name}-cache")
        self.manager = ModelManager(root, settings, self.metrics)

    async def settle(self) -> None:
        """Two scans: a change is acted on once two scans in a row agree."""
        await self.manager.poll()
        await self.manager.poll()

    def index(self) -> dict[str, tuple[str, str]]:
        return {e.version: (e.state, e.reason) for e in self.manager.index() if e.name == "m"}

    async def infer(self, version: str | None = None) -> tuple[str, np.ndarray]:
        mv = self.manager.get("m", version)
        outputs, _, _ = await mv.batcher.submit({"x": X}, len(X))
        return mv.labels[1], outputs["y"]

    def load_failures(self) -> float:
        value = self.metrics.registry.get_sample_value("tessera_model_load_failures_total", {"model": "m"})
        return value or 0.0

    def executions(self, version: str) -> int:
        return self.manager.get("m", version).stats.execution_count


@pytest.fixture
async def harness(tmp_path: Path) -> Any:
    made = Harness(tmp_path / "repository")
    make_model(made.root)
    await made.manager.load_all()
    yield made
    await made.manager.stop()


async def test_an_added_version_takes_over_and_the_policy_retires_the_old_one(harness: Harness) -> None:
    make_version(harness.root, 2)
    await harness.settle()
    assert harness.index() == {"1": ("UNAVAILABLE", "unloaded"), "2": ("READY", "")}
    version, y = await harness.infer()
    assert version == "2"
    with pytest.raises(ModelNotReady, match="version 1 is UNAVAILABLE: not selected by its version policy"):
        harness.manager.get("m", "1")
    np.testing.assert_allclose(y, expected(2, X), rtol=1e-5)


async def test_a_change_is_acted_on_once_two_scans_agree(harness: Harness) -> None:
    await harness.manager.poll()
    make_version(harness.root, 2)
    await harness.manager.poll()  # first sight: the file may still be being written
    assert harness.index() == {"1": ("READY", "")}
    await harness.manager.poll()
    assert harness.index()["2"] == ("READY", "")


async def test_a_policy_change_alone_reloads_nothing(harness: Harness) -> None:
    make_version(harness.root, 2)
    await harness.settle()
    await harness.infer()
    (harness.root / "m" / "config.pbtxt").write_text(CONFIG + "version_policy { all { } }\n")
    await harness.settle()
    assert harness.index() == {"1": ("READY", ""), "2": ("READY", "")}
    assert harness.executions("2") == 1  # same loaded version: its statistics carried on
    assert harness.manager.get("m").spec.config.version_policy.WhichOneof("policy_choice") == "all"
    assert (await harness.infer("1"))[0] == "1"


async def test_a_changed_model_file_reloads_only_that_version(harness: Harness) -> None:
    (harness.root / "m" / "config.pbtxt").write_text(CONFIG + "version_policy { all { } }\n")
    make_version(harness.root, 2)
    await harness.settle()
    await harness.infer("1")
    await harness.infer("2")
    make_version(harness.root, 2, seed=22)  # retrained in place
    await harness.settle()
    assert harness.executions("1") == 1 and harness.executions("2") == 0
    np.testing.assert_allclose((await harness.infer("2"))[1], expected(22, X), rtol=1e-5)


async def test_changed_batching_settings_take_effect_without_failing_requests(harness: Harness) -> None:
    async def traffic() -> list[str]:
        return [(await harness.infer())[0] for _ in range(40)]

    (harness.root / "m" / "config.pbtxt").write_text(
        'name: "m"\nmax_batch_size: 8\ninstance_group [ { kind: KIND_CPU, count: 2 } ]\n'
        "dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 300 }\n")
    answered, _ = await asyncio.gather(asyncio.gather(*(traffic() for _ in range(4))), harness.settle())
    assert all(v == "1" for batch in answered for v in batch)
    spec = harness.manager.get("m").spec
    assert spec.batching is not None and spec.batching.preferred_batch_sizes == (2, 4)
    assert spec.batching.max_queue_delay_us == 300 and spec.instance_count == 2


def _corrupt(root: Path) -> None:
    (root / "m" / "2").mkdir()
    (root / "m" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage")


def _missing(root: Path) -> None:
    (root / "m" / "2").mkdir()
    (root / "m" / "2" / "README").write_text("the model file was forgotten")


def _bad_config(root: Path) -> None:
    make_version(root, 2)
    (root / "m" / "config.pbtxt").write_text('name: "m"\nmax_batch_size: lots\n')


FAILURES = [
    pytest.param(_corrupt, "2", "not a loadable ONNX model", id="corrupt-file"),
    pytest.param(_missing, "2", "missing model file", id="missing-file"),
    pytest.param(lambda root: make_version(root, 2, opset=99), "2", "Opset 99", id="unsupported-opset"),
    pytest.param(lambda root: models.make_failing_at_run(root, 2), "2", "warmup failed", id="failed-warmup"),
    pytest.param(_bad_config, "", "config.pbtxt", id="bad-config"),
]


@pytest.mark.parametrize(("breakage", "entry", "reason"), FAILURES)
async def test_a_broken_change_fails_alone_and_what_serves_keeps_serving(
        harness: Harness, caplog: pytest.LogCaptureFixture, breakage: Callable[[Path], Any], entry: str,
        reason: str) -> None:
    caplog.set_level(logging.ERROR, logger="server.repository")
    breakage(harness.root)
    await harness.settle()
    state, why = harness.index()[entry]
    assert state == "FAILED" and reason in why
    assert harness.index()["1"] == ("READY", "")
    version, y = await harness.infer()
    assert version == "1"
    np.testing.assert_allclose(y, expected(1, X), rtol=1e-5)
    assert harness.load_failures() == 1
    assert any(reason in r.getMessage() for r in caplog.records)


async def test_a_failed_version_is_tried_again_only_once_it_changes(harness: Harness) -> None:
    _corrupt(harness.root)
    for _ in range(3):
        await harness.settle()
    assert harness.load_failures() == 1
    make_version(harness.root, 2)
    await harness.settle()
    assert harness.index() == {"1": ("UNAVAILABLE", "unloaded"), "2": ("READY", "")}


async def test_a_failed_reload_of_a_serving_version_keeps_the_loaded_one(harness: Harness) -> None:
    (harness.root / "m" / "1" / "model.onnx").write_bytes(b"overwritten by a broken copy")
    await harness.settle()
    state, why = harness.index()["1"]
    assert state == "READY" and why.startswith("reload failed:") and "not a loadable ONNX model" in why
    np.testing.assert_allclose((await harness.infer())[1], expected(1, X), rtol=1e-5)


async def test_removed_versions_and_models_are_drained_and_unloaded(harness: Harness) -> None:
    (harness.root / "m" / "config.pbtxt").write_text(CONFIG + "version_policy { all { } }\n")
    make_version(harness.root, 2)
    await harness.settle()
    pending = [asyncio.ensure_future(harness.infer("1")) for _ in range(20)]
    shutil.rmtree(harness.root / "m" / "1")
    await harness.settle()
    assert all(version == "1" for version, _ in await asyncio.gather(*pending))  # in flight: finished
    assert harness.index() == {"2": ("READY", "")}
    shutil.rmtree(harness.root / "m")
    await harness.settle()
    assert not harness.manager.has_model("m")
    with pytest.raises(ModelNotFound):
        harness.manager.get("m")


async def test_poll_mode_refuses_explicit_load_and_unload(harness: Harness) -> None:
    with pytest.raises(Unsupported, match="not available in poll mode"):
        await harness.manager.load("m")
    with pytest.raises(Unsupported, match="not available in poll mode"):
        await harness.manager.unload("m")


@pytest.fixture
async def explicit(tmp_path: Path) -> Any:
    made = Harness(tmp_path / "repository", mode="explicit")
    make_model(made.root)
    yield made
    await made.manager.stop()


async def test_file_overrides_load_from_a_temporary_directory_and_leave_the_repository_alone(
        explicit: Harness, tmp_path: Path) -> None:
    before = sorted(p.relative_to(explicit.root) for p in explicit.root.rglob("*"))
    onnx_bytes = make_version(tmp_path / "elsewhere", 1, seed=5).read_bytes()
    await explicit.manager.load("m", config_json='{"name": "m", "max_batch_size": 4}',
                                files={"file:1/model.onnx": onnx_bytes})
    np.testing.assert_allclose((await explicit.infer())[1], expected(5, X), rtol=1e-5)
    assert explicit.manager.get("m").spec.max_batch_size == 4
    assert sorted(p.relative_to(explicit.root) for p in explicit.root.rglob("*")) == before
    cache = tmp_path / "repository-cache"
    assert any(cache.rglob("model.onnx"))
    await explicit.manager.load("m")  # back to the repository's own files: the temporary copy goes
    np.testing.assert_allclose((await explicit.infer())[1], expected(1, X), rtol=1e-5)
    assert not any(cache.rglob("model.onnx"))


async def test_explicit_reload_that_fails_raises_and_keeps_serving(explicit: Harness) -> None:
    await explicit.manager.load("m")
    with pytest.raises(ModelLoadError, match="input 'nope' of model 'm' is not in the ONNX graph"):
        await explicit.manager.load("m", config_json='{"name": "m", "input": [{"name": "nope", '
                                                     '"data_type": "TYPE_FP32", "dims": [8]}]}')
    assert (await explicit.infer())[0] == "1"
    assert explicit.manager.get("m").spec.max_batch_size == 8


async def test_unload_of_an_unknown_model_is_not_found_and_of_an_unloaded_one_succeeds(explicit: Harness) -> None:
    with pytest.raises(ModelNotFound):
        await explicit.manager.unload("nope")
    await explicit.manager.unload("m")
    assert [(e.name, e.state) for e in explicit.manager.index()] == [("m", "")]


async def test_unloaded_versions_release_their_sessions(explicit: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    alive: weakref.WeakSet[ort.InferenceSession] = weakref.WeakSet()
    original = ort.InferenceSession.__init__

    def tracked(self: ort.InferenceSession, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        alive.add(self)

    monkeypatch.setattr(ort.InferenceSession, "__init__", tracked)
    (explicit.root / "m" / "config.pbtxt").write_text(
        CONFIG + "instance_group [ { kind: KIND_CPU, count: 3 } ]\n")
    await explicit.manager.load("m")
    await explicit.infer()
    assert len(alive) == 3
    await explicit.manager.unload("m")
    assert len(alive) == 0


def test_rss_after_20_load_unload_cycles_stays_within_10_percent_of_the_first() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "tests.repository.rss_cycles"], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)
    print(done.stdout)  # the figures, for the record (pytest -s)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("workers", "limit"), [(1, INLINE_RUN_US_MANY_CPUS), (2, INLINE_RUN_US_ONE_CPU)])
async def test_each_worker_gets_the_inline_limit_of_its_share_of_the_cpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, limit: int) -> None:
    import server.repository.versions as versions

    monkeypatch.setattr(versions, "usable_cpus", lambda: 2.0)  # two CPUs, split between the workers
    root = tmp_path / "repository"
    make_model(root)
    settings = ServerSettings(model_repository=str(root), workers=workers,
                              repository_cache_dir=tmp_path / "cache")
    manager = ModelManager(root, settings, Metrics())
    await manager.load_all()
    try:
        assert manager.get("m").runner.inline_limit_us == limit
    finally:
        await manager.stop()
