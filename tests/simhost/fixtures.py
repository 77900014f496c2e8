"""pytest fixtures for the simulated Ollama host. They always clean up: every server is
stopped and every process of the host killed at teardown, even when the test failed.

    def test_x(simhost):
        host = simhost(era="F")             # a SimHost under tmp_path
        host.add_model("llama3.2:latest")
        server = host.start_server()
        ...

`simhost_module` is the same factory with module scope, for tests that share one host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .host import SimHost

HostFactory = Callable[..., SimHost]


def _factory(base: Path) -> tuple[HostFactory, Callable[[], None]]:
    hosts: list[SimHost] = []

    def make(era: str = "F", **kw) -> SimHost:
        host = SimHost.create(base, era=era, name=f"host{len(hosts)}-{era}", **kw)
        hosts.append(host)
        return host

    def close_all() -> None:
        errors = []
        for host in hosts:
            try:
                host.close()
            except Exception as e:  # close every host, then report
                errors.append(e)
        if errors:
            raise errors[0]

    return make, close_all


@pytest.fixture
def simhost(tmp_path: Path) -> Iterator[HostFactory]:
    """Factory of SimHosts (`simhost(era="F", version=None, shim_links=True)`)."""
    make, close_all = _factory(tmp_path)
    yield make
    close_all()


@pytest.fixture(scope="module")
def simhost_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostFactory]:
    make, close_all = _factory(tmp_path_factory.mktemp("simhost"))
    yield make
    close_all()
