"""Project-wide pytest configuration: fixture modules, skip-with-reason helpers and the loopback guard.

Each unit's shared fixtures live in their own module under tests/helpers/ and are registered here, so that test
files never import each other. Every test runs under tests/helpers/loopback.py: a connection to anything but
loopback (or a Unix socket) fails the test.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from tests.helpers import loopback

# albumentations' import-time version check asks pypi.org (outside loopback) - the guard below would fail it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
loopback.install()

# Registered only when present, so a unit's tests can land independently of the others'.
_FIXTURE_MODULES = (
    "tests.helpers.datasets",
    "tests.helpers.bundles",
    "tests.helpers.mqtt_broker",
    "tests.helpers.agent",
    "tests.helpers.shore",
    "tests.helpers.retrain",
    "tests.helpers.ota",
    "tests.helpers.s3",
)
pytest_plugins = ["pytester"] + [name for name in _FIXTURE_MODULES if importlib.util.find_spec(name) is not None]


def _fail_on_violations() -> None:
    violations = loopback.take_violations()
    if violations:
        pytest.fail("; ".join(sorted(set(violations))), pytrace=False)


# Checked after each phase, so the phase that left loopback is the one reported as failed, even when the attempt
# happened on a thread that swallowed the error.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    loopback.take_violations()
    result = yield
    _fail_on_violations()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    _fail_on_violations()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    result = yield
    _fail_on_violations()
    return result
