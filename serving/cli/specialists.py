"""``healthagent intent`` and ``healthagent qc``: the other CPU specialists from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import fail


def intent_command(
    text: Annotated[str, typer.Argument(metavar="TEXT", help="The message to classify.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """What a message asks for: consult, second_read, image_task, history, admin or small_talk."""
    from tools.intent import classify_intent

    result = classify_intent(text)
    if json_out:
        typer.echo(json.dumps(result.model_dump(), ensure_ascii=False))
    else:
        typer.echo(f"{result.intent} (confidence {result.confidence:.2f}; runner-up {result.runner_up})")


def qc_command(
    image: Annotated[Path, typer.Argument(help="A picture (PNG, JPEG, …) or a DICOM file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Image quality: contrast, noise, blur, saturation, window sanity and size. Exit 1 when flagged."""
    from tools.dicom_io import DicomError, load_dicom
    from tools.images import UnsupportedImage, decode_upright, is_dicom
    from tools.qc import check_image

    try:
        data = image.read_bytes()
        picture = load_dicom(data).images[0] if is_dicom(data) else decode_upright(data)
    except FileNotFoundError:
        fail(f"no such file: {image}")
    except (DicomError, UnsupportedImage) as exc:
        fail(f"{image.name}: {exc}")
    report = check_image(picture)
    if json_out:
        typer.echo(report.model_dump_json())
    else:
        typer.echo("ok" if report.ok else "\n".join(f"{f.code}: {f.message}" for f in report.flags))
    if not report.ok:
        raise typer.Exit(1)
