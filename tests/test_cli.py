"""The single `starfish` command line lists every unit's sub-command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from starfish_cli import SUB_APPS, app


def test_help_lists_every_unit() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name, _module, _help in SUB_APPS:
        assert name in result.output, f"`starfish {name}` missing from --help"


def test_console_script_is_installed() -> None:
    """The `starfish` script pip put beside this interpreter (what `make demo` and `.venv/bin/starfish` run)."""
    script = Path(sys.executable).parent / "starfish"
    assert script.is_file(), f"no console script at {script}: install the package (`make setup`)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "agent" in result.stdout
