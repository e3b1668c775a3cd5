"""`riskgate screen`'s logic without a server: the line reader, the window, and `run` over a fake
stream that behaves like ScreenStream (requests taken from another thread, answers in order)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf import json_format

from service._gen.riskgate.v1 import screening_pb2 as pb
from service.tools import screen as screen_tool
from service.tools.screen import BadLine, Numbered, Options, Window, fd_lines, read_requests, request_problem
from tests import samples

ID_NUMBER = samples.resident_id()


def _line(request: pb.ScreenRequest) -> bytes:
    return json_format.MessageToJson(request, indent=None).encode() + b"\n"  # camelCase names


def _items(*lines: bytes) -> list[Numbered | BadLine]:
    return list(read_requests(lines))


# --- the reader -----------------------------------------------------------------------------


def test_lines_are_numbered_blank_ones_skipped_bad_ones_reported() -> None:
    items = _items(
        _line(samples.transfer("a")),
        b"\n",
        b'{"request_id": "b", "outlet": \n',
        b"  \n",
        _line(samples.closure("c")),
        b"\xff\xfe\n",
        b"[1, 2]\n",
    )
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Numbered", 1),
        ("BadLine", 3),
        ("Numbered", 5),
        ("BadLine", 6),
        ("BadLine", 7),
    ]
    assert isinstance(items[0], Numbered) and items[0].request == samples.transfer("a")
    assert [i.problem for i in items if isinstance(i, BadLine)] == [
        "invalid JSON: the line ends inside a JSON value",
        "not UTF-8 text",
        "not a ScreenRequest: expected a JSON object, got an array",
    ]


def test_a_first_line_that_is_not_whole_starts_one_multiline_document() -> None:
    request = samples.card_opening("pretty")
    text = json_format.MessageToJson(request).encode()
    items = _items(b"\n", *io.BytesIO(text))
    assert items == [Numbered(2, request)]

    broken = text.replace(b'"outlet": {', b'"outlet": {,', 1)
    (bad,) = _items(*io.BytesIO(broken))
    assert isinstance(bad, BadLine)
    assert bad.line == 3  # the line of the error, counted in the whole input
    assert bad.problem.startswith("invalid JSON at column 14: Expecting property name")
    assert bad.problem.endswith("(read as one JSON document: line 1 is not a whole JSON value)")


def test_a_byte_order_mark_and_a_last_line_without_newline_are_accepted() -> None:
    items = _items(b"\xef\xbb\xbf" + _line(samples.sim_sale("x")), _line(samples.sim_sale("y")).rstrip(b"\n"))
    assert [i.request.request_id for i in items if isinstance(i, Numbered)] == ["x", "y"]


def test_fd_lines_splits_reads_on_newlines() -> None:
    reader, writer = os.pipe()
    with os.fdopen(writer, "wb") as pipe:
        pipe.write(b'{"a": 1}\n\n' + b"x" * 100 + b"\nlast")
    try:
        assert list(fd_lines(reader, chunk=7)) == [b'{"a": 1}\n', b"\n", b"x" * 100 + b"\n", b"last"]
    finally:
        os.close(reader)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"requestId": "a", "fooBar": 1}, 'unknown field "fooBar" in ScreenRequest'),
        ({"requestID": "a"}, 'unknown field "requestID" in ScreenRequest; did you mean "request_id"?'),
        ({"request_id": "a", "requestId": "a"}, '"request_id" is given twice (as "request_id" and "requestId")'),
        ({"cardOpening": {"applicant": {"idNumber": int(ID_NUMBER[:17])}}},
         "card_opening.applicant.id_number: expected a string, got a number"),
        ({"cardOpening": {"accountClass": "CLASS_9"}},
         "card_opening.account_class: unknown AccountClass value; expected one of ACCOUNT_CLASS_UNSPECIFIED,"
         " ACCOUNT_CLASS_I, ACCOUNT_CLASS_II, ACCOUNT_CLASS_III"),
        ({"transfer": {"amountFen": ID_NUMBER}},
         "transfer.amount_fen: expected an integer, got a string that is not one"),
        ({"transfer": {"amountFen": 1.5}}, "transfer.amount_fen: expected an integer, got a fraction"),
        ({"simSale": {"quantity": 2**31}}, "sim_sale.quantity: out of range (-2147483648 to 2147483647)"),
        ({"simSale": {"iot": "yes"}}, "sim_sale.iot: expected true or false, got a string"),
        ({"occurredAt": ID_NUMBER},
         'occurred_at: not an RFC 3339 time with a UTC offset, like "2006-01-02T15:04:05+08:00"'),
        ({"outlet": "BANK_A"}, "outlet: expected an object, got a string"),
        ({"transfer": {}, "closure": {}}, "only one of event may be set, got transfer and closure"),
        ({"closure": {"accountNumber": "1", "msisdn": "2"}},
         "closure: only one of closed may be set, got account_number and msisdn"),
    ],
)  # fmt: skip
def test_problems_name_proto_fields_and_never_the_values(document: dict[str, object], problem: str) -> None:
    assert request_problem(document) == problem
    (item,) = _items(json.dumps(document).encode())
    assert item == BadLine(1, problem)
    assert ID_NUMBER[:17] not in problem


def test_what_the_mapping_accepts_passes_the_check() -> None:
    for build in samples.ALL_KINDS.values():
        request = build("ok")
        for names in (True, False):
            document = json_format.MessageToDict(request, preserving_proto_field_name=names)
            assert request_problem(document) is None
    assert request_problem({"simSale": {"quantity": "3", "carrier": 1}, "outlet": None}) is None


# --- the window -----------------------------------------------------------------------------


def test_the_window_blocks_the_sender_while_full_and_frees_it_on_stop() -> None:
    now = [100.0]
    window = Window(2, clock=lambda: now[0])
    assert window.send(1) and window.send(2)
    now[0] += 3
    assert window.stalled() == 3.0
    sent = threading.Event()
    results: list[bool] = []

    def third() -> None:
        results.append(window.send(3))
        sent.set()

    sender = threading.Thread(target=third)
    sender.start()
    assert not sent.wait(0.2)  # full: the third waits
    assert window.answered() == 1
    assert sent.wait(5) and results == [True]
    sender.join()
    assert window.stalled() == 0.0  # an answer just came
    assert window.in_flight == 2

    blocked = threading.Thread(target=lambda: results.append(window.send(4)))
    blocked.start()
    window.stop()
    blocked.join(5)
    assert results == [True, False]
    assert window.close() == [2, 3]
    assert window.in_flight == 0


# --- run, over a fake stream ----------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _decide(request: pb.ScreenRequest) -> pb.Decision:
    """Block transfers, warn on closures, allow the rest; a request without outlet is an error."""
    if not request.HasField("outlet"):
        return pb.Decision(
            request_id=request.request_id,
            error=pb.RequestError(code="INVALID_ARGUMENT", message="outlet: required"),
        )
    outcome = {"transfer": pb.OUTCOME_BLOCK, "closure": pb.OUTCOME_WARN}.get(
        request.WhichOneof("event") or "", pb.OUTCOME_ALLOW
    )
    return pb.Decision(request_id=request.request_id, decision_id=f"d-{request.request_id}", outcome=outcome)


class FakeStream:
    """ScreenStream in memory. A thread takes the requests as gRPC's sender does; an answer comes
    only once `fill` requests are in flight (or the input ended), so a window that let more through
    would show in `most_in_flight`. After `break_after` answers the stream fails with UNAVAILABLE;
    `hang` never answers."""

    def __init__(
        self,
        requests: Iterator[pb.ScreenRequest],
        *,
        fill: int = 1,
        break_after: int | None = None,
        hang: bool = False,
    ) -> None:
        self._condition = threading.Condition()
        self._taken: list[pb.ScreenRequest] = []
        self._answered = 0
        self._ended = False
        self._cancelled = False
        self._fill = fill
        self._break_after = break_after
        self._hang = hang
        self.most_in_flight = 0
        threading.Thread(target=self._take, args=(requests,), daemon=True).start()

    def _take(self, requests: Iterator[pb.ScreenRequest]) -> None:
        for request in requests:
            with self._condition:
                self._taken.append(request)
                self.most_in_flight = max(self.most_in_flight, len(self._taken) - self._answered)
                self._condition.notify_all()
        with self._condition:
            self._ended = True
            self._condition.notify_all()

    def __iter__(self) -> Iterator[pb.Decision]:
        return self

    def __next__(self) -> pb.Decision:
        with self._condition:
            while True:
                if self._cancelled:
                    raise FakeRpcError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
                in_flight = len(self._taken) - self._answered
                if not self._hang and in_flight and (in_flight >= self._fill or self._ended):
                    if self._answered == self._break_after:
                        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "riskgate is stopping")
                    break
                if self._ended and not in_flight:
                    raise StopIteration
                self._condition.wait(0.05)
            request = self._taken[self._answered]
            self._answered += 1
            return _decide(request)

    def cancel(self) -> bool:
        with self._condition:
            self._cancelled = True
            self._condition.notify_all()
        return True


def _run(
    items: list[Numbered | BadLine],
    options: Options,
    make: Callable[[Iterator[pb.ScreenRequest]], FakeStream] = FakeStream,
) -> tuple[int, list[str], str, list[FakeStream]]:
    out, err = io.StringIO(), io.StringIO()
    streams: list[FakeStream] = []

    def open_stream(requests: Iterator[pb.ScreenRequest]) -> FakeStream:
        streams.append(make(requests))
        return streams[-1]

    code = screen_tool.run(items, open_stream, out, err, time.monotonic, options)
    return code, out.getvalue().splitlines(), err.getvalue(), streams


def _numbered(count: int, start: int = 1) -> list[Numbered | BadLine]:
    kinds = list(samples.ALL_KINDS.values())
    return [Numbered(start + i, kinds[i % len(kinds)](f"r{start + i}")) for i in range(count)]


def _summary(err: str) -> str:
    (line,) = [line for line in err.splitlines() if " sent, " in line]
    return line


def test_answers_come_out_in_order_and_the_window_is_never_exceeded() -> None:
    items = _numbered(200)
    code, out, err, (stream,) = _run(items, Options(window=8), lambda r: FakeStream(r, fill=8))
    assert code == 0, err
    assert [json.loads(line)["request_id"] for line in out] == [f"r{n}" for n in range(1, 201)]
    assert stream.most_in_flight == 8
    assert _summary(err).startswith("riskgate screen: 200 sent, 200 decided (allow 100, warn 50, block 50) in ")
    assert _summary(err).endswith("errors: 0 bad lines, 0 error answers, 0 unanswered")
    assert "screened," not in err  # no progress unless asked


def test_bad_lines_and_error_answers_are_reported_by_line_and_counted() -> None:
    no_outlet = samples.sim_sale("r4")
    no_outlet.ClearField("outlet")
    items = [*_numbered(2), BadLine(3, "invalid JSON at column 2: Expecting value"), Numbered(4, no_outlet)]
    items += _numbered(3, start=5)
    code, out, err, _ = _run(items, Options(window=2))
    assert code == 1
    assert len(out) == 6
    assert "stdin:3: invalid JSON at column 2: Expecting value\n" in err
    assert "stdin:4: r4: INVALID_ARGUMENT: outlet: required\n" in err
    assert "6 sent, 5 decided" in _summary(err)
    assert _summary(err).endswith("errors: 1 bad lines, 1 error answers, 0 unanswered")


def test_stop_on_error_stops_sending_at_a_bad_line_or_an_error_answer() -> None:
    items = [*_numbered(3), BadLine(4, "not UTF-8 text"), *_numbered(3, start=5)]
    code, out, err, _ = _run(items, Options(stop_on_error=True))
    assert (code, len(out)) == (1, 3)
    assert "stopped at the bad line 4 (--stop-on-error): nothing more was sent" in err

    no_outlet = samples.closure("r2")
    no_outlet.ClearField("outlet")
    items = [*_numbered(1), Numbered(2, no_outlet), *_numbered(20, start=3)]
    code, out, err, _ = _run(items, Options(window=1, stop_on_error=True))
    assert (code, len(out)) == (1, 2)
    assert "stopped at the error answer for line 2 (--stop-on-error)" in err


def test_a_broken_stream_counts_the_unanswered_and_does_not_resend() -> None:
    items = [*_numbered(5), BadLine(6, "x"), *_numbered(10, start=7)]
    code, out, err, streams = _run(items, Options(window=4), lambda r: FakeStream(r, fill=4, break_after=5))
    assert code == 1
    assert len(out) == 5 and len(streams) == 1
    assert "the stream ended with UNAVAILABLE: riskgate is stopping" in err
    assert "4 requests sent but not answered (lines 7 to 10), not resent" in err
    assert "the rest of the input was not read" in err
    assert _summary(err).endswith("errors: 1 bad lines, 0 error answers, 4 unanswered")


def test_a_stream_that_never_answers_is_given_up_after_the_timeout() -> None:
    started = time.monotonic()
    code, out, err, _ = _run(_numbered(3), Options(window=2, timeout=0.2), lambda r: FakeStream(r, hang=True))
    assert time.monotonic() - started < 5
    assert (code, out) == (1, [])
    assert "no answer for 0.2 s (--timeout): gave up (DEADLINE_EXCEEDED)" in err
    assert "2 requests sent but not answered (lines 1 to 2)" in err


def test_a_single_decision_is_pretty_printed() -> None:
    code, out, _, _ = _run(_numbered(1), Options())
    assert code == 0
    assert out[0] == "{" and out[1].startswith('  "request_id": "r1"')


def test_progress_is_shown_in_place_on_a_terminal_and_by_lines_otherwise() -> None:
    code, _, err, _ = _run(_numbered(5), Options(progress=True, live=True))
    assert code == 0
    assert err.startswith("\r1 screened, ")
    assert "\r\x1b[Kriskgate screen: 5 sent" in err  # the progress line is cleared for the summary

    code, _, err, _ = _run(_numbered(5), Options(progress=True, live=False))
    assert err.splitlines()[0].startswith("1 screened, ") and "\r" not in err
