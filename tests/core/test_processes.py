"""Process discovery and classification, over a fixture /proc tree."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.core.fakeproc import FakeProc
from vgpumon.config.loading import parse_config
from vgpumon.config.schema import Config
from vgpumon.linux.procfs import CMDLINE_LIMIT, ProcFS
from vgpumon.sources.processes import ProcessScanner, classify, model_argument

GROUPS = Config().groups
# The scanner's bookkeeping, without the identity rules (tests/core/test_identity.py and
# tests/e2e/test_identity.py cover those): the fixture processes have no executable to judge.
PATTERN_GROUPS = tuple(replace(group, executables=(), owners=(), parent=None)
                       for group in GROUPS)
SERVER = ["/usr/local/bin/ollama", "serve"]
RUNNER = ["/usr/local/bin/ollama", "runner", "--model",
          "/usr/share/ollama/.ollama/models/blobs/sha256-6a0746a1ec1a", "--port", "41235"]


@pytest.mark.parametrize(("comm", "argv", "group"), [
    ("ollama", SERVER, "server"),
    ("ollama", ["/usr/bin/ollama", "serve"], "server"),
    ("ollama", RUNNER, "runner"),
    ("ollama_llama_se", ["/tmp/ollama1/runners/cuda_v12/ollama_llama_server", "--model",
                         "/m/blobs/sha256-ab", "--ctx-size", "2048", "--port", "4000"], "runner"),
    ("llama-server", ["/usr/lib/ollama/llama-server", "--model", "/m/blobs/sha256-ab",
                      "--port", "4001", "--host", "127.0.0.1"], "runner"),
    ("ollama", ["/usr/local/bin/ollama", "runner", "--ollama-engine", "--port", "4002"],
     "discovery"),
    ("llama-server", ["/usr/lib/ollama/llama-server", "--list-devices"], "discovery"),
    ("ollama", ["/usr/local/bin/ollama", "gpu-discover", "--lib-dir", "/x"], "discovery"),
    ("ollama", ["/usr/local/bin/ollama", "ps"], None),
    ("bash", ["bash", "-c", "ollama serve"], None),  # comm must be ollama for the server
    ("python3", ["python3", "-m", "http.server"], None),
])
def test_classify_default_groups(comm, argv, group):
    assert classify(GROUPS, comm, None, tuple(argv)) == group


def test_classify_first_match_wins_and_all_patterns_must_match():
    groups = parse_config("""
groups:
  a: {comm: "^x$", cmdline: "one"}
  b: {cmdline: "one"}
  c: {exe: "/opt/.*", cmdline: "two"}
""").groups
    assert classify(groups, "x", None, ("one",)) == "a"
    assert classify(groups, "y", None, ("one",)) == "b"
    assert classify(groups, "y", "/opt/bin/z", ("two",)) == "c"
    assert classify(groups, "y", None, ("two",)) is None  # exe unreadable: exe rule fails


@pytest.mark.parametrize(("argv", "model"), [
    (RUNNER, "/usr/share/ollama/.ollama/models/blobs/sha256-6a0746a1ec1a"),
    (["llama-server", "--model=/m/x.gguf"], "/m/x.gguf"),
    (["llama-server", "-m", "/m/y.gguf"], "/m/y.gguf"),
    (["ollama", "runner", "--model"], None),
    (["ollama", "serve"], None),
])
def test_model_argument(argv, model):
    assert model_argument(tuple(argv)) == model


@pytest.fixture
def proc(tmp_path):
    return FakeProc(tmp_path / "proc")


def scanner_for(proc: FakeProc) -> tuple[ProcessScanner, float]:
    # "now" close to the processes' start, so they count as young.
    return ProcessScanner(ProcFS(str(proc.root)), PATTERN_GROUPS), proc.start_time(100) + 1


def test_scan_finds_server_and_runner_with_parentage(proc):
    proc.add(4100, "ollama", SERVER, ppid=1)
    proc.add(4242, "ollama", RUNNER, ppid=4100, start_ticks=500)
    proc.add(1, "systemd", ["/sbin/init"])
    scanner, now = scanner_for(proc)
    tracked = {p.pid: p for p in scanner.scan(now)}
    assert set(tracked) == {4100, 4242}
    assert tracked[4100].group == "server"
    runner = tracked[4242]
    assert runner.group == "runner" and runner.ppid == 4100
    assert runner.model_arg.endswith("sha256-6a0746a1ec1a")
    assert runner.start_time == proc.start_time(500)


def test_fork_before_exec_is_not_mistaken_for_a_second_server(proc):
    proc.add(4100, "ollama", SERVER)
    scanner, now = scanner_for(proc)
    scanner.scan(now)
    proc.add(4300, "ollama", SERVER, ppid=4100, start_ticks=150)  # forked, not exec'd yet
    assert [p.pid for p in scanner.scan(now)] == [4100]
    proc.set_cmdline(4300, RUNNER)  # now it exec'd
    proc.set_stat(4300, "ollama", ppid=4100, start_ticks=150)
    tracked = {p.pid: p.group for p in scanner.scan(now)}
    assert tracked == {4100: "server", 4300: "runner"}


def test_young_process_is_reclassified_after_exec(proc):
    proc.add(5000, "bash", ["bash"], start_ticks=150)
    scanner, now = scanner_for(proc)
    assert scanner.scan(now) == ()
    proc.set_stat(5000, "llama-server", start_ticks=150)
    proc.set_cmdline(5000, ["llama-server", "--model", "/m/blobs/sha256-aa", "--port", "1"])
    assert [p.group for p in scanner.scan(now)] == ["runner"]


def test_old_unmatched_process_is_not_read_again(proc):
    proc.add(6000, "bash", ["bash"], start_ticks=100)
    scanner = ProcessScanner(ProcFS(str(proc.root)), PATTERN_GROUPS)
    old = proc.start_time(100) + 3600
    assert scanner.scan(old) == ()
    proc.make_unreadable(6000, "cmdline")  # would fail if it were read again
    proc.make_unreadable(6000, "stat")
    assert scanner.scan(old) == ()


def test_reused_pid_is_classified_afresh(proc):
    proc.add(7000, "ollama", RUNNER, ppid=1, start_ticks=100)
    scanner, now = scanner_for(proc)
    assert [p.group for p in scanner.scan(now)] == ["runner"]
    proc.set_stat(7000, "bash", start_ticks=900)  # old runner died, PID reused
    proc.set_cmdline(7000, ["bash"])
    assert scanner.scan(now) == ()


def test_zombie_is_dropped(proc):
    proc.add(7100, "ollama", RUNNER)
    scanner, now = scanner_for(proc)
    assert len(scanner.scan(now)) == 1
    proc.set_stat(7100, "ollama", state="Z")
    assert scanner.scan(now) == ()


def test_vanished_pid_between_listing_and_reading_is_skipped(proc):
    proc.add(7200, "ollama", SERVER)
    proc.make_unreadable(7200, "stat")
    scanner, now = scanner_for(proc)
    assert scanner.scan(now) == ()


def test_rescan_and_forget(proc):
    proc.add(7300, "bash", ["bash"], start_ticks=100)
    scanner = ProcessScanner(ProcFS(str(proc.root)), PATTERN_GROUPS)
    old = proc.start_time(100) + 3600
    scanner.scan(old)
    proc.set_cmdline(7300, SERVER)
    proc.set_stat(7300, "ollama", start_ticks=100)
    assert scanner.scan(old) == ()  # old and unmatched: not re-read by a scan...
    assert scanner.rescan_pid(7300, old).group == "server"  # ...but an exec event re-reads it
    assert scanner.forget(7300).pid == 7300
    assert scanner.tracked() == ()


class CountingProcFS(ProcFS):
    """A ProcFS that notes which file of which PID each read was for."""

    def __init__(self, root: str):
        super().__init__(root)
        self.reads: list[tuple[int, str]] = []

    def stat(self, pid):
        self.reads.append((pid, "stat"))
        return super().stat(pid)

    def stat_head(self, pid):
        self.reads.append((pid, "stat"))
        return super().stat_head(pid)

    def cmdline(self, pid, limit=CMDLINE_LIMIT):
        self.reads.append((pid, "cmdline"))
        return super().cmdline(pid, limit)

    def exe(self, pid):
        self.reads.append((pid, "exe"))
        return super().exe(pid)

    def read(self, pid, name):
        self.reads.append((pid, name))
        return super().read(pid, name)


def counting_scanner(proc: FakeProc, groups=GROUPS) -> tuple[ProcessScanner, CountingProcFS]:
    procfs = CountingProcFS(str(proc.root))
    return ProcessScanner(procfs, groups), procfs


def test_an_unrelated_exec_whose_comm_and_parent_rule_out_every_group_costs_one_stat_read(
        proc):
    # The shipped groups: the server by its comm, runners and probes by their parent.
    proc.add(4100, "ollama", SERVER, ppid=1)
    proc.add(7400, "make", ["make", "-j2"], ppid=1, start_ticks=100)
    scanner, procfs = counting_scanner(proc)
    now = proc.start_time(100) + 1
    scanner.rescan_pid(4100, now)
    procfs.reads.clear()
    assert scanner.rescan_pid(7400, now) is None
    assert procfs.reads == [(7400, "stat")]  # no cmdline, exe, cgroup or status


def test_a_look_alike_ruled_out_at_its_exec_is_judged_in_full_by_the_next_scan(proc):
    proc.add(7400, "sleep", [*RUNNER, "600"], ppid=1, start_ticks=100)  # exec -a, by a user
    scanner, procfs = counting_scanner(proc)
    now = proc.start_time(100) + 1
    assert scanner.rescan_pid(7400, now) is None
    assert procfs.reads == [(7400, "stat")]
    assert scanner.scan(now, listing=False) == ()
    assert [(r.pid, r.group, r.reason) for r in scanner.rejected()] == [
        (7400, "runner", "parent")]


def test_a_child_of_a_tracked_server_is_classified_at_its_exec(proc):
    proc.add(4100, "ollama", SERVER, ppid=1)
    proc.add(4242, "ollama", RUNNER, ppid=4100, start_ticks=500)
    scanner, procfs = counting_scanner(proc)
    now = proc.start_time(500) + 1
    assert scanner.rescan_pid(4100, now).group == "server"
    runner = scanner.rescan_pid(4242, now)
    assert runner is not None and runner.group == "runner" and runner.ppid == 4100
    assert (4242, "cmdline") in procfs.reads


def test_an_exec_that_only_a_cmdline_pattern_can_rule_out_costs_stat_and_cmdline(proc):
    # Groups without comm patterns or parent rules: the cmdline decides.
    proc.add(7400, "make", ["make", "-j2"], start_ticks=100)
    scanner, procfs = counting_scanner(proc, PATTERN_GROUPS)
    now = proc.start_time(100) + 1
    assert scanner.rescan_pid(7400, now) is None
    assert procfs.reads == [(7400, "stat"), (7400, "cmdline")]
    proc.set_cmdline(7400, RUNNER)  # argv rewritten without an exec
    proc.set_stat(7400, "ollama", start_ticks=100)
    assert [p.group for p in scanner.scan(now)] == ["runner"]  # young: looked at again


def test_a_pid_that_went_away_and_came_back_between_scans_is_new(proc):
    proc.add(7500, "bash", ["bash"], start_ticks=100)
    scanner = ProcessScanner(ProcFS(str(proc.root)), PATTERN_GROUPS)
    old = proc.start_time(100) + 3600
    assert scanner.scan(old) == ()
    scanner.forget(7500)  # its exit event
    proc.set_stat(7500, "ollama", start_ticks=200)  # the PID reused by a runner, no exec event
    proc.set_cmdline(7500, RUNNER)
    assert [p.group for p in scanner.scan(old)] == ["runner"]
