"""
The long fuzz run of the gateway's SSH transport (docs/security.md).

    python -m tests.fuzz.fuzz_gateway --cases 100000 --seed 1

Starts the gateway's SSH server in this process on 127.0.0.1 (no target:
no login can succeed), sends C{--cases} seeded malformed openings in waves
(and every C{--kex-every} waves one real paramiko key exchange followed by
garbage), and checks that each connection is dropped, that nothing is
logged as an unhandled error, that no connection stays counted and that
resident memory grows by less than C{--max-rss-growth-mb}.  Exit status 0
if all held, 1 otherwise; the seed and the first failing case are printed.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from tests.fuzz.cases import SOURCE, after_kex, fuzz_case, rss_kib
from tests.rawclients import RawClient, _OneShot
from wraith_conch.gateway.limits import AdmissionLimits
from wraith_conch.gateway.server import GatewayFactory

WAVE = 25


@implementer(ICredentialsChecker)
class _NobodyGetsIn:
    credentialInterfaces = (ISSHPrivateKey, IUsernamePassword)

    def requestAvatarId(self, credentials):
        return defer.fail(UnauthorizedLogin("fuzzing"))


class _NoRealm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        raise AssertionError("no login can succeed while fuzzing")


@defer.inlineCallbacks
def run(reactor, options) -> defer.Deferred:
    failures: list[dict] = []
    outcomes: collections.Counter[str] = collections.Counter()

    def watch(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)
        if event.get("event_kind") == "connection":
            outcomes[event.get("result", "closed" if "duration" in event else "opened")] += 1

    globalLogPublisher.addObserver(watch)
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    factory = GatewayFactory(
        reactor,
        Portal(_NoRealm(), [_NobodyGetsIn()]),
        key,
        limits=AdmissionLimits(max_connections_per_ip=0, max_startups=0),
        login_grace_time=options.grace,
    )
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    number = port.getHost().port
    rng = random.Random(options.seed)
    start_rss = None
    done = 0
    waves = 0
    problem = None
    try:
        while done < options.cases and problem is None:
            batch = [fuzz_case(rng) for _ in range(min(WAVE, options.cases - done))]
            clients = []
            for payload in batch:
                client = RawClient(payload, close_after_write=True)
                reactor.connectTCP(
                    "127.0.0.1", number, _OneShot(client), timeout=10, bindAddress=(SOURCE, 0)
                )
                clients.append(client)
            wave_done = defer.DeferredList([c.closed for c in clients])
            wave_done.addTimeout(options.grace + 10, reactor)
            try:
                yield wave_done
            except defer.TimeoutError:
                pass  # reported below, with the case
            stuck = [payload for c, payload in zip(clients, batch, strict=True) if not c.lost]
            if stuck:
                problem = f"a connection was not dropped; case: {stuck[0][:200]!r}"
            done += len(batch)
            waves += 1
            if options.kex_every and waves % options.kex_every == 0:
                closed = yield threads.deferToThread(
                    after_kex, number, "garbage", rng.randrange(2**32)
                )
                if not closed:
                    problem = "a connection with garbage after the key exchange was not dropped"
            if waves == 4:
                start_rss = rss_kib()  # after the first allocations settled
            if failures:
                problem = f"unhandled error: {failures[0].get('log_failure')}"
            if waves % 400 == 0:
                print(f"{done} cases, RSS {rss_kib()} KiB", file=sys.stderr)
        for _ in range(200):
            if not factory.live and factory.admission.startups == 0:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        if problem is None and (factory.live or factory.admission.startups):
            problem = f"{len(factory.live)} connection(s) still open after the run"
        growth = rss_kib() - (start_rss or rss_kib())
        if problem is None and growth > options.max_rss_growth_mb * 1024:
            problem = f"RSS grew by {growth} KiB"
        print(f"seed {options.seed}: {done} cases, RSS growth {growth} KiB, {dict(outcomes)}")
    finally:
        globalLogPublisher.removeObserver(watch)
        yield port.stopListening()
    if problem is not None:
        print(f"FAILED (seed {options.seed}): {problem}")
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kex-every", type=int, default=40, help="waves; 0: never")
    parser.add_argument("--grace", type=float, default=5.0, help="--login-grace-time")
    parser.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    options = parser.parse_args(argv)
    task.react(run, (options,))


if __name__ == "__main__":
    main()
