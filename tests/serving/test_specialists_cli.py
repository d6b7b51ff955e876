from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()


def test_intent_from_the_command_line() -> None:
    result = runner.invoke(app, ["intent", "--json", "Convert this CT to an MRI"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["intent"] == "image_task"


def test_qc_flags_a_flat_picture_and_passes_a_ct(tmp_path: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((256, 256), 128, dtype=np.uint8)).save(flat)
    flagged = runner.invoke(app, ["qc", "--json", str(flat)])
    assert flagged.exit_code == 1 and "contrast" in flagged.output.lower()
    ct = runner.invoke(app, ["qc", get_testdata_file("CT_small.dcm")])
    assert ct.exit_code in (0, 1) and ct.output.strip()
    missing = runner.invoke(app, ["qc", str(tmp_path / "nope.png")])
    assert missing.exit_code == 2
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image")
    assert runner.invoke(app, ["qc", str(text)]).exit_code == 2
