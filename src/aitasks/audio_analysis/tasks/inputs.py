"""Where the audio pipeline starts: ``audio.source`` (the catalog) and ``audio.list_catalog`` (its shards)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from aitasks.runtime.retry import RetryPolicy
from aitasks.runtime.task import (
    InputLocation,
    Metric,
    OutputArtifact,
    Runtime,
    TaskContext,
    TaskModel,
    ai_task,
    storage_of,
)

LISTING_FILE = "listing.json"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# ------------------------------------------------------------------------------------ source


class SourceParams(TaskModel):
    catalog_root: InputLocation = Field(
        default="", description="Existing catalog root; empty: generate the demo catalog."
    )
    labelled_root: InputLocation = Field(default="", description="Existing labelled folder; empty: the generated one.")
    tracks: int = Field(default=48, ge=1, le=100_000, description="Generated tracks (demo catalog only).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the generated catalog.")
    min_seconds: float = Field(default=20.0, gt=0, le=600, description="Shortest generated track.")
    max_seconds: float = Field(default=40.0, gt=0, le=600, description="Longest generated track.")
    labelled_per_class: int = Field(default=24, ge=2, le=10_000, description="Generated labelled clips per class.")

    _nul = field_validator("catalog_root", "labelled_root")(_no_nul)


class SourceResult(TaskModel):
    catalog_root: str
    labelled_root: str
    generated: bool
    planted: dict[str, str]


@ai_task(name="audio.source", version="1.0.0", retry=RetryPolicy(max_attempts=2))
def source_task(params: SourceParams, ctx: TaskContext) -> SourceResult:
    """The catalog to analyse: the given one, or a generated synthetic catalog with planted problems.

    EN: Passes an existing catalog (and labelled folder) through; without one, writes the documented
    synthetic catalog under the storage root: procedural tracks of four classes in OGG, FLAC, MP3 and
    WAV at 44.1/48 kHz, mono and stereo, mastered to release loudness, plus planted problems (a
    near-duplicate, silence, clipping, an empty file, a truncated file, a playlist named .wav, NaN
    samples) and a labelled training folder. Production refuses to generate it.
    FR: Transmet un catalogue existant (et un dossier étiqueté) ; sans catalogue, écrit sous la racine
    de stockage le catalogue synthétique documenté : des titres procéduraux de quatre classes en OGG,
    FLAC, MP3 et WAV à 44,1/48 kHz, mono et stéréo, au niveau sonore d'une sortie commerciale, plus des
    problèmes plantés (un quasi-doublon, du silence, de l'écrêtage, un fichier vide, un fichier
    tronqué, une liste de lecture nommée .wav, des échantillons NaN) et un dossier d'entraînement
    étiqueté. La production refuse de le générer.
    DE: Reicht einen vorhandenen Katalog (und gelabelten Ordner) durch; ohne Katalog schreibt er unter
    der Speicherwurzel den dokumentierten synthetischen Katalog: prozedurale Titel aus vier Klassen in
    OGG, FLAC, MP3 und WAV mit 44,1/48 kHz, mono und stereo, auf Veröffentlichungslautheit gemastert,
    dazu eingebaute Probleme (ein Beinahe-Duplikat, Stille, Clipping, eine leere Datei, eine
    abgeschnittene Datei, eine als .wav benannte Playlist, NaN-Samples) und einen gelabelten
    Trainingsordner. In Produktion wird er nicht erzeugt.
    """
    import tempfile

    from aitasks.audio_analysis.demo_catalog import write_demo_catalog
    from aitasks.runtime.errors import FieldIssue, InvalidInputError
    from aitasks.runtime.storage import is_gcs, put_tree

    if params.catalog_root:
        return SourceResult(
            catalog_root=params.catalog_root, labelled_root=params.labelled_root, generated=False, planted={}
        )
    ctx.settings.refuse_synthetic("catalog_root")
    if params.min_seconds > params.max_seconds:
        raise InvalidInputError(ctx.task, [FieldIssue("min_seconds", "must not exceed max_seconds")])
    catalog = ctx.output_uri("catalog")
    labelled = catalog + "-labelled"  # written beside the catalog by write_demo_catalog
    options: dict[str, Any] = {
        "tracks": params.tracks,
        "seed": params.seed,
        "labelled_per_class": params.labelled_per_class,
        "seconds": (params.min_seconds, params.max_seconds),
    }
    if is_gcs(catalog):
        # Written locally, then uploaded: the steps that read it run in other pods.
        with tempfile.TemporaryDirectory(prefix="aitasks-catalog-") as tmp:
            truth = write_demo_catalog(Path(tmp) / "catalog", **options)
            put_tree(Path(tmp) / "catalog", catalog, ctx.storage)
            if params.labelled_per_class:
                put_tree(Path(tmp) / "catalog-labelled", labelled, ctx.storage)
    else:
        truth = write_demo_catalog(Path(catalog), **options)
    planted = truth["planted"]
    assert isinstance(planted, dict)
    return SourceResult(
        catalog_root=catalog,
        labelled_root=params.labelled_root or labelled,
        generated=True,
        planted={str(k): str(v) for k, v in planted.items()},
    )


# ------------------------------------------------------------------------------ list catalog


class ListCatalogParams(TaskModel):
    catalog_root: InputLocation = Field(min_length=1, description="Catalog root: a local directory or a gs:// prefix.")
    shards: int = Field(default=4, ge=1, le=256, description="Split the catalog into at most this many shards.")
    limit: int = Field(default=0, ge=0, description="Analyse only the first N files by key (0: all).")
    manifest_uri: InputLocation = Field(
        default="",
        description="Optional manifest of the keys (paths under the root) to analyse: plain text (one per line), "
        ".csv/.tsv (header with 'path' and optional 'track_id') or .jsonl (objects with 'path', 'track_id').",
    )
    track_ids: Literal["stem", "key"] = Field(
        default="stem",
        description="Track ids of files without a manifest track_id: 'stem' (the file stem when it is a valid id, "
        "else the key's normalised id) or 'key' (always '<slug>-<16 hex of the key's sha256>').",
    )

    _nul = field_validator("catalog_root", "manifest_uri")(_no_nul)


class ListCatalogResult(TaskModel):
    listing_uri: OutputArtifact
    tracks: Annotated[int, Metric()]
    refused: Annotated[int, Metric()]
    skipped_non_audio: Annotated[int, Metric()]
    shard_indices: list[int]
    refusal_reasons: dict[str, int]

    def artifact_metadata(self, field: str) -> dict[str, Any]:
        return {"tracks": self.tracks}


def _catalog_state(params: Any, rt: Runtime) -> dict[str, Any]:
    """The catalog's current content (keys, sizes, modification times): new files mean a new listing."""
    from aitasks.runtime.hashing import sha256_json
    from aitasks.runtime.storage import is_gcs

    root = params.catalog_root
    manifest = (
        {"manifest": storage_of(params.manifest_uri, rt).content_hash(params.manifest_uri)}
        if getattr(params, "manifest_uri", "")
        else {}
    )
    if is_gcs(root):
        keys = sorted(storage_of(root, rt).list(root.rstrip("/") + "/"))
        return {"catalog": sha256_json(keys), **manifest}
    rows = []
    base = Path(root)
    for dirpath, _dirs, files in os.walk(base, followlinks=False):
        for name in files:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            rows.append((p.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))
    return {"catalog": sha256_json(sorted(rows)), **manifest}


@ai_task(name="audio.list_catalog", version="1.1.0", retry=RetryPolicy(max_attempts=3), state=_catalog_state)
def list_catalog_task(params: ListCatalogParams, ctx: TaskContext) -> ListCatalogResult:
    """List the audio catalog, refuse unsafe paths and split it into shards.

    EN: Walks the catalog root (a directory or a gs:// prefix) without following links out of it and
    gives each audio file a track id that depends on its path only: the file stem when it is a valid
    id, else a readable slug of the stem plus a 16-hex hash of the path (always so with
    track_ids="key"), or the track_id column of a manifest; the original path is kept beside it.
    Refuses links that escape the root and files that would share a track id (with a reason each),
    skips non-audio files and splits the rest into balanced shards for parallel analysis. With a
    manifest (plain text, CSV/TSV or JSONL, told from its name) only its files are listed and every
    row gets an outcome with a reason; a manifest not in its format is refused with a clear error.
    FR: Parcourt la racine du catalogue (un répertoire ou un préfixe gs://) sans suivre les liens qui en
    sortent et donne à chaque fichier audio un identifiant de titre qui ne dépend que de son chemin :
    le nom sans extension s'il est un identifiant valide, sinon un nom lisible suivi d'une empreinte
    de 16 caractères hexadécimaux du chemin (toujours avec track_ids="key"), ou la colonne track_id
    d'un manifeste ; le chemin d'origine est conservé à côté. Refuse les liens qui s'échappent de la
    racine et les fichiers qui auraient le même identifiant (avec un motif chacun), ignore les
    fichiers non audio et répartit le reste en lots équilibrés pour l'analyse en parallèle. Avec un
    manifeste (texte, CSV/TSV ou JSONL, reconnu à son nom), seuls ses fichiers sont listés et chaque
    ligne reçoit un résultat avec son motif ; un manifeste qui n'est pas dans son format est refusé
    avec une erreur claire.
    DE: Durchläuft die Katalogwurzel (ein Verzeichnis oder ein gs://-Präfix), ohne Links nach außen zu
    folgen, und gibt jeder Audiodatei eine Titel-Id, die nur von ihrem Pfad abhängt: den Dateinamen
    ohne Endung, wenn er eine gültige Id ist, sonst einen lesbaren Namen plus einen 16-stelligen
    Hex-Hash des Pfads (mit track_ids="key" immer), oder die Spalte track_id eines Manifests; der
    ursprüngliche Pfad bleibt daneben erhalten. Weist Links, die die Wurzel verlassen, und Dateien,
    die dieselbe Titel-Id bekämen, ab (jeweils mit Grund), überspringt Nicht-Audio-Dateien und teilt
    den Rest in ausgewogene Shards für die parallele Analyse. Mit einem Manifest (Text, CSV/TSV oder
    JSONL, am Namen erkannt) werden nur dessen Dateien gelistet, und jede Zeile erhält ein Ergebnis
    mit Grund; ein Manifest, das nicht seinem Format entspricht, wird mit klarer Meldung abgewiesen.
    """
    from collections import Counter

    from aitasks.audio_analysis.catalog import list_catalog, list_manifest, manifest_format, shard

    if params.manifest_uri:
        fmt = manifest_format(params.manifest_uri)
        data = storage_of(params.manifest_uri, ctx.runtime).read_bytes(params.manifest_uri)
        listing = list_manifest(
            params.catalog_root,
            data,
            ctx.storage,
            fmt=fmt,
            name=params.manifest_uri,
            limit=params.limit,
            track_ids=params.track_ids,
        )
    else:
        listing = list_catalog(params.catalog_root, ctx.storage, limit=params.limit, track_ids=params.track_ids)
    shards = shard(listing.entries, params.shards)
    uri = ctx.output_uri(LISTING_FILE)
    payload = {"listing": listing.model_dump(mode="json"), "shards": [[e.key for e in s] for s in shards]}
    ctx.storage.write_bytes(uri, json.dumps(payload, indent=1).encode())
    ctx.log.info("audio.listed", tracks=len(listing.entries), refused=len(listing.refused), shards=len(shards))
    return ListCatalogResult(
        listing_uri=uri,
        tracks=len(listing.entries),
        refused=len(listing.refused),
        skipped_non_audio=listing.skipped_non_audio,
        shard_indices=list(range(len(shards))),
        refusal_reasons=dict(sorted(Counter(r.reason for r in listing.refused).items())),
    )
