"""Generated catalog text: metadata records, the prompts built from them, and a corpus to train a small model.

No text model can be downloaded here, so the tests, the bench and the demo train a tiny one from
scratch (:mod:`aitasks.content_generation.tiny_models`) on text of the same shape as the prompt
templates (:data:`aitasks.content_generation.prompts.TEMPLATES`): a playlist's genre, mood and tracks
followed by a title or a description, a track followed by a blurb. Everything is drawn from fixed
word lists with a seeded generator, so the same seed gives the same catalog.
"""

from __future__ import annotations

import random
from typing import Any, Final

__all__ = ["catalog_records", "demo_prompts", "training_corpus"]

GENRES: Final = ("jazz", "rock", "pop", "techno", "folk", "soul", "ambient", "hip hop", "classical", "reggae")
MOODS: Final = ("late nights", "rainy mornings", "long drives", "focus", "the gym", "sunday brunch", "a road trip")
_ADJ: Final = ("blue", "golden", "quiet", "electric", "velvet", "midnight", "wild", "silver", "slow", "bright")
_NOUN: Final = ("hour", "river", "city", "heart", "signal", "garden", "echo", "highway", "dream", "fire")
_ARTIST_A: Final = ("Mira", "The Low", "Nova", "Kite", "Juniper", "Atlas", "Ruby", "Northern", "Echo", "Lumen")
_ARTIST_B: Final = ("Lane", "Tides", "Quartet", "Club", "Sound", "Collective", "Rivers", "Trio", "Park", "Orchestra")
_TITLE_WORDS: Final = ("Mix", "Sessions", "Essentials", "Radio", "Selection", "Diaries", "Hours", "Moods")
_DESC: Final = (
    "{Genre} picks for {mood}, from {a} to {b}.",
    "Warm {genre} tracks for {mood}, with {a} and {b}.",
    "The best of {genre} for {mood}: {a}, {b} and more.",
)
_BLURB: Final = (
    "A {adj} {genre} song about a {noun}, with a slow build and a big chorus.",
    "{artist} bring a {adj} {genre} sound to this track about a {noun}.",
    "A {adj} {genre} tune from {year}, made for a {noun} at night.",
)


def _title(rng: random.Random) -> str:
    return f"{rng.choice(_ADJ).title()} {rng.choice(_NOUN).title()}"


def _artist(rng: random.Random) -> str:
    return f"{rng.choice(_ARTIST_A)} {rng.choice(_ARTIST_B)}"


def catalog_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` track metadata records: ``{track_id, title, artist, genre, year}``."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    return [
        {
            "track_id": f"t_{i:06d}",
            "title": _title(rng),
            "artist": _artist(rng),
            "genre": rng.choice(GENRES),
            "year": rng.randint(1965, 2026),
        }
        for i in range(n)
    ]


def training_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` documents shaped like the rendered text prompts, each followed by its answer."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    docs = []
    for i in range(n):
        genre, mood = rng.choice(GENRES), rng.choice(MOODS)
        a, b = _artist(rng), _artist(rng)
        tracks = f"{_title(rng)}; {_title(rng)}"
        which = i % 3
        if which == 0:
            docs.append(
                f"Playlist: {genre} for {mood}. Tracks: {tracks}.\n"
                f"Title: {rng.choice(_ADJ).title()} {genre.title()} {rng.choice(_TITLE_WORDS)}"
            )
        elif which == 1:
            desc = rng.choice(_DESC).format(Genre=genre.title(), genre=genre, mood=mood, a=a, b=b)
            docs.append(f"Playlist: {genre} for {mood}. Tracks: {tracks}.\nDescription: {desc}")
        else:
            year = rng.randint(1965, 2026)
            blurb = rng.choice(_BLURB).format(
                adj=rng.choice(_ADJ), genre=genre, noun=rng.choice(_NOUN), artist=a, year=year
            )
            docs.append(f"Track: {_title(rng)} by {a}, {genre}, {year}.\nBlurb: {blurb}")
    return docs


def demo_prompts(records: list[dict[str, Any]], *, playlists: int = 2, blurbs: int = 2) -> list[dict[str, Any]]:
    """Prompt records from catalog metadata: playlist titles and descriptions per genre, track blurbs,
    one cover per playlist and one music clip per playlist.
    """
    by_genre: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_genre.setdefault(str(r["genre"]), []).append(r)
    out: list[dict[str, Any]] = []
    for i, (genre, tracks) in enumerate(sorted(by_genre.items())[:playlists]):
        mood = MOODS[i % len(MOODS)]
        meta = {"genre": genre, "mood": mood, "tracks": [f"{t['title']} by {t['artist']}" for t in tracks[:3]]}
        out.append({"id": f"pl-title-{i}", "kind": "text", "template": "playlist_title", "metadata": meta})
        out.append({"id": f"pl-desc-{i}", "kind": "text", "template": "playlist_description", "metadata": meta})
        out.append({"id": f"pl-cover-{i}", "kind": "image", "prompt": f"album cover art, {genre}, {mood}, bold shapes"})
        out.append({"id": f"pl-clip-{i}", "kind": "music", "prompt": f"a short {genre} loop for {mood}"})
    for r in records[:blurbs]:
        meta = {k: r[k] for k in ("title", "artist", "genre", "year")}
        out.append({"id": f"blurb-{r['track_id']}", "kind": "text", "template": "track_blurb", "metadata": meta})
    return out
