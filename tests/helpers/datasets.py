"""Shared fixtures: small synthetic reef datasets in the Kaggle layout (generated, never mocked).

`synthetic_dataset` (session scope): 3 videos x 16 frames at 320x180, about half the frames with starfish,
2 sequences per video; returns the dataset root. `make_synthetic_dataset` builds one with custom settings
under tmp_path: `make_synthetic_dataset(videos=1, frames=8, empty_fraction=0.0)` -> root Path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SMALL = {
    "videos": 3,
    "frames": 16,
    "width": 320,
    "height": 180,
    "seed": 7,
    "empty_fraction": 0.5,
    "sequence_length": 8,
    "workers": 1,
}


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic dataset shared by the whole test session (read it, don't modify it)."""
    from train.synth import generate_dataset

    root = tmp_path_factory.mktemp("synthetic_reef")
    generate_dataset(root, **SMALL)
    return root


@pytest.fixture
def make_synthetic_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_synthetic_dataset(**settings) -> root of a fresh dataset; unspecified settings are SMALL's."""
    from train.synth import generate_dataset

    counter = iter(range(1_000_000))

    def make(**settings: Any) -> Path:
        root = tmp_path / f"synth_{next(counter)}"
        generate_dataset(root, **{**SMALL, **settings})
        return root

    return make
