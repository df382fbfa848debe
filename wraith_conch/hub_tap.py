"""
C{twistd wraith-hub}: the approval hub on its own, options and service tree.

    twistd -n wraith-hub --gateway-token-file /etc/wraith/gateway_token \\
        --reviewers /etc/wraith/reviewers.toml --hub-listen tcp:8022:interface=127.0.0.1

Gateways then run with C{--approval ws://HUB:8022/gateway} and the same
token (and, for reviewers to watch their sessions, C{--live-feed
ws://HUB:8022/live-feed}); reviewers open C{http://HUB:8022/}.  Without C{--reviewers} the hub
makes one reviewer, C{admin}, and prints its login link once to stdout (to a
0600 file in the working directory when a daemon's stdout is /dev/null).
The reviewers file format is described in L{wraith_conch.approval.reviewers}.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from wraith_conch.approval.hub import DEFAULT_HISTORY, make_hub_service
from wraith_conch.approval.reviewers import Reviewers, ReviewersFileError
from wraith_conch.approval.webhook import check_webhook_url

DEFAULT_HUB_LISTEN = "tcp:8022:interface=127.0.0.1"


def read_token_file(path: str, flag: str) -> str:
    """The first line of C{path}, stripped; L{usage.UsageError} naming C{flag} if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise usage.UsageError(f"{flag}: cannot read {path}: {reason}") from None
    if not token:
        raise usage.UsageError(f"{flag}: {path} is empty")
    return token


def check_token(token: str, flag: str) -> str:
    if not all(33 <= ord(c) <= 126 for c in token):
        # Never echo the token: this message may end up in a log.
        raise usage.UsageError(f"{flag}: the token must be printable ASCII without spaces")
    if len(token) < 16:
        raise usage.UsageError(f"{flag}: the token is too short (at least 16 characters)")
    return token


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "The wraith approval hub: gateways connect to /gateway (PROTOCOL.md), reviewers"
        " use the web console at / or wraith-review, and the first decision wins."
    )

    optParameters = [
        [
            "hub-listen",
            None,
            DEFAULT_HUB_LISTEN,
            "Endpoint the hub listens on (console, /gateway, /live-feed, /reviewer); ssl:... for HTTPS.",
        ],
        ["gateway-token", None, None, "Bearer token gateways must send (or --gateway-token-file)."],
        ["gateway-token-file", None, None, "File holding the gateways' bearer token."],
        [
            "reviewers",
            None,
            None,
            "Reviewer accounts (TOML); without it an 'admin' login link is printed once.",
        ],
        ["history", None, str(DEFAULT_HISTORY), "How many recent decisions reviewers see."],
        ["webhook", None, None, "http(s) URL to POST each request awaiting review to (JSON)."],
    ]

    def postOptions(self) -> None:
        from twisted.internet import reactor

        token, token_file = self["gateway-token"], self["gateway-token-file"]
        if token and token_file:
            raise usage.UsageError("--gateway-token and --gateway-token-file: give only one")
        if token_file:
            token = read_token_file(token_file, "--gateway-token-file")
            flag = "--gateway-token-file"
        else:
            flag = "--gateway-token"
        if not token:
            raise usage.UsageError(
                "--gateway-token or --gateway-token-file: required (gateways authenticate with it)"
            )
        self.gateway_token = check_token(token, flag)
        try:
            serverFromString(reactor, self["hub-listen"])
        except (ValueError, TypeError, KeyError) as e:
            raise usage.UsageError(f"--hub-listen: {self['hub-listen']!r}: {e}") from None
        self.reviewers = None
        if self["reviewers"]:
            try:
                self.reviewers = Reviewers.load(self["reviewers"])
            except ReviewersFileError as e:
                raise usage.UsageError(f"--reviewers: {e}") from None
        try:
            self.history = int(self["history"])
            if not 1 <= self.history <= 10_000:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--history: a number from 1 to 10000") from None
        if self["webhook"]:
            try:
                check_webhook_url(self["webhook"])
            except ValueError as e:
                raise usage.UsageError(f"--webhook: {e}") from None


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    hub_service, _hub, _url = make_hub_service(
        reactor,
        options["hub-listen"],
        options.reviewers,
        options.gateway_token,
        history=options.history,
        webhook=options["webhook"],
    )
    return hub_service
