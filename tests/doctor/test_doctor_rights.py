"""The root doctor looks at paths a server names with that server's rights: a server run by
nobody whose environment leads into a directory only root can read does not get that
directory's entries into the report (docs/doctor.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.doctor.simdoctor import doctor
from tests.harness import NOBODY
from tests.simhost import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the root doctor")
SECRET = "payroll-2027"


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vgpumon-rights-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_symlink_into_roots_directory_shows_nothing_of_it(base):
    secret = base / "secret"  # root's, 0700, with a directory whose name must not leak
    (secret / SECRET).mkdir(parents=True)
    secret.chmod(0o700)
    install = base / "opt"  # a genuine install: root-owned `ollama`, run by nobody
    install.mkdir()
    shutil.copy("/bin/sleep", install / "ollama")
    home = base / "home"  # nobody's own: its lib/ollama leads into root's directory
    (home / "lib").mkdir(parents=True)
    os.symlink(secret, home / "lib" / "ollama")
    for path in (home, home / "lib"):
        os.chown(path, NOBODY, NOBODY)
    os.lchown(home / "lib" / "ollama", NOBODY, NOBODY)
    server = subprocess.Popen(
        [f"{install}/ollama serve", "600"], executable=str(install / "ollama"),
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", stdin=subprocess.DEVNULL,
        env={"OLLAMA_LIBRARY_PATH": f"{home}/lib/ollama", "OLLAMA_LLM_LIBRARY": "cuda_v99",
             "PATH": "/usr/bin:/bin"})
    config = base / "vgpumon.yaml"
    config.write_text(yaml.safe_dump({
        "groups": {
            "server": {"comm": "^ollama$", "cmdline": f"^{install}/ollama serve",
                       "executable": ["ollama"], "owner": ["root"], "expect": "auto"},
            "runner": {"cmdline": "^$nothing", "expect": []},
        },
        "ollama": {"url": "http://127.0.0.1:9", "timeout": "1s", "log": {}},
    }, sort_keys=False))
    try:
        wait_until(lambda: Path(f"/proc/{server.pid}/comm").read_text().strip() == "ollama",
                   5, "the server to exec")
        run = doctor(config, "--no-load-test")
        assert run.report.facts["server_pid"] == server.pid, run.describe()
        assert SECRET not in run.stdout, run.describe()
        # with root's rights the same doctor sees it: the test can tell the difference
        assert SECRET in os.listdir(home / "lib" / "ollama")
    finally:
        server.kill()
        server.wait()
