"""The doctor run as an unprivileged user (uid 65534) against root-owned simulated processes:
what it cannot read, it says so and names the privilege that would allow it, and never
reports a library as missing for want of a look.

The doctor runs in a fork of the test process that drops to uid/gid 65534 with no groups
and no capabilities: nobody cannot execute this Python (it lives under /root), so a fresh
``setpriv … python`` would not start; a fork needs no exec.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import vgpumon.doctor  # imported before the privileges are dropped
import vgpumon.doctor.render  # noqa: F401
from tests.doctor.simdoctor import MODEL, DoctorRun, write_config
from tests.simhost import SimHost
from vgpumon import cli
from vgpumon.doctor.report import Status

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to uid 65534")


def doctor_as_nobody(config: Path, *args: str) -> DoctorRun:
    """`vgpumon doctor --json --config CONFIG ARGS` as uid/gid 65534, no groups, no caps."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        rc = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with os.fdopen(write_end, "w") as out, redirect_stdout(out), \
                    redirect_stderr(io.StringIO()):
                rc = cli.main(["doctor", "--config", str(config), "--json", *args])
        except BaseException:
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(rc)
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        stdout = handle.read()
    _, status = os.waitpid(pid, 0)
    return DoctorRun(os.waitstatus_to_exitcode(status), stdout, "")


@pytest.fixture
def open_host():
    """An era-F host under a world-traversable dir (pytest's tmp dirs are 0700), so the
    unprivileged doctor can reach its files; its processes run as root."""
    base = Path(tempfile.mkdtemp(prefix="vgpumon-doctor-"))
    base.chmod(0o755)
    host = SimHost.create(base, era="F")
    host.add_model(MODEL)
    try:
        yield host
    finally:
        host.close()
        shutil.rmtree(base, ignore_errors=True)


def test_unprivileged_doctor_names_the_privileges_it_lacks(open_host):
    host = open_host
    server = host.start_server()
    runner = server.load_model(MODEL)
    config = write_config(host)
    config.chmod(0o644)
    run = doctor_as_nobody(config)
    assert run.rc in (0, 1), run.stdout

    privileges = run.check("doctor.privileges")
    assert privileges.status is Status.WARN and "uid 65534" in privileges.finding

    # maps of root's processes: unreadable, and said so (never "missing")
    for group, pid in (("server", server.pid), ("runner", runner.pid)):
        check = run.check(f"shims.group.{group}")
        assert check.status is Status.WARN, run.describe()
        evidence = "\n".join(check.evidence)
        assert f"cannot read /proc/{pid}/maps (Permission denied); needs CAP_SYS_PTRACE" \
            in evidence
        assert "missing" not in check.finding and "lack" not in check.finding
    placement = run.check("placement.ggml_cuda")
    assert placement.status is Status.WARN
    assert "CAP_SYS_PTRACE" in "\n".join(placement.evidence)
    assert run.status("shims.bypass") is Status.OK  # nothing readable says bypass

    # environ: needs both capabilities
    env = run.check("env.server")
    assert env.status is Status.WARN
    assert f"/proc/{server.pid}/environ (Permission denied)" in env.finding
    assert "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH" in env.finding

    # the kernel log: CAP_SYSLOG under kernel.dmesg_restrict=1
    restricted = Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1"
    kernel = run.check("kernel.crashes")
    if restricted:
        assert kernel.status is Status.WARN and "CAP_SYSLOG" in kernel.action

    # the server's filesystem and executable: looked up on the host instead, and said so
    server_check = run.check("ollama.server")
    assert server_check.status is Status.OK
    assert any("taken from argv[0]" in e for e in server_check.evidence)

    # what needs no privilege still works
    for check_id in ("shims.files", "shims.links", "ollama.api", "log.source",
                     "log.gpu_discovery", "log.offload"):
        assert run.status(check_id) is Status.OK, (check_id, run.describe())

    # The library checks ran with an assumed environment: no failure claimed on that basis.
    for check_id in ("libraries.dependencies", "libraries.libcuda"):
        assert run.status(check_id) in (Status.OK, Status.WARN), (check_id, run.describe())

    # The load test would need root's rights (the server's): nobody cannot take them, so it
    # is skipped, never run with the doctor's own.
    dlopen = run.check("loadtest.dlopen")
    assert dlopen.status is Status.SKIP, run.describe()
    assert f"cannot take the credentials of the server pid {server.pid} (uid 0" \
        in dlopen.finding


def test_unprivileged_journal_reader_is_told_which_group_it_needs(open_host):
    host = open_host
    host.start_server()
    config = write_config(host, ollama={**write_config_ollama(host),
                                        "log": {"journal_unit": "ollama.service"}})
    config.chmod(0o644)
    run = doctor_as_nobody(config, "--no-load-test")
    source = run.check("log.source")
    if shutil.which("journalctl") is None:
        assert source.status is Status.WARN and "not found" in source.finding
        return
    assert source.status is Status.WARN
    assert "systemd-journal" in source.finding and "adm" in source.finding


def write_config_ollama(host: SimHost) -> dict:
    return dict(host.vgpumon_config()["ollama"])
