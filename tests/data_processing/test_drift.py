"""Drift check: PSI and KS per feature, explicit rule, NaN/null accounting, unusable features."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aitasks.data_processing.drift import (
    DriftReport,
    FeatureDrift,
    check_drift,
    compute_drift,
    default_feature_columns,
    population_stability_index,
    quantile_edges,
)
from aitasks.runtime.errors import DataFormatError, InvalidInputError

N = 4_000


def normal(mean: float = 0.0, scale: float = 1.0, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, scale, N)


def frame(**columns: object) -> pl.DataFrame:
    return pl.DataFrame(columns)


def feature(report: DriftReport, name: str) -> FeatureDrift:
    (found,) = [f for f in report.features if f.feature == name]
    return found


def test_identical_distributions_do_not_drift() -> None:
    x = normal(seed=1)
    report = compute_drift(frame(x=x), frame(x=x))
    f = feature(report, "x")
    assert f.psi == 0.0
    assert f.ks_pvalue == pytest.approx(1.0)
    assert f.status == "ok"
    assert f.fired == ()
    assert not report.any_drift
    assert report.drifted_features == ()

    # Two independent samples of the same distribution: tiny PSI, no verdict.
    same = compute_drift(frame(x=normal(seed=1)), frame(x=normal(seed=2)))
    assert feature(same, "x").psi < 0.02  # type: ignore[operator]
    assert not same.any_drift


def test_shifted_mean_is_flagged_by_psi() -> None:
    report = compute_drift(frame(x=normal(seed=1), y=normal(seed=3)), frame(x=normal(1.0, seed=2), y=normal(seed=4)))
    x = feature(report, "x")
    assert x.psi is not None
    assert x.psi > report.psi_threshold
    assert x.fired == ("psi", "ks")
    assert x.drifted
    assert x.current_mean == pytest.approx(1.0, abs=0.1)
    assert report.drifted_features == ("x",)
    assert report.any_drift
    assert not feature(report, "y").drifted


def test_scale_change_is_caught_by_ks_alone() -> None:
    report = compute_drift(frame(x=normal(seed=1)), frame(x=normal(0.0, 1.3, seed=2)))
    x = feature(report, "x")
    assert x.psi is not None
    assert x.psi < 0.2, "a 30% scale change moves few quantile bins"
    assert x.fired == ("ks",)
    assert x.drifted
    assert report.rule == "drift when PSI > 0.2 or KS p-value < 0.01"


def test_thresholds_change_the_verdict() -> None:
    ref, cur = frame(x=normal(seed=1)), frame(x=normal(0.1, seed=2))
    strict = compute_drift(ref, cur, psi_threshold=0.005, ks_pvalue_threshold=0.5)
    assert feature(strict, "x").fired == ("psi", "ks")
    lenient = compute_drift(ref, cur, psi_threshold=5.0, ks_pvalue_threshold=1e-12)
    assert not lenient.any_drift
    psi_only = compute_drift(ref, cur, psi_threshold=0.005, ks_pvalue_threshold=1e-12)
    assert feature(psi_only, "x").fired == ("psi",)
    assert psi_only.psi_threshold == 0.005


def test_nan_and_inf_are_counted_not_averaged() -> None:
    x = normal(seed=1)
    dirty = x.copy()
    dirty[:400] = np.nan
    dirty[400:600] = np.inf
    ref = pl.DataFrame({"x": pl.Series(x)})
    cur = pl.DataFrame({"x": pl.Series(dirty).extend(pl.Series([None], dtype=pl.Float64))})
    f = feature(compute_drift(ref, cur), "x")
    assert f.current_invalid_rate == pytest.approx(600 / (N + 1))
    assert f.current_null_rate == pytest.approx(1 / (N + 1))
    assert f.reference_invalid_rate == 0.0
    assert f.current_count == N - 600
    assert f.current_mean == pytest.approx(float(x[600:].mean()))
    assert f.psi is not None
    assert math.isfinite(f.psi)
    assert math.isfinite(f.ks_statistic)  # type: ignore[arg-type]


def test_all_null_or_all_nan_is_unusable_not_a_crash() -> None:
    ref = pl.DataFrame({"x": normal(seed=1), "gone": pl.Series([None] * N, dtype=pl.Float64)})
    cur = pl.DataFrame({"x": normal(seed=2), "gone": pl.Series([float("nan")] * N)})
    report = compute_drift(ref, cur)
    gone = feature(report, "gone")
    assert gone.status == "unusable"
    assert not gone.drifted
    assert gone.psi is None
    assert gone.reason is not None
    assert "reference and current" in gone.reason
    assert gone.reference_null_rate == 1.0
    assert gone.current_invalid_rate == 1.0
    assert report.unusable_features == ("gone",)
    assert "gone" not in report.drifted_features
    assert "unusable" in report.to_markdown().lower()

    empty = compute_drift(ref.head(0), cur, features=["x"])
    assert feature(empty, "x").status == "unusable"


def test_default_features_skip_ids_timestamps_and_non_numeric() -> None:
    ts = datetime(2026, 10, 1, tzinfo=UTC)
    ref = pl.DataFrame(
        {
            "user_id": ["a", "b"],
            "track_genre_id": [1, 2],
            "event_timestamp": [ts, ts],
            "flag": [True, False],
            "plays": [1, 2],
            "rate": [0.5, 0.25],
            "only_ref": [1.0, 2.0],
        }
    )
    cur = ref.drop("only_ref")
    assert default_feature_columns(ref, cur) == ["plays", "rate"]
    assert [f.feature for f in compute_drift(ref, cur).features] == ["plays", "rate"]


def test_bad_parameters_name_the_field() -> None:
    df = frame(x=[1.0, 2.0])
    with pytest.raises(InvalidInputError) as info:
        compute_drift(df, df, psi_threshold=0.0, ks_pvalue_threshold=1.0, bins=1)
    assert set(info.value.fields) == {"psi_threshold", "ks_pvalue_threshold", "bins"}
    with pytest.raises(InvalidInputError, match="psi_threshold"):
        compute_drift(df, df, psi_threshold=float("nan"))
    with pytest.raises(InvalidInputError, match="missing from the current"):
        compute_drift(df, df.rename({"x": "z"}), features=["x"])
    with pytest.raises(InvalidInputError, match="features"):
        compute_drift(df, df, features="x")
    with pytest.raises(InvalidInputError, match="is String"):
        compute_drift(frame(s=["a"]), frame(s=["b"]), features=["s"])


def test_report_is_json_and_markdown(tmp_path: Path) -> None:
    ref, cur = tmp_path / "ref.parquet", tmp_path / "cur.parquet"
    frame(x=normal(seed=1), y=normal(seed=3)).write_parquet(ref)
    frame(x=normal(2.0, seed=2), y=normal(seed=4)).write_parquet(cur)
    report = check_drift(ref, cur, bins=5)
    assert report.bins == 5
    assert feature(report, "x").bins == 5
    assert DriftReport.model_validate_json(report.model_dump_json()) == report
    assert json.loads(report.model_dump_json())["drifted_features"] == ["x"]
    md = report.to_markdown()
    assert md.startswith("# Feature drift report")
    assert "**Drift detected** in 1 of 2 features: `x`" in md
    assert "| `x` | **drift** | psi, ks |" in md
    assert "| `y` | ok | - |" in md
    with pytest.raises(DataFormatError, match="does not exist"):
        check_drift(tmp_path / "nope.parquet", cur)
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(DataFormatError, match="Parquet"):
        check_drift(ref, tmp_path / "junk.parquet")


def test_quantile_bins_merge_ties_and_keep_point_masses_whole() -> None:
    ref = np.array([0.0] * 70 + [1.0, 2.0, 3.0] * 10)
    edges = quantile_edges(ref, 10)
    assert edges[0] == 0.0
    assert len(set(edges.tolist())) == len(edges)
    assert population_stability_index(ref, ref.copy()) == 0.0
    # Moving the point mass at 0 to 3 is a big drift; PSI stays finite despite empty bins.
    moved = np.where(ref == 0.0, 3.0, ref)
    assert 1.0 < population_stability_index(ref, moved) < 50.0


_floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    x=st.lists(_floats, min_size=1, max_size=200),
    y=st.lists(_floats, min_size=1, max_size=200),
    bins=st.integers(2, 20),
)
def test_property_psi_is_nonnegative_and_zero_on_itself(x: list[float], y: list[float], bins: int) -> None:
    a, b = np.array(x), np.array(y)
    assert population_stability_index(a, b, bins=bins) >= 0.0
    assert population_stability_index(a, a.copy(), bins=bins) == pytest.approx(0.0, abs=1e-12)
    assert population_stability_index(a, np.random.default_rng(0).permutation(a), bins=bins) == pytest.approx(
        0.0, abs=1e-12
    )
