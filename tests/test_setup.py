"""scripts/setup.sh on an interpreter that refuses system installs (PEP 668), as on stock Debian 12 / Ubuntu 24.04.

The test runs the real script with the real Debian system Python: it must create `.venv/`, install the package there
and leave the system interpreter alone; a second run must skip pip. pip reads only a local package index, so nothing
leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_INDEX = Path("/opt/pypi/simple")
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")

pytestmark = pytest.mark.slow


def _externally_managed_python() -> str | None:
    """A system interpreter whose stdlib holds the EXTERNALLY-MANAGED marker (and that is not itself a venv)."""
    probe = (
        "import sys, sysconfig, pathlib; "
        "print(sys.prefix == sys.base_prefix and "
        "(pathlib.Path(sysconfig.get_path('stdlib')) / 'EXTERNALLY-MANAGED').is_file())"
    )
    for candidate in SYSTEM_PYTHONS:
        if not os.access(candidate, os.X_OK):
            continue
        out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, timeout=30)
        if out.stdout.strip() == "True":
            return candidate
    return None


SYSTEM_PYTHON = _externally_managed_python()


def _copy_checkout(dst: Path) -> Path:
    """The source tree as a fresh clone has it (no venv, no bundles, no caches)."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "models",
        "data",
        "runs",
        "__pycache__",
        ".*_cache",
        ".starfish-demo",
        "*.egg-info",
        "benchmarks/results",
        "docs",
    )
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def _offline_pip_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        {
            "PIP_INDEX_URL": LOCAL_INDEX.as_uri(),
            "PIP_EXTRA_INDEX_URL": " ".join(p.as_uri() for p in (Path("/opt/pypi-more/simple"),) if p.is_dir()),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        }
    )
    return env


@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no externally-managed (PEP 668) system Python here")
@pytest.mark.skipif(not LOCAL_INDEX.is_dir(), reason="no local package index: this test does not reach the network")
def test_setup_makes_and_uses_a_venv_where_system_pip_is_refused(tmp_path: Path) -> None:
    assert SYSTEM_PYTHON is not None
    env = _offline_pip_env(tmp_path)
    # The premise, checked rather than assumed: this interpreter refuses a system-wide install.
    refused = subprocess.run(
        [SYSTEM_PYTHON, "-m", "pip", "install", "--dry-run", "--no-deps", "pyyaml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if "No module named pip" in refused.stderr:
        pytest.skip(f"{SYSTEM_PYTHON} has no pip to ask")
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, refused.stderr

    repo = _copy_checkout(tmp_path / "clone")
    # The lean edge runtime only: the point is where it installs, not torch.
    env.update({"PYTHON": SYSTEM_PYTHON, "STARFISH_EXTRAS": "edge"})
    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the project virtual environment .venv" in first.stdout
    venv_python = repo / ".venv" / "bin" / "python"
    starfish = repo / ".venv" / "bin" / "starfish"
    assert venv_python.is_file() and starfish.is_file()
    help_out = subprocess.run([str(starfish), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert help_out.returncode == 0 and "bundle" in help_out.stdout, help_out.stderr
    where = subprocess.run(
        [str(venv_python), "-c", "import starfish_cli; print(starfish_cli.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert Path(where.stdout.strip()).parent == repo

    # The system interpreter was left alone.
    untouched = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import starfish_cli"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert untouched.returncode != 0

    # Idempotent and fast: a second run only hashes pyproject.toml.
    started = time.monotonic()
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stdout
    assert time.monotonic() - started < 20
