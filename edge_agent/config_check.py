"""`starfish agent config --check`: beyond the schema, check that what the file names exists and verifies.

A config can be valid YAML with every field well-typed and still not start: a trusted key path with a typo, a
bundle directory that is not there, a bundle signed by another key, a variant the bundle lacks, an outbox in a
directory this user cannot write. Each problem becomes one line naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.bundle import BundleError, load_public_key, verify_bundle
from edge_agent.config import AgentConfig


def _outbox_problem(path: Path) -> str | None:  # also used for state_dir (a file inside it)
    """Why this user could not create `path` (nearest existing ancestor not a writable directory), else None."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable by this user"
    return None


def check_deployment(cfg: AgentConfig) -> list[str]:
    """Problems that would stop the agent at start-up; an empty list means the bundle verifies with these keys."""
    problems: list[str] = []
    keys = []
    for i, key_path in enumerate(cfg.detector.trusted_keys):
        try:
            keys.append(load_public_key(key_path))
        except BundleError as exc:
            problems.append(f"detector.trusted_keys.{i}: {exc}")
    bundle = cfg.detector.bundle
    if not bundle.exists():
        problems.append(f"detector.bundle: {bundle} does not exist")
    elif keys and not any(p.startswith("detector.trusted_keys") for p in problems):
        try:
            manifest = verify_bundle(bundle, keys)
        except BundleError as exc:
            problems.append(f"detector.bundle: {bundle} refused: {exc}")
        else:
            if cfg.detector.variant is not None and cfg.detector.variant not in manifest.variants:
                problems.append(
                    f"detector.variant: {cfg.detector.variant!r} is not in the bundle (it has "
                    f"{', '.join(manifest.variants)})"
                )
    why = _outbox_problem(cfg.outbox_path)
    if why is not None:
        problems.append(f"outbox_path: cannot create {cfg.outbox_path}: {why}")
    why = _outbox_problem(cfg.state_dir / "floor")  # the directory itself must be creatable and writable
    if why is not None:
        problems.append(f"state_dir: cannot create {cfg.state_dir}: {why}")
    return problems
