"""Commands that need no model must not pay for one: torch (seconds to import) stays out of the CLI's root,
the settings and the records path that `users`, `db` and `audit` take."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_root_settings_and_records_do_not_import_torch() -> None:
    probe = (
        "import sys\n"
        "from serving.cli import app\n"
        "from serving.cli.common import load, operator_records\n"
        "import serving.settings, memory.records, memory.migrate, tools.pacs, tools.dicom_io\n"
        "heavy = ('torch', 'transformers', 'ray', 'spacy', 'langgraph')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
