"""Ollama log records → vgpumon events.

`LogInterpreter` reads `LogRecord`s in log order and yields the Ollama event kinds of
docs/events.md (``ollama_version`` … ``backend_loaded``) plus one kind of its own:

``go_crash`` {signal, pc?, addr?, message, cgo, model?}
    One per Go runtime crash trace (a runner or the era-B server took a fatal signal in cgo
    code, panicked, or hit ``fatal error:``), emitted when the trace header ends, i.e. at the
    ``goroutine N`` line that starts the dump (or the next structured line, or `flush`).
    `signal` is the Go name (``SIGSEGV``) or None for a plain panic; `pc` is the faulting
    program counter, so a consumer can attribute the crash to a mapped library. Such a process
    exits with status 2, and the trace also refines the ``runner_exited`` that follows: its
    reason becomes ``crash`` and it gains ``crash_signal`` and ``pc``.

The interpreter is pure: no I/O, no clock. An event's time is the record's own time, else the
transport's, else the caller's `now`. Fields it adds to those kinds: ``level`` (the record's),
``model`` (the blob digest of the runner the line is attributed to: the most recent
``runner_started`` of a model), ``origin`` on ``offload``, ``repeat`` on ``runner_exited``
(another report of an exit already reported), ``discovery_round`` on ``gpu_discovered`` and
``cpu_only`` (the GPUs of one round are those Ollama reported at that discovery).

Ollama before 0.1.21 logs no GPU discovery of its own; for those versions the device list
llama.cpp prints when it initialises CUDA (``ggml_init_cublas: found N CUDA devices:`` and a
``Device i: …`` line each) is the discovery. Later versions discover in the server, and a
runner's list may be narrowed by ``CUDA_VISIBLE_DEVICES``, so there it is not used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from vgpumon.linux.waitstatus import signal_name
from vgpumon.model import events as ev
from vgpumon.model.events import Event
from vgpumon.model.exits import CRASH, ERROR, reason_for_exit_code
from vgpumon.ollama import exits
from vgpumon.ollama.gotrace import GoCrash, GoTraceReader
from vgpumon.ollama.logline import LogRecord
from vgpumon.ollama.manifests import blob_digest_from_model_arg
from vgpumon.ollama.versions import version_tuple

GO_CRASH = ev.GO_CRASH

# Every kind this module emits.
KINDS = (
    ev.OLLAMA_VERSION,
    ev.GPU_DISCOVERED,
    ev.CPU_ONLY,
    ev.DISCOVERY_FAILED,
    ev.RUNNER_STARTED,
    ev.RUNNER_READY,
    ev.OFFLOAD,
    ev.RUNNER_EXITED,
    ev.CUDA_INIT_FAILED,
    ev.CUDA_ERROR,
    ev.OUT_OF_MEMORY,
    ev.LOAD_FAILED,
    ev.BACKEND_LOAD_FAILED,
    ev.BACKEND_LOADED,
    GO_CRASH,
)

# Several lines report one runner exit (the reaper, the load error, "no longer running"); a
# report within this many seconds of the previous one, with no runner started in between,
# is marked ``repeat``.
EXIT_REPEAT_WINDOW = 5.0

# The first version that logs its own GPU discovery ("Detecting GPU type", ...).
DISCOVERY_LOGGED_SINCE = (0, 1, 21)
# Messages copied into events are cut here; a log line can be a megabyte.
MESSAGE_LIMIT = 2000

_RUNNER_START_MESSAGES = frozenset(
    {"starting llama server", "starting runner", "starting llama-server"}
)
_REAPER_MESSAGES = frozenset({"llama runner terminated", "llama-server terminated"})
_NO_LONGER_RUNNING_MESSAGES = frozenset(
    {"llama runner process no longer running", "llama-server process no longer running"}
)
_DISCOVERY_FAILURE_MESSAGES = frozenset(
    {"failure during GPU discovery", "failure during llama-server GPU discovery"}
)
_DISCOVERY_START_MESSAGES = frozenset(
    {
        "Detecting GPU type",
        "Detecting GPUs",
        "looking for compatible GPUs",
        "discovering available GPUs...",
    }
)
_GPU_FIELDS = (
    "compute",
    "driver",
    "variant",
    "description",
    "pci_id",
    "type",
    "libdirs",
    "filter_id",
)

_SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,9})?) ?([KMGT]i?B|B)")
_SIZE_UNITS = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_MODEL_ARG = re.compile(r"(?:^|[\s\[])(?:--model|-m)[= ]([^\s\]]+)")
_PORT_ARG = re.compile(r"(?:^|[\s\[])--port[= ](\d{1,5})(?![^\s\]])")
_GPU_LAYERS_ARG = re.compile(r"(?:^|[\s\[])(?:--n-gpu-layers|-ngl)[= ](-?\d{1,6})(?![^\s\]])")
_CTX_ARG = re.compile(r"(?:^|[\s\[])(?:--ctx-size|-c)[= ](\d{1,9})(?![^\s\]])")
_ENGINE_FLAGS = (("--ollama-engine", "ollama"), ("--mlx-engine", "mlx"))
_OPERATION = re.compile(r"Operation:(\w{1,20})")
_GPU_LAYER_COUNT = re.compile(r"GPULayers:(\d{1,6})?\[")
_LAYERS_ENTRY = re.compile(r"Layers:(\d{1,6})")
_NUMBER = re.compile(r"-?\d{1,9}")
_MISSING_LIBRARY = re.compile(r"error while loading shared libraries: ([^:\s]+):")
_NO_LONGER_RUNNING_CODE = re.compile(r"(-?\d{1,10})(?: (.*))?", re.DOTALL)
_GGML_ABORT_LINE = re.compile(r"GGML_ASSERT\(|^\s*ROCm error")


def parse_size(text: str | None) -> int | None:
    """Bytes of Ollama's human sizes (``22.1 GiB``, ``512.0 MiB``, ``1024 B``); None if not one."""
    if not text:
        return None
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        return None
    return round(float(m.group(1)) * 1024 ** _SIZE_UNITS[m.group(2)[0]])


def gpu_layers_of_load_request(request: str) -> int | None:
    """Layers on GPUs in a runner ``load request`` (``GPULayers:37[ID:… Layers:37(0..36)]``,
    ``GPULayers:[]`` = 0); None if the request names no GPU layers."""
    m = _GPU_LAYER_COUNT.search(request)
    if m is None:
        return None
    if m.group(1) is not None:
        return int(m.group(1))
    inner = _bracketed(request, m.end() - 1)
    return sum(int(n) for n in _LAYERS_ENTRY.findall(inner))


def _bracketed(text: str, start: int) -> str:
    """The text inside the brackets that open at `start` (to the end if never closed)."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "[":
            depth += 1
        elif text[index] == "]":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index]
    return text[start + 1 :]


def _cap(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "…"


def _int(text: str | None) -> int | None:
    if text is None or not _NUMBER.fullmatch(text):
        return None
    return int(text)


class _Line:
    """One record being interpreted, with the time its events get."""

    def __init__(self, record: LogRecord, ts: float) -> None:
        self.record = record
        self.ts = ts
        self.text = record.msg
        self.attrs = record.attrs

    def full_text(self) -> str:
        """The record as one message: its text, plus ``: <error>`` for slog records."""
        error = self.attrs.get("error")
        return f"{self.text}: {error}" if error else self.text

    def describe(self) -> str:
        """`full_text`, cut to `MESSAGE_LIMIT` for an event."""
        return _cap(self.full_text())

    def event(self, kind: str, fields: Mapping[str, Any], keep: tuple[str, ...] = ()) -> Event:
        """An event of this line; None-valued fields are left out unless named in `keep`."""
        data = {k: v for k, v in fields.items() if v is not None or k in keep}
        if self.record.level:
            data["level"] = self.record.level
        return Event(self.ts, kind, data)


_Handler = Callable[["LogInterpreter", _Line, "re.Match[str]"], list[Event]]


class LogInterpreter:
    """Turns Ollama log records, fed in order, into events. Never raises on a `LogRecord`."""

    def __init__(self) -> None:
        self._model: str | None = None  # blob digest (or name) of the current model runner
        self._model_layers: int | None = None  # "model layers"=M of the current load
        self._estimate: Event | None = None  # server estimate waiting for its runner
        self._trace = GoTraceReader()
        self._trace_ts = 0.0
        self._crash: GoCrash | None = None  # the last crash trace, refines the next exit
        self._abort_line: str | None = None  # last GGML_ASSERT / CUDA error line: the cause
        self._missing_library: tuple[str, str] | None = None  # (library, loader line)
        self._last_exit_ts: float | None = None
        self._round = 0
        self._round_ids: set[str] = set()
        self._round_cpu_only = False
        self._previous_problems: frozenset[str] = frozenset()
        self._ollama_version: tuple[int, int, int] | None = None
        self._devices_to_list = 0  # "Device i:" lines still to come after "found N"

    # --- public --------------------------------------------------------------------------

    def feed(self, record: LogRecord, now: float) -> list[Event]:
        """The events one record produces (often none)."""
        ts = record.ts if record.ts is not None else record.transport_ts
        line = _Line(record, now if ts is None else ts)
        if record.structured:
            emitted = self._crash_events(self._trace.close())
            emitted += self._structured(line)
        else:
            reading = self._trace.reading
            in_trace, crashes = self._trace.feed(record.msg)
            if in_trace and not reading:
                self._trace_ts = line.ts
            emitted = self._crash_events(crashes)
            if not in_trace:
                emitted += self._text_rules(line)
        return self._without_repeated_problems(emitted)

    def flush(self, now: float) -> list[Event]:
        """Events held back waiting for later lines (an unfinished crash trace, a server
        estimate whose runner never started); call at the end of a log."""
        emitted = self._crash_events(self._trace.close())
        if self._estimate is not None:
            emitted.append(self._estimate)
            self._estimate = None
        return emitted

    # --- dispatch ------------------------------------------------------------------------

    def _structured(self, line: _Line) -> list[Event]:
        msg = line.text
        handler = _STRUCTURED_HANDLERS.get(msg)
        if handler is None and msg.startswith("offload to "):
            handler = LogInterpreter._server_estimate
        if handler is not None:
            return handler(self, line)
        return self._text_rules(line, line.full_text())

    def _text_rules(self, line: _Line, text: str | None = None) -> list[Event]:
        """Apply the first matching text rule to `text` (a slog record's msg and error)."""
        text = line.text if text is None else text
        for pattern, handler in _TEXT_RULES:
            m = pattern.search(text)
            if m is not None:
                return handler(self, line, m)
        return []

    def _without_repeated_problems(self, emitted: list[Event]) -> list[Event]:
        """Drop a log-error event of the kind the previous line also reported: llama.cpp
        reports one failure on consecutive lines (``cudaMalloc failed`` + ``failed to
        allocate CUDA0 buffer``; ``error loading model`` + ``failed to load model``)."""
        problems = frozenset(e.kind for e in emitted if e.kind in ev.LOG_ERROR_KINDS)
        repeated, self._previous_problems = self._previous_problems, problems
        return [e for e in emitted if e.kind not in repeated]

    # --- version and GPU discovery -------------------------------------------------------

    def _version(self, line: _Line, m: re.Match[str]) -> list[Event]:
        self._new_round()
        self._ollama_version = version_tuple(m.group(2))
        self._devices_to_list = 0  # a new server: an unfinished device list is over
        return [line.event(ev.OLLAMA_VERSION, {"version": m.group(2)})]

    def _discovery_unlogged(self) -> bool:
        version = self._ollama_version  # 0.0.0: a source build, of any age
        return version is not None and (0, 0, 0) < version < DISCOVERY_LOGGED_SINCE

    def _cuda_devices_found(self, line: _Line, m: re.Match[str]) -> list[Event]:
        if not self._discovery_unlogged():
            return []
        self._new_round()
        self._devices_to_list = int(m.group(1))
        if self._devices_to_list == 0:
            return self._cpu_only(line, {"message": _cap(line.text)})
        return []

    def _cuda_device(self, line: _Line, m: re.Match[str]) -> list[Event]:
        if self._devices_to_list <= 0:
            return []
        self._devices_to_list -= 1
        fields = {"id": m.group(4) or m.group(1), "library": "cuda", "name": m.group(2),
                  "compute": m.group(3), "discovery_round": self._round}
        return [line.event(ev.GPU_DISCOVERED, fields)]

    def _discovery_start(self, line: _Line) -> list[Event]:
        self._new_round()
        return []

    def _new_round(self) -> None:
        self._round += 1
        self._round_ids = set()
        self._round_cpu_only = False

    def _inference_compute(self, line: _Line) -> list[Event]:
        attrs = line.attrs
        library = attrs.get("library", "")
        if library.lower() == "cpu":
            return self._cpu_only(line, {"variant": attrs.get("variant") or None})
        gpu_id = attrs.get("id", "")
        if gpu_id in self._round_ids or self._round_cpu_only:
            self._new_round()
        self._round_ids.add(gpu_id)
        fields: dict[str, Any] = {
            "id": gpu_id,
            "library": library,
            "name": attrs.get("name", ""),
            "total_bytes": parse_size(attrs.get("total")),
            "available_bytes": parse_size(attrs.get("available")),
        }
        fields.update({key: attrs[key] for key in _GPU_FIELDS if attrs.get(key)})
        fields["discovery_round"] = self._round
        return [line.event(ev.GPU_DISCOVERED, fields)]

    def _nvidia_detected(self, line: _Line, m: re.Match[str]) -> list[Event]:
        # 0.1.21-0.1.32 name neither the device nor its memory.
        fields = {"id": "", "library": "cuda", "name": "", "detected_via": m.group(1)}
        fields["discovery_round"] = self._round
        return [line.event(ev.GPU_DISCOVERED, fields)]

    def _no_gpu(self, line: _Line, m: re.Match[str]) -> list[Event]:
        return self._cpu_only(line, {"message": _cap(line.text)})

    def _cpu_only(self, line: _Line, fields: dict[str, Any]) -> list[Event]:
        # 0.2.0-0.12.3 say it twice: "no compatible GPUs were discovered" and the cpu line.
        if self._round_cpu_only:
            return []
        if self._round_ids:
            self._new_round()
        self._round_cpu_only = True
        return [line.event(ev.CPU_ONLY, {**fields, "discovery_round": self._round})]

    def _discovery_failed(self, line: _Line) -> list[Event]:
        error = line.attrs.get("error") or line.text
        return [line.event(ev.DISCOVERY_FAILED, {"error": _cap(error), "message": line.describe()})]

    def _discovery_problem(self, line: _Line, m: re.Match[str]) -> list[Event]:
        return self._discovery_failed(line)

    # --- runner lifecycle ----------------------------------------------------------------

    def _runner_started(self, line: _Line) -> list[Event]:
        cmd = line.attrs.get("cmd")
        if cmd is None:
            return self._start(line, {"model": None, "discovery": False})
        model_arg = _MODEL_ARG.search(cmd)
        model = None
        if model_arg is not None:
            model = blob_digest_from_model_arg(model_arg.group(1)) or model_arg.group(1)
        fields: dict[str, Any] = {
            "model": model,
            "discovery": model_arg is None,
            "port": _first_int(_PORT_ARG, cmd),
            "n_gpu_layers": _first_int(_GPU_LAYERS_ARG, cmd),
            "ctx_size": _first_int(_CTX_ARG, cmd),
            "engine": next((name for flag, name in _ENGINE_FLAGS if flag in cmd.split()), None),
            "cmd": _cap(cmd),
        }
        return self._start(line, fields)

    def _old_runner_started(self, line: _Line, m: re.Match[str]) -> list[Event]:
        # <= 0.1.17 logs no command line, hence no model.
        return self._start(line, {"model": None, "discovery": False})

    def _start(self, line: _Line, fields: dict[str, Any]) -> list[Event]:
        self._crash = None
        self._abort_line = None
        self._missing_library = None
        self._last_exit_ts = None
        if fields["discovery"]:
            return [line.event(ev.RUNNER_STARTED, fields, keep=("model",))]
        self._model = fields["model"]
        self._model_layers = None
        emitted = [line.event(ev.RUNNER_STARTED, fields, keep=("model",))]
        return emitted + self._release_estimate()

    def _runner_ready(self, line: _Line, m: re.Match[str]) -> list[Event]:
        ready = line.event(ev.RUNNER_READY, self._of_model({"seconds": float(m.group(1))}))
        return [*self._release_estimate(), ready]

    def _reaper(self, line: _Line) -> list[Event]:
        exit_text = line.attrs.get("error", "")
        return self._exited(line, exit_text, exit_attr=_int(line.attrs.get("exit")))

    def _no_longer_running(self, line: _Line) -> list[Event]:
        # WARN msg="llama runner process no longer running" sys=<wait status> string=<exit text>
        exit_text = line.attrs.get("string") or line.attrs.get("error", "")
        message = _cap(f"{line.text}: {exit_text}") if exit_text else line.describe()
        wait_status = _int(line.attrs.get("sys"))
        if not exit_text and wait_status is not None:
            status = exits.exit_status_from_wait_status(wait_status)
            return self._exited(line, "", status=status, message=message)
        return self._exited(line, exit_text, message=message)

    def _load_error(self, line: _Line) -> list[Event]:
        exited = self._exit_in_error(line)
        if exited:
            return exited
        return self._problem(line, ev.LOAD_FAILED)

    def _exit_in_error(self, line: _Line) -> list[Event]:
        """A runner exit reported inside a slog record's ``error`` attribute."""
        error = line.attrs.get("error", "")
        for pattern, handler in (
            (_TERMINATED, LogInterpreter._terminated_text),
            (_NO_LONGER_RUNNING, LogInterpreter._no_longer_running_text),
        ):
            m = pattern.search(error)
            if m is not None:
                return handler(self, line, m)
        return []

    def _terminated_text(self, line: _Line, m: re.Match[str]) -> list[Event]:
        return self._exited(line, m.group(1) or "")

    def _no_longer_running_text(self, line: _Line, m: re.Match[str]) -> list[Event]:
        tail = m.group(1) or ""
        coded = _NO_LONGER_RUNNING_CODE.fullmatch(tail)
        if coded is None:
            return self._exited(line, tail)
        code, rest = int(coded.group(1)), coded.group(2) or ""
        if code >= 0:  # -1 means a signal, named (if at all) in the rest
            return self._exited(
                line,
                rest,
                status=exits.ReportedExit(reason_for_exit_code(code), exit_code=code),
            )
        return self._exited(line, rest)

    def _exited(
        self,
        line: _Line,
        exit_text: str,
        *,
        status: exits.ReportedExit | None = None,
        exit_attr: int | None = None,
        message: str | None = None,
    ) -> list[Event]:
        if status is None:
            status = exits.classify_exit_text(exit_text)
        fields: dict[str, Any] = {
            "reason": status.reason,
            "exit_code": status.exit_code if status.exit_code is not None else exit_attr,
            "signal": signal_name(status.signal),
            "core_dumped": True if status.core_dumped else None,
            "message": message if message is not None else line.describe(),
        }
        self._refine_with_crash(fields, status)
        self._refine_with_loader_error(fields)
        if self._last_exit_ts is not None and line.ts - self._last_exit_ts <= EXIT_REPEAT_WINDOW:
            fields["repeat"] = True
        self._last_exit_ts = line.ts
        exited = line.event(ev.RUNNER_EXITED, self._of_model(fields))
        return [*self._release_estimate(), exited]

    def _refine_with_crash(self, fields: dict[str, Any], status: exits.ReportedExit) -> None:
        crash = self._crash
        go_exit = status.signal is None and status.exit_code in (None, 2)
        if crash is None or not go_exit or status.reason not in (ERROR, CRASH):
            return
        fields["reason"] = CRASH
        fields["crash_signal"] = crash.signal
        fields["pc"] = crash.pc

    def _refine_with_loader_error(self, fields: dict[str, Any]) -> None:
        if fields["exit_code"] != 127 or self._missing_library is None:
            return
        library, loader_line = self._missing_library
        fields["missing_library"] = library
        fields["message"] = _cap(f"{fields['message']} ({loader_line})")

    def _note_missing_library(self, line: _Line, m: re.Match[str]) -> list[Event]:
        self._missing_library = (m.group(1), _cap(line.text))
        return []

    def _note_abort_line(self, line: _Line, m: re.Match[str]) -> list[Event]:
        self._abort_line = _cap(line.text.strip())
        return []

    def _crash_events(self, crashes: list[GoCrash]) -> list[Event]:
        """One ``go_crash`` per finished trace header; the last one refines the next exit."""
        emitted = []
        for crash in crashes:
            self._crash = crash
            fields = {
                "signal": crash.signal,
                "pc": crash.pc,
                "addr": crash.addr,
                "message": crash.message,
                "cgo": crash.cgo,
                "cause": self._abort_line,
            }
            kept = {k: v for k, v in fields.items() if v is not None or k == "signal"}
            emitted.append(Event(self._trace_ts, GO_CRASH, self._of_model(kept)))
        return emitted

    # --- offload ---------------------------------------------------------------------------

    def _offloaded(self, line: _Line, m: re.Match[str]) -> list[Event]:
        origin = "ollama_engine" if line.record.structured else "llama.cpp"
        return self._offload(line, int(m.group(1)), int(m.group(2)), origin)

    def _loading_model(self, line: _Line) -> list[Event]:
        self._model_layers = _int(line.attrs.get("model layers"))
        return []

    def _load_request(self, line: _Line) -> list[Event]:
        request = line.attrs.get("request", "")
        operation = _OPERATION.search(request)
        if operation is None or operation.group(1) != "commit":
            return []  # fit / alloc are attempts; close unloads
        gpu_layers = gpu_layers_of_load_request(request)
        if gpu_layers is None:
            return []
        return self._offload(line, gpu_layers, self._model_layers, "load_request")

    def _offload(self, line: _Line, gpu: int, total: int | None, origin: str) -> list[Event]:
        fields = {"gpu_layers": gpu, "total_layers": total, "estimate": False, "origin": origin}
        offload = line.event(ev.OFFLOAD, self._of_model(fields), keep=("total_layers",))
        return [*self._release_estimate(), offload]

    def _server_estimate(self, line: _Line) -> list[Event]:
        attrs = line.attrs
        gpu = next(
            (
                n
                for key in ("layers.offload", "layers.real", "layers.estimate")
                if (n := _int(attrs.get(key))) is not None and n >= 0
            ),
            None,
        )
        if gpu is None:
            return []
        library = attrs.get("library") or line.text.removeprefix("offload to ").strip()
        fields = {
            "gpu_layers": gpu,
            "total_layers": _int(attrs.get("layers.model")),
            "estimate": True,
            "origin": "server_estimate",
            "library": library if library != "offload" else None,
            "requested": _int(attrs.get("layers.requested")),
        }
        return self._hold_estimate(line.event(ev.OFFLOAD, fields, keep=("total_layers",)))

    def _old_estimate(self, line: _Line, m: re.Match[str]) -> list[Event]:
        fields = {
            "gpu_layers": int(m.group(2)),
            "total_layers": None,
            "estimate": True,
            "origin": "server_estimate",
            "available_bytes": int(m.group(1)) * 1024 * 1024,
        }
        return self._hold_estimate(line.event(ev.OFFLOAD, fields, keep=("total_layers",)))

    def _hold_estimate(self, estimate: Event) -> list[Event]:
        """Server estimates precede the runner they are for (<= 0.11.4) or follow its start
        (0.11.5+): an estimate is held until the next runner event says whose it is."""
        released = [self._estimate] if self._estimate is not None else []
        self._estimate = estimate
        return released

    def _release_estimate(self) -> list[Event]:
        estimate, self._estimate = self._estimate, None
        if estimate is None:
            return []
        return [Event(estimate.ts, estimate.kind, self._of_model(dict(estimate.fields)))]

    def _model_file(self, line: _Line, m: re.Match[str]) -> list[Event]:
        """llama.cpp names the file it loads: the model of the lines that follow, also for a
        llama-server whose own stderr is the log (no Ollama "starting" line before it)."""
        self._model = blob_digest_from_model_arg(m.group(1)) or m.group(1)
        return []

    def _of_model(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._model is not None:
            fields["model"] = self._model
        return fields

    # --- problems --------------------------------------------------------------------------

    def _problem(self, line: _Line, kind: str) -> list[Event]:
        return [line.event(kind, self._of_model({"message": line.describe()}))]

    def _cuda_init_failed(self, line: _Line, m: re.Match[str]) -> list[Event]:
        return self._problem(line, ev.CUDA_INIT_FAILED)

    def _cuda_error(self, line: _Line, m: re.Match[str]) -> list[Event]:
        self._abort_line = _cap(line.text.strip())
        return self._problem(line, ev.CUDA_ERROR)

    def _out_of_memory(self, line: _Line, m: re.Match[str] | None = None) -> list[Event]:
        return self._problem(line, ev.OUT_OF_MEMORY)

    def _load_failed(self, line: _Line, m: re.Match[str] | None = None) -> list[Event]:
        return self._problem(line, ev.LOAD_FAILED)

    def _backend_loaded(self, line: _Line, m: re.Match[str]) -> list[Event]:
        fields = {"name": m.group(1), "path": m.group(2).strip()}
        return [line.event(ev.BACKEND_LOADED, fields)]

    def _backend_load_failed(self, line: _Line, m: re.Match[str]) -> list[Event]:
        target = m.group(1) if m.lastindex else None
        path = target.split(": ", 1)[0].strip() if target else None
        fields = {"message": line.describe(), "path": path}
        return [line.event(ev.BACKEND_LOAD_FAILED, self._of_model(fields))]


def _first_int(pattern: re.Pattern[str], text: str) -> int | None:
    m = pattern.search(text)
    return int(m.group(1)) if m else None


_StructuredHandler = Callable[[LogInterpreter, _Line], list[Event]]

_STRUCTURED_HANDLERS: dict[str, _StructuredHandler] = {
    "inference compute": LogInterpreter._inference_compute,
    "offload": LogInterpreter._server_estimate,
    "loading model": LogInterpreter._loading_model,
    "load": LogInterpreter._load_request,
    "error loading llama server": LogInterpreter._load_error,
    "Load failed": LogInterpreter._load_failed,
    "do load request": LogInterpreter._load_failed,
    "memory layout cannot be allocated": LogInterpreter._out_of_memory,
    **dict.fromkeys(_RUNNER_START_MESSAGES, LogInterpreter._runner_started),
    **dict.fromkeys(_REAPER_MESSAGES, LogInterpreter._reaper),
    **dict.fromkeys(_NO_LONGER_RUNNING_MESSAGES, LogInterpreter._no_longer_running),
    **dict.fromkeys(_DISCOVERY_FAILURE_MESSAGES, LogInterpreter._discovery_failed),
    **dict.fromkeys(_DISCOVERY_START_MESSAGES, LogInterpreter._discovery_start),
}

_TERMINATED = re.compile(r"(?:llama runner|llama-server) process has terminated(?:: (.*))?", re.S)
_NO_LONGER_RUNNING = re.compile(
    r"(?:llama runner|llama-server) process no longer running(?:: (.*))?", re.DOTALL
)

# Rules over a record's text (slog msg or an unprefixed line), first match wins.
_TEXT_RULES: tuple[tuple[re.Pattern[str], _Handler], ...] = (
    (re.compile(r"Listening on (\S+) \(version ([^)\s]{1,100})\)"), LogInterpreter._version),
    (re.compile(r"^starting llama runner$"), LogInterpreter._old_runner_started),
    (re.compile(r"^error starting (?:the external )?llama runner"), LogInterpreter._load_failed),
    (
        re.compile(r"(?:llama runner|llama-server) started in (\d{1,9}(?:\.\d{1,9})?) seconds"),
        LogInterpreter._runner_ready,
    ),
    (re.compile(r"offloaded (\d{1,6})/(\d{1,6}) layers to GPU"), LogInterpreter._offloaded),
    (
        re.compile(r"llama_model_loader: loaded meta data with \d{1,9} key-value pairs and "
                   r"\d{1,9} tensors from (\S{1,4096}) "),
        LogInterpreter._model_file,
    ),
    (
        re.compile(r"(\d{1,9}) MB VRAM available, loading up to (\d{1,6}) GPU layers"),
        LogInterpreter._old_estimate,
    ),
    (_TERMINATED, LogInterpreter._terminated_text),
    (_NO_LONGER_RUNNING, LogInterpreter._no_longer_running_text),
    (re.compile(r"^Nvidia GPU detected(?: via (\S+))?"), LogInterpreter._nvidia_detected),
    (
        re.compile(r"^(?:ggml_init_cublas|ggml_cuda_init): found (\d{1,3}) CUDA devices:"),
        LogInterpreter._cuda_devices_found,
    ),
    (
        re.compile(r"^\s*Device (\d{1,3}): (.{1,200}?), compute capability (\d{1,3}\.\d{1,3})"
                   r"(?:, VMM: \w{1,10})?(?:, ID: (\S{1,100}))?$"),
        LogInterpreter._cuda_device,
    ),
    (re.compile(r"no GPU detected|no compatible GPUs were discovered"), LogInterpreter._no_gpu),
    (
        re.compile(
            r"error looking up nvidia GPU memory|CUDA GPU is too old"
            r"|llama-server discovery: timed out waiting for server startup"
        ),
        LogInterpreter._discovery_problem,
    ),
    (
        re.compile(
            r"(?:ggml_cuda_init|ggml_init_cublas): failed to initialize CUDA"
            r"|Unable to load cudart"
            r"|cuda driver library init failure"
        ),
        LogInterpreter._cuda_init_failed,
    ),
    (re.compile(r"^\s*CUDA error(?:: | \d{1,6} at )"), LogInterpreter._cuda_error),
    (
        re.compile(r"cudaMalloc failed: out of memory|failed to allocate CUDA\d{0,3} buffer"),
        LogInterpreter._out_of_memory,
    ),
    (
        re.compile(
            r"error loading model|failed to load model"
            r"|timed out waiting for (?:llama runner|llama-server) to start"
        ),
        LogInterpreter._load_failed,
    ),
    (re.compile(r"load_backend: loaded (\S+) backend from (.+)"), LogInterpreter._backend_loaded),
    (re.compile(r"load_backend: failed to load (.+)"), LogInterpreter._backend_load_failed),
    (
        re.compile(r"ggml_nvml_init unable to load libnvidia-ml"),
        LogInterpreter._backend_load_failed,
    ),
    (_MISSING_LIBRARY, LogInterpreter._note_missing_library),
    (_GGML_ABORT_LINE, LogInterpreter._note_abort_line),
)
