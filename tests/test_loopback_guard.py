"""The suite-wide loopback guard (tests/helpers/loopback.py) stops and reports connections that leave the machine."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.helpers import loopback
from tests.helpers.mqtt_broker import free_port

# TEST-NET-1 and TEST-NET-3 (RFC 5737) and the IPv6 documentation prefix: never routed, never ours.
OUTSIDE = ["192.0.2.1", "203.0.113.7", "2001:db8::1", "10.0.0.1", "example.com"]


@pytest.fixture(autouse=True)
def guard_is_installed() -> None:
    """These tests aim at addresses outside loopback on purpose: never without the guard that stops them first."""
    if not loopback.installed():
        pytest.fail("the loopback guard is not installed: refusing to aim at non-loopback addresses")


@pytest.mark.parametrize("host", OUTSIDE)
def test_connect_outside_loopback_is_refused_before_any_packet(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(loopback.NonLoopbackConnection):
        sock.connect((host, 1883))
    assert loopback.take_violations(), "the attempt must be recorded so the test fails"


def test_create_connection_and_lookups_are_refused() -> None:
    with pytest.raises(loopback.NonLoopbackConnection):
        socket.create_connection(("example.com", 80), timeout=0.1)
    with pytest.raises(loopback.NonLoopbackConnection):
        socket.getaddrinfo("192.0.2.1", 80)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(loopback.NonLoopbackConnection):
        udp.sendto(b"x", ("192.0.2.1", 53))
    assert len(loopback.take_violations()) == 3


def test_an_attempt_on_a_background_thread_is_still_recorded() -> None:
    def swallow() -> None:
        try:
            socket.create_connection(("192.0.2.1", 1883), timeout=0.1)
        except OSError:
            pass

    thread = threading.Thread(target=swallow)
    thread.start()
    thread.join(5)
    # The conftest hooks would fail this test from these records; take them so it does not.
    assert loopback.take_violations() == [
        "name lookup to '192.0.2.1' is outside loopback: tests connect only to 127.0.0.1 / ::1"
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "localhost", "::1"])
def test_loopback_and_unix_sockets_pass(host: str, tmp_path) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex((host, free_port())) != 0  # closed port: refused by the kernel, not by the guard
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen(1)
        client.connect(path)
    assert loopback.take_violations() == []


def test_the_guard_fails_a_test_that_leaves_loopback(pytester: pytest.Pytester) -> None:
    """End to end through pytest itself: a test whose thread swallowed the error is still reported as failed."""
    pytester.makeconftest("from tests.conftest import pytest_runtest_call, pytest_runtest_setup  # noqa: F401\n")
    pytester.makepyfile(
        test_leaks="""
        import socket, threading

        def test_leaks():
            def go():
                try:
                    socket.socket().connect(("192.0.2.1", 1883))
                except OSError:
                    pass
            t = threading.Thread(target=go); t.start(); t.join()
    """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*outside loopback*"])
