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

All of it is kept per content type, which echoes what the client asked for (prometheus-client
puts the requested OpenMetrics ``version=`` in it): only the `_FORMATS` most recently used
content types are kept, so no client can grow it by varying its Accept header.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
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
# Content types kept (see the module's docstring): a scraper sends one Accept header, and a
# few scrapers or a person with curl beside it each get theirs.
_FORMATS = 4
_ENCODERS = 64  # Accept headers remembered (small entries: a function and a string)


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

    run: tuple[_Encoded, ...]  # the run's entries (compared by identity)
    data: bytes  # the run's text, or gzip's output for it (after a sync flush)
    compressor: Any  # zlib's state after `data` (gzip only), copied for each scrape


class _Format:
    """What is kept for one content type."""

    __slots__ = ("by_content", "kept", "last", "tail_by_content")

    def __init__(self) -> None:
        # Each family's text by content, as of the last scrape that encoded the snapshot's
        # families, and of the last scrape's families after the kept run.
        self.by_content: dict[Hashable, bytes] = {}
        self.tail_by_content: dict[Hashable, bytes] = {}
        self.last: list[_Encoded] = []  # the last scrape's families, in order
        self.kept: dict[bool, _Kept] = {}  # by gzipped


class ExpositionCache:
    """Encodes a registry for one scrape, like `choose_encoder(accept)(registry)` would.

    Used by the HTTP server's thread alone.
    """

    def __init__(self) -> None:
        self._formats: OrderedDict[str, _Format] = OrderedDict()  # by content type, LRU
        self._encoders: dict[str, tuple[Callable[[Any], bytes], str]] = {}  # by Accept

    @property
    def kept_formats(self) -> int:
        """How many content types have bodies and texts kept (at most `_FORMATS`)."""
        return len(self._formats)

    def render(self, registry: Collector, accept: str) -> tuple[bytes, str]:
        """The body and its content type for a request with this Accept header."""
        body = self.body(registry, accept, gzipped=False)
        return b"".join(body.parts), body.content_type

    def body(self, registry: Collector, accept: str, *, gzipped: bool) -> Body:
        """The body for a request with this Accept header, gzipped or not."""
        encoder, content_type = self._encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        kept_format = self._format(content_type)
        families = list(registry.collect())
        last = kept_format.last
        unchanged = 0  # the leading run of the very objects the last scrape encoded
        for old, family in zip(last, families, strict=False):
            if old.family is not family:
                break
            unchanged += 1
        tail = self._encode(encoder, kept_format, families[unchanged:], openmetrics, last)
        encoded = last[:unchanged] + tail
        kept_format.last = encoded
        entries = encoded if unchanged == 0 else tail
        by_content = {e.key: e.text for e in entries if e.key is not None}
        if unchanged == 0:
            kept_format.by_content = by_content
        kept_format.tail_by_content = by_content
        rest = b"".join(e.text for e in tail) + (EOF if openmetrics else b"")
        if unchanged == 0:
            if gzipped:
                compressor = _compressor()
                rest = compressor.compress(rest) + compressor.flush()
            return Body((rest,), content_type, gzipped)
        kept = self._kept_run(kept_format, gzipped, encoded[:unchanged])
        if not gzipped:
            return Body((kept.data, rest), content_type, False)
        compressor = kept.compressor.copy()
        return Body((kept.data, compressor.compress(rest) + compressor.flush()),
                    content_type, True)

    def _format(self, content_type: str) -> _Format:
        """What is kept for `content_type`, made the most recently used; the least recently
        used content type beyond `_FORMATS` is forgotten."""
        kept_format = self._formats.get(content_type)
        if kept_format is None:
            kept_format = self._formats[content_type] = _Format()
            while len(self._formats) > _FORMATS:
                self._formats.popitem(last=False)
        else:
            self._formats.move_to_end(content_type)
        return kept_format

    def _encoder(self, accept: str) -> tuple[Callable[[Any], bytes], str]:
        """`choose_encoder(accept)`, remembered: a scraper sends the same header each time."""
        chosen = self._encoders.get(accept)
        if chosen is None:
            if len(self._encoders) >= _ENCODERS:  # what clients send is theirs: keep it bounded
                self._encoders.clear()
            chosen = self._encoders[accept] = choose_encoder(accept)
        return chosen

    def _kept_run(self, kept_format: _Format, gzipped: bool, run: list[_Encoded]) -> _Kept:
        kept = kept_format.kept.get(gzipped)
        # Entries are reused by identity, also after an earlier family changed: the whole
        # run, entry by entry, identifies what was joined.
        if (kept is not None and len(kept.run) == len(run)
                and all(a is b for a, b in zip(kept.run, run, strict=True))):
            return kept
        data, compressor = b"".join(e.text for e in run), None
        if gzipped:
            compressor = _compressor()
            data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        kept = _Kept(tuple(run), data, compressor)
        kept_format.kept[gzipped] = kept
        return kept

    def _encode(self, encoder: Callable[[Any], bytes], kept_format: _Format,
                families: list[Any], openmetrics: bool,
                previous: list[_Encoded]) -> list[_Encoded]:
        """Each family's text: as the last scrape encoded the very same object (a collector
        that yields an object again promises the same content), else from the content caches
        where its content is known."""
        known = kept_format.by_content
        known_tail = kept_format.tail_by_content
        # `previous` holds its families: their ids stay theirs while it is alive.
        again = {id(entry.family): entry for entry in previous}
        encoded = []
        for family in families:
            entry = again.get(id(family))
            if entry is not None and entry.family is family:
                encoded.append(entry)
                continue
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
