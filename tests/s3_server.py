"""A real S3 server for tests: moto's server mode on an ephemeral loopback port, and a fresh bucket per
test. Test modules and conftests import the fixtures they use from here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "tessera-models"
CREDENTIALS = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}
"""fsspec (s3fs) storage options for the server, beside its endpoint_url."""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh bucket per test (moto keeps state for the server's life): a boto3 S3 client bound to it."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    name = f"{BUCKET}-{abs(hash(request.node.nodeid)) % 10**8}"
    s3.create_bucket(Bucket=name)
    yield s3, name
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)
