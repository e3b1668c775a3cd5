"""`riskgate screen`: ScreenRequests read from stdin line by line, screened over one ScreenStream.

The input is JSON Lines in the protobuf JSON mapping (proto or camelCase field names). It is read
as it arrives, never whole: a line that is not a ScreenRequest is reported as `stdin:<line>:
<problem>` (the problem names the field by its proto name, never the line's content: it holds ID
numbers) and skipped. One exception keeps `echo "$(pretty JSON)" | riskgate screen` working: when
the first non-blank line is an unfinished JSON value (`{` alone), the whole input is read as one
JSON document.

At most `window` requests are in flight: the sender blocks while that many are unanswered (the
stream answers in request order, so the oldest unanswered request is always the next answer). A
stream that breaks is reported with the requests it left unanswered; they are not resent (the
same file can be sent again: request_id makes a resend a replay, counted once). A server that
stops answering for `timeout` seconds ends the run.

I/O stays at the edges: `run` takes the input items, a function opening the stream, the output
and error streams and a clock, so the tests drive it with a fake stream.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from service._gen.riskgate.v1 import screening_pb2 as pb
from service._gen.riskgate.v1 import screening_pb2_grpc as pb_grpc
from service.errors import ScreenToolError
from service.suggest import closest

EXIT_OK, EXIT_FAILED = 0, 1


# --- the input ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numbered:
    """A request and the input line it starts on."""

    line: int
    request: pb.ScreenRequest


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that is not a ScreenRequest, and why (never its content)."""

    line: int
    problem: str


def fd_lines(fd: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a file descriptor as they arrive, each with its newline (the last maybe without).
    Plain `os.read`, not `sys.stdin.buffer`: the sender thread may still be waiting for input when
    the run ends, and a daemon thread blocked inside a buffered reader aborts the interpreter's exit."""
    parts: list[bytes] = []  # the line read so far
    while block := os.read(fd, chunk):
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            parts.append(block[start : end + 1])
            yield b"".join(parts)
            parts.clear()
            start = end + 1
        if start < len(block):
            parts.append(block[start:])
    if parts:
        yield b"".join(parts)


def read_requests(lines: Iterable[bytes]) -> Iterator[Numbered | BadLine]:
    """Each non-blank line as a request, or why it is not one; lines are numbered from 1."""
    numbered = enumerate(lines, 1)
    for number, raw in numbered:
        text = _decode(raw, number)
        if isinstance(text, BadLine):
            yield text
            continue
        if not text.strip():
            continue
        if _unfinished(text):
            yield _one_document(number, text, numbered)
            return
        yield parse_line(number, text)
        break
    for number, raw in numbered:
        text = _decode(raw, number)
        if isinstance(text, BadLine):
            yield text
        elif text.strip():
            yield parse_line(number, text)


def parse_line(number: int, text: str) -> Numbered | BadLine:
    """One line of JSON Lines as a request, or why it is not one."""
    line = text.rstrip("\r\n")
    try:
        document = json.loads(line)
    except json.JSONDecodeError as error:
        if error.pos >= len(line.rstrip()):
            return BadLine(number, "invalid JSON: the line ends inside a JSON value")
        return BadLine(number, f"invalid JSON at column {error.colno}: {error.msg}")
    return _request(number, document)


def _decode(raw: bytes, number: int) -> str | BadLine:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        return BadLine(number, "not UTF-8 text")


def _unfinished(text: str) -> bool:
    """True when the line is the start of a JSON value that goes on past its end (`{` alone)."""
    stripped = text.strip()
    try:
        json.loads(stripped)
    except json.JSONDecodeError as error:
        return error.pos >= len(stripped)
    return False


def _one_document(first: int, text: str, rest: Iterator[tuple[int, bytes]]) -> Numbered | BadLine:
    parts = [text]
    for number, raw in rest:
        decoded = _decode(raw, number)
        if isinstance(decoded, BadLine):
            return decoded
        parts.append(decoded)
    try:
        document = json.loads("".join(parts))
    except json.JSONDecodeError as error:
        return BadLine(
            first + error.lineno - 1,
            f"invalid JSON at column {error.colno}: {error.msg}"
            f" (read as one JSON document: line {first} is not a whole JSON value)",
        )
    return _request(first, document)


def _request(number: int, document: object) -> Numbered | BadLine:
    problem = request_problem(document)
    if problem is not None:
        return BadLine(number, problem)
    try:
        return Numbered(number, json_format.ParseDict(document, pb.ScreenRequest()))
    except (json_format.ParseError, TypeError, ValueError):
        # request_problem checks what the mapping checks; this is a safety net whose message
        # (camelCase names, sometimes the value) is not shown.
        return BadLine(number, "not a ScreenRequest in the protobuf JSON mapping")


# --- the shape of a ScreenRequest -------------------------------------------------------------

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_INTEGER = re.compile(r"-?\d+")
_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


def request_problem(document: object) -> str | None:
    """What makes a JSON value not a ScreenRequest in the protobuf JSON mapping, with the field's
    proto path (`transfer.amount_fen: expected an integer, got a string`); None when it is one.
    Values are never quoted: they are personal data."""
    return _message_problem(document, pb.ScreenRequest.DESCRIPTOR, "")


def _json_type(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _at(path: str, problem: str) -> str:
    return f"{path}: {problem}" if path else problem


def _message_problem(value: object, descriptor: Descriptor, path: str) -> str | None:
    if not isinstance(value, dict):
        what = f"{path}: expected an object" if path else f"not a {descriptor.name}: expected a JSON object"
        return f"{what}, got {_json_type(value)}"
    by_name = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    seen: dict[str, str] = {}
    for key, item in value.items():
        field_descriptor = by_name.get(key)
        if field_descriptor is None:
            return _at(path, _unknown_field(key, descriptor))
        name = field_descriptor.name
        if name in seen:
            return _at(path, f'"{name}" is given twice (as "{seen[name]}" and "{key}")')
        seen[name] = key
        problem = _field_problem(item, field_descriptor, f"{path}.{name}" if path else name)
        if problem is not None:
            return problem
    for oneof in descriptor.oneofs:
        chosen = [f.name for f in oneof.fields if f.name in seen and value[seen[f.name]] is not None]
        if len(chosen) > 1:
            return _at(path, f"only one of {oneof.name} may be set, got {' and '.join(chosen)}")
    return None


def _unknown_field(key: str, descriptor: Descriptor) -> str:
    shown = key if len(key) <= 40 else key[:40] + "..."
    names = {f.name: f.name for f in descriptor.fields} | {f.json_name.lower(): f.name for f in descriptor.fields}
    close = closest(key.lower(), names, cutoff=0.7)
    hint = f'; did you mean "{names[close]}"?' if close else ""
    return f'unknown field "{shown}" in {descriptor.name}{hint}'


def _field_problem(value: object, fd: FieldDescriptor, path: str) -> str | None:
    if value is None:
        return None  # null is the mapping's "unset"
    if fd.label == FieldDescriptor.LABEL_REPEATED:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            return None if isinstance(value, dict) else f"{path}: expected an object, got {_json_type(value)}"
        if not isinstance(value, list):
            return f"{path}: expected an array, got {_json_type(value)}"
        for index, item in enumerate(value):
            problem = _single_problem(item, fd, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None
    return _single_problem(value, fd, path)


def _single_problem(value: object, fd: FieldDescriptor, path: str) -> str | None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _submessage_problem(value, fd.message_type, path)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in fd.enum_type.values]
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        if isinstance(value, str) and value in names:
            return None
        if isinstance(value, str):
            return f"{path}: unknown {fd.enum_type.name} value; expected one of {', '.join(names)}"
        return f"{path}: expected an enum name (a string), got {_json_type(value)}"
    if fd.type == FieldDescriptor.TYPE_STRING:
        return None if isinstance(value, str) else f"{path}: expected a string, got {_json_type(value)}"
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else f"{path}: expected true or false, got {_json_type(value)}"
    if fd.type in _RANGES:
        return _integer_problem(value, fd, path)
    if fd.type in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return None
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return f"{path}: expected a number"
            return None
        return f"{path}: expected a number, got {_json_type(value)}"
    return None  # bytes: the mapping's own check


def _integer_problem(value: object, fd: FieldDescriptor, path: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f"{path}: expected an integer, got {_json_type(value)}"
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            return f"{path}: expected an integer, got a string that is not one"
        number = int(value)
    elif isinstance(value, float):
        if not value.is_integer():
            return f"{path}: expected an integer, got a fraction"
        number = int(value)
    else:
        number = value
    low, high = _RANGES[fd.type]
    if not low <= number <= high:
        return f"{path}: out of range ({low} to {high})"
    return None


def _submessage_problem(value: object, descriptor: Descriptor, path: str) -> str | None:
    if descriptor.full_name == Timestamp.DESCRIPTOR.full_name:
        example = '"2006-01-02T15:04:05+08:00"'
        if not isinstance(value, str):
            return f"{path}: expected an RFC 3339 time (a string like {example}), got {_json_type(value)}"
        try:
            Timestamp().FromJsonString(value)
        except ValueError:
            return f"{path}: not an RFC 3339 time with a UTC offset, like {example}"
        return None
    if descriptor.full_name == Duration.DESCRIPTOR.full_name:
        if not isinstance(value, str):
            return f'{path}: expected a duration (a string like "1.5s"), got {_json_type(value)}'
        try:
            Duration().FromJsonString(value)
        except ValueError:
            return f'{path}: not a duration like "1.5s"'
        return None
    if descriptor.full_name.startswith("google.protobuf."):
        return None  # other well-known types: the mapping's own check
    return _message_problem(value, descriptor, path)


# --- the window -----------------------------------------------------------------------------


class Window:
    """The input lines of the requests in flight, oldest first. `send` blocks while `size` are
    unanswered; the stream answers in request order, so each answer is the oldest's."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        if size < 1:
            raise ValueError("the window holds at least one request")
        self._size = size
        self._clock = clock
        self._lines: deque[int] = deque()
        self._condition = threading.Condition()
        self._stopped = False
        self._waiting_since: float | None = None  # since when the next answer is awaited

    def send(self, line: int) -> bool:
        """Wait for room, then count the request of `line` in flight; False when stopped."""
        with self._condition:
            while len(self._lines) >= self._size and not self._stopped:
                self._condition.wait()
            if self._stopped:
                return False
            if not self._lines:
                self._waiting_since = self._clock()
            self._lines.append(line)
            return True

    def answered(self) -> int:
        """The line the answer just received is for."""
        with self._condition:
            if not self._lines:
                raise ScreenToolError("the stream sent an answer to no request")
            line = self._lines.popleft()
            self._waiting_since = self._clock() if self._lines else None
            self._condition.notify_all()
            return line

    def stop(self) -> None:
        """Send nothing more (the requests in flight are still answered)."""
        with self._condition:
            self._stopped = True
            self._condition.notify_all()

    def close(self) -> list[int]:
        """Stop, and give the lines of the requests left unanswered."""
        self.stop()
        with self._condition:
            unanswered = list(self._lines)
            self._lines.clear()
            self._waiting_since = None
            return unanswered

    @property
    def in_flight(self) -> int:
        with self._condition:
            return len(self._lines)

    def stalled(self) -> float:
        """Seconds the next answer has been awaited; 0 when nothing is in flight."""
        with self._condition:
            return 0.0 if self._waiting_since is None else self._clock() - self._waiting_since


# --- the run --------------------------------------------------------------------------------

_OUTCOMES = {pb.OUTCOME_ALLOW: "allow", pb.OUTCOME_WARN: "warn", pb.OUTCOME_BLOCK: "block"}


@dataclass
class Tally:
    """The counts of one run; `sent` = decided + error answers + unanswered."""

    started: float
    sent: int = 0
    bad_lines: int = 0
    error_answers: int = 0
    unanswered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failure: str | None = None  # why the run ended early (stream broken, stdin unreadable)

    @property
    def decided(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return self.bad_lines + self.error_answers + self.unanswered

    def rate(self, now: float) -> float:
        elapsed = now - self.started
        return (self.decided + self.error_answers) / elapsed if elapsed > 0 else 0.0

    def summary(self, now: float) -> str:
        by_outcome = ", ".join(f"{name} {self.outcomes[name]}" for name in _OUTCOMES.values())
        return (
            f"riskgate screen: {self.sent} sent, {self.decided} decided ({by_outcome})"
            f" in {now - self.started:.1f} s, {self.rate(now):.0f}/s; errors: {self.bad_lines} bad lines,"
            f" {self.error_answers} error answers, {self.unanswered} unanswered"
        )

    def exit_code(self) -> int:
        return EXIT_FAILED if self.errors or self.failure else EXIT_OK


class Reporter:
    """stderr: problems, the progress display (redrawn in place on a terminal, a line a second
    otherwise) and the summary. Problems come from the sender's thread too, hence the lock."""

    def __init__(self, err: TextIO, clock: Callable[[], float], *, progress: bool, live: bool) -> None:
        self._err = err
        self._clock = clock
        self._progress = progress
        self._live = live
        self._lock = threading.Lock()
        self._shown = False  # a live progress line is on screen
        self._last: float | None = None

    def problem(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._err.write(text + "\n")
            self._err.flush()

    def progress(self, tally: Tally) -> None:
        if not self._progress:
            return
        now = self._clock()
        if self._last is not None and now - self._last < (0.1 if self._live else 1.0):
            return
        self._last = now
        text = f"{tally.decided + tally.error_answers} screened, {tally.rate(now):.0f}/s, {tally.errors} errors"
        with self._lock:
            if self._live:
                self._err.write("\r" + text + "\x1b[K")
                self._shown = True
            else:
                self._err.write(text + "\n")
            self._err.flush()

    def summary(self, tally: Tally) -> None:
        self.problem(tally.summary(self._clock()))

    def _clear(self) -> None:
        if self._shown:
            self._err.write("\r\x1b[K")
            self._shown = False


class DecisionWriter:
    """Each decision as one JSON line; a lone decision pretty-printed, as it always was (so the
    first is held until a second arrives or the input ends)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._held: pb.Decision | None = None
        self._count = 0

    def write(self, decision: pb.Decision) -> None:
        self._count += 1
        if self._count == 1:
            self._held = decision
            return
        if self._held is not None:
            self._emit(self._held, indent=None)
            self._held = None
        self._emit(decision, indent=None)

    def finish(self) -> None:
        if self._held is not None:
            self._emit(self._held, indent=2)
            self._held = None

    def _emit(self, decision: pb.Decision, indent: int | None) -> None:
        document = json_format.MessageToDict(decision, preserving_proto_field_name=True)
        self._out.write(json.dumps(document, ensure_ascii=False, indent=indent) + "\n")
        self._out.flush()  # a pipeline reading the decisions gets each as it is made


class DecisionStream(Protocol):
    """What `run` needs of a ScreenStream call: its answers, and a way to end it."""

    def __iter__(self) -> Iterator[pb.Decision]: ...

    def cancel(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Options:
    window: int = 64
    timeout: float = 5.0  # seconds without an answer while requests are in flight: give up
    stop_on_error: bool = False
    progress: bool = False
    live: bool = False  # stderr is a terminal: redraw the progress line in place


def _span(lines: list[int]) -> str:
    return f"line {lines[0]}" if len(lines) == 1 else f"lines {lines[0]} to {lines[-1]}"


def run(
    items: Iterable[Numbered | BadLine],
    open_stream: Callable[[Iterator[pb.ScreenRequest]], DecisionStream],
    out: TextIO,
    err: TextIO,
    clock: Callable[[], float],
    options: Options,
) -> int:
    """Screen every request of `items` over one stream; the exit code."""
    window = Window(options.window, clock)
    tally = Tally(started=clock())
    reporter = Reporter(err, clock, progress=options.progress, live=options.live)
    writer = DecisionWriter(out)
    input_ended = threading.Event()
    stopped: list[str] = []  # at what --stop-on-error stopped

    def outbound() -> Iterator[pb.ScreenRequest]:
        # Runs in gRPC's sending thread: it must not raise.
        try:
            for item in items:
                if isinstance(item, BadLine):
                    tally.bad_lines += 1
                    reporter.problem(f"stdin:{item.line}: {item.problem}")
                    if options.stop_on_error:
                        stopped.append(f"at the bad line {item.line}")
                        window.stop()
                        return
                    continue
                if not window.send(item.line):
                    return
                tally.sent += 1
                yield item.request
            input_ended.set()
        except OSError as error:
            tally.failure = f"cannot read stdin: {error}"
            reporter.problem(f"riskgate screen: {tally.failure}")

    call = open_stream(outbound())
    finished = threading.Event()
    gave_up = threading.Event()

    def watchdog() -> None:
        while not finished.wait(min(0.1, options.timeout / 4)):
            if window.stalled() > options.timeout:
                gave_up.set()
                call.cancel()
                return

    guard = threading.Thread(target=watchdog, name="screen-watchdog", daemon=True)
    guard.start()
    try:
        for decision in call:
            line = window.answered()
            writer.write(decision)
            if decision.HasField("error"):
                tally.error_answers += 1
                reporter.problem(
                    f"stdin:{line}: {decision.request_id or '(no request_id)'}:"
                    f" {decision.error.code}: {decision.error.message}"
                )
                if options.stop_on_error and not stopped:
                    stopped.append(f"at the error answer for line {line}")
                    window.stop()
            else:
                tally.outcomes[_OUTCOMES.get(decision.outcome, "unspecified")] += 1
            reporter.progress(tally)
    except grpc.RpcError as error:
        if gave_up.is_set():
            tally.failure = f"no answer for {options.timeout:g} s (--timeout): gave up (DEADLINE_EXCEEDED)"
        else:
            tally.failure = f"the stream ended with {error.code().name}: {error.details()}"
    except ScreenToolError as error:
        call.cancel()
        tally.failure = str(error)
    except KeyboardInterrupt:
        call.cancel()
        tally.failure = "interrupted"
    finally:
        finished.set()
        unanswered = window.close()
        writer.finish()
    if tally.failure is not None:
        reporter.problem(f"riskgate screen: {tally.failure}")
    if unanswered:
        tally.unanswered = len(unanswered)
        reporter.problem(
            f"riskgate screen: {len(unanswered)} requests sent but not answered ({_span(unanswered)}),"
            " not resent; sending the same lines again is safe (request_id: a replay counts once)"
        )
    if stopped:
        reporter.problem(f"riskgate screen: stopped {stopped[0]} (--stop-on-error): nothing more was sent")
    elif tally.failure is not None and not input_ended.is_set():
        reporter.problem("riskgate screen: the rest of the input was not read")
    reporter.summary(tally)
    return tally.exit_code()


def stream_opener(
    stub: pb_grpc.ScreeningStub, metadata: tuple[tuple[str, str], ...]
) -> Callable[[Iterator[pb.ScreenRequest]], DecisionStream]:
    """Open ScreenStream on `stub` with the caller's metadata. No deadline on
    the call: a batch may run for hours; `Options.timeout` bounds the wait for each answer."""

    def open_stream(requests: Iterator[pb.ScreenRequest]) -> DecisionStream:
        stream: DecisionStream = stub.ScreenStream(requests, metadata=metadata)
        return stream

    return open_stream
