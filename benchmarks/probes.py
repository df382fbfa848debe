"""
Timestamps taken inside a running gateway, by wrapping its methods at run time.

Nothing in C{wraith_conch} is edited: L{Probes.install} replaces a handful
of methods on their classes with wrappers that call the original and note
C{time.perf_counter_ns()} around it, and L{Probes.uninstall} puts them back.
Everything runs on the reactor thread, so "the request being built now" and
"the decision being handled now" are plain attributes.

For each shell command (keyed by its request id) the probes note:

  - C{a_wire}: the socket read that carried the submitting key (the read
    whose C{dataReceived} called C{ShellGate.operator_input});
  - C{a}: C{ShellGate.operator_input} entered with that key;
  - C{submit} / C{submit_now}: C{ShellGate._submit} entered (the key is held)
    and C{ShellGate._submit_now} entered (the screen is read and the request
    built) -- the difference is the gate's settle wait for the target's echo;
  - C{b}: C{ApprovalClient._send} of the request frame returned (the frame is
    in the WebSocket transport's buffer);
  - C{b_wire}: the C{send()} on the WebSocket's socket that carried it returned;
  - C{c_wire}: the socket read that carried the decision frame;
  - C{c}: C{ApprovalClient._frame_received} entered with it;
  - C{d}: the gate's C{to_target} call releasing the held key returned (the
    SSH packet is encrypted and in the upstream transport's buffer);
  - C{d_wire}: the C{send()} on the upstream socket that carried it returned.

In a phase named C{echo} the probes also note, for every chunk of keys
forwarded outside a decision, the socket read that brought it and the socket
send that took it to the target (C{keys}), the same for every chunk of
target output relayed to the operator (C{echoes}), and how long
C{ShellGate.target_output} took with that output (C{screen_feed}: the
screen model fed, plus the prompt check after an approved command).  In every phase
they time C{Screen.last_screenful} (C{renders}), which renders every cell of
the screen model and which the gate and the session call on the way of keys,
requests and prompts.  And they note every garbage collection
(C{collections}): a pause of the whole process that lands on whatever
key or request is in flight.

Twisted writes to a socket only on the reactor iteration after
C{transport.write()} (when the socket is reported writable), so the
C{*_wire} timestamps include one turn of the reactor loop; the handler
timestamps do not.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

from wraith_conch.approval.client import ApprovalClient
from wraith_conch.gateway.session import SessionChannel
from wraith_conch.interception.gate import ShellGate
from wraith_conch.interception.screen import Screen

now = time.perf_counter_ns

# Cap on the per-chunk samples kept in the echo phase.
MAX_SAMPLES = 200_000


class Probes:
    def __init__(self) -> None:
        self.phase = "setup"
        self.requests: dict[str, dict[str, Any]] = {}
        self.keys: list[tuple[int, int]] = []
        self.echoes: list[tuple[int, int]] = []
        self.screen_feed: list[int] = []
        # Phase -> durations of Screen.last_screenful() calls (every row rendered).
        self.renders: dict[str, list[int]] = {}
        self.missing: list[str] = []
        # (phase, generation, start, duration) of every garbage collection.
        self.collections: list[tuple[str, int, int, int]] = []
        self._gc_started = 0
        self._last_read = 0
        self._gate: ShellGate | None = None
        self._request: dict[str, Any] | None = None
        self._frame: tuple[int, int] | None = None
        self._decided: dict[str, Any] | None = None
        # Socket transport -> records waiting for its next send().
        self._flush: dict[object, list[tuple[Any, Any]]] = {}
        self._undo: list[Callable[[], None]] = []

    # -- results ----------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        return {
            "requests": list(self.requests.values()),
            "keys": self.keys,
            "echoes": self.echoes,
            "screen_feed": self.screen_feed,
            "renders": self.renders,
            "missing": self.missing,
            "collections": self.collections,
        }

    # -- helpers ----------------------------------------------------------------

    def _patch(self, owner: type, name: str, make: Callable[[Callable], Callable]) -> None:
        original = owner.__dict__.get(name)
        if original is None and not hasattr(owner, name):
            self.missing.append(f"{owner.__name__}.{name}")
            return
        inherited = original is None
        setattr(owner, name, make(getattr(owner, name)))

        def undo() -> None:
            if inherited:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

        self._undo.append(undo)

    def _when_sent(self, transport: object, target: Any, key: Any) -> None:
        """Note in C{target[key]} when C{transport}'s socket next sends."""
        if transport is not None:
            self._flush.setdefault(transport, []).append((target, key))

    # -- installation -------------------------------------------------------------

    def install(self) -> None:
        probes = self

        def socket_read(original):
            def _dataReceived(self, data):
                probes._last_read = now()
                return original(self, data)

            return _dataReceived

        def socket_send(original):
            def writeSomeData(self, data):
                result = original(self, data)
                waiting = probes._flush.pop(self, None)
                if waiting:
                    sent = now()
                    for target, key in waiting:
                        if isinstance(target, list):
                            target.append((key, sent))
                        else:
                            target.setdefault(key, sent)
                return result

            return writeSomeData

        def operator_input(original):
            def wrapper(self, data):
                if b"\r" in data or b"\n" in data:
                    self._bench_a = (probes._last_read, now())
                return original(self, data)

            return wrapper

        def submit(original):
            def wrapper(self, event):
                self._bench_submit = now()
                self._bench_in_submit = True
                try:
                    return original(self, event)
                finally:
                    self._bench_in_submit = False

            return wrapper

        def submit_now(original):
            def wrapper(self, event):
                self._bench_submit_now = now()
                # Called from _submit itself: the echo was there, no waiting.
                self._bench_waited = not getattr(self, "_bench_in_submit", False)
                probes._gate = self
                try:
                    return original(self, event)
                finally:
                    probes._gate = None

            return wrapper

        def request_decision(original):
            def wrapper(self, request):
                gate = probes._gate
                a_wire, a = getattr(gate, "_bench_a", (None, None))
                record = {
                    "id": request.id,
                    "kind": request.kind,
                    "phase": probes.phase,
                    "a_wire": a_wire,
                    "a": a,
                    "submit": getattr(gate, "_bench_submit", None),
                    "submit_now": getattr(gate, "_bench_submit_now", None),
                    "waited": getattr(gate, "_bench_waited", None),
                }
                probes.requests[request.id] = record
                probes._request = record
                try:
                    return original(self, request)
                finally:
                    probes._request = None

            return wrapper

        def send(original):
            def wrapper(self, text):
                result = original(self, text)
                record = probes._request
                if record is not None and "b" not in record and result:
                    record["b"] = now()
                    session = self._session
                    probes._when_sent(getattr(session, "transport", None), record, "b_wire")
                return result

            return wrapper

        def frame_received(original):
            def wrapper(self, session, payload, is_binary):
                probes._frame = (probes._last_read, now())
                try:
                    return original(self, session, payload, is_binary)
                finally:
                    probes._frame = None

            return wrapper

        def decided(original):
            def wrapper(self, decision, request):
                record = probes.requests.get(request.id)
                if record is not None and probes._frame is not None:
                    record["c_wire"], record["c"] = probes._frame
                    record["approved"] = bool(decision.approved)
                probes._decided = record
                try:
                    return original(self, decision, request)
                finally:
                    probes._decided = None

            return wrapper

        def gate_init(original):
            def wrapper(self, *args, to_target, **kwargs):
                channel = getattr(to_target, "__self__", None)

                def upstream_socket():
                    try:
                        return channel.peer.conn.transport.transport
                    except AttributeError:
                        return None

                def timed_to_target(data: bytes) -> None:
                    read = probes._last_read
                    to_target(data)
                    done = now()
                    record = probes._decided
                    if record is not None:
                        if "d" not in record:
                            record["d"] = done
                            probes._when_sent(upstream_socket(), record, "d_wire")
                    elif probes.phase == "echo" and len(probes.keys) < MAX_SAMPLES:
                        probes._when_sent(upstream_socket(), probes.keys, read)

                original(self, *args, to_target=timed_to_target, **kwargs)

            return wrapper

        def target_output(original):
            def wrapper(self, data):
                if probes.phase != "echo":
                    return original(self, data)
                started = now()
                try:
                    return original(self, data)
                finally:
                    if len(probes.screen_feed) < MAX_SAMPLES:
                        probes.screen_feed.append(now() - started)

            return wrapper

        def relay_data(original):
            def wrapper(self, data):
                read = probes._last_read
                result = original(self, data)
                if probes.phase == "echo" and len(probes.echoes) < MAX_SAMPLES:
                    try:
                        socket = self.conn.transport.transport
                    except AttributeError:
                        socket = None
                    probes._when_sent(socket, probes.echoes, read)
                return result

            return wrapper

        def last_screenful(original):
            def wrapper(self):
                started = now()
                try:
                    return original(self)
                finally:
                    renders = probes.renders.setdefault(probes.phase, [])
                    if len(renders) < MAX_SAMPLES:
                        renders.append(now() - started)

            return wrapper

        gc.callbacks.append(self._gc_callback)
        self._patch(tcp.Connection, "_dataReceived", socket_read)
        self._patch(tcp.Connection, "writeSomeData", socket_send)
        self._patch(ShellGate, "__init__", gate_init)
        self._patch(ShellGate, "operator_input", operator_input)
        self._patch(ShellGate, "_submit", submit)
        self._patch(ShellGate, "_submit_now", submit_now)
        self._patch(ShellGate, "_decided", decided)
        self._patch(ShellGate, "target_output", target_output)
        self._patch(ApprovalClient, "request_decision", request_decision)
        self._patch(ApprovalClient, "_send", send)
        self._patch(ApprovalClient, "_frame_received", frame_received)
        self._patch(SessionChannel, "relay_data", relay_data)
        self._patch(Screen, "last_screenful", last_screenful)

    def _gc_callback(self, stage: str, info: dict) -> None:
        if stage == "start":
            self._gc_started = now()
        elif len(self.collections) < MAX_SAMPLES:
            duration = now() - self._gc_started
            self.collections.append((self.phase, info["generation"], self._gc_started, duration))

    def uninstall(self) -> None:
        if self._gc_callback in gc.callbacks:
            gc.callbacks.remove(self._gc_callback)
        undo, self._undo = self._undo, []
        for action in reversed(undo):
            action()
