"""
The embedded hub's web console for reviewers (pages in C{static/}, served by
L{wraith_conch.approval.console.resource}).
"""

from wraith_conch.approval.console.resource import (
    CSRF_COOKIE,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    ConsoleRoot,
    Session,
    Sessions,
    access_log_line,
    console_site,
    normal_origin,
    own_origin,
    parse_cookie_header,
)

__all__ = [
    "CSRF_COOKIE",
    "SECURITY_HEADERS",
    "SESSION_COOKIE",
    "ConsoleRoot",
    "Session",
    "Sessions",
    "access_log_line",
    "console_site",
    "normal_origin",
    "own_origin",
    "parse_cookie_header",
]
