"""
The reviewer console's HTTP side: login, logout, the page, its static files.

Pages are two templates and two static files in C{static/}; the page's
script opens C{/reviewer} (the hub's reviewer WebSocket) and does the rest.
No data is ever put into HTML here except the reviewer's name and the CSRF
token, both HTML-escaped; requests reach the page only through the
WebSocket and are shown with C{textContent}.

Sessions: a random cookie (C{wraith_session}, C{HttpOnly; SameSite=Strict},
C{Secure} over TLS) whose SHA-256 keys the server-side L{Session}; they
last L{SESSION_LIFETIME}.  Form POSTs (login, logout) carry a CSRF token:
the session's for logout, a double-submit cookie for login, and a foreign
C{Origin} is refused outright.  Passwords are checked in a thread (bcrypt).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import secrets
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import attrs
from twisted.internet import threads
from twisted.logger import Logger
from twisted.web import server
from twisted.web.pages import notFound
from twisted.web.resource import Resource

from wraith_conch.approval.reviewers import Reviewers

SESSION_COOKIE = "wraith_session"
CSRF_COOKIE = "wraith_csrf"
SESSION_LIFETIME = 12 * 3600.0
MAX_SESSIONS = 1000

LOGIN_FAILURES_ALLOWED = 10
LOGIN_FAILURE_WINDOW = 300.0

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none';"
        b" object-src 'none'"
    ),
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"X-Content-Type-Options": b"nosniff",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}

_STATIC = resources.files(__package__) / "static"


def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


# --- origins ------------------------------------------------------------------


def normal_origin(origin: str) -> str:
    """C{scheme://host[:port]} in lower case without the scheme's default port."""
    origin = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def own_origin(secure: bool, host_header: str) -> str:
    """The origin of a page the hub served over this connection, from its C{Host}."""
    return normal_origin(("https://" if secure else "http://") + host_header.strip())


def _request_origin_ok(request: server.Request) -> bool:
    """
    A form POST from another site is refused (the CSRF token is checked too).

    With C{Referrer-Policy: no-referrer} browsers send C{Origin: null} even
    for the page's own forms, so C{null} defers to C{Sec-Fetch-Site}.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site not in (b"same-origin", b"none"):
        return False
    origin = request.getHeader(b"origin")
    if origin is None or origin.strip().lower() == b"null":
        return True
    host = request.getHeader(b"host") or b""
    own = own_origin(request.isSecure(), host.decode("latin-1"))
    return normal_origin(origin.decode("latin-1")) == own


# --- sessions ----------------------------------------------------------------


@attrs.define(eq=False)
class Session:
    """A logged-in reviewer.  C{key} is the SHA-256 (hex) of the cookie value."""

    key: str
    reviewer: str
    csrf: str
    created: float
    links: set = attrs.field(factory=set)


def _cookie_key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """C{name=value; ...} into a dict; the first of a repeated name wins."""
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


class Sessions:
    """Server-side reviewer sessions; C{clock} gives seconds since the epoch."""

    def __init__(
        self,
        clock: Callable[[], float],
        lifetime: float = SESSION_LIFETIME,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._limit = limit
        self._sessions: dict[str, Session] = {}

    def create(self, reviewer: str) -> tuple[str, Session]:
        """A new session; returns the cookie value (only ever sent to the browser)."""
        cookie = secrets.token_urlsafe(32)
        session = Session(_cookie_key(cookie), reviewer, secrets.token_urlsafe(32), self._clock())
        self._sessions[session.key] = session
        while len(self._sessions) > self._limit:
            self.end(next(iter(self._sessions)))
        return cookie, session

    def get(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        session = self._sessions.get(_cookie_key(cookie))
        if session is None:
            return None
        if self._clock() - session.created >= self._lifetime:
            self.end(session.key)
            return None
        return session

    def from_cookie_header(self, header: str | None) -> Session | None:
        return self.get(parse_cookie_header(header).get(SESSION_COOKIE))

    def from_request(self, request: server.Request) -> Session | None:
        value = request.getCookie(SESSION_COOKIE.encode())
        return self.get(None if value is None else value.decode("latin-1"))

    def end(self, key: str) -> None:
        """Log a session out; its open reviewer sockets are closed."""
        session = self._sessions.pop(key, None)
        if session is not None:
            for link in list(session.links):
                link.close(4001, "logged out")

    def attach(self, key: str, link: Any) -> bool:
        session = self._sessions.get(key)
        if session is None:
            return False
        session.links.add(link)
        return True

    def detach(self, key: str, link: Any) -> None:
        session = self._sessions.get(key)
        if session is not None:
            session.links.discard(link)

    def expire(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if now - s.created >= self._lifetime]:
            self.end(key)

    def __len__(self) -> int:
        return len(self._sessions)


# --- pages -------------------------------------------------------------------


def _fill(template: bytes, **values: str) -> bytes:
    text = template.decode("utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text.encode("utf-8")


def _set_cookie(request: server.Request, name: str, value: str, max_age: int | None) -> None:
    # Written by hand rather than with addCookie, which spells it "SameSite=strict".
    cookie = f"{name}={value}; Path=/"
    if max_age is not None:
        cookie += f"; Max-Age={max_age}"
    cookie += "; HttpOnly; SameSite=Strict"
    if request.isSecure():
        cookie += "; Secure"
    request.cookies.append(cookie.encode("ascii"))


def _form(request: server.Request, name: str, limit: int = 1024) -> str:
    values = request.args.get(name.encode())
    if not values:
        return ""
    return values[0][:limit].decode("utf-8", "replace")


def _redirect(request: server.Request, location: bytes) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"Location", location)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"See " + location + b"\n"


class _LoginFailures:
    """Failed logins per client address in a sliding window."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, peer: str) -> bool:
        times = self._failures.get(peer)
        if not times:
            return False
        now = self._clock()
        while times and now - times[0] > LOGIN_FAILURE_WINDOW:
            times.popleft()
        if not times:
            del self._failures[peer]
        return len(times) >= LOGIN_FAILURES_ALLOWED

    def failed(self, peer: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._failures.setdefault(peer, deque(maxlen=LOGIN_FAILURES_ALLOWED)).append(self._clock())


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class _Login(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, reactor, reviewers: Reviewers, sessions: Sessions) -> None:
        super().__init__()
        self._reactor = reactor
        self._reviewers = reviewers
        self._sessions = sessions
        self._failures = _LoginFailures(reactor.seconds)
        self._template = _read("login.html")
        self._continue = _read("continue.html")

    def _page(self, request: server.Request, error: str = "", code: int = 200) -> bytes:
        csrf = secrets.token_urlsafe(32)
        _set_cookie(request, CSRF_COOKIE, csrf, None)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        return _fill(self._template, csrf=html.escape(csrf), error=message)

    def _logged_in(self, request: server.Request, reviewer: str, how: str) -> bytes:
        cookie, _session = self._sessions.create(reviewer)
        _set_cookie(request, SESSION_COOKIE, cookie, int(SESSION_LIFETIME))
        _set_cookie(request, CSRF_COOKIE, "", 0)
        self.log.info(
            "reviewer {reviewer} logged in to the console ({how}) from {peer}",
            reviewer=reviewer,
            how=how,
            peer=_peer(request),
        )
        # A page that moves on by itself rather than a redirect: a login
        # link opened from another site would otherwise land on "/"
        # without the new SameSite=Strict cookie.
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self._continue

    def render_GET(self, request: server.Request) -> bytes:
        tokens = request.args.get(b"token")
        if not tokens:
            return self._page(request)
        peer = _peer(request)
        if self._failures.blocked(peer):
            return self._page(request, "Too many failed logins; wait a few minutes.", 429)
        name = self._reviewers.authenticate_token(tokens[0][:1024].decode("utf-8", "replace"))
        if name is None:
            self._failures.failed(peer)
            self.log.warn("refused a console login link from {peer}", peer=peer)
            return self._page(request, "This login link is not valid.", 403)
        return self._logged_in(request, name, "login link")

    def render_POST(self, request: server.Request):
        if not _request_origin_ok(request):
            return self._page(request, "Refused: the form came from another site.", 403)
        cookie = request.getCookie(CSRF_COOKIE.encode())
        field = _form(request, "csrf", 256).encode("utf-8")
        if not cookie or not field or not hmac.compare_digest(cookie, field):
            return self._page(request, "The form expired; log in again.", 403)
        peer = _peer(request)
        if self._failures.blocked(peer):
            return self._page(request, "Too many failed logins; wait a few minutes.", 429)
        name = _form(request, "name", 256)
        password = _form(request, "password", 1024)
        d = threads.deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            self._reviewers.authenticate_password,
            name,
            password,
        )
        gone: list = []
        request.notifyFinish().addErrback(gone.append)

        def checked(reviewer: str | None) -> None:
            if gone:
                return
            if reviewer is None:
                self._failures.failed(peer)
                self.log.warn("refused a console password login from {peer}", peer=peer)
                body = self._page(request, "Wrong name or password.", 403)
            else:
                body = self._logged_in(request, reviewer, "password")
            request.write(body)
            request.finish()

        def failed(failure) -> None:
            self.log.failure("checking a console password failed", failure)
            if not gone:
                request.write(self._page(request, "Login failed; try again.", 500))
                request.finish()

        d.addCallback(checked).addErrback(failed)
        return server.NOT_DONE_YET


class _Logout(Resource):
    isLeaf = True

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self._sessions = sessions

    def render_POST(self, request: server.Request) -> bytes:
        session = self._sessions.from_request(request)
        field = _form(request, "csrf", 256)
        if (
            session is None
            or not _request_origin_ok(request)
            or not hmac.compare_digest(session.csrf.encode(), field.encode("utf-8"))
        ):
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Refused: not logged in, or the form did not come from this console.\n"
        self._sessions.end(session.key)
        _set_cookie(request, SESSION_COOKIE, "", 0)
        return _redirect(request, b"/login")


class _Index(Resource):
    isLeaf = True

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self._sessions = sessions
        self._template = _read("index.html")

    def render_GET(self, request: server.Request) -> bytes:
        session = self._sessions.from_request(request)
        if session is None:
            return _redirect(request, b"/login")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _fill(
            self._template,
            reviewer=html.escape(session.reviewer),
            csrf=html.escape(session.csrf),
        )


class _SessionInfo(Resource):
    """C{GET /session}: who is logged in (JSON), or 401; the page checks it after losing its socket."""

    isLeaf = True

    def __init__(self, sessions: Sessions) -> None:
        super().__init__()
        self._sessions = sessions

    def render_GET(self, request: server.Request) -> bytes:
        session = self._sessions.from_request(request)
        request.setHeader(b"Content-Type", b"application/json")
        if session is None:
            request.setResponseCode(401)
            return b'{"error": "not logged in"}'
        return json.dumps({"reviewer": session.reviewer}).encode()


class _StaticFile(Resource):
    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self._body = body
        self._type = content_type

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Cache-Control", b"no-cache")
        return self._body


STATIC_FILES = {
    b"console.js": b"text/javascript; charset=utf-8",
    b"console.css": b"text/css; charset=utf-8",
}


class _Directory(Resource):
    """Children by exact name; anything else is a plain 404."""

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return notFound()


class ConsoleRoot(_Directory):
    """
    C{/} (the console page), C{/login}, C{/logout}, C{/session}, C{/static/*}.

    The hub adds C{/gateway} and C{/reviewer} with C{putChild}.
    """

    def __init__(
        self, reactor, reviewers: Reviewers, sessions: Sessions, reviewer_path: str = "/reviewer"
    ) -> None:
        super().__init__()
        self.sessions = sessions
        self.putChild(b"", _Index(sessions))
        self.putChild(b"login", _Login(reactor, reviewers, sessions))
        self.putChild(b"logout", _Logout(sessions))
        self.putChild(b"session", _SessionInfo(sessions))
        static = _Directory()
        for name, content_type in STATIC_FILES.items():
            static.putChild(name, _StaticFile(_read(name.decode()), content_type))
        self.putChild(b"static", static)


# --- the site -------------------------------------------------------------------


class _ConsoleRequest(server.Request):
    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        super().process()


def _printable(raw: bytes) -> str:
    return "".join(chr(b) if 32 < b < 127 and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in raw)


def access_log_line(timestamp: str, request: server.Request) -> str:
    """
    One access-log line without the query string: C{/login?token=...}
    carries a credential, and no log may hold one.
    """
    return '{ip} - - {time} "{method} {path}" {code} {length}'.format(
        ip=_printable(str(_peer(request)).encode()),
        time=timestamp,
        method=_printable(request.method or b"-"),
        path=_printable(request.path or b"-"),
        code=request.code,
        length=request.sentLength or "-",
    )


def console_site(root: Resource) -> server.Site:
    """The L{server.Site} for the hub: security headers, safe access log, no tracebacks."""
    site = server.Site(root, logFormatter=access_log_line)
    site.requestFactory = _ConsoleRequest
    site.displayTracebacks = False
    return site
