"""The /metrics body: prometheus-client's encoders, with what did not change kept encoded.

Two levels:

- **The body of an unchanged snapshot.** `VgpumonCollector` yields the very same family
  objects while the published snapshot is unchanged (a heartbeat alone changes nothing), and
  a collector that yields an object it yielded before promises the same content. The leading
  run of such families is kept joined, per format (text / OpenMetrics) and per encoding: as
  bytes, and for gzip as the compressed bytes plus the compressor's state after them
  (``zlib``'s ``copy()``). A scrape of an unchanged snapshot encodes only the families that
  come after that run (vgpumon's own ``process_*`` and ``vgpumon_threads``, which change at
  every scrape and are read fresh every time) and, for gzip, compresses only those on a copy
  of the kept state: one valid gzip member, as if the whole body had been compressed at once.
- **Each family's text.** prometheus-client's encoders escape and check every name and label
  character by character, about 10 µs a sample. When the snapshot changes, almost no family
  does, so each family is also kept encoded by its content (name, type, help, samples) and
  reused until that changes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

EOF = b"# EOF\n"  # the OpenMetrics terminator, once at the very end
GZIP_LEVEL = 5
_GZIP_WBITS = 31  # zlib's gzip container: header, deflate stream, CRC-32 and size trailer
# zlib's default memLevel (8) makes each copy of the state allocate and copy about 270 KB,
# 60 µs measured; 6 takes 5 µs, for a body about 2 % larger.
_GZIP_MEMLEVEL = 6


@dataclass(frozen=True)
class Body:
    """A /metrics body as parts to send one after another (joined, they are the body)."""

    parts: tuple[bytes, ...]
    content_type: str
    gzipped: bool


@dataclass(frozen=True)
class _Encoded:
    family: Any
    text: bytes
    key: Hashable | None


@dataclass(frozen=True)
class _Kept:
    """The encoded leading run of families that a scrape found unchanged."""

    length: int
    last: _Encoded  # the run's last entry (by identity)
    data: bytes  # the run's text, or gzip's output for it (after a sync flush)
    compressor: Any  # zlib's state after `data` (gzip only), copied for each scrape


class ExpositionCache:
    """Encodes a registry for one scrape, like `choose_encoder(accept)(registry)` would.

    Used by the HTTP server's thread alone.
    """

    def __init__(self) -> None:
        # Per content type: each family's text by content, as of the last scrape that encoded
        # the snapshot's families, and of the last scrape's families after the kept run.
        self._by_content: dict[str, dict[Hashable, bytes]] = {}
        self._tail_by_content: dict[str, dict[Hashable, bytes]] = {}
        self._last: dict[str, list[_Encoded]] = {}  # the last scrape's families, in order
        self._kept: dict[tuple[str, bool], _Kept] = {}
        self._encoders: dict[str, tuple[Callable[[Any], bytes], str]] = {}  # by Accept

    def render(self, registry: Collector, accept: str) -> tuple[bytes, str]:
        """The body and its content type for a request with this Accept header."""
        body = self.body(registry, accept, gzipped=False)
        return b"".join(body.parts), body.content_type

    def body(self, registry: Collector, accept: str, *, gzipped: bool) -> Body:
        """The body for a request with this Accept header, gzipped or not."""
        encoder, content_type = self._encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        families = list(registry.collect())
        last = self._last.get(content_type, [])
        unchanged = 0  # the leading run of the very objects the last scrape encoded
        for old, family in zip(last, families, strict=False):
            if old.family is not family:
                break
            unchanged += 1
        tail = self._encode(encoder, content_type, families[unchanged:], openmetrics)
        encoded = last[:unchanged] + tail
        self._last[content_type] = encoded
        entries = encoded if unchanged == 0 else tail
        by_content = {e.key: e.text for e in entries if e.key is not None}
        if unchanged == 0:
            self._by_content[content_type] = by_content
        self._tail_by_content[content_type] = by_content
        rest = b"".join(e.text for e in tail) + (EOF if openmetrics else b"")
        if unchanged == 0:
            if gzipped:
                compressor = _compressor()
                rest = compressor.compress(rest) + compressor.flush()
            return Body((rest,), content_type, gzipped)
        kept = self._kept_run(content_type, gzipped, encoded[:unchanged])
        if not gzipped:
            return Body((kept.data, rest), content_type, False)
        compressor = kept.compressor.copy()
        return Body((kept.data, compressor.compress(rest) + compressor.flush()),
                    content_type, True)

    def _encoder(self, accept: str) -> tuple[Callable[[Any], bytes], str]:
        """`choose_encoder(accept)`, remembered: a scraper sends the same header each time."""
        chosen = self._encoders.get(accept)
        if chosen is None:
            if len(self._encoders) >= 64:  # what clients send is theirs: keep it bounded
                self._encoders.clear()
            chosen = self._encoders[accept] = choose_encoder(accept)
        return chosen

    def _kept_run(self, content_type: str, gzipped: bool, run: list[_Encoded]) -> _Kept:
        key = (content_type, gzipped)
        kept = self._kept.get(key)
        # An entry stays in the run from the scrape that encoded it for as long as nothing
        # before it changes (a change re-encodes everything after it): the run's last entry
        # and its length identify the whole run.
        if kept is not None and kept.length == len(run) and kept.last is run[-1]:
            return kept
        data, compressor = b"".join(e.text for e in run), None
        if gzipped:
            compressor = _compressor()
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        kept = _Kept(len(run), run[-1], data, compressor)
        self._kept[key] = kept
        return kept

    def _encode(self, encoder: Callable[[Any], bytes], content_type: str,
                families: list[Any], openmetrics: bool) -> list[_Encoded]:
        """Each family's text, from the content caches where its content is known."""
        known = self._by_content.get(content_type, {})
        known_tail = self._tail_by_content.get(content_type, {})
        encoded = []
        for family in families:
            key = _content_key(family)
            text = None
            if key is not None:
                text = known.get(key) or known_tail.get(key)
            if text is None:
                text = _encode_one(encoder, family, openmetrics)
            encoded.append(_Encoded(family, text, key))
        return encoded


def _compressor() -> Any:
    return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS, _GZIP_MEMLEVEL)


class _OneFamily:
    """What an encoder takes (anything with `collect()`), holding one family."""

    def __init__(self, family: Any):
        self._family = family

    def collect(self) -> Iterable[Any]:
        return (self._family,)


def _encode_one(encoder: Callable[[Any], bytes], family: Any, openmetrics: bool) -> bytes:
    text = encoder(_OneFamily(family))
    if openmetrics and text.endswith(EOF):
        text = text[:-len(EOF)]
    return text


def _content_key(family: Any) -> Hashable | None:
    """Everything the encoder reads from `family`; None for what this does not cover
    (exemplars, native histograms), which is then encoded every time."""
    samples = []
    for sample in family.samples:
        # native_histogram exists from prometheus-client 0.21 on.
        if sample.exemplar is not None or getattr(sample, "native_histogram", None) is not None:
            return None
        samples.append((sample.name, tuple(sample.labels.items()), sample.value,
                        sample.timestamp))
    return (family.name, family.type, family.documentation, family.unit, tuple(samples))
