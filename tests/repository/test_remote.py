"""Remote repositories against a real S3 server (moto's server mode, on an ephemeral local port):
the fsspec mirror, and the server loading and polling an s3:// repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from server.repository.store import RemoteStore, open_store

from ..polling import wait_until
from ..s3_server import CREDENTIALS, bucket, s3_endpoint
from .models import CONFIG, expected, make_model, make_version

__all__ = ["bucket", "s3_endpoint"]  # fixtures shared from tests/s3_server.py


def _upload(s3: Any, bucket: str, root: Path, prefix: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_mirror_fetches_what_changed_and_drops_what_went(bucket: Any, s3_endpoint: str, tmp_path: Path) -> None:
    s3, name = bucket
    (tmp_path / "cache" / "stale").mkdir(parents=True)
    (tmp_path / "cache" / "stale" / "old.onnx").write_bytes(b"from an earlier run")
    s3.put_object(Bucket=name, Key="repo/m/config.pbtxt", Body=b'name: "m"\n')
    s3.put_object(Bucket=name, Key="repo/m/1/model.onnx", Body=b"one")
    s3.put_object(Bucket=name, Key="elsewhere/x", Body=b"not under the prefix")
    store = open_store(f"s3://{name}/repo", tmp_path / "cache", {"endpoint_url": s3_endpoint, **CREDENTIALS})
    assert isinstance(store, RemoteStore)
    store.sync()
    assert _files(store.root) == {"m/config.pbtxt": b'name: "m"\n', "m/1/model.onnx": b"one"}
    s3.put_object(Bucket=name, Key="repo/m/1/model.onnx", Body=b"one, retrained")
    s3.put_object(Bucket=name, Key="repo/m/2/model.onnx", Body=b"two")
    s3.delete_object(Bucket=name, Key="repo/m/config.pbtxt")
    store.sync()
    assert _files(store.root) == {"m/1/model.onnx": b"one, retrained", "m/2/model.onnx": b"two"}
    store.close()
    assert store.root.is_dir()  # a cache directory the user named is kept


def test_the_server_serves_and_polls_an_s3_repository(bucket: Any, s3_endpoint: str, tmp_path: Path,
                                                      server_factory: Callable[..., Any]) -> None:
    s3, name = bucket
    local = tmp_path / "local"
    make_model(local)
    _upload(s3, name, local, "models")
    server = server_factory(tmp_path / "unused", model_repository=f"s3://{name}/models",
                            repository_storage_options={"endpoint_url": s3_endpoint, **CREDENTIALS},
                            repository_cache_dir=tmp_path / "cache", model_control_mode="poll",
                            repository_poll_secs=0.2)
    x = np.ones((1, 8), np.float32)
    item = grpcclient.InferInput("x", [1, 8], "FP32")
    item.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        def index() -> dict[str, str]:
            return {m.version: m.state for m in client.get_model_repository_index().models if m.name == "m"}

        result = client.infer("m", [item])
        assert result.get_response().model_version == "1"
        np.testing.assert_allclose(result.as_numpy("y"), expected(1, x), rtol=1e-5)
        make_version(local, 2)
        (local / "m" / "config.pbtxt").write_text(CONFIG + "version_policy { all { } }\n")
        _upload(s3, name, local, "models")
        wait_until(lambda: index() == {"1": "READY", "2": "READY"}, message="version 2 from S3")
        s3.delete_object(Bucket=name, Key="models/m/1/model.onnx")
        wait_until(lambda: index() == {"2": "READY"}, message="version 1 removed from S3")
        result = client.infer("m", [item])
        assert result.get_response().model_version == "2"
        np.testing.assert_allclose(result.as_numpy("y"), expected(2, x), rtol=1e-5)
