"""Feature drift between a reference (training) batch and a current (new) batch.

Per numeric feature the check computes:

* **PSI** (population stability index) over ``bins`` quantile bins of the *reference*:
  ``PSI = sum_i (c_i - r_i) * ln(c_i / r_i)`` where ``r_i`` and ``c_i`` are the shares of valid
  reference and current values in bin ``i``. Bin edges are the reference's interior quantiles; tied
  edges merge (a feature with few distinct values gets fewer bins, never empty duplicates), and a
  value equal to an edge falls into the lower bin. An empty bin would make the log infinite, so every
  share is floored at ``epsilon`` (:data:`PSI_EPSILON`, 1e-4) and the shares are renormalised to sum
  to 1: PSI stays finite and an empty bin adds a large but bounded term. Every term is ``>= 0``, so
  ``PSI >= 0`` and ``PSI(x, x) == 0``.
* **KS**: the two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``).
* null rate, invalid (NaN or infinite) rate and mean of the valid values, on both sides.

The rule: a feature **drifts** when ``PSI > psi_threshold`` **or** ``KS p-value < ks_pvalue_threshold``;
the report names which test fired. Only valid values (not null, finite) enter PSI, KS and means;
nulls and NaN/inf are counted and reported as rates instead of being dropped silently or poisoning
the statistics. A feature with no valid value on either side is ``unusable`` (reported, never
drifted, never a crash). Note that with large batches the KS p-value becomes very sensitive to
tiny shifts; PSI is the effect-size view.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
from pydantic import BaseModel, ConfigDict

from aitasks.runtime.errors import DataFormatError, FieldIssue, InvalidInputError

__all__ = [
    "PSI_EPSILON",
    "DriftReport",
    "FeatureDrift",
    "check_drift",
    "compute_drift",
    "default_feature_columns",
    "population_stability_index",
    "quantile_edges",
]

_TASK: Final = "data.drift"
#: Floor of a bin's share before renormalisation (keeps PSI finite when a bin is empty on one side).
PSI_EPSILON: Final = 1e-4

FloatArray = npt.NDArray[np.float64]


class FeatureDrift(BaseModel):
    """Drift statistics of one feature.

    Attributes:
        feature: Column name.
        status: ``drift``, ``ok`` or ``unusable`` (no valid value on one side).
        drifted: True when at least one test fired.
        fired: The tests that fired: subset of ``("psi", "ks")``, in that order.
        psi: Population stability index (None when unusable).
        ks_statistic: Two-sample KS statistic (None when unusable).
        ks_pvalue: Two-sample KS p-value (None when unusable).
        bins: Number of effective quantile bins (after merging tied edges; 0 when unusable).
        reference_count: Valid (non-null, finite) reference values.
        current_count: Valid current values.
        reference_null_rate: Share of null reference rows.
        current_null_rate: Share of null current rows.
        reference_invalid_rate: Share of NaN or infinite reference rows.
        current_invalid_rate: Share of NaN or infinite current rows.
        reference_mean: Mean of the valid reference values (None when there are none).
        current_mean: Mean of the valid current values (None when there are none).
        reason: Why the feature is unusable, else None.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature: str
    status: Literal["ok", "drift", "unusable"]
    drifted: bool
    fired: tuple[Literal["psi", "ks"], ...]
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    bins: int
    reference_count: int
    current_count: int
    reference_null_rate: float
    current_null_rate: float
    reference_invalid_rate: float
    current_invalid_rate: float
    reference_mean: float | None
    current_mean: float | None
    reason: str | None = None


class DriftReport(BaseModel):
    """Result of a drift check; JSON-serialisable (``model_dump_json``) and renderable as Markdown.

    Attributes:
        rule: The drift rule in words, with the thresholds.
        psi_threshold: PSI above this flags drift.
        ks_pvalue_threshold: KS p-value below this flags drift.
        bins: Requested number of quantile bins.
        psi_epsilon: Floor of a bin share in the PSI.
        reference_rows: Rows of the reference batch.
        current_rows: Rows of the current batch.
        features: Per-feature statistics, in the order checked.
        drifted_features: Names of the features that drifted.
        unusable_features: Names of the features that could not be compared.
        any_drift: True when at least one feature drifted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    psi_threshold: float
    ks_pvalue_threshold: float
    bins: int
    psi_epsilon: float
    reference_rows: int
    current_rows: int
    features: tuple[FeatureDrift, ...]
    drifted_features: tuple[str, ...]
    unusable_features: tuple[str, ...]
    any_drift: bool

    def to_markdown(self) -> str:
        """A readable summary and per-feature table (for a KFP ``Markdown`` artifact).

        Returns:
            Markdown text ending with a newline.
        """
        verdict = (
            f"**Drift detected** in {len(self.drifted_features)} of {len(self.features)} features: "
            + ", ".join(f"`{_md(f)}`" for f in self.drifted_features)
            if self.any_drift
            else f"**No drift** in {len(self.features)} features."
        )
        lines = [
            "# Feature drift report",
            "",
            verdict,
            "",
            f"- Rule: {self.rule}",
            f"- Rows: reference {self.reference_rows}, current {self.current_rows}",
            f"- PSI over {self.bins} reference quantile bins, empty bins floored at {self.psi_epsilon:g}",
        ]
        if self.unusable_features:
            lines.append("- Unusable (no valid values): " + ", ".join(f"`{_md(f)}`" for f in self.unusable_features))
        lines += [
            "",
            "| feature | status | fired | PSI | KS stat | KS p-value | mean ref | mean cur "
            "| null ref | null cur | invalid ref | invalid cur |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for f in self.features:
            status = f"**{f.status}**" if f.drifted else f.status
            cells = [
                f"`{_md(f.feature)}`",
                status,
                ", ".join(f.fired) or "-",
                _num(f.psi, ".4f"),
                _num(f.ks_statistic, ".4f"),
                _num(f.ks_pvalue, ".3g"),
                _num(f.reference_mean, ".4g"),
                _num(f.current_mean, ".4g"),
                f"{f.reference_null_rate:.1%}",
                f"{f.current_null_rate:.1%}",
                f"{f.reference_invalid_rate:.1%}",
                f"{f.current_invalid_rate:.1%}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# ----------------------------------------------------------------------------------- statistics


def quantile_edges(reference: FloatArray, bins: int) -> FloatArray:
    """Interior bin edges: the reference's ``1/bins .. (bins-1)/bins`` quantiles, ties merged.

    Args:
        reference: Valid (finite) reference values, at least one.
        bins: Requested number of bins (>= 2).

    Returns:
        Sorted unique edges; ``len(edges) + 1`` bins, the outer ones open-ended.
    """
    qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges: FloatArray = np.unique(np.quantile(reference, qs))
    return edges


def _shares(values: FloatArray, edges: FloatArray, epsilon: float) -> FloatArray:
    # side="left": a value equal to an edge lands in the lower bin, so a point mass at an edge stays whole.
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1).astype(np.float64)
    shares: FloatArray = np.maximum(counts / values.size, epsilon)
    normalised: FloatArray = shares / shares.sum()
    return normalised


def population_stability_index(
    reference: FloatArray, current: FloatArray, *, bins: int = 10, epsilon: float = PSI_EPSILON
) -> float:
    """PSI of ``current`` against quantile bins of ``reference`` (see the module doc).

    Args:
        reference: Valid (finite) reference values, at least one.
        current: Valid current values, at least one.
        bins: Requested number of quantile bins (>= 2).
        epsilon: Floor of a bin share before renormalisation (> 0).

    Returns:
        The PSI, ``>= 0``; 0 for identical samples.

    Raises:
        ValueError: A sample is empty or holds non-finite values.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs at least one value on each side")
    if not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        raise ValueError("PSI needs finite values; count and drop NaN/inf first")
    edges = quantile_edges(ref, bins)
    r = _shares(ref, edges, epsilon)
    c = _shares(cur, edges, epsilon)
    # Each term (c - r) * ln(c / r) is >= 0; clip guards the sum against -0.0 style rounding.
    return max(float(np.sum((c - r) * np.log(c / r))), 0.0)


# ---------------------------------------------------------------------------------------- check


def _is_excluded(name: str) -> bool:
    lower = name.lower()
    return lower in {"id", "ts", "timestamp"} or lower.endswith(("_id", "_ts", "_timestamp", "_at"))


def default_feature_columns(reference: pl.DataFrame, current: pl.DataFrame) -> list[str]:
    """Numeric columns present in both frames, except id and timestamp columns.

    Excluded by name: ``id``, ``ts``, ``timestamp`` and names ending in ``_id``, ``_ts``,
    ``_timestamp`` or ``_at`` (ids are labels, even when stored as integers, e.g. ``track_genre_id``).
    Booleans, strings and temporal columns are not numeric and never checked.

    Args:
        reference: Reference batch.
        current: Current batch.

    Returns:
        Column names in the reference's order.
    """
    return [
        name
        for name, dtype in reference.schema.items()
        if dtype.is_numeric()
        and name in current.columns
        and current.schema[name].is_numeric()
        and not _is_excluded(name)
    ]


def _check_thresholds(psi_threshold: float, ks_pvalue_threshold: float, bins: int) -> None:
    issues: list[FieldIssue] = []
    if not (isinstance(psi_threshold, int | float) and math.isfinite(psi_threshold) and psi_threshold > 0):
        issues.append(FieldIssue("psi_threshold", f"must be a finite number > 0, got {psi_threshold!r}"))
    if not (isinstance(ks_pvalue_threshold, int | float) and 0 < ks_pvalue_threshold < 1):
        issues.append(FieldIssue("ks_pvalue_threshold", f"must lie in (0, 1), got {ks_pvalue_threshold!r}"))
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        issues.append(FieldIssue("bins", f"must be an integer >= 2, got {bins!r}"))
    if issues:
        raise InvalidInputError(_TASK, issues)


def _resolve_features(reference: pl.DataFrame, current: pl.DataFrame, features: Sequence[str] | None) -> list[str]:
    if features is None:
        return default_feature_columns(reference, current)
    if isinstance(features, str):
        raise InvalidInputError(_TASK, [FieldIssue("features", "expected a sequence of column names, got a string")])
    issues: list[FieldIssue] = []
    for name in features:
        for side, frame in (("reference", reference), ("current", current)):
            if name not in frame.columns:
                issues.append(FieldIssue("features", f"column {name!r} missing from the {side} batch"))
            elif not frame.schema[name].is_numeric():
                issues.append(FieldIssue("features", f"column {name!r} is {frame.schema[name]} in the {side} batch"))
    if len(set(features)) != len(features):
        issues.append(FieldIssue("features", "duplicate column names"))
    if issues:
        raise InvalidInputError(_TASK, issues)
    return list(features)


def _split(series: pl.Series) -> tuple[FloatArray, float, float]:
    """Valid values (float64, finite), null rate and invalid (NaN/inf) rate of ``series``."""
    n = series.len()
    if n == 0:
        return np.empty(0), 0.0, 0.0
    nulls = series.null_count()
    values = series.drop_nulls().cast(pl.Float64).to_numpy()
    finite = np.isfinite(values)
    invalid = int(values.size - finite.sum())
    return values[finite], nulls / n, invalid / n


def _feature_drift(
    name: str, ref: pl.Series, cur: pl.Series, psi_threshold: float, ks_pvalue_threshold: float, bins: int
) -> FeatureDrift:
    from scipy.stats import ks_2samp

    r, r_null, r_inv = _split(ref)
    c, c_null, c_inv = _split(cur)
    base: dict[str, object] = {
        "feature": name,
        "reference_count": int(r.size),
        "current_count": int(c.size),
        "reference_null_rate": r_null,
        "current_null_rate": c_null,
        "reference_invalid_rate": r_inv,
        "current_invalid_rate": c_inv,
        "reference_mean": float(r.mean()) if r.size else None,
        "current_mean": float(c.mean()) if c.size else None,
    }
    if r.size == 0 or c.size == 0:
        side = " and ".join(s for s, v in (("reference", r), ("current", c)) if v.size == 0)
        return FeatureDrift.model_validate(
            {
                **base,
                "status": "unusable",
                "drifted": False,
                "fired": (),
                "psi": None,
                "ks_statistic": None,
                "ks_pvalue": None,
                "bins": 0,
                "reason": f"no valid (non-null, finite) values in the {side} batch",
            }
        )
    psi = population_stability_index(r, c, bins=bins)
    ks = ks_2samp(r, c)
    ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    fired: list[Literal["psi", "ks"]] = []
    if psi > psi_threshold:
        fired.append("psi")
    if ks_p < ks_pvalue_threshold:
        fired.append("ks")
    return FeatureDrift.model_validate(
        {
            **base,
            "status": "drift" if fired else "ok",
            "drifted": bool(fired),
            "fired": tuple(fired),
            "psi": psi,
            "ks_statistic": ks_stat,
            "ks_pvalue": ks_p,
            "bins": int(quantile_edges(r, bins).size + 1),
        }
    )


def compute_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    *,
    features: Sequence[str] | None = None,
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
    bins: int = 10,
) -> DriftReport:
    """Compare each numeric feature of ``current`` with ``reference`` (PSI and KS, see the module doc).

    Args:
        reference: Reference (training) batch.
        current: Current (new) batch.
        features: Columns to check; None for :func:`default_feature_columns`.
        psi_threshold: PSI above this flags drift (> 0).
        ks_pvalue_threshold: KS p-value below this flags drift (in (0, 1)).
        bins: Number of reference quantile bins for the PSI (>= 2).

    Returns:
        The report; a feature drifts when ``PSI > psi_threshold`` or ``KS p-value < ks_pvalue_threshold``.

    Raises:
        InvalidInputError: A threshold is out of range, or a named feature is missing or not numeric.
    """
    _check_thresholds(psi_threshold, ks_pvalue_threshold, bins)
    names = _resolve_features(reference, current, features)
    results = tuple(
        _feature_drift(n, reference[n], current[n], psi_threshold, ks_pvalue_threshold, bins) for n in names
    )
    drifted = tuple(f.feature for f in results if f.drifted)
    return DriftReport(
        rule=f"drift when PSI > {psi_threshold:g} or KS p-value < {ks_pvalue_threshold:g}",
        psi_threshold=float(psi_threshold),
        ks_pvalue_threshold=float(ks_pvalue_threshold),
        bins=bins,
        psi_epsilon=PSI_EPSILON,
        reference_rows=reference.height,
        current_rows=current.height,
        features=results,
        drifted_features=drifted,
        unusable_features=tuple(f.feature for f in results if f.status == "unusable"),
        any_drift=bool(drifted),
    )


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataFormatError(str(path), "file does not exist")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataFormatError(str(path), f"not a readable Parquet file: {exc}") from exc


def check_drift(
    reference: Path,
    current: Path,
    *,
    features: Sequence[str] | None = None,
    psi_threshold: float = 0.2,
    ks_pvalue_threshold: float = 0.01,
    bins: int = 10,
) -> DriftReport:
    """:func:`compute_drift` over two Parquet files.

    Args:
        reference: Reference batch (Parquet).
        current: Current batch (Parquet).
        features: Columns to check; None for :func:`default_feature_columns`.
        psi_threshold: PSI above this flags drift (> 0).
        ks_pvalue_threshold: KS p-value below this flags drift (in (0, 1)).
        bins: Number of reference quantile bins for the PSI (>= 2).

    Returns:
        The report.

    Raises:
        DataFormatError: A file is missing or not Parquet.
        InvalidInputError: A threshold is out of range, or a named feature is missing or not numeric.
    """
    _check_thresholds(psi_threshold, ks_pvalue_threshold, bins)
    return compute_drift(
        _read(reference),
        _read(current),
        features=features,
        psi_threshold=psi_threshold,
        ks_pvalue_threshold=ks_pvalue_threshold,
        bins=bins,
    )
