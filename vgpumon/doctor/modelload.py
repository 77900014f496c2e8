"""``--load-model NAME``: ask Ollama to load a model, so the runner-side checks have a runner.

``POST /api/generate`` with an empty prompt loads the model without generating anything
(Ollama answers ``done_reason: "load"``); ``keep_alive: "30s"`` lets it unload soon after.
This changes the host's state (memory, maybe evicting another model), so it is opt-in.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

KEEP_ALIVE = "30s"
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class ModelLoad:
    model: str
    started_at: float
    finished_at: float
    status: int | None  # HTTP status; None when there was no answer
    error: str | None = None
    done_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at


def request_body(model: str) -> dict[str, str]:
    return {"model": model, "prompt": "", "keep_alive": KEEP_ALIVE}


def parse_answer(body: bytes) -> tuple[str | None, str | None]:
    """(error, done_reason) of a generate answer: one JSON object or (streamed) one per line."""
    error, reason = None, None
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            return f"unexpected answer: {line[:200]!r}", None
        if isinstance(obj, dict):
            error = obj.get("error", error)
            reason = obj.get("done_reason", reason)
    return (str(error) if error is not None else None), reason


def load_model(url: str, model: str, timeout: float) -> ModelLoad:
    """Load `model`; returns when Ollama answered (loaded or failed) or after `timeout`."""
    parts = urlsplit(url)
    started = time.time()
    if not parts.hostname:  # the config accepts no URL without a host
        return ModelLoad(model, started, time.time(), None, f"no host in {url!r}")
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", (parts.path or "") + "/api/generate",
                           body=json.dumps(request_body(model)),
                           headers={"Content-Type": "application/json",
                                    "User-Agent": "vgpumon-doctor"})
        response = connection.getresponse()
        body = response.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as err:
        return ModelLoad(model, started, time.time(), None, f"POST /api/generate: {err}")
    finally:
        connection.close()
    error, reason = parse_answer(body)
    if response.status != 200 and error is None:
        error = f"HTTP {response.status} {response.reason}"
    return ModelLoad(model, started, time.time(), response.status, error, reason)
