"""``healthagent dicom …``: inspect and de-identify DICOM files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from serving.cli.common import fail

dicom_app = typer.Typer(help="DICOM files: inspect, decode, de-identify.", no_args_is_help=True)


@dicom_app.command("deid")
def deid_command(
    source: Annotated[
        Path, typer.Argument(metavar="IN", help="A DICOM file, or a folder of them.", exists=True)
    ],
    dest: Annotated[Path, typer.Argument(metavar="OUT", help="Output file, or a folder that mirrors IN.")],
    burned_in: Annotated[
        Literal["refuse", "blank"],
        typer.Option(
            "--burned-in",
            help="Images that may carry burned-in text: refuse them, or black out the top and bottom 10% "
            "of rows (a heuristic: text elsewhere survives).",
        ),
    ] = "refuse",
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="Secret key for pseudonyms, UIDs and date shifts (else $HEALTHAGENT_DEID_KEY, else "
            "<data_dir>/deid.key, created on first use).",
        ),
    ] = None,
) -> None:
    """De-identify DICOM files: PS3.15 Basic Profile, shifted dates, consistent pseudonyms and UIDs."""
    import os

    from serving.settings import load_settings
    from tools.deid import DeidOptions, check_key, deidentify_path, load_or_create_key, read_key_file

    if dest.resolve() == source.resolve() or (source.is_dir() and dest.exists() and not dest.is_dir()):
        fail("OUT must be a new file or folder, not the input itself")
    try:
        if key_file is not None:
            key, origin = read_key_file(key_file), str(key_file)
        elif os.environ.get("HEALTHAGENT_DEID_KEY"):
            key, origin = check_key(os.environ["HEALTHAGENT_DEID_KEY"].encode()), "$HEALTHAGENT_DEID_KEY"
        else:
            path = load_settings().data_dir / "deid.key"
            key, created = load_or_create_key(path)
            origin = f"{path} ({'created now; ' if created else ''}keep it to keep pseudonyms stable)"
    except (OSError, ValueError) as exc:
        fail(f"key: {exc}")
    typer.echo(f"key: {origin}")

    report = deidentify_path(
        source,
        dest,
        key=key,
        options=DeidOptions(burned_in=burned_in),
        progress=lambda i, n, name, outcome: typer.echo(f"[{i}/{n}] {name}: {outcome}", err=True),
    )
    typer.echo(f"done: {len(report.done)} file(s) -> {dest}")
    if report.blanked:
        typer.echo(
            f"  of which {len(report.blanked)} blanked heuristically (text outside the bands survives):"
        )
        for name in report.blanked:
            typer.echo(f"    {name}")
    for label, problems in (("refused", report.refused), ("failed", report.failed)):
        if problems:
            typer.echo(f"{label}: {len(problems)}")
            for problem in problems:
                typer.echo(f"  {problem.path}: {problem.reason}")
    raise typer.Exit(0 if report.all_done else 1)


@dicom_app.command("info")
def info_command(
    source: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="A DICOM file, or a folder holding one series.", exists=True),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
    slices: Annotated[
        int,
        typer.Option("--slices", min=1, max=64, help="The middle slice (1), or N evenly spaced slices."),
    ] = 1,
    png: Annotated[
        Path | None,
        typer.Option(
            "--png",
            metavar="OUT.png",
            help="Write the 8-bit picture the model gets; several slices go to OUT-1.png, OUT-2.png, …",
        ),
    ] = None,
) -> None:
    """Decode a DICOM file (or series) as the model sees it: metadata, optionally the 8-bit picture."""
    import json

    from tools.dicom_io import DicomError, load_dicom, load_series

    try:
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                fail(f"{source}: the folder holds no files")
            result = load_series(files, slices=slices)
        else:
            result = load_dicom(source, slices=slices)
    except DicomError as exc:
        fail(f"{source.name}: {exc.reason}: {exc}")

    written: list[Path] = []
    if png is not None:
        count = len(result.images)
        targets = (
            [png]
            if count == 1
            else [png.with_name(f"{png.stem}-{i}{png.suffix}") for i in range(1, count + 1)]
        )
        try:
            for image, target in zip(result.images, targets, strict=True):
                image.save(target, format="PNG")
                written.append(target)
        except OSError as exc:
            fail(f"--png: {exc}")

    fields = result.metadata.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps({**fields, "png": [str(path) for path in written]}, indent=2))
        return
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        typer.echo(f"{name:<{width}}  {'' if shown is None else shown}")
    for path in written:
        typer.echo(f"wrote {path}")
