"""Digests that tie a bundle to what produced it (config, data, checkpoint)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MODEL_NAME = "starfish-cots"


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a config's canonical JSON (sorted keys), so equal configs give equal digests."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
