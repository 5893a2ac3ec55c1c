"""The single `starfish` command line lists every unit's sub-command."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from starfish_cli import SUB_APPS, app


def test_help_lists_every_unit() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name, _module, _help in SUB_APPS:
        assert name in result.output, f"`starfish {name}` missing from --help"


def test_console_script_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "starfish_cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "agent" in result.stdout
