"""Snapshot differences: what becomes events."""

from __future__ import annotations

from dataclasses import replace

from vgpumon.snapshot.host import HostState, ProcessState, diff
from vgpumon.sources.libraries import LibraryMapping, ProcessLibraries
from vgpumon.sources.links import ShimLinkState
from vgpumon.sources.processes import TrackedProcess

PROCESS = TrackedProcess(pid=7, start_ticks=1, start_time=1.0, ppid=1, group="discovery",
                         comm="ollama", cmdline=("ollama", "runner"), exe=None, model_arg=None)
NOTHING = ProcessLibraries(readable=True)


def state(ts, *processes, links=()):
    return HostState(ts, processes=tuple(processes), links=links)


def test_a_process_that_changes_group_starts_in_its_new_group():
    before = state(1.0, ProcessState(PROCESS, NOTHING))
    after = state(2.0, ProcessState(replace(PROCESS, group="runner"), NOTHING))
    change = diff(before, after)
    assert [p.process.group for p in change.started] == ["runner"]
    assert change.vanished == ()


def test_library_loaded_unloaded_and_stale():
    shim = LibraryMapping("vgpu-cuda", "/usr/lib64/libvgpu-cuda.so", False, False)
    stale = replace(shim, deleted=True, stale=True)
    ggml = LibraryMapping("ggml-cuda", "/x/libggml-cuda.so", False, False)
    first = state(1.0, ProcessState(PROCESS, ProcessLibraries(True, mappings=(shim,))))
    second = state(2.0, ProcessState(PROCESS, ProcessLibraries(True, mappings=(stale, ggml))))
    third = state(3.0, ProcessState(PROCESS, ProcessLibraries(True, mappings=(stale,))))
    assert [(e.kind, e.get("library")) for e in diff(first, second).events] == [
        ("library_stale", "vgpu-cuda"), ("library_loaded", "ggml-cuda")]
    assert [(e.kind, e.get("library")) for e in diff(second, third).events] == [
        ("library_unloaded", "ggml-cuda")]


def test_no_library_events_across_an_unreadable_snapshot():
    shim = LibraryMapping("vgpu-cuda", "/usr/lib64/libvgpu-cuda.so", False, False)
    readable = state(1.0, ProcessState(PROCESS, ProcessLibraries(True, mappings=(shim,))))
    unreadable = state(2.0, ProcessState(PROCESS, ProcessLibraries(False, error="EACCES")))
    assert diff(readable, unreadable).events == ()
    assert diff(unreadable, readable).events == ()


def test_link_change_only_between_two_checked_states():
    ok = ShimLinkState("/l", "/t", "host", "ok", target="t")
    wrong = ShimLinkState("/l", "/t", "host", "wrong_target", target="other")
    unchecked = ShimLinkState("/l", "/t", "host", None, error="no view")
    (event,) = diff(state(1.0, links=(ok,)), state(2.0, links=(wrong,))).events
    assert (event.get("old_target"), event.get("new_target"), event.get("state")) == (
        "t", "other", "wrong_target")
    assert diff(state(1.0, links=(unchecked,)), state(2.0, links=(ok,))).events == ()
