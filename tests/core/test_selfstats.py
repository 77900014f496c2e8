"""vgpumon's own process metrics are prometheus-client's `process_*` families, value for
value, plus `vgpumon_threads` as the kernel counts the threads."""

from __future__ import annotations

import os
import threading

from prometheus_client import ProcessCollector

from vgpumon.http.selfstats import SelfCollector


def by_name(families):
    return {family.name: family for family in families}


def test_the_process_families_are_prometheus_clients():
    ours = by_name(SelfCollector().collect())
    theirs = by_name(ProcessCollector(registry=None).collect())
    assert set(ours) == set(theirs) | {"vgpumon_threads"}
    for name, family in theirs.items():
        mine = ours[name]
        assert (mine.type, mine.documentation, mine.unit) == (family.type, family.documentation,
                                                              family.unit)
        assert [s.name for s in mine.samples] == [s.name for s in family.samples]
        assert [s.labels for s in mine.samples] == [s.labels for s in family.samples]
    values = {name: family.samples[0].value for name, family in ours.items()}
    reference = {name: family.samples[0].value for name, family in theirs.items()}
    for exact in ("process_start_time_seconds", "process_max_fds"):
        assert values[exact] == reference[exact]
    assert abs(values["process_open_fds"] - reference["process_open_fds"]) <= 2
    assert abs(values["process_cpu_seconds"] - reference["process_cpu_seconds"]) < 1
    assert 0 < values["process_resident_memory_bytes"] <= values["process_virtual_memory_bytes"]


def test_threads_are_counted_fresh_at_every_scrape():
    collector = SelfCollector()

    def threads() -> float:
        return by_name(collector.collect())["vgpumon_threads"].samples[0].value

    before = threads()
    assert before == len(os.listdir("/proc/self/task"))
    release = threading.Event()
    extra = [threading.Thread(target=release.wait) for _ in range(3)]
    for thread in extra:
        thread.start()
    try:
        assert threads() == before + 3
    finally:
        release.set()
        for thread in extra:
            thread.join()


def test_without_proc_there_are_no_process_metrics(tmp_path):
    assert list(SelfCollector(proc=str(tmp_path)).collect()) == []
