#!/usr/bin/env python3
"""Ollama-like parent: spawn llama-server as a child (as `ollama serve` spawns
its runner), wait for /health, then SIGSEGV the child and record how the
parent sees its death (returncode, raw wait status, WIFSIGNALED/WTERMSIG/
WCOREDUMP).

  parent_spawn.py OUTDIR PORT -- llama-server ARGS...
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import req


def main():
    outdir, port = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1:]
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "server.log"), "wb") as log:
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    rep = [f"parent_pid: {os.getpid()}", f"child_pid: {p.pid}", "argv: " + " ".join(argv)]
    rc = req.health(port, os.path.join(outdir, "health.txt"), 90.0, p.pid)
    rep.append(f"health_rc: {rc}")
    try:
        with open(f"/proc/{p.pid}/maps") as f, open(os.path.join(outdir, "maps.txt"), "w") as g:
            g.write(f.read())
    except OSError as e:
        rep.append(f"maps: {e}")
    t0 = time.time()
    os.kill(p.pid, signal.SIGSEGV)
    rep.append("sent: SIGSEGV (kill)")
    _, status = os.waitpid(p.pid, 0)  # raw status, before Popen digests it
    rep.append(f"waited_s: {time.time() - t0:.3f}")
    rep.append(f"raw_wait_status: {status} (0x{status:04x})")
    rep.append(f"WIFEXITED: {os.WIFEXITED(status)}  WIFSIGNALED: {os.WIFSIGNALED(status)}")
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        rep.append(f"WTERMSIG: {signum} ({signal.Signals(signum).name})  "
                   f"WCOREDUMP: {os.WCOREDUMP(status)}")
    rep.append(f"python_subprocess_returncode_equivalent: {os.waitstatus_to_exitcode(status)}")
    shell_code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    rep.append(f"shell_style_exit_code: {shell_code}")
    p.returncode = os.waitstatus_to_exitcode(status)
    with open(os.path.join(outdir, "parent_view.txt"), "w") as f:
        f.write("\n".join(rep) + "\n")
    print("\n".join(rep))


if __name__ == "__main__":
    main()
