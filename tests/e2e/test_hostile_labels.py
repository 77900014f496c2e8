"""Labels come only from configuration and bounded sources, and are escaped: a hostile
Ollama API and hostile model names on disk cannot inject series or break the exposition."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading

import pytest

from tests.harness import Vgpumon, host_config, parse_metrics

HOSTILE = 'evil"} 1\nvgpumon_injected{x="1'


@pytest.fixture
def hostile_api():
    """An "Ollama" whose /api/ps names models that are not pulled here, with hostile text."""
    models = [{"name": HOSTILE + str(i), "model": HOSTILE, "size": 1, "size_vram": 1,
               "digest": HOSTILE if i % 2 else "ab" * 32} for i in range(300)]
    body = json.dumps({"models": models}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = b'{"version":"0.13.5\\"} x"}' if self.path == "/api/version" else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_api_model_names_never_become_labels(simhost, tmp_path, hostile_api):
    host = simhost(era="F")
    daemon = Vgpumon(host_config(host, ollama={"url": hostile_api, "log": {}}), tmp_path)
    try:
        daemon.wait_value("vgpumon_ollama_up", 1)
        text = daemon.get("/metrics").decode()
    finally:
        daemon.stop()
    metrics = parse_metrics(text)  # parses: nothing injected a line
    assert not any(name.startswith("vgpumon_injected") for name, _ in metrics)
    labels = {dict(labels).get("model") for name, labels in metrics
              if name == "vgpumon_ollama_model_size_bytes"}
    assert labels == {"unnamed", "abababababab"}  # neither name nor hostile digest is used
    assert metrics[("vgpumon_ollama_models_loaded", ())] == 300
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    version = [dict(labels)["version"] for name, labels in metrics
               if name == "vgpumon_ollama_info"]
    assert version == ['0.13.5"} x']  # escaped in the exposition, read back intact


def test_hostile_model_name_on_disk_is_escaped_and_capped(simhost, tmp_path):
    host = simhost(era="F")
    host.add_model("llama3.2:latest")
    manifest = host.model("llama3.2:latest")
    source = host.models_dir / "manifests/registry.ollama.ai/library/llama3.2/latest"
    # A manifest copied under a long, quote-laden name: <host>/<namespace>/<model>:<tag>.
    weird_dir = (host.models_dir / "manifests" / "evil.example" / ("n" * 120) /
                 ('m"} 1\n' + "m" * 120))
    weird_dir.mkdir(parents=True)
    (weird_dir / 'tag"}\\').write_bytes(source.read_bytes())
    server = host.start_server()
    runner = server.load_model("llama3.2:latest")
    assert runner.pid and manifest.blob
    daemon = Vgpumon(host_config(host), tmp_path)
    try:
        daemon.wait_value("vgpumon_ollama_up", 1)
        text = daemon.get("/metrics").decode()
    finally:
        daemon.stop()
    metrics = parse_metrics(text)
    labels = {dict(labels).get("model") for name, labels in metrics
              if name.startswith("vgpumon_ollama_model_")}
    assert all(len(label) <= 200 for label in labels)
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
