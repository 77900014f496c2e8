"""A scraping client that behaves like Prometheus: one keep-alive connection, its headers."""

from __future__ import annotations

import gzip
import http.client
import time

# What Prometheus 2.x/3.x sends: it prefers OpenMetrics and accepts gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
              "application/openmetrics-text;version=0.0.1;q=0.4,"
              "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.45.3",
}


class Scraper:
    def __init__(self, address: str, timeout: float = 10.0):
        host, _, port = address.rpartition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def get(self, path: str = "/metrics") -> bytes:
        """The body (un-gzipped); raises on anything but 200."""
        self._connection.request("GET", path, headers=PROMETHEUS_HEADERS)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return body

    def timed(self, path: str, count: int) -> list[float]:
        """Wall seconds of `count` GETs of `path`, one after the other."""
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            self.get(path)
            latencies.append(time.perf_counter() - started)
        return latencies

    def close(self) -> None:
        self._connection.close()
