"""The load test runs another user's code (constructors of the CUDA backend, its dependencies
and the preloaded shims) only with that user's rights, never with the doctor's.

A library whose constructor records who ran it stands in for a hostile backend. It lives under
a world-traversable dir (pytest's tmp dirs are 0700) owned by nobody, as a user's own dir would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doctor.simdoctor import doctor
from tests.harness import nobody_dir
from tests.simhost import wait_until
from vgpumon.doctor.loadtest import run_load_test
from vgpumon.doctor.report import Status
from vgpumon.linux.procfs import Credentials

NOBODY = 65534
NOGROUP = 65534
GCC = shutil.which("gcc")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the root doctor"),
    pytest.mark.skipif(GCC is None, reason="gcc not installed"),
]

# The constructor writes, to $OLLAMA_WITNESS_FILE: real/effective uid, real/effective gid, the
# number of supplementary groups and the NoNewPrivs flag of the process that loaded it.
WITNESS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void witness(void) {
    const char *out = getenv("OLLAMA_WITNESS_FILE");
    if (!out) return;
    char status[8192] = {0}, line[256];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd >= 0) { read(fd, status, sizeof status - 1); close(fd); }
    const char *nnp = strstr(status, "NoNewPrivs:");
    snprintf(line, sizeof line, "%d %d %d %d %d %d\n", (int)getuid(), (int)geteuid(),
             (int)getgid(), (int)getegid(), getgroups(0, NULL), nnp ? atoi(nnp + 11) : -1);
    fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) { write(fd, line, strlen(line)); close(fd); }
}
int ggml_backend_init(void) { return 0; }
"""


@pytest.fixture
def user_dir() -> Iterator[Path]:
    with nobody_dir("vgpumon-loadtest-") as own:
        yield own


def witness_library(directory: Path) -> Path:
    """``DIRECTORY/cuda_v12/libggml-cuda.so`` with the witness constructor, owned by nobody."""
    target = directory / "cuda_v12" / "libggml-cuda.so"
    target.parent.mkdir(parents=True)
    source = directory / "witness.c"
    source.write_text(WITNESS)
    subprocess.run([GCC, "-shared", "-fPIC", "-o", str(target), str(source)], check=True,
                   capture_output=True)
    for path in (directory, target.parent, target, source):
        os.chown(path, NOBODY, NOGROUP)
    return target


def witness_of(path: Path) -> tuple[int, ...]:
    return tuple(int(field) for field in path.read_text().split())


def test_the_child_takes_the_examined_process_credentials_and_no_new_privs(user_dir):
    library = witness_library(user_dir)
    out = user_dir / "witness"
    result = run_load_test(str(library), {"OLLAMA_WITNESS_FILE": str(out)}, "test",
                           Credentials(NOBODY, NOGROUP, ()), "server pid 1")
    assert result.skipped is None and result.ok, result
    uid, euid, gid, egid, groups, no_new_privs = witness_of(out)
    assert (uid, euid, gid, egid) == (NOBODY, NOBODY, NOGROUP, NOGROUP)
    assert groups == 0  # root's supplementary groups are gone
    assert no_new_privs == 1  # set before the exec that preloads and loads
    assert out.stat().st_uid == NOBODY
    assert result.credentials == Credentials(NOBODY, NOGROUP, ())


def test_supplementary_groups_are_the_examined_process_groups(user_dir):
    library = witness_library(user_dir)
    out = user_dir / "witness"
    result = run_load_test(str(library), {"OLLAMA_WITNESS_FILE": str(out)}, "test",
                           Credentials(NOBODY, NOGROUP, (44, 100)), "runner pid 2")
    assert result.ok, result
    assert witness_of(out)[4] == 2


def test_without_credentials_nothing_is_loaded(user_dir):
    library = witness_library(user_dir)
    out = user_dir / "witness"
    result = run_load_test(str(library), {"OLLAMA_WITNESS_FILE": str(out)}, "test", None,
                           "server pid 1")
    assert result.skipped and "credentials of server pid 1 could not be read" in result.skipped
    assert not result.ok
    assert not out.exists()


def test_a_doctor_that_cannot_switch_users_skips_rather_than_loading_as_itself(user_dir):
    """Run by uid 65533 (no capabilities) against nobody's process: setuid is refused, so the
    test is skipped, naming the credentials, and the constructor never runs."""
    library = witness_library(user_dir)
    out = user_dir / "witness"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65533)
            os.setuid(65533)
            result = run_load_test(str(library), {"OLLAMA_WITNESS_FILE": str(out)}, "test",
                                   Credentials(NOBODY, NOGROUP, ()), "server pid 1")
            os.write(write_end, (result.skipped or f"not skipped: {result}").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        skipped = handle.read().decode()
    os.waitpid(pid, 0)
    assert skipped.startswith("cannot take the credentials of server pid 1 (uid 65534"), skipped
    assert "never runs with the doctor's own rights" in skipped
    assert not out.exists()


def test_a_constructor_that_hangs_is_ended_with_what_it_started(user_dir):
    hang = user_dir / "hang.c"
    hang.write_text("#include <unistd.h>\n__attribute__((constructor)) static void h(void) "
                    "{ if (fork() == 0) { for (;;) pause(); } for (;;) pause(); }\n")
    library = user_dir / "libhang.so"
    subprocess.run([GCC, "-shared", "-fPIC", "-o", str(library), str(hang)], check=True)
    result = run_load_test(str(library), {}, "test", Credentials(NOBODY, NOGROUP, ()),
                           "server pid 1", timeout=1.0)
    assert result.error and "did not finish within 1s" in result.error

    def survivors() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    maps = Path(f"/proc/{entry}/maps").read_text()
                except OSError:
                    continue
                if str(library) in maps:
                    found.append(int(entry))
        return found

    wait_until(lambda: not survivors(), 5, "the hanging child and its fork to be killed")


@pytest.mark.parametrize("genuine", [False, True], ids=["look-alike", "genuine server"])
def test_root_doctor_runs_a_servers_library_only_as_its_user(user_dir, genuine):
    """The reported escalation: nobody's `ollama serve` names, in OLLAMA_LIBRARY_PATH, a dir
    of its own whose backend's constructor writes a file. The look-alike is a copy of a
    system binary in nobody's dir (examined under patterns alone); the genuine server runs a
    root-owned `ollama` as nobody (it passes the identity rules). Either way the root
    doctor's load test runs that constructor as nobody, not as root."""
    if genuine:
        install = user_dir.parent / "opt"
        install.mkdir()
        binary = install / "ollama"
        shutil.copy("/bin/sleep", binary)  # root's, 0755: what a package installs
    else:
        binary = user_dir / "ollama"
        shutil.copy("/bin/sleep", binary)
        os.chown(binary, NOBODY, NOGROUP)
    lib = user_dir / "lib"
    lib.mkdir()
    os.chown(lib, NOBODY, NOGROUP)
    witness_library(lib)
    out = user_dir / "witness"
    argv0 = f"{binary.parent}/ollama serve"
    process = subprocess.Popen(
        [argv0, "600"], executable=str(binary), user=NOBODY, group=NOGROUP, extra_groups=[],
        env={"OLLAMA_LIBRARY_PATH": str(lib), "OLLAMA_WITNESS_FILE": str(out),
             "PATH": "/usr/bin:/bin"},
        cwd="/", stdin=subprocess.DEVNULL)
    identity = ", executable: [ollama], owner: [root]" if genuine else ""
    config = user_dir.parent / "vgpumon.yaml"
    config.write_text(
        "groups:\n"
        f"  server: {{comm: '^ollama$', cmdline: '^{binary.parent}/ollama serve'{identity},"
        " expect: []}\n"
        "  runner: {cmdline: '^$nothing', expect: []}\n"
        "  discovery: {cmdline: '^$nothing', expect: []}\n"
        "ollama: {url: 'http://127.0.0.1:9', timeout: 1s}\n")
    try:
        wait_until(lambda: Path(f"/proc/{process.pid}/comm").read_text().strip() == "ollama",
                   5, "the server to exec")
        run = doctor(config)
        dlopen = run.check("loadtest.dlopen")
        evidence = "\n".join(dlopen.evidence)
        assert dlopen.status is Status.OK, run.describe()
        assert f"rights: uid {NOBODY} gid {NOGROUP} groups none, taken from the server " \
               f"pid {process.pid}" in evidence
        assert witness_of(out)[:4] == (NOBODY,) * 2 + (NOGROUP,) * 2
        assert out.stat().st_uid == NOBODY  # never root
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
