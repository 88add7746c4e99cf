"""Task documentation in English, French and German, rendered from the registry.

Every task docstring carries three paragraphs introduced by ``EN:``, ``FR:`` and ``DE:``; the first
line is an English summary. ``aitasks docs`` renders ``docs/{en,fr,de}/tasks.md``, and a test fails
when a task lacks a language or the rendered files are stale.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

LANGUAGES: tuple[str, ...] = ("en", "fr", "de")
_MARKER = re.compile(r"^\s*(EN|FR|DE):\s?(.*)$")
_SECTION = re.compile(r"^\s*(Args|Returns|Raises|Yields|Examples|Note|Notes):\s*$")

_T: dict[str, dict[str, str]] = {
    "en": {
        "title": "Task reference",
        "intro": "Generated from the task registry by `make docs`; do not edit by hand.",
        "reuse": "A call returns the result committed before, without running, only when its idempotency key "
        "is the same: task name, version, code fingerprint (the source of the task's module and of every "
        "`aitasks` module it imports), inputs, the content of its input artifacts and the outside state it "
        "declares. An edited task body runs again even without a version bump; the audit record of a reuse "
        "says why it was reused (`aitasks audit tail --text`).",
        "version": "Version",
        "retries": "Retries",
        "inputs": "Inputs",
        "outputs": "Outputs",
        "field": "Field",
        "type": "Type",
        "required": "Required",
        "default": "Default",
        "description": "Description",
        "yes": "yes",
        "no": "no",
        "attempts": "attempts at most, for retryable errors",
        "budget": "while within {budget:g} s of the first failure",
        "deadline": "Deadline",
        "deadline_value": "{seconds:g} s for the whole call (settings: `AITASKS_TASK_DEADLINES_S`)",
        "deadline_default": "the default (`AITASKS_TASK_DEADLINE_DEFAULT_S`)",
    },
    "fr": {
        "title": "Référence des tâches",
        "intro": "Généré depuis le registre des tâches par `make docs` ; ne pas modifier à la main.",
        "reuse": "Un appel renvoie le résultat déjà validé, sans s'exécuter, seulement quand sa clé "
        "d'idempotence est la même : nom de la tâche, version, empreinte du code (le source du module de la "
        "tâche et de chaque module `aitasks` qu'il importe), entrées, contenu de ses artefacts d'entrée et "
        "état extérieur qu'elle déclare. Un corps de tâche modifié s'exécute de nouveau même sans changement "
        "de version ; l'enregistrement d'audit d'une réutilisation en donne la raison "
        "(`aitasks audit tail --text`).",
        "version": "Version",
        "retries": "Reprises",
        "inputs": "Entrées",
        "outputs": "Sorties",
        "field": "Champ",
        "type": "Type",
        "required": "Obligatoire",
        "default": "Défaut",
        "description": "Description",
        "yes": "oui",
        "no": "non",
        "attempts": "tentatives au plus, pour les erreurs transitoires",
        "budget": "tant que moins de {budget:g} s ont passé depuis le premier échec",
        "deadline": "Échéance",
        "deadline_value": "{seconds:g} s pour tout l'appel (réglage : `AITASKS_TASK_DEADLINES_S`)",
        "deadline_default": "celle par défaut (`AITASKS_TASK_DEADLINE_DEFAULT_S`)",
    },
    "de": {
        "title": "Aufgabenreferenz",
        "intro": "Von `make docs` aus dem Aufgabenregister erzeugt; nicht von Hand bearbeiten.",
        "reuse": "Ein Aufruf gibt das früher festgeschriebene Ergebnis ohne Ausführung nur zurück, wenn sein "
        "Idempotenzschlüssel gleich ist: Aufgabenname, Version, Code-Fingerabdruck (der Quelltext des "
        "Aufgabenmoduls und jedes `aitasks`-Moduls, das es importiert), Eingaben, Inhalt der "
        "Eingabeartefakte und der deklarierte äußere Zustand. Ein geänderter Aufgabenrumpf läuft auch ohne "
        "Versionssprung erneut; der Audit-Eintrag einer Wiederverwendung nennt den Grund "
        "(`aitasks audit tail --text`).",
        "version": "Version",
        "retries": "Wiederholungen",
        "inputs": "Eingaben",
        "outputs": "Ausgaben",
        "field": "Feld",
        "type": "Typ",
        "required": "Pflicht",
        "default": "Standard",
        "description": "Beschreibung",
        "yes": "ja",
        "no": "nein",
        "attempts": "Versuche höchstens, bei vorübergehenden Fehlern",
        "budget": "solange seit dem ersten Fehler weniger als {budget:g} s vergangen sind",
        "deadline": "Frist",
        "deadline_value": "{seconds:g} s für den ganzen Aufruf (Einstellung: `AITASKS_TASK_DEADLINES_S`)",
        "deadline_default": "die Standardfrist (`AITASKS_TASK_DEADLINE_DEFAULT_S`)",
    },
}


def parse_languages(doc: str) -> dict[str, str]:
    """Extract the ``EN:``/``FR:``/``DE:`` paragraphs of a docstring (missing languages are absent)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in doc.splitlines():
        m = _MARKER.match(line)
        if m:
            current = m.group(1).lower()
            out[current] = [m.group(2).strip()]
        elif _SECTION.match(line):
            current = None
        elif current is not None:
            if line.strip():
                out[current].append(line.strip())
            elif out[current] and out[current][-1]:
                out[current].append("")
    return {k: " ".join(x for x in v if x).strip() for k, v in out.items() if any(v)}


def missing_languages(doc: str) -> list[str]:
    found = parse_languages(doc)
    return [lang for lang in LANGUAGES if not found.get(lang)]


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or repr(annotation)
    text = re.sub(r"typing\.|pydantic\.types\.|Annotated\[(\w+), .*\]", lambda m: m.group(1) or "", str(text))
    return text.replace("|", "\\|")


def _fields_table(model: type[BaseModel], t: dict[str, str]) -> list[str]:
    rows = [
        f"| {t['field']} | {t['type']} | {t['required']} | {t['default']} | {t['description']} |",
        "|---|---|---|---|---|",
    ]
    for name, info in model.model_fields.items():
        required = info.is_required()
        default = "" if required else f"`{info.default!r}`"
        desc = (info.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(
            f"| `{name}` | `{_type_name(info.annotation)}` | {t['yes'] if required else t['no']} | {default} | {desc} |"
        )
    return rows


def render_tasks_markdown(tasks: dict[str, Any], lang: str) -> str:
    """The task reference page in ``lang``."""
    t = _T[lang]
    lines = [f"# {t['title']}", "", f"_{t['intro']}_", "", t["reuse"], ""]
    for name, task in tasks.items():
        texts = parse_languages(task.doc)
        lines += [
            f"## `{name}`",
            "",
            f"- {t['version']}: `{task.version}`",
            f"- {t['retries']}: {task.retry.max_attempts} {t['attempts']}, "
            + t["budget"].format(budget=task.retry.budget_s),
            f"- {t['deadline']}: "
            + (
                t["deadline_default"]
                if task.deadline_s is None
                else t["deadline_value"].format(seconds=task.deadline_s)
            ),
            "",
            texts.get(lang, ""),
            "",
            f"### {t['inputs']} (`{task.params_model.__name__}`)",
            "",
            *_fields_table(task.params_model, t),
            "",
            f"### {t['outputs']} (`{task.result_model.__name__}`)",
            "",
            *_fields_table(task.result_model, t),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def render_all(tasks: dict[str, Any], docs_dir: Path) -> dict[Path, str]:
    """Mapping of file path to expected content for every language."""
    return {docs_dir / lang / "tasks.md": render_tasks_markdown(tasks, lang) for lang in LANGUAGES}
