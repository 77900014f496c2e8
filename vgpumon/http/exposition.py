"""The /metrics body: prometheus-client's encoders, each family's text reused while unchanged.

prometheus-client's encoders escape and check every name and label character by character,
which costs about 10 µs a sample: most of a scrape. Between two refreshes almost no family
changes, and within one refresh none does, so each family is encoded once per content (its
name, type, help and samples) and the text is reused until the content changes. Keys are the
content itself, never an object's identity, so families that change at every scrape (the
``process_*`` metrics) are simply encoded every time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

EOF = b"# EOF\n"  # the OpenMetrics terminator, once at the very end


class ExpositionCache:
    """Encodes a registry for one scrape, like `choose_encoder(accept)(registry)` would.

    Safe for concurrent scrapes: each render reads the cache it started with and replaces it
    with the entries it used, so the cache never holds more than one body's worth.
    """

    def __init__(self) -> None:
        self._encoded: dict[Hashable, bytes] = {}

    def render(self, registry: Collector, accept: str) -> tuple[bytes, str]:
        """The body and its content type for a request with this Accept header."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        known, used = self._encoded, {}
        parts = []
        for family in registry.collect():
            key = _content_key(content_type, family)
            text = known.get(key) if key is not None else None
            if text is None:
                text = _encode_one(encoder, family, openmetrics)
            if key is not None:
                used[key] = text
            parts.append(text)
        self._encoded = used
        if openmetrics:
            parts.append(EOF)
        return b"".join(parts), content_type


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


def _content_key(content_type: str, family: Any) -> Hashable | None:
    """Everything the encoder reads from `family`; None for what this does not cover
    (exemplars, native histograms), which is then encoded every time."""
    samples = []
    for sample in family.samples:
        # native_histogram exists from prometheus-client 0.21 on.
        if sample.exemplar is not None or getattr(sample, "native_histogram", None) is not None:
            return None
        samples.append((sample.name, tuple(sample.labels.items()), sample.value,
                        sample.timestamp))
    return (content_type, family.name, family.type, family.documentation, family.unit,
            tuple(samples))
