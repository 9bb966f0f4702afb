"""What an install contains: ``versioning.integrations``, and no top-level ``integrations``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_integrations_are_a_subpackage_of_versioning() -> None:
    starlette = importlib.import_module("versioning.integrations.starlette")
    assert starlette.AuditContextMiddleware.__module__ == "versioning.integrations.starlette"
    flask = importlib.import_module("versioning.integrations.flask")
    assert flask.VersioningAudit.__module__ == "versioning.integrations.flask"


def test_no_top_level_integrations_import() -> None:
    with pytest.raises(ImportError):
        importlib.import_module("integrations")


def test_wheel_has_no_top_level_integrations(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "versioning/integrations/starlette.py" in names
    assert "versioning/integrations/flask.py" in names
    # The review page: its package, templates and stylesheet.
    assert "versioning/integrations/review/pages.py" in names
    assert "versioning/integrations/review/templates/base.html" in names
    assert "versioning/integrations/review/static/review.css" in names
    assert not [n for n in names if n.startswith("integrations/")]
    # The `versioning` command, whose libraries only its extra brings.
    with zipfile.ZipFile(wheel) as archive:
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "versioning = versioning.__main__:main" in archive.read(entry_points).decode()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ") and ("click" in line or "rich" in line)
        ]
    assert requires and all(
        'extra == "cli"' in line or 'extra == "test"' in line for line in requires
    )
