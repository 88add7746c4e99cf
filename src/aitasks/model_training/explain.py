"""Why the recommender recommends a track: feature attributions and nearest played tracks.

Two explanations per (user, recommended track):

* **Feature attributions of the user tower** (integrated gradients, captum): how much each dense user
  feature (plays, skip rate, the genre affinity slots ``user_genre_affinity_*``, ...) moved the score
  ``u . v`` of the track, relative to an average listener (the baseline is every standardised feature at
  0, the training mean; id and categorical embeddings stay the user's own). Attributions add up to
  ``score(user) - score(average listener)`` up to the integral's error, reported as ``delta``.
* **Nearest played tracks** ("recommended because you played X"): the user's played tracks whose item
  vectors are closest (cosine) to the recommended track's vector.

:func:`render_html` renders them as a self-contained HTML page in the house style of the evaluation
report (inline SVG and CSS, no script, no link, a restrictive Content-Security-Policy, every text
escaped).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from aitasks.runtime.errors import FieldIssue, InvalidInputError

if TYPE_CHECKING:
    from aitasks.model_training.two_tower import TwoTowerModel

__all__ = [
    "Attribution",
    "Explanation",
    "Neighbour",
    "UserExplanations",
    "attribute_user",
    "explain_users",
    "nearest_played",
    "render_html",
]

_TASK: Final = "model.explain"


class Attribution(BaseModel):
    """One dense user feature's share of a score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    feature: str
    label: str = Field(description="The feature with what it means (a genre slot's genre).")
    value: float | None = Field(description="The user's raw value (None: missing, imputed as the mean).")
    attribution: float


class Neighbour(BaseModel):
    """A played track close to the recommended one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    track_id: str
    similarity: float
    plays: int


class Explanation(BaseModel):
    """One recommended track of one user, explained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    track_id: str
    rank: int
    score: float
    baseline_score: float = Field(description="The score an average listener (all features at the mean) gets.")
    delta: float = Field(description="Integrated gradients' completeness error: sum - (score - baseline_score).")
    attributions: list[Attribution]
    because: list[Neighbour]


class UserExplanations(BaseModel):
    """A user's top recommendations, explained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    played: int
    items: list[Explanation]


def attribute_user(
    model: TwoTowerModel,
    idx: int,
    dense: np.ndarray,
    cat: np.ndarray,
    item_vectors: np.ndarray,
    *,
    steps: int = 32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrated gradients of ``score_j = user(dense) . v_j`` over one user's standardised dense features.

    Args:
        model: The two-tower model (eval mode).
        idx: The user's vocabulary index.
        dense: The user's standardised dense features ``[D]`` (as the tower sees them).
        cat: The user's categorical codes ``[C]``.
        item_vectors: Item vectors ``[K, E]`` to explain the scores of.
        steps: Integration steps (Gauss-Legendre).

    Returns:
        ``(attributions [K, D], scores [K], baseline scores [K], deltas [K])``.
    """
    import torch

    from aitasks.platform.compute import integrated_gradients

    integrated = integrated_gradients()

    if steps < 2:
        raise InvalidInputError(_TASK, [FieldIssue("steps", "must be >= 2")])
    vectors = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
    idx_t = torch.tensor([idx], dtype=torch.int64)
    cat_t = torch.from_numpy(np.ascontiguousarray(cat, dtype=np.int64)).reshape(1, -1)
    x = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).reshape(1, -1)
    base = torch.zeros_like(x)

    def score(d: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = d.shape[0]
        u: torch.Tensor = model.user(idx_t.expand(n), d, cat_t.expand(n, -1))
        out: torch.Tensor = (u * target).sum(dim=1)
        return out

    ig = integrated(score)
    attrs, scores, bases, deltas = [], [], [], []
    was_training = model.training
    model.eval()
    try:
        for v in vectors:
            target = v.reshape(1, -1)
            a, delta = ig.attribute(
                x, baselines=base, additional_forward_args=(target,), n_steps=steps, return_convergence_delta=True
            )
            with torch.no_grad():
                scores.append(float(score(x, target)[0]))
                bases.append(float(score(base, target)[0]))
            attrs.append(a.detach().numpy()[0])
            deltas.append(float(delta[0]))
    finally:
        model.train(was_training)
    return np.asarray(attrs), np.asarray(scores), np.asarray(bases), np.asarray(deltas)


def nearest_played(
    item_vec: np.ndarray, played_vecs: np.ndarray, played_ids: Sequence[str], plays: Sequence[int], n: int
) -> list[Neighbour]:
    """The ``n`` played tracks most similar (cosine of unit vectors) to ``item_vec``; ties: more plays, then id."""
    if len(played_ids) == 0:
        return []
    sims = played_vecs @ item_vec
    order = sorted(range(len(played_ids)), key=lambda i: (-float(sims[i]), -int(plays[i]), played_ids[i]))
    return [Neighbour(track_id=played_ids[i], similarity=float(sims[i]), plays=int(plays[i])) for i in order[:n]]


def _labels(features: Sequence[str], model_dir: Path) -> list[str]:
    """Feature names with the genre of each affinity slot, from the model's vocabulary when it has one."""
    from aitasks.data_processing.contract import genre_affinity_column
    from aitasks.model_training.recommender import read_vocabularies

    vocab = read_vocabularies(model_dir)
    genre = {}
    if vocab is not None:
        for slot, term in enumerate(vocab.genres.terms[:16]):
            genre[genre_affinity_column(slot)] = term.label or term.key
    return [f"{f} ({genre[f]})" if f in genre else f for f in features]


def explain_users(
    model_dir: Path,
    ts_dir: Path,
    *,
    users: int = 5,
    k: int = 5,
    neighbours: int = 3,
    top_features: int = 8,
    steps: int = 32,
) -> list[UserExplanations]:
    """Explain the top-``k`` recommendations (played tracks left out) of ``users`` held-out users.

    Users are the held-out users of the training set with the most played tracks (ties: by id), so the
    "because you played" part has material; features are those at the split (``users.parquet``).

    Raises:
        InvalidInputError: A count out of range.
        DataFormatError: A file of the model or the training set is missing or malformed.
    """
    from aitasks.model_training.dataset import tower_inputs
    from aitasks.model_training.recommender import _read, embed_for_holdout, load_holdout
    from aitasks.model_training.two_tower import _normalise, load_model

    issues = [
        FieldIssue(name, f"must be in [1, {hi}]")
        for name, v, hi in (
            ("users", users, 1000),
            ("k", k, 100),
            ("neighbours", neighbours, 20),
            ("top_features", top_features, 100),
        )
        if not 1 <= v <= hi
    ]
    if issues:
        raise InvalidInputError(_TASK, issues)
    model, user_vocab, _ = load_model(model_dir)
    spec = model.config.spec
    holdout = load_holdout(ts_dir, exclude_seen=True)
    uv, iv = embed_for_holdout(model_dir, ts_dir, holdout)
    assert holdout.exclude is not None
    played_counts = _read(ts_dir, "train.parquet").group_by("user_id", "track_id").agg(n=pl.len())
    row_of = {t: i for i, t in enumerate(holdout.item_ids)}
    n_played = [len(x) for x in holdout.exclude]
    chosen = sorted(range(len(holdout.user_ids)), key=lambda i: (-n_played[i], holdout.user_ids[i]))[:users]
    frame = _read(ts_dir, "users.parquet")
    raw = frame.select(list(spec.user_dense)).to_numpy().astype(np.float32)
    inputs = tower_inputs(
        frame, id_column="user_id", vocab=user_vocab, dense=spec.user_dense, categorical=spec.user_categorical
    )
    dense = _normalise(inputs.dense, model.config.user_mean, model.config.user_std)
    labels = _labels(spec.user_dense, model_dir)
    out = []
    for u in chosen:
        user_id = holdout.user_ids[u]
        scores = iv @ uv[u]
        scores[holdout.exclude[u]] = -np.inf
        top = [int(j) for j in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[j])]
        counts = played_counts.filter(pl.col("user_id") == user_id)
        played = [(row_of[t], t, int(n)) for t, n in zip(counts["track_id"], counts["n"], strict=True) if t in row_of]
        p_rows = np.asarray([r for r, _, _ in played], dtype=np.int64)
        attrs, s, b, d = attribute_user(model, int(inputs.idx[u]), dense[u], inputs.cat[u], iv[top], steps=steps)
        items = []
        for rank, (j, a) in enumerate(zip(top, attrs, strict=True), start=1):
            order = np.argsort(-np.abs(a), kind="stable")[:top_features]
            items.append(
                Explanation(
                    track_id=holdout.item_ids[j],
                    rank=rank,
                    score=float(s[rank - 1]),
                    baseline_score=float(b[rank - 1]),
                    delta=float(d[rank - 1]),
                    attributions=[
                        Attribution(
                            feature=spec.user_dense[f],
                            label=labels[f],
                            value=None if np.isnan(raw[u, f]) else float(raw[u, f]),
                            attribution=float(a[f]),
                        )
                        for f in order
                    ],
                    because=nearest_played(
                        iv[j], iv[p_rows], [t for _, t, _ in played], [n for _, _, n in played], neighbours
                    ),
                )
            )
        out.append(UserExplanations(user_id=user_id, played=len(played), items=items))
    return out


# ---------------------------------------------------------------------------------------- report


def _bars_svg(attrs: Sequence[Attribution], width: int = 560) -> str:
    """Horizontal bars of attributions around a zero line (green raises the score, red lowers it)."""
    esc = html.escape
    row, label_w = 18, 260
    top = max((abs(a.attribution) for a in attrs), default=0.0) or 1.0
    half = (width - label_w - 70) / 2
    zero = label_w + half
    height = row * len(attrs) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="feature attributions">',
        f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height}" stroke="#57606a" stroke-width="1"/>',
    ]
    for i, a in enumerate(attrs):
        y = 4 + i * row
        w = abs(a.attribution) / top * half
        x = zero if a.attribution >= 0 else zero - w
        color = "#1a7f37" if a.attribution >= 0 else "#cf222e"
        parts.append(f'<text x="0" y="{y + 12}" font-size="11" fill="#1f2328">{esc(a.label[:42])}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{max(w, 0.5):.1f}" height="{row - 6}" fill="{color}"/>')
        tx = zero + half + 6
        parts.append(f'<text x="{tx:.1f}" y="{y + 12}" font-size="11" fill="#1f2328">{a.attribution:+.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(explanations: Sequence[UserExplanations], *, title: str, facts: dict[str, str]) -> str:
    """The explanations as one self-contained HTML page (no script, no link, CSP, escaped text)."""
    esc = html.escape
    sections = []
    for ue in explanations:
        rows = []
        for e in ue.items:
            because = ", ".join(f"{esc(n.track_id)} ({n.similarity:.2f})" for n in e.because) or "no played track"
            rows.append(
                f"<tr><td>{e.rank}</td><td>{esc(e.track_id)}</td><td>{e.score:.4f}</td>"
                f"<td>{e.baseline_score:.4f}</td><td>{sum(a.attribution for a in e.attributions):+.4f}</td>"
                f"<td>{abs(e.delta):.1e}</td><td>{because}</td></tr>"
            )
        first = ue.items[0] if ue.items else None
        chart = (
            ""
            if first is None
            else f"<h3>Top user features behind #1 ({esc(first.track_id)})</h3>\n{_bars_svg(first.attributions)}\n"
            "<table><thead><tr><th>feature</th><th>value</th><th>attribution</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td>{esc(a.label)}</td><td>{'missing' if a.value is None else f'{a.value:.4g}'}</td>"
                f"<td>{a.attribution:+.4f}</td></tr>"
                for a in first.attributions
            )
            + "</tbody></table>"
        )
        sections.append(
            f'<section data-user="{esc(ue.user_id)}"><h2>Listener {esc(ue.user_id)}</h2>'
            f"<p>{ue.played} played tracks; recommendations leave them out.</p>"
            "<table><thead><tr><th>rank</th><th>track</th><th>score</th><th>average listener</th>"
            "<th>shown features</th><th>|delta|</th><th>recommended because you played</th></tr></thead><tbody>"
            + "".join(rows)
            + f"</tbody></table>\n{chart}</section>"
        )
    fact_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items())
    note = (
        "Score = cosine of the user and track vectors. Attributions: integrated gradients of the score over the "
        "user tower's standardised dense features, from an average listener (every feature at its training mean) "
        "to this listener; green raises the score, red lowers it. They add up to score minus the average "
        "listener's score, up to |delta|. 'Because you played': the listener's played tracks whose vectors are "
        "closest to the recommended track (cosine)."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
td:last-child {{ text-align: left; }}
section {{ margin-bottom: 2em; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(note)}</p>
{"".join(sections)}
<h2>Facts</h2>
<table><tbody>{fact_rows}</tbody></table>
</body>
</html>
"""
