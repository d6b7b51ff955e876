"""The ``healthagent`` command: assembles the command groups of this package and nothing else.

Each command imports what it needs when it runs (see ``common``): ``healthagent --help`` and the commands
that need no model must start in well under two seconds.
"""

from __future__ import annotations

import typer

from serving.cli.adapters import adapters_app
from serving.cli.audit import audit_app
from serving.cli.db import db_app
from serving.cli.dicom import dicom_app
from serving.cli.model import model_app
from serving.cli.pacs import pacs_app
from serving.cli.serve import serve_command
from serving.cli.specialists import intent_command, qc_command
from serving.cli.triage import kb_check_command, triage_command
from serving.cli.users import users_app

app = typer.Typer(
    help="Health Agent: HealthGPT behind Ray Serve and a LangGraph agent.", no_args_is_help=True
)
app.command("serve")(serve_command)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.add_typer(dicom_app, name="dicom")
app.add_typer(pacs_app, name="pacs")
app.add_typer(adapters_app, name="adapters")
app.command("triage")(triage_command)
app.command("triage-kb")(kb_check_command)
app.command("intent")(intent_command)
app.command("qc")(qc_command)

__all__ = ["app"]

if __name__ == "__main__":
    app()
