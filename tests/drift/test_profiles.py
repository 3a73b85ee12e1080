from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis.asyncio import Redis

from server.drift.__main__ import main as drift_main
from server.drift.codec import read_profile_file
from server.drift.profiles import (
    ProfileStore,
    build_profile,
    config_feature_names,
    profile_path,
    store_profile_in_redis,
)

from .data import assert_summary_matches

CONFIG = """name: "m"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "emb", data_type: TYPE_FP32, dims: [ 2 ] } ]
parameters { key: "feature_names" value: { string_value: "age,income,score" } }
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(CONFIG)
    return tmp_path


def _data(tmp_path: Path, rows: int = 5000) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    columns = {"score": rng.random(rows), "age": rng.integers(18, 90, rows), "income": rng.lognormal(10, 1, rows)}
    emb = rng.standard_normal((rows, 2)).astype(np.float32)
    income = pa.array(columns["income"], mask=np.arange(rows) % 100 == 0)  # 1% nulls
    table = pa.table({"score": columns["score"], "label": ["y"] * rows, "age": columns["age"], "income": income,
                      "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), 2)})
    path = tmp_path / "train.parquet"
    pq.write_table(table, path, row_group_size=1000)
    return path, {**columns, "emb0": emb[:, 0], "emb1": emb[:, 1]}


def test_profile_cli_maps_columns_by_config_names_streams_batches_and_counts_nulls(repo: Path) -> None:
    data, columns = _data(repo)
    assert drift_main(["profile", "--model", "m", "--data", str(data), "--model-repository", str(repo),
                       "--batch-rows", "700"]) == 0
    profile = read_profile_file(profile_path(repo, "m"))
    assert profile.rows == 5000 and profile.model == "m"
    assert [profile.name_of(k) for k in sorted(profile.features)] == ["emb[0]", "emb[1]", "age", "income", "score"]
    assert_summary_matches(profile.features[("x", 0)], columns["age"])
    assert profile.features[("x", 0)].kind == "categorical"
    income = profile.features[("x", 1)]
    assert (income.count, income.missing) == (4950, 50)
    assert_summary_matches(income, columns["income"][np.arange(5000) % 100 != 0], nulls=50)
    assert_summary_matches(profile.features[("emb", 1)], columns["emb1"])


def test_plain_columns_need_a_target_input_when_the_model_has_several(tmp_path: Path) -> None:
    data, _ = _data(tmp_path)
    with pytest.raises(ValueError, match="--input"):
        build_profile("m", data, widths={"a": 3, "b": 3}, exclude=["emb"])
    profile = build_profile("m", data, widths={"a": 3, "b": 3}, target_input="b", exclude=["emb"])
    assert sorted(profile.features) == [("b", 0), ("b", 1), ("b", 2)]
    assert profile.name_of(("b", 0)) == "score"  # file order when the config names no features


def test_a_width_mismatch_is_explained(tmp_path: Path) -> None:
    data, _ = _data(tmp_path)
    with pytest.raises(ValueError, match="has 4 columns but the data has 3"):
        build_profile("m", data, widths={"x": 4}, exclude=["emb"])


def test_feature_names_come_from_config_parameters() -> None:
    names = config_feature_names({"feature_names": "a, b", "feature_names.y": "z"}, ["x", "y"])
    assert names == {("x", 0): "a", ("x", 1): "b", ("y", 0): "z"}


async def test_profiles_in_redis_come_before_files(repo: Path, redis: Redis) -> None:
    data, _ = _data(repo, rows=500)
    from_file = build_profile("m", data, widths={"x": 3, "emb": 2}, names=config_feature_names(
        {"feature_names": "age,income,score"}, ["x"]))
    drift_main(["profile", "--model", "m", "--data", str(data), "--model-repository", str(repo)])
    assert ProfileStore(repo).get_local("m") is not None
    from_file.window_id = "from-redis"
    await store_profile_in_redis(redis, from_file)
    found = await ProfileStore(repo, redis).get("m")
    assert found is not None and found.window_id == "from-redis"
    assert await ProfileStore(None, redis).get("other") is None
