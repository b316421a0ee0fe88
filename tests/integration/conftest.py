"""Fixtures for the integration tests: every test (or module) gets its own data directory under
pytest's tmp_path, and its teardown always runs `paddock system teardown` and then checks that
no mount, loop device, cgroup or process of that data directory is left on the host."""

import os

import pytest

import pdk


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s; left out of the ASan run")


def _preflight():
    if os.geteuid() != 0:
        pytest.skip("paddock needs root (namespaces, cgroups, loop mounts); run as root")
    binary = pdk.paddock_bin()
    if not binary.exists():
        pytest.fail(f"paddock binary not found at {binary} (set PADDOCK_BIN or build first)")
    if not pdk.probe_bin().exists():
        pytest.fail(f"probe binary not found at {pdk.probe_bin()} (set PADDOCK_PROBE)")


@pytest.fixture
def pd(tmp_path):
    """A Paddock with a fresh data directory, torn down (and checked) after the test."""
    _preflight()
    p = pdk.Paddock(tmp_path / "data")
    try:
        yield p
    finally:
        p.teardown()


@pytest.fixture(scope="module")
def mpd(tmp_path_factory):
    """A Paddock shared by one test module (for tests that need no isolation from each other)."""
    _preflight()
    p = pdk.Paddock(tmp_path_factory.mktemp("mod") / "data")
    try:
        yield p
    finally:
        p.teardown()


@pytest.fixture(scope="module")
def menv(mpd):
    """One running environment with the probe pushed, shared by a test module."""
    env = mpd.create()
    env.push_probe()
    return env


@pytest.fixture
def env(pd):
    """A fresh running environment with the probe pushed."""
    e = pd.create()
    e.push_probe()
    return e
