"""``healthagent audit …``: the hash-chained audit log."""

from __future__ import annotations

import typer

from serving.cli.common import ConfigOption, fail, operator_records

audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the whole chain; name the first bad row. Exit 1 when the chain is broken."""
    with operator_records(config) as records:
        result = records.verify_audit()
    if not result.ok:
        fail(f"audit log BROKEN at row {result.first_bad_seq}: {result.reason}", code=1)
    typer.echo(f"audit log intact: {result.checked} rows")
