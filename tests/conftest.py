"""Project-wide pytest configuration: fixture modules and skip-with-reason helpers.

Each unit's shared fixtures live in their own module under tests/helpers/ and are registered here, so that test
files never import each other.
"""

from __future__ import annotations

import importlib.util

# Registered only when present, so a unit's tests can land independently of the others'.
_FIXTURE_MODULES = (
    "tests.helpers.datasets",
    "tests.helpers.bundles",
    "tests.helpers.mqtt_broker",
    "tests.helpers.agent",
    "tests.helpers.shore",
)
pytest_plugins = [name for name in _FIXTURE_MODULES if importlib.util.find_spec(name) is not None]
