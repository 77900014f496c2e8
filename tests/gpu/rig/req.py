#!/usr/bin/env python3
"""Tiny HTTP client for the rig (no curl needed on the GPU machine).

  req.py health PORT OUTFILE [TIMEOUT_S] [PID]
      poll GET /health until HTTP 200 (or TIMEOUT_S, or PID dies); write the
      last status + body to OUTFILE; exit 0 on 200, 1 on timeout, 2 if PID died.
  req.py completion PORT OUTFILE [PROMPT] [N_PREDICT]
      POST /completion {"prompt":..,"n_predict":..}; write status + body.
"""
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request


def get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except Exception as e:  # connection refused while loading, etc.
        return None, f"{type(e).__name__}: {e}"


def alive(pid):
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still "exists"; look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def health(port, out, timeout_s=90.0, pid=0):
    t0 = time.time()
    url = f"http://127.0.0.1:{port}/health"
    status, body, tries = None, "", 0
    while time.time() - t0 < timeout_s:
        tries += 1
        status, body = get(url, 2.0)
        if status == 200:
            break
        if not alive(pid):
            status, body = None, f"process {pid} died while waiting for /health"
            break
        time.sleep(0.25)
    dt = time.time() - t0
    with open(out, "w") as f:
        f.write(f"GET {url}\nhttp_status: {status}\nwaited_s: {dt:.2f}\ntries: {tries}\n"
                f"body: {body}\n")
    if status == 200:
        return 0
    return 2 if not alive(pid) else 1


def completion(port, out, prompt="Hello, my name is", n_predict=16):
    url = f"http://127.0.0.1:{port}/completion"
    data = json.dumps({"prompt": prompt, "n_predict": n_predict, "temperature": 0.8,
                       "seed": 42}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    t0 = time.time()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode("utf-8", "replace")
    except Exception as e:
        status, body = None, f"{type(e).__name__}: {e}"
    dt = time.time() - t0
    pretty = body
    with contextlib.suppress(Exception):
        pretty = json.dumps(json.loads(body), indent=1, ensure_ascii=False)
    with open(out, "w") as f:
        f.write(f"POST {url}\nrequest: {data.decode()}\nhttp_status: {status}\n"
                f"elapsed_s: {dt:.3f}\nbody:\n{pretty}\n")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    cmd, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if cmd == "health":
        t = float(sys.argv[4]) if len(sys.argv) > 4 else 90.0
        pid = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        sys.exit(health(port, out, t, pid))
    elif cmd == "completion":
        prompt = sys.argv[4] if len(sys.argv) > 4 else "Hello, my name is"
        n = int(sys.argv[5]) if len(sys.argv) > 5 else 16
        sys.exit(completion(port, out, prompt, n))
    sys.exit(f"unknown command {cmd}")
