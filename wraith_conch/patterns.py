"""OpenSSH's host and address pattern matching, shared by the file parsers."""

from __future__ import annotations


def wildcard_match(text: str, pattern: str) -> bool:
    """
    C{*} (any run) and C{?} (any one character) glob match, whole string.

    Iterative with one backtrack point, so a pattern full of C{*} stays
    linear-ish instead of exponential like a naive regex.
    """
    t = p = 0
    star = -1
    mark = 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)
