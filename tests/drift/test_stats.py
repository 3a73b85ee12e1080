from __future__ import annotations

import math

import numpy as np
import pytest

from server.drift.codec import decode_window, encode_window
from server.drift.stats import FeatureSummary, WindowSummary, feature_name, merge_windows

from .data import assert_summary_matches, requests, stacked


def _window(model: str = "m", window_id: str = "w") -> WindowSummary:
    return WindowSummary(model=model, window_id=window_id, producer="p", start_ms=0, end_ms=0)


def test_folded_requests_equal_direct_statistics_of_all_rows() -> None:
    reqs = requests(seed=1, count=40, rows=500, nan_fraction=0.01)
    window = _window()
    for r in reqs:
        window.fold_inputs(r, rows=500)
    x, c = stacked(reqs, "x"), stacked(reqs, "c")
    assert window.rows == 20_000
    assert sorted(window.features) == [("c", 0), ("x", 0), ("x", 1), ("x", 2), ("x", 3)]
    for j in range(4):
        assert_summary_matches(window.features[("x", j)], x[:, j])
    assert window.features[("c", 0)].kind == "categorical"
    assert_summary_matches(window.features[("c", 0)], c[:, 0])


def test_merging_windows_in_any_split_equals_one_window() -> None:
    reqs = requests(seed=2, count=30, rows=200)
    parts = [_window(window_id=str(i)) for i in range(3)]
    for i, r in enumerate(reqs):
        parts[i % 3].fold_inputs(r, rows=200)
    merged = merge_windows("m", reversed(parts))
    assert merged is not None and merged.rows == 6000 and merged.windows == 3
    x = stacked(reqs, "x")
    for j in range(4):
        assert_summary_matches(merged.features[("x", j)], x[:, j])
    assert_summary_matches(merged.features[("c", 0)], stacked(reqs, "c")[:, 0])


def test_read_only_views_of_wire_bytes_are_folded() -> None:
    raw = np.arange(12, dtype=np.float32).tobytes()
    window = _window()
    window.fold_inputs({"x": np.frombuffer(raw, dtype=np.float32).reshape(3, 4),
                        "v": np.frombuffer(raw, dtype=np.float32)}, rows=3)
    assert window.features[("x", 1)].sketch.get_quantiles([0.0, 1.0]) == [1.0, 9.0]
    assert window.features[("v", -1)].count == 12


def test_nan_and_inf_count_as_missing_and_stay_out_of_the_moments() -> None:
    summary = FeatureSummary.empty("numeric")
    summary.fold(np.array([1.0, np.nan, 3.0, np.inf, -np.inf], dtype=np.float32), nulls=2)
    assert (summary.count, summary.missing, summary.mean, summary.variance) == (2, 5, 2.0, 1.0)
    assert summary.sketch.n == 2


def test_categories_beyond_the_cap_go_to_other() -> None:
    summary = FeatureSummary.empty("categorical", max_categories=2)
    summary.fold(np.array([5, 5, 6, 7, 8, 8], dtype=np.int64))
    assert summary.frequencies == {5: 2, 6: 1} and summary.other == 3


def test_other_inputs_get_whole_tensor_summaries_and_bytes_are_skipped() -> None:
    window = _window()
    window.fold_inputs({"img": np.ones((2, 3, 4), dtype=np.float32), "text": np.array([b"a", b"b"], dtype=object),
                        "score": np.array([0.5, 1.5])}, rows=2)
    assert sorted(window.features) == [("img", -1), ("score", -1)]
    assert window.features[("img", -1)].count == 24
    assert feature_name(("img", -1)) == "img" and feature_name(("x", 2)) == "x[2]"


def test_arrow_ipc_round_trip_keeps_every_statistic() -> None:
    window = _window(window_id="host:1:abc:7")
    window.names[("x", 1)] = "income"
    for r in requests(seed=3, count=5, rows=300, nan_fraction=0.05):
        window.fold_inputs(r, rows=300)
    back = decode_window(encode_window(window))
    assert (back.model, back.window_id, back.rows, back.start_ms) == ("m", "host:1:abc:7", 1500, 0)
    assert back.name_of(("x", 1)) == "income" and back.name_of(("x", 0)) == "x[0]"
    for key, original in window.features.items():
        copy = back.features[key]
        assert (copy.count, copy.missing, copy.mean, copy.m2, copy.min, copy.max, copy.frequencies) == (
            original.count, original.missing, original.mean, original.m2, original.min, original.max,
            original.frequencies)
        assert copy.sketch.get_quantiles([0.1, 0.5, 0.9]) == original.sketch.get_quantiles([0.1, 0.5, 0.9])


def test_a_foreign_payload_is_rejected() -> None:
    with pytest.raises(ValueError):  # pyarrow's ArrowInvalid is a ValueError
        decode_window(b"not arrow")


def test_empty_summary_reports_nan_spread() -> None:
    assert math.isnan(FeatureSummary.empty("numeric").std)


@pytest.mark.parametrize("with_nan", [False, True], ids=["finite", "with-nan"])
def test_folding_a_matrix_in_steps_equals_folding_it_at_once(with_nan: bool) -> None:
    matrix = np.random.default_rng(11).standard_normal((40, 100)).astype(np.float32)
    if with_nan:
        matrix[3, 57] = np.nan  # the group holding column 57 takes the per-column path
    stepped = WindowSummary(model="m", window_id="a", producer="p", start_ms=0, end_ms=1)
    steps = sum(1 for _ in stepped.fold_matrix_steps("x", matrix, block_columns=8, block_values=40 * 32))
    # groups of 32 columns reduced at once (4 groups), each then folded 8 columns a step
    assert steps == 4 + math.ceil(32 / 8) * 3 + math.ceil(4 / 8)
    assert len(stepped.features) == 100
    for j in range(100):
        assert_summary_matches(stepped.features[("x", j)], matrix[:, j])
