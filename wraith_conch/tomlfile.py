"""Decoding the TOML files the gateway reads (forward policy, targets), with one-line errors."""

from __future__ import annotations

import tomllib
from collections.abc import Callable


def parse_toml(data: bytes, source: str, error: Callable[[str], Exception]) -> dict:
    """
    The document in C{data}; C{error("SOURCE: reason")} is raised for bytes
    that are not UTF-8 or text that is not TOML (tomllib's message folded
    onto one line, so it fits the ConfigError an operator sees).
    """
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{source}: not valid UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        detail = " ".join(str(e).split())
        raise error(f"{source}: not valid TOML: {detail}") from None
