"""/metrics bodies from the exposition cache are byte for byte what prometheus-client's
encoders write, for every format Prometheus negotiates, and never stale."""

from __future__ import annotations

import dataclasses
import gc
import gzip
import tracemalloc
import zlib

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from tests.web.conftest import published
from vgpumon.http.collector import VgpumonCollector
from vgpumon.http.exposition import ExpositionCache
from vgpumon.snapshot.publication import Publisher
from vgpumon.sources.links import ShimLinkState

ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;"
    "version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
)


def registry_over(publisher: Publisher) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VgpumonCollector(lambda: publisher.current))
    return registry


@pytest.mark.parametrize("accept", ACCEPTS)
def test_cached_body_is_what_the_encoder_writes(accept):
    publisher = Publisher(published())
    registry = registry_over(publisher)
    cache = ExpositionCache()
    encoder, content_type = choose_encoder(accept)
    for _ in range(2):  # the second time from the cache
        assert cache.render(registry, accept) == (encoder(registry), content_type)


def test_a_changed_snapshot_is_rendered_anew():
    publisher = Publisher(published())
    registry = registry_over(publisher)
    cache = ExpositionCache()
    before, _ = cache.render(registry, "")
    link = ShimLinkState("/usr/lib64/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so", "host", "ok")
    current = publisher.current
    publisher.publish(dataclasses.replace(
        current, state=dataclasses.replace(current.state, links=(link,))))
    after, _ = cache.render(registry, "")
    assert b'path="/usr/lib64/libcuda.so.1"' in after and after != before
    encoder, _ = choose_encoder("")
    assert after == encoder(registry)


def test_a_heartbeat_alone_reuses_the_families_and_anything_else_does_not():
    publisher = Publisher(published())
    collector = VgpumonCollector(lambda: publisher.current)
    first = list(collector.collect())
    current = publisher.current
    later = dataclasses.replace(current.runtime, heartbeat=current.runtime.heartbeat + 1)
    publisher.publish(dataclasses.replace(current, runtime=later))
    assert all(a is b for a, b in zip(first, collector.collect(), strict=True))
    publisher.publish(dataclasses.replace(
        publisher.current,
        runtime=dataclasses.replace(publisher.current.runtime, event_log_dropped=3)))
    dropped = next(m for m in collector.collect() if m.name == "vgpumon_event_log_dropped")
    assert dropped.samples[0].value == 3


class Volatile:
    """A collector like the process metrics: new family objects at every collection."""

    def __init__(self) -> None:
        self.value = 0.0

    def collect(self):
        yield GaugeMetricFamily("test_volatile", "changes at every scrape", value=self.value)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("accept", ACCEPTS)
def test_every_scrape_of_an_unchanged_snapshot_is_the_whole_body(accept, gzipped):
    publisher = Publisher(published())
    registry = registry_over(publisher)
    volatile = Volatile()
    registry.register(volatile)
    cache = ExpositionCache()
    encoder, content_type = choose_encoder(accept)
    bodies = []
    for scrape in range(4):
        volatile.value = scrape
        body = cache.body(registry, accept, gzipped=gzipped)
        data = b"".join(body.parts)
        if gzipped:
            decompressor = zlib.decompressobj(31)
            data = decompressor.decompress(data)
            assert decompressor.eof and not decompressor.unused_data  # one gzip member
        assert (data, body.content_type, body.gzipped) == (encoder(registry), content_type,
                                                           gzipped)
        bodies.append(body)
    # From the second scrape on, the snapshot's part is the same bytes object: a copy.
    assert bodies[2].parts[0] is bodies[1].parts[0] is bodies[3].parts[0]
    assert len(bodies[0].parts) == 1  # the first scrape of a snapshot encodes it whole


def test_a_new_snapshot_replaces_the_kept_body():
    publisher = Publisher(published())
    registry = registry_over(publisher)
    registry.register(Volatile())
    cache = ExpositionCache()
    for _ in range(2):
        kept = cache.body(registry, "", gzipped=True).parts[0]
    link = ShimLinkState("/usr/lib64/libcuda.so.1", "/usr/lib64/libvgpu-cuda.so", "host", "ok")
    current = publisher.current
    publisher.publish(dataclasses.replace(
        current, state=dataclasses.replace(current.state, links=(link,))))
    bodies = [cache.body(registry, "", gzipped=True) for _ in range(2)]
    assert bodies[1].parts[0] is not kept
    text = gzip.decompress(b"".join(bodies[1].parts))
    assert b'path="/usr/lib64/libcuda.so.1"' in text
    assert text == choose_encoder("")[0](registry)


class Stable:
    """A collector that yields the same 1,000-sample family at every collection, like the
    snapshot's families while it is unchanged."""

    def __init__(self) -> None:
        self.family = GaugeMetricFamily("test_stable", "never changes", labels=["n"])
        for n in range(1000):
            self.family.add_metric([str(n)], float(n))

    def collect(self):
        yield self.family


def test_many_accept_headers_keep_a_bounded_number_of_bodies():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Stable())
    registry.register(Volatile())
    cache = ExpositionCache()

    def scrape_with(versions: range) -> int:
        """Scrape twice (so the unchanged run is kept) with each version in the Accept
        header, plain and gzipped; the memory the cache then holds."""
        for n in versions:
            accept = f"application/openmetrics-text; version=1.0.{n}"
            for gzipped in (False, True, False, True):
                body = cache.body(registry, accept, gzipped=gzipped)
                assert f"version=1.0.{n};" in body.content_type  # the client's own
        del body
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        few = scrape_with(range(8)) - start
        many = scrape_with(range(8, 40)) - start
    finally:
        tracemalloc.stop()
    # Without a bound each content type keeps its bodies (about 150 KB here): 40 of them
    # would hold 5 times what 8 do.
    assert many < 2 * few, (few, many)
    assert cache.kept_formats <= 4
    assert b"".join(cache.body(registry, "", gzipped=False).parts) == \
        choose_encoder("")[0](registry)


class _Families:
    """A collector yielding the families it is given, as they are (objects reused)."""

    def __init__(self) -> None:
        self.families: list[GaugeMetricFamily] = []

    def collect(self):
        return iter(self.families)


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, "a test family")
    family.add_metric([], value)
    return family


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_changed_family_before_reused_ones_is_never_served_from_the_kept_run(gzipped):
    """Families after a changed one can be the very objects of earlier scrapes: the kept
    text of a run must not stand for a run that only ends the same way."""
    source = _Families()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(source)
    cache = ExpositionCache()
    later = [_gauge("b", 2), _gauge("c", 3)]

    def scrape() -> bytes:
        body = b"".join(cache.body(registry, "", gzipped=gzipped).parts)
        return gzip.decompress(body) if gzipped else body

    source.families = [_gauge("a", 1), *later]
    scrape()
    assert b"a 1.0" in scrape()  # unchanged: served from the kept run
    source.families = [_gauge("a", 5), *later]
    assert b"a 5.0" in scrape()
    assert b"a 5.0" in scrape()  # unchanged again: the kept run must be this one
