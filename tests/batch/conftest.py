"""Batch fixtures: a repository of small models (make_models.py) and Parquet inputs generated with
numpy -> pyarrow, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..s3_server import bucket, s3_endpoint
from ..sample_models import make_models
from .data import write_tabular

__all__ = ["bucket", "s3_endpoint"]  # the S3 server fixtures, shared from tests/s3_server.py

MLP_TWO_INSTANCES = """dynamic_batching { }
instance_group [ { kind: KIND_CPU, count: 2 } ]
"""


@pytest.fixture(scope="session")
def batch_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batch-repository")
    make_models.make_samples(root)
    make_models.make_mlp(root, "mlp", [64, 256, 256, 10])
    make_models.make_mlp(root, "mlp2", [16, 32, 4], config_extra=MLP_TWO_INSTANCES)
    return root


@pytest.fixture(scope="session")
def tabular_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four files, 250,000 rows in all; row groups that are not multiples of the batch size."""
    root = tmp_path_factory.mktemp("tabular-input")
    write_tabular(root, files=4, rows=62_500, row_group_rows=10_000)
    return root


@pytest.fixture(scope="session")
def wide_model(batch_repository: Path) -> Path:
    """A model slow enough (~50k rows/s here) for a run to be caught half-way."""
    make_models.make_mlp(batch_repository, "wide", [128, 1024, 1024, 128])
    return batch_repository
