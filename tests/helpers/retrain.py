"""Retraining-job fixtures: a released v1 to retrain from, and the tiny training / export settings.

* ``TRAIN``, ``CHAIN``: `starfish retrain` arguments for a tiny, fast job (320x180, 4 frames, few timed runs).
* ``fleet`` (module): a released v1 — a smoke checkpoint (2 steps) on ``synthetic_dataset``, its bundle exported
  and stored in ``fleet["store"]`` (``starfish-cots-1.tar``), the checkpoint in the registry ``fleet["registry"]``.
  Module scope: a module that releases v2 into the store does not change another module's v1 world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TRAIN = ["--data.image_size=[320,180]", "--data.train_limit=4", "--data.val_limit=4", "--data.check_images=exists"]
CHAIN = ["--eval-frames", "4", "--latency-runs", "3", "--calibration-frames", "8", "--parity-frames", "4"]


@pytest.fixture(scope="module")
def fleet(synthetic_dataset: Path, bundle_keys: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``root``, ``store``, ``registry``, ``v1`` (checkpoint), ``v1_tar`` and ``v1_bundle`` (the exported directory)."""
    from edge_agent.bundle import load_public_key
    from export.chain import ChainOptions, run_chain
    from export.prune import PruneConfig
    from export.release import store_bundle
    from train.api import fit
    from train.config import load_config
    from train.retrain import register_checkpoint

    root = tmp_path_factory.mktemp("fleet")
    cfg = load_config(
        "smoke",
        overrides=[
            f"--data.root={synthetic_dataset}",
            *TRAIN,
            f"--checkpoint.output_dir={root / 'runs'}",
            "--checkpoint.name=v1",
            "--trainer.max_steps=2",
            f"--checkpoint.best_copy={root / 'v1.ckpt'}",
        ],
    )
    fit(cfg)
    run_chain(
        ChainOptions(
            checkpoint=root / "v1.ckpt",
            out=root / "export-v1",
            private_key=bundle_keys.private,
            prune=PruneConfig(ratio=0.0),
            fine_tune_epochs=0,
            calibration_frames=8,
            parity_frames=4,
            eval_frames=4,
            latency_runs=2,
            version=1,
        )
    )
    store_bundle(root / "export-v1" / "bundle", root / "store", [load_public_key(bundle_keys.public)])
    register_checkpoint(root / "v1.ckpt", root / "registry")
    return {
        "root": root,
        "store": root / "store",
        "registry": root / "registry",
        "v1": root / "v1.ckpt",
        "v1_tar": root / "store" / "starfish-cots-1.tar",
        "v1_bundle": root / "export-v1" / "bundle",
    }
