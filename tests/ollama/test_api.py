"""vgpumon.ollama.api: /api/version and /api/ps bodies of every version."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from vgpumon.ollama.api import ApiFormatError, LoadedModel, parse_ps, parse_version

# The facts' example (0.10.0+, with context_length).
PS_CURRENT = (
    b'{"models":[{"name":"qwen2.5:7b","model":"qwen2.5:7b","size":6211837952,"digest":'
    b'"f7bacf86fc13a2224dda2ba219a403ca846aac01f053f21441501063c465cd6e","details":'
    b'{"parent_model":"","format":"gguf","family":"qwen2","families":["qwen2"],'
    b'"parameter_size":"7.6B","quantization_level":"Q4_K_M"},"expires_at":'
    b'"2025-07-01T10:45:12.381952+02:00","size_vram":6211837952,"context_length":4096}]}'
)


@pytest.mark.parametrize(
    ("body", "version"),
    [
        (b'{"version":"0.12.3"}', "0.12.3"),
        (b'{"version":"0.0.0"}', "0.0.0"),
        (b'{"version":"0.13.0-rc1"}', "0.13.0-rc1"),
    ],
)
def test_parse_version(body, version):
    assert parse_version(body) == version


@pytest.mark.parametrize(
    "body",
    [b"", b"Ollama is running", b"{}", b'{"version":12}', b"[]", b"\xff", b"[" * 100_000],
)
def test_parse_version_rejects(body):
    with pytest.raises(ApiFormatError):
        parse_version(body)


def test_ps_current_version():
    (model,) = parse_ps(PS_CURRENT)
    assert model == LoadedModel(
        name="qwen2.5:7b",
        model="qwen2.5:7b",
        size=6211837952,
        size_vram=6211837952,
        digest="f7bacf86fc13a2224dda2ba219a403ca846aac01f053f21441501063c465cd6e",
        expires_at=datetime.fromisoformat("2025-07-01T08:45:12.381952+00:00").timestamp(),
        context_length=4096,
        family="qwen2",
        parameter_size="7.6B",
        quantization_level="Q4_K_M",
    )


def test_ps_0_1_38_omits_zero_size_vram_and_expires_at():
    body = json.dumps(
        {
            "models": [
                {
                    "name": "llama3:latest",
                    "model": "llama3:latest",
                    "size": 5137025024,
                    "digest": "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "8.0B",
                        "quantization_level": "Q4_0",
                    },
                }
            ]
        }
    ).encode()
    (model,) = parse_ps(body)
    assert model.size_vram == 0
    assert model.expires_at is None
    assert model.context_length is None
    assert model.family == "llama"


def test_ps_before_0_10_has_no_context_length():
    body = PS_CURRENT.replace(b',"context_length":4096', b"")
    assert parse_ps(body)[0].context_length is None


def test_ps_nanosecond_expiry_and_go_zero_time():
    body = {
        "models": [
            {"name": "a:1", "size": 1, "expires_at": "2024-06-01T12:00:00.123456789Z"},
            {"name": "b:1", "size": 1, "expires_at": "0001-01-01T00:00:00Z"},
        ]
    }
    first, second = parse_ps(json.dumps(body).encode())
    assert (
        first.expires_at == datetime.fromisoformat("2024-06-01T12:00:00.123456+00:00").timestamp()
    )
    assert second.expires_at is None


def test_ps_partial_offload_keeps_order():
    body = {
        "models": [
            {"name": "big:70b", "model": "big:70b", "size": 40, "size_vram": 10},
            {"name": "small:1b", "model": "small:1b", "size": 2, "size_vram": 2},
        ]
    }
    models = parse_ps(json.dumps(body).encode())
    assert [(m.name, m.size, m.size_vram) for m in models] == [
        ("big:70b", 40, 10),
        ("small:1b", 2, 2),
    ]


def test_ps_missing_details_and_model_field():
    (model,) = parse_ps(b'{"models":[{"name":"x:1","size":3,"details":null}]}')
    assert (model.model, model.family, model.parameter_size, model.quantization_level) == (
        "x:1",
        "",
        "",
        "",
    )


@pytest.mark.parametrize("body", [b'{"models":[]}', b'{"models":null}'])
def test_ps_no_models(body):
    assert parse_ps(body) == ()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"models":{}}',
        b'{"models":[1]}',
        b'{"models":[{"size":1}]}',
        b'{"models":[{"name":"a","size":"big"}]}',
        b'{"models":[{"name":"a","size":true}]}',
        b'{"models":[{"name":"a","size":1.5}]}',
        b'{"models":[{"name":"a","expires_at":"soon"}]}',
        b'{"models":[{"name":"a","expires_at":5}]}',
        b'{"models":[{"name":"a","details":[]}]}',
        b'{"models":[{"name":"a","details":{"family":1}}]}',
        b'{"models":[{"name":"a","size":' + b"9" * 5000 + b"}]}",
    ],
)
def test_ps_rejects(body):
    with pytest.raises(ApiFormatError):
        parse_ps(body)


def test_poll_counts_an_ollama_without_api_ps_as_up():
    """Ollama before 0.1.38 answers /api/version but has no /api/ps (404)."""
    import http.server
    import threading

    from vgpumon.sources.ollama_api import poll

    class OldOllama(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/api/version":
                body = b'{"version":"0.1.30"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state = poll(f"http://127.0.0.1:{server.server_address[1]}", 2.0, 0.0)
    finally:
        server.shutdown()
        server.server_close()
    assert state.up and state.version == "0.1.30" and state.models is None  # unknown
