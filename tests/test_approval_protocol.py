"""
The sans-IO approval protocol: frame parsing, frame building, and the
one-decision-per-request bookkeeping.

Parsing is where a broken or hostile service meets the gateway, so besides
the table of every way a frame can be wrong, hypothesis throws arbitrary
JSON and arbitrary bytes at it and checks it against an independent reading
of PROTOCOL.md.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.approval.interfaces import CommandRequest, Decision, Risk
from wraith_conch.approval.protocol import (
    SUBPROTOCOL,
    DecisionMessage,
    Ignored,
    Outcome,
    PendingRequests,
    Ping,
    Pong,
    Resolved,
    Stale,
    cancel_frame,
    hello_frame,
    parse_service_frame,
    ping_frame,
    pong_frame,
    request_frame,
)

ID = "6f1c0e0a-5d5c-4d9e-9d7e-2b2f3c9e4a10"


def make_request(command: str = "rm -rf /var/tmp/cache", **overrides) -> CommandRequest:
    fields = dict(
        session="s-8c41",
        user="alice",
        client="127.0.0.1:53122",
        target="db1.internal:22",
        kind="shell",
        command=command,
        created=1_795_255_200.0,  # 2026-11-21T10:00:00Z
        timeout=300.0,
    )
    fields.update(overrides)
    return CommandRequest.new(**fields)


def decision(**fields) -> str:
    message = {
        "type": "decision",
        "id": ID,
        "decision": "approve",
        "reason": "ok",
        "reviewer": "bob",
    }
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not _ABSENT})


_ABSENT = object()


class ParseValidTests(SynchronousTestCase):
    def test_approve(self) -> None:
        self.assertEqual(
            parse_service_frame(decision().encode(), False),
            DecisionMessage(ID, approved=True, reason="ok", reviewer="bob"),
        )

    def test_deny(self) -> None:
        self.assertEqual(
            parse_service_frame(decision(decision="deny", reason="no"), False),
            DecisionMessage(ID, approved=False, reason="no", reviewer="bob"),
        )

    def test_text_and_bytes_agree(self) -> None:
        frame = decision(reason="é ✓")
        self.assertEqual(
            parse_service_frame(frame, False), parse_service_frame(frame.encode(), False)
        )

    def test_absent_reason_and_reviewer(self) -> None:
        self.assertEqual(
            parse_service_frame(decision(reason=_ABSENT, reviewer=_ABSENT), False),
            DecisionMessage(ID, approved=True, reason="", reviewer=None),
        )

    def test_null_reason_and_reviewer_read_as_absent(self) -> None:
        self.assertEqual(
            parse_service_frame(decision(reason=None, reviewer=None), False),
            DecisionMessage(ID, approved=True, reason="", reviewer=None),
        )

    def test_extra_fields_allowed(self) -> None:
        parsed = parse_service_frame(decision(extra={"a": [1, 2]}, score=3), False)
        self.assertIsInstance(parsed, DecisionMessage)

    def test_ping_pong(self) -> None:
        self.assertEqual(parse_service_frame(b'{"type": "ping"}', False), Ping())
        self.assertEqual(parse_service_frame('{"type":"pong","seq":1}', False), Pong())

    def test_to_decision(self) -> None:
        message = DecisionMessage(ID, approved=False, reason="no", reviewer="bob")
        self.assertEqual(message.to_decision(), Decision.deny("no", reviewer="bob"))


# Every way a frame from the service can be wrong (PROTOCOL.md: ignored).
IGNORED_FRAMES: list[tuple[str, bytes | str, bool]] = [
    ("binary frame", decision().encode(), True),
    ("binary garbage", b"\x00\xff\x10", True),
    ("not UTF-8", b'{"type": "ping", "x": "\xff"}', False),
    ("empty", b"", False),
    ("garbage text", "hello there", False),
    ("truncated JSON", decision()[:-1], False),
    ("trailing junk", decision() + "x", False),
    ("two objects", decision() + decision(), False),
    ("BOM", "\ufeff" + decision(), False),
    ("NaN", '{"type": "ping", "x": NaN}', False),
    ("Infinity", '{"type": "ping", "x": -Infinity}', False),
    ("huge integer", '{"type": "ping", "x": ' + "9" * 5000 + "}", False),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, False),
    ("JSON null", "null", False),
    ("JSON string", '"decision"', False),
    ("JSON number", "42", False),
    ("JSON array", "[" + decision() + "]", False),
    ("JSON true", "true", False),
    ("no type", '{"id": "x", "decision": "approve"}', False),
    ("type null", decision(type=None), False),
    ("type number", decision(type=1), False),
    ("type list", decision(type=["decision"]), False),
    ("type object", decision(type={"decision": 1}), False),
    ("unknown type", decision(type="verdict"), False),
    ("type wrong case", decision(type="Decision"), False),
    ("type with space", decision(type="decision "), False),
    ("gateway-side type hello", '{"type":"hello","role":"service"}', False),
    ("gateway-side type request", json.dumps({"type": "request", "id": ID}), False),
    ("gateway-side type cancel", json.dumps({"type": "cancel", "id": ID}), False),
    ("decision APPROVE", decision(decision="APPROVE"), False),
    ("decision Approve", decision(decision="Approve"), False),
    ("decision approved", decision(decision="approved"), False),
    ("decision with space", decision(decision=" approve"), False),
    ("decision yes", decision(decision="yes"), False),
    ("decision true", decision(decision=True), False),
    ("decision 1", decision(decision=1), False),
    ("decision null", decision(decision=None), False),
    ("decision list", decision(decision=["approve"]), False),
    ("decision object", decision(decision={"approve": True}), False),
    ("decision missing", decision(decision=_ABSENT), False),
    ("approved boolean instead", decision(decision=_ABSENT, approved=True), False),
    ("id missing", decision(id=_ABSENT), False),
    ("id null", decision(id=None), False),
    ("id number", decision(id=12), False),
    ("id list", decision(id=[ID]), False),
    ("reason number", decision(reason=1), False),
    ("reason list", decision(reason=["ok"]), False),
    ("reason false", decision(reason=False), False),
    ("reviewer number", decision(reviewer=7), False),
    ("reviewer object", decision(reviewer={"name": "bob"}), False),
    ("reviewer true", decision(reviewer=True), False),
    (
        "duplicate decision key",
        '{"type":"decision","id":"' + ID + '","decision":"deny","decision":"approve"}',
        False,
    ),
    ("duplicate type key", '{"type":"ping","type":"decision"}', False),
]


class ParseIgnoredTests(SynchronousTestCase):
    def test_every_bad_frame_is_ignored(self) -> None:
        for name, payload, is_binary in IGNORED_FRAMES:
            with self.subTest(name):
                result = parse_service_frame(payload, is_binary)
                self.assertIsInstance(result, Ignored, name)
                self.assertIsInstance(result.why, str)
                self.assertLessEqual(len(result.why), 100, name)

    def test_why_names_the_problem(self) -> None:
        cases = [
            (decision().encode(), True, "binary"),
            (b"\xff", False, "UTF-8"),
            ("hello", False, "not JSON"),
            ("[]", False, "not an object"),
            ("{}", False, "no type"),
            (decision(type="verdict"), False, "unknown type 'verdict'"),
            (decision(decision="APPROVE"), False, "'APPROVE' is neither"),
            (decision(id=None), False, "id"),
            (decision(reason=3), False, "reason"),
            (decision(reviewer=3), False, "reviewer"),
            ('{"type":"ping","type":"pong"}', False, "repeats the key 'type'"),
        ]
        for payload, is_binary, expected in cases:
            with self.subTest(expected):
                self.assertIn(expected, parse_service_frame(payload, is_binary).why)

    def test_why_never_quotes_much_of_the_frame(self) -> None:
        result = parse_service_frame(decision(type="x" * 10_000), False)
        self.assertLessEqual(len(result.why), 80)

    def test_non_payload_types(self) -> None:
        self.assertIsInstance(parse_service_frame(None, False), Ignored)  # type: ignore[arg-type]
        self.assertIsInstance(parse_service_frame(123, False), Ignored)  # type: ignore[arg-type]

    def test_bytearray_and_memoryview(self) -> None:
        frame = decision().encode()
        self.assertIsInstance(parse_service_frame(bytearray(frame), False), DecisionMessage)
        self.assertIsInstance(parse_service_frame(memoryview(frame), False), DecisionMessage)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(["decision", "approve", "deny", "ping", "pong", ID, "APPROVE", ""])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "id", "decision", "reason", "reviewer"]) | st.text(max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)
field_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=2))
valid_decisions = st.fixed_dictionaries(
    {
        "type": st.just("decision"),
        "id": st.sampled_from([ID, ""]) | st.text(max_size=8),
        "decision": st.sampled_from(["approve", "deny"]),
    },
    optional={
        "reason": st.none() | st.text(max_size=5),
        "reviewer": st.none() | st.text(max_size=5),
        "extra": json_values,
    },
)


@st.composite
def near_decisions(draw) -> dict:
    """A valid decision with one field deleted, replaced, or left alone."""
    value = dict(draw(valid_decisions))
    key = draw(st.sampled_from(["type", "id", "decision", "reason", "reviewer", None]))
    if key is not None:
        if draw(st.booleans()):
            value.pop(key, None)
        else:
            value[key] = draw(
                field_values | st.sampled_from(["APPROVE", "Decision", "ping", "pong", "approve"])
            )
    return value


# Objects that look a lot like frames, so the interesting paths get hit often.
frame_like = near_decisions() | st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["decision", "ping", "pong", "Decision"]) | field_values,
        "id": st.sampled_from([ID, ""]) | field_values,
        "decision": st.sampled_from(["approve", "deny", "APPROVE", "yes"]) | field_values,
        "reason": st.text(max_size=5) | field_values,
        "reviewer": st.text(max_size=5) | field_values,
        "extra": json_values,
    },
)


def oracle(value: object) -> DecisionMessage | Ping | Pong | None:
    """PROTOCOL.md, read independently of the parser; None means ignored."""
    if type(value) is not dict:
        return None
    kind = value.get("type")
    if type(kind) is not str:
        return None
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind != "decision":
        return None
    verdict = value.get("decision")
    reason = value.get("reason", "")
    reviewer = value.get("reviewer")
    if type(value.get("id")) is not str or verdict not in ("approve", "deny"):
        return None
    if type(verdict) is not str:
        return None
    if reason is None:
        reason = ""
    if type(reason) is not str or (reviewer is not None and type(reviewer) is not str):
        return None
    return DecisionMessage(value["id"], verdict == "approve", reason, reviewer)


class ParsePropertyTests(SynchronousTestCase):
    @given(json_values | frame_like, st.booleans(), st.booleans())
    def test_json_values(self, value, as_bytes: bool, is_binary: bool) -> None:
        text = json.dumps(value)
        payload = text.encode("utf-8") if as_bytes else text
        result = parse_service_frame(payload, is_binary)
        expected = None if is_binary else oracle(value)
        if expected is None:
            self.assertIsInstance(result, Ignored)
        else:
            self.assertEqual(result, expected)

    @given(st.binary(max_size=300), st.booleans())
    def test_arbitrary_bytes_never_raise(self, payload: bytes, is_binary: bool) -> None:
        result = parse_service_frame(payload, is_binary)
        self.assertIsInstance(result, Ignored | DecisionMessage | Ping | Pong)
        if isinstance(result, DecisionMessage):
            self.assertFalse(is_binary)
            self.assertEqual(result, oracle(json.loads(payload.decode("utf-8"))))

    @given(st.text(max_size=300))
    def test_arbitrary_text_never_raises(self, payload: str) -> None:
        result = parse_service_frame(payload, False)
        self.assertIsInstance(result, Ignored | DecisionMessage | Ping | Pong)

    @given(frame_like)
    def test_approval_only_from_exact_approve(self, value) -> None:
        result = parse_service_frame(json.dumps(value), False)
        if isinstance(result, DecisionMessage) and result.approved:
            self.assertEqual(value["type"], "decision")
            self.assertEqual(value["decision"], "approve")
            self.assertIsInstance(value["id"], str)


class FrameBuilderTests(SynchronousTestCase):
    def test_subprotocol(self) -> None:
        self.assertEqual(SUBPROTOCOL, "wraith.approval.v1")

    def test_hello(self) -> None:
        frame = hello_frame("gw-1")
        self.assertEqual(
            json.loads(frame), {"type": "hello", "role": "gateway", "gateway": "gw-1", "version": 1}
        )
        self.assertNotIn(" ", frame)

    def test_request_matches_protocol_example(self) -> None:
        request = make_request(risk=Risk(80, ("recursive delete",)))
        message = json.loads(request_frame(request))
        self.assertEqual(
            message,
            {
                "type": "request",
                "id": request.id,
                "session": "s-8c41",
                "user": "alice",
                "client": "127.0.0.1:53122",
                "target": "db1.internal:22",
                "kind": "shell",
                "command": "rm -rf /var/tmp/cache",
                "typed": "rm -rf /var/tmp/cache",
                "mismatch": False,
                "risk": {"score": 80, "reasons": ["recursive delete"]},
                "created": "2026-11-21T10:00:00.000Z",
                "expires": "2026-11-21T10:05:00.000Z",
            },
        )

    def test_request_is_the_same_text_every_time(self) -> None:
        request = make_request()
        self.assertEqual(request_frame(request), request_frame(request))

    def test_cancel(self) -> None:
        self.assertEqual(
            json.loads(cancel_frame(ID, "session closed")),
            {"type": "cancel", "id": ID, "reason": "session closed"},
        )

    def test_ping_pong(self) -> None:
        self.assertEqual(ping_frame(), '{"type":"ping"}')
        self.assertEqual(pong_frame(), '{"type":"pong"}')

    def test_non_ascii_is_kept(self) -> None:
        frame = request_frame(make_request("echo é ✓"))
        self.assertIn("é ✓", frame)
        self.assertEqual(json.loads(frame.encode("utf-8"))["command"], "echo é ✓")

    @given(st.text())
    def test_any_command_encodes_to_utf8(self, command: str) -> None:
        frame = request_frame(make_request(command, typed=command))
        decoded = json.loads(frame.encode("utf-8").decode("utf-8"))
        if not any("\ud800" <= c <= "\udfff" for c in command):
            self.assertEqual(decoded["command"], command)

    def test_lone_surrogates_become_replacement_characters(self) -> None:
        command = "cat \udcff\udc80file"
        frame = request_frame(make_request(command))
        self.assertEqual(json.loads(frame)["command"], "cat \ufffd\ufffdfile")
        frame.encode("utf-8")


class PendingRequestsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pending = PendingRequests()
        self.first = make_request("one", created=100.0, timeout=10.0)
        self.second = make_request("two", created=101.0, timeout=5.0)
        self.pending.add(self.first)
        self.pending.add(self.second)

    def message(self, request: CommandRequest, approved: bool = True) -> DecisionMessage:
        return DecisionMessage(request.id, approved=approved, reason="r", reviewer="bob")

    def test_outstanding_in_creation_order(self) -> None:
        self.assertEqual(self.pending.outstanding(), [self.first, self.second])
        self.assertEqual(len(self.pending), 2)
        self.assertIn(self.first.id, self.pending)

    def test_first_valid_decision_wins(self) -> None:
        result = self.pending.resolve(self.message(self.first, approved=False))
        self.assertEqual(result, Resolved(self.first, Decision.deny("r", reviewer="bob")))
        again = self.pending.resolve(self.message(self.first, approved=True))
        self.assertEqual(again, Stale(self.first.id, Outcome.DECIDED))
        self.assertEqual(self.pending.outstanding(), [self.second])

    def test_unknown_id(self) -> None:
        result = self.pending.resolve(DecisionMessage("nope", True))
        self.assertEqual(result, Stale("nope", Outcome.UNKNOWN))
        self.assertEqual(len(self.pending), 2)

    def test_cancelled(self) -> None:
        self.assertEqual(self.pending.cancel(self.first.id), self.first)
        self.assertIsNone(self.pending.cancel(self.first.id))
        self.assertEqual(
            self.pending.resolve(self.message(self.first)), Stale(self.first.id, Outcome.CANCELLED)
        )
        self.assertIsNone(self.pending.cancel("nope"))

    def test_expire_by_deadline(self) -> None:
        self.assertEqual(self.pending.expire(105.9), [])
        self.assertEqual(self.pending.expire(106.0), [self.second.id])
        self.assertEqual(self.pending.expire(106.0), [])
        self.assertEqual(
            self.pending.resolve(self.message(self.second)), Stale(self.second.id, Outcome.EXPIRED)
        )
        self.assertEqual(self.pending.expire(1e9), [self.first.id])
        self.assertEqual(len(self.pending), 0)

    def test_expire_returns_all_due_in_order(self) -> None:
        self.assertEqual(self.pending.expire(200.0), [self.first.id, self.second.id])

    def test_explicit_deadline(self) -> None:
        third = make_request("three", created=100.0, timeout=300.0)
        self.pending.add(third, deadline=102.0)
        self.assertEqual(self.pending.deadline(third.id), 102.0)
        self.assertEqual(self.pending.deadline(self.first.id), 110.0)
        self.assertIsNone(self.pending.deadline("nope"))
        self.assertEqual(self.pending.expire(102.0), [third.id])

    def test_ids_are_never_reused(self) -> None:
        self.assertRaises(ValueError, self.pending.add, self.first)
        self.pending.resolve(self.message(self.first))
        self.assertRaises(ValueError, self.pending.add, self.first)

    def test_status(self) -> None:
        self.assertEqual(self.pending.status(self.first.id), Outcome.PENDING)
        self.pending.resolve(self.message(self.first))
        self.assertEqual(self.pending.status(self.first.id), Outcome.DECIDED)
        self.assertEqual(self.pending.status("nope"), Outcome.UNKNOWN)

    def test_history_is_bounded(self) -> None:
        pending = PendingRequests(history_limit=3)
        requests = [make_request(str(i)) for i in range(5)]
        for request in requests:
            pending.add(request)
            pending.cancel(request.id)
        self.assertEqual(pending.status(requests[0].id), Outcome.UNKNOWN)
        self.assertEqual(pending.status(requests[4].id), Outcome.CANCELLED)
        # Forgotten or not, a late decision never counts.
        self.assertIsInstance(pending.resolve(self.message(requests[0])), Stale)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["approve", "deny", "cancel", "expire"]),
                st.integers(0, 4),
                st.floats(0, 400),
            ),
            max_size=30,
        )
    )
    def test_at_most_one_outcome_per_request(self, operations) -> None:
        pending = PendingRequests()
        requests = [make_request(str(i), created=float(i * 50)) for i in range(5)]
        for request in requests:
            pending.add(request)
        outcomes: dict[str, list[str]] = {request.id: [] for request in requests}
        for operation, index, now in operations:
            request = requests[index]
            if operation in ("approve", "deny"):
                result = pending.resolve(self.message(request, approved=operation == "approve"))
                if isinstance(result, Resolved):
                    outcomes[request.id].append(operation)
            elif operation == "cancel":
                if pending.cancel(request.id) is not None:
                    outcomes[request.id].append("cancel")
            else:
                for expired in pending.expire(now):
                    outcomes[expired].append("expire")
        for request in requests:
            finished = outcomes[request.id]
            self.assertLessEqual(len(finished), 1)
            self.assertEqual(request.id in pending, not finished)
        self.assertEqual(
            [r.id for r in pending.outstanding()],
            [r.id for r in requests if not outcomes[r.id]],
        )
