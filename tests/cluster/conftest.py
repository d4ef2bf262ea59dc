"""Fixtures of the cluster fault tests (see harness.py).

``netns`` (session): the network namespace every test runs in, or a skip with the reason
when this machine cannot make one (not root, no ``ip``/``nft``). ``cluster_factory``
starts clusters in the test's temporary directory and kills every node afterwards; a
failing test's report carries every node's log tail.
"""

from __future__ import annotations

import pytest

from harness import Cluster, Netns, NetnsUnavailable, pier_binary

_CLUSTERS: list[Cluster] = []


@pytest.fixture(scope="session")
def netns():
    if not pier_binary().exists():
        pytest.fail(f"Pier binary not found at {pier_binary()} (set PIER_BIN or run "
                    f"`cargo build -p pier`)", pytrace=False)
    try:
        ns = Netns.create()
    except NetnsUnavailable as e:
        pytest.skip(f"cluster fault tests need a network namespace: {e}")
    try:
        yield ns
    finally:
        ns.destroy()


@pytest.fixture
def cluster_factory(netns, tmp_path):
    started: list[Cluster] = []

    def make(size: int = 3, start: bool = True) -> Cluster:
        c = Cluster(tmp_path / f"cluster-{len(started)}", size, netns)
        started.append(c)
        _CLUSTERS.append(c)
        return c.start() if start else c

    yield make
    for c in started:
        c.stop()
        _CLUSTERS.remove(c)
    netns.heal()


@pytest.fixture
def cluster(cluster_factory) -> Cluster:
    return cluster_factory(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for c in _CLUSTERS:
            report.sections.append(("cluster logs", c.logs()))
