"""``healthagent pacs …``: search, retrieve and store studies on a PACS over DICOMweb."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from serving.cli.common import fail
from tools.pacs import PacsClient, PacsConfig, PacsError, StudyQuery, is_dicom_uid

pacs_app = typer.Typer(help="The PACS over DICOMweb: search, retrieve, store.", no_args_is_help=True)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="HEALTHAGENT_PACS__URL", help="DICOMweb root, e.g. http://localhost:8042/dicom-web."
    ),
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", envvar="HEALTHAGENT_PACS__TIMEOUT_S", help="Seconds to wait for the PACS."),
]
UserOption = Annotated[str | None, typer.Option("--username", envvar="HEALTHAGENT_PACS__USERNAME")]
PasswordOption = Annotated[
    str | None, typer.Option("--password", envvar="HEALTHAGENT_PACS__PASSWORD", help="Prefer the variable.")
]


@contextmanager
def _pacs(url: str, timeout: float, username: str | None, password: str | None) -> Iterator[PacsClient]:
    try:
        config = PacsConfig(url=url, timeout_s=timeout, username=username, password=password)
    except ValidationError as exc:
        fail(f"bad PACS settings: {exc}")
    try:
        with PacsClient(config) as client:
            yield client
    except PacsError as exc:
        fail(str(exc))


def _uid(value: str | None) -> str | None:
    if value is not None and not is_dicom_uid(value):
        raise typer.BadParameter(f"{value!r} is not a DICOM UID (digits and dots)")
    return value


def _day(text: str) -> date | None:
    return datetime.strptime(text, "%Y%m%d").date() if text else None


def _date_range(text: str | None) -> tuple[date | None, date | None]:
    """``YYYYMMDD`` (one day) or ``YYYYMMDD-YYYYMMDD``, either end may be left open."""
    if not text:
        return None, None
    start, sep, end = text.partition("-")
    try:
        first = _day(start)
        return (first, _day(end)) if sep else (first, first)
    except ValueError as exc:
        raise typer.BadParameter("use YYYYMMDD or YYYYMMDD-YYYYMMDD", param_hint="--date") from exc


@pacs_app.command("search")
def search(
    url: UrlOption,
    patient_id: Annotated[str | None, typer.Option("--patient-id")] = None,
    study_date: Annotated[str | None, typer.Option("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = None,
    modality: Annotated[str | None, typer.Option("--modality", help="e.g. CT, MR.")] = None,
    accession: Annotated[str | None, typer.Option("--accession")] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="List this study's series instead.", callback=_uid)
    ] = None,
    limit: Annotated[int, typer.Option("--limit")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    timeout: TimeoutOption = 30.0,
    username: UserOption = None,
    password: PasswordOption = None,
) -> None:
    """Find studies (tab-separated: study UID, date, patient ID, modalities, accession, series, instances),
    or with --study the series of one study."""
    date_from, date_to = _date_range(study_date)
    try:
        query = StudyQuery(
            patient_id=patient_id,
            date_from=date_from,
            date_to=date_to,
            modality=modality.upper() if modality else None,
            accession_number=accession,
            limit=limit,
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with _pacs(url, timeout, username, password) as pacs:
        rows = pacs.search_series(study) if study else pacs.search_studies(query)
    for row in rows:
        if as_json:
            typer.echo(row.model_dump_json())
        elif study:
            fields = (row.series_uid, row.modality, row.series_number, row.description, row.instance_count)
            typer.echo("\t".join("" if f is None else str(f) for f in fields))
        else:
            fields = (
                row.study_uid,
                row.study_date,
                row.patient_id,
                "\\".join(row.modalities),
                row.accession_number,
                row.series_count,
                row.instance_count,
            )
            typer.echo("\t".join("" if f is None else str(f) for f in fields))
    if not rows and not as_json:
        typer.echo("no match", err=True)


@pacs_app.command("retrieve")
def retrieve(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.", callback=_uid)],
    outdir: Annotated[Path, typer.Argument(help="Folder for the .dcm files (created).", file_okay=False)],
    url: UrlOption,
    timeout: TimeoutOption = 30.0,
    username: UserOption = None,
    password: PasswordOption = None,
) -> None:
    """Fetch every instance of a study into OUTDIR/<SOP Instance UID>.dcm."""
    with _pacs(url, timeout, username, password) as pacs:
        instances = pacs.retrieve_study(study_uid)
    outdir.mkdir(parents=True, exist_ok=True)
    for index, ds in enumerate(instances, start=1):
        uid = str(ds.get("SOPInstanceUID", ""))
        # The name comes from the PACS: only a well-formed UID may become a file name.
        name = f"{uid}.dcm" if is_dicom_uid(uid) else f"instance-{index:05d}.dcm"
        ds.save_as(outdir / name, enforce_file_format=True)
    typer.echo(f"{len(instances)} instance(s) of {study_uid} written to {outdir}")


@pacs_app.command("store")
def store(
    files: Annotated[list[Path], typer.Argument(help="DICOM files.", exists=True, dir_okay=False)],
    url: UrlOption,
    timeout: TimeoutOption = 30.0,
    username: UserOption = None,
    password: PasswordOption = None,
) -> None:
    """Send DICOM files to the PACS (STOW-RS) and print the stored SOP Instance UIDs."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    datasets = []
    for path in files:
        try:
            datasets.append(dcmread(path))
        except (InvalidDicomError, OSError) as exc:
            raise typer.BadParameter(f"{path}: not a DICOM file ({exc})", param_hint="FILES") from exc
    with _pacs(url, timeout, username, password) as pacs:
        stored = pacs.store(datasets)
    for uid in stored:
        typer.echo(uid)
    typer.echo(f"{len(stored)} instance(s) stored", err=True)
