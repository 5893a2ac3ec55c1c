"""`starfish shore` command line, torch-freedom, and the dependency direction (edge_agent never imports shore)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.no_torch import run_without_torch
from tests.helpers.shore import REPO_ROOT


def test_every_shore_module_imports_without_torch() -> None:
    result = run_without_torch(
        """
        import importlib, json, pkgutil, sys
        import shore
        names = [m.name for m in pkgutil.walk_packages(shore.__path__, "shore.")]
        for name in names:
            importlib.import_module(name)
        assert not any(m.split(".")[0] in ("torch", "torchvision", "train", "export") for m in sys.modules)
        print(json.dumps(names))
        """
    )
    assert result.returncode == 0, result.stderr
    names = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"shore.ingest", "shore.web.app", "shore.storage.postgres"} <= names


def test_edge_agent_never_imports_shore() -> None:
    offenders = [
        str(p)
        for p in (REPO_ROOT / "edge_agent").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+shore\b", p.read_text(), re.M)
    ]
    assert offenders == []


def _shore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shore", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--host", "0.0.0.0"], "needs a token"),
        (["run", "--host", "0.0.0.0", "--token", "short"], "at least 16"),
        (["run", "--mqtt-port", "0"], "mqtt.port"),
        (["run", "--share-group", "a/b"], "share_group"),
        (["run", "--no-ingest", "--no-web"], "nothing to run"),
        (["run", "--db", "postgresql://nobody@127.0.0.1:1/none", "--no-web"], "cannot open PostgreSQL"),
        (["bench", "--db", "mysql://x"], "postgresql://"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _shore(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _shore("run", "--port", str(port), "--mqtt-port", "1")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def test_bad_sqlite_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _shore("run", "--db", str(blocker / "sub" / "shore.db"), "--no-web")
    assert result.returncode == 2
    assert "cannot open SQLite database" in result.stderr and "Traceback" not in result.stderr


def test_starfish_has_the_shore_sub_app() -> None:
    from typer.testing import CliRunner

    from starfish_cli import app

    out = CliRunner().invoke(app, ["shore", "--help"])
    assert out.exit_code == 0, out.output
    assert "run" in out.output and "bench" in out.output
