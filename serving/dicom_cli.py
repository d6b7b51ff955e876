"""``healthagent dicom …``: inspect and de-identify DICOM files."""

from __future__ import annotations

import typer

dicom_app = typer.Typer(help="DICOM files: inspect, decode, de-identify.", no_args_is_help=True)
