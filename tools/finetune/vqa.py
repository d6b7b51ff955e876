"""Regression sets for the evaluation gate: multiple-choice VQA items, frozen with their sha256s.

A set is a folder::

    items.jsonl      one item a line
    images/…         the pictures the items name (any layout under the folder)
    manifest.json    name, description, whether it is synthetic, source, licence, each file's sha256

An item::

    {"id": "phantom-01", "question": "…", "choices": ["yes", "no"], "answer": 0, "image": "images/01.png"}

``choices``: 2 to 26 distinct, non-blank strings (as the model's ``score`` path takes them); ``answer``: the
0-based index of the correct one; ``image``: a path relative to the folder, or absent / null for a
text-only item; ``id``: unique in the set. The question is asked as written (put the options in it if the
model should see them); each choice is scored as the answer by its mean token log-probability, and the best
one is the model's pick, as :meth:`tools.healthgpt.InProcessHealthGPT.score` does.

Real sets (VQA-RAD, SLAKE, PMC-VQA closed questions, …) are converted to this format by an admin and frozen
with :func:`freeze_regression_set` before any tuning; the gate refuses a set whose files no longer match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tools.finetune.dataset import DatasetError, sha256_file

FORMAT = "healthagent-vqa/1"
ITEMS_FILE = "items.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_CHOICES = 26
REGRESSION_DIR = Path(__file__).with_name("regression")
SAMPLE_SET = REGRESSION_DIR / "synthetic-phantoms"  # shipped; synthetic, for smoke tests and CI only


@dataclass(frozen=True)
class VqaItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    image: Path | None


class RegressionManifest(BaseModel):
    format: str = FORMAT
    name: str
    description: str
    synthetic: bool = Field(description="True for generated pictures: no clinical meaning")
    source: str = ""
    license: str = ""
    items: int
    files: dict[str, str] = Field(description="Path under the folder -> sha256")
    digest: str = Field(description="sha256 over the files' hashes: the set's identity")


@dataclass(frozen=True)
class RegressionSet:
    directory: Path
    manifest: RegressionManifest
    items: list[VqaItem]


def read_items(directory: Path) -> list[VqaItem]:
    """Every item of ``directory/items.jsonl``, or a :class:`DatasetError` listing each problem."""
    path = directory / ITEMS_FILE
    if not path.is_file():
        raise DatasetError(f"no {ITEMS_FILE} in {directory}")
    items: list[VqaItem] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{ITEMS_FILE}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON ({exc.msg})")
            continue
        found = _check_item(raw, where, directory)
        if isinstance(found, list):
            problems.extend(found)
        elif found.id in seen:
            problems.append(f"{where}: id {found.id!r} is used twice")
        else:
            seen.add(found.id)
            items.append(found)
    if not items and not problems:
        problems.append(f"{ITEMS_FILE} holds no items")
    if problems:
        raise DatasetError(f"{directory.name} is not a valid regression set", problems)
    return items


def _check_item(raw: object, where: str, directory: Path) -> VqaItem | list[str]:
    if not isinstance(raw, dict):
        return [f"{where}: an item must be a JSON object"]
    problems = []
    unknown = sorted(set(raw) - {"id", "question", "choices", "answer", "image"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    for key in ("id", "question"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            problems.append(f"{where}: {key!r} must be a non-empty string")
    choices = raw.get("choices")
    if (
        not isinstance(choices, list)
        or not 2 <= len(choices) <= MAX_CHOICES
        or not all(isinstance(c, str) and c.strip() for c in choices)
        or len(set(choices)) != len(choices)
    ):
        problems.append(f"{where}: 'choices' must be 2 to {MAX_CHOICES} distinct non-blank strings")
        choices = None
    answer = raw.get("answer")
    if type(answer) is not int or (choices is not None and not 0 <= answer < len(choices)):
        problems.append(f"{where}: 'answer' must be the 0-based index of the correct choice")
    image = None
    if raw.get("image") is not None:
        relative = raw["image"]
        if not isinstance(relative, str) or Path(relative).is_absolute() or ".." in Path(relative).parts:
            problems.append(f"{where}: 'image' must be a path inside the set's folder")
        elif not (directory / relative).is_file():
            problems.append(f"{where}: image not found: {relative}")
        else:
            image = directory / relative
    if problems:
        return problems
    return VqaItem(raw["id"], raw["question"], tuple(choices), answer, image)  # type: ignore[arg-type]


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


def _files_of(directory: Path, items: list[VqaItem]) -> dict[str, str]:
    paths = {directory / ITEMS_FILE, *(item.image for item in items if item.image is not None)}
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(paths)}


def freeze_regression_set(
    directory: Path, *, name: str, description: str, synthetic: bool, source: str = "", license: str = ""
) -> RegressionManifest:
    """Validate ``directory``'s items and write its manifest (refused if one exists: a frozen set is never
    re-frozen; make a new one)."""
    if (directory / MANIFEST_FILE).exists():
        raise DatasetError(f"{directory} is frozen already; a changed set is a new set")
    items = read_items(directory)
    files = _files_of(directory, items)
    manifest = RegressionManifest(
        name=name,
        description=description,
        synthetic=synthetic,
        source=source,
        license=license,
        items=len(items),
        files=files,
        digest=_digest(files),
    )
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def load_regression_set(directory: Path = SAMPLE_SET) -> RegressionSet:
    """A frozen set, once every file matches its manifest; a :class:`DatasetError` otherwise."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"{directory} is not a frozen regression set (no {MANIFEST_FILE})")
    try:
        manifest = RegressionManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise DatasetError(f"{path}: not a {FORMAT} manifest ({exc.error_count()} problems)") from exc
    if manifest.format != FORMAT:
        raise DatasetError(f"{path}: unknown format {manifest.format!r}")
    problems = []
    for relative, expected in manifest.files.items():
        file = directory / relative
        if not file.is_file():
            problems.append(f"{relative}: missing")
        elif (actual := sha256_file(file)) != expected:
            problems.append(f"{relative}: sha256 {actual} differs from the manifest's {expected}")
    if _digest(manifest.files) != manifest.digest:
        problems.append("the manifest's digest does not match its files")
    if problems:
        raise DatasetError(f"regression set {directory} does not verify", problems)
    items = read_items(directory)
    unlisted = set(_files_of(directory, items)) - set(manifest.files)
    if unlisted:
        raise DatasetError(
            f"regression set {directory} uses files its manifest does not list", sorted(unlisted)
        )
    return RegressionSet(directory, manifest, items)
