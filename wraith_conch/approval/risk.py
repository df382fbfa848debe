"""
A risk score for a command, for reviewers and for the policy (sans-IO).

L{score} reads a command the way a shell would, well enough to find the
command names behind wrappers (C{sudo}, C{env}, C{xargs}, C{bash -c}, ...),
inside substitutions (C{$(...)}, backticks, C{<(...)}) and in every part of a
pipeline or list, and returns a L{Risk}: 0-100 with short reasons such as
C{"recursive delete"}.  It is a reading aid, not a security boundary: a
determined operator can always hide intent from a text scanner, which is why
everything is still reviewed unless a policy rule says otherwise.

The lexer is written here rather than taken from C{shlex}: C{shlex} in POSIX
mode raises on an unbalanced quote and forgets which characters were quoted
(C{';'} and C{;} become the same token).  This one never raises; an
unbalanced quote or substitution runs to the end of the text.  If the
structured reading should fail anyway (a bug), L{score} falls back to plain
regular expressions over the text, so a command is never scored 0 because it
confused the parser.

See docs/policy.md for the table of reasons and their weights.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

import attrs

from wraith_conch.approval.interfaces import Risk

# -- reasons and weights -----------------------------------------------------------

RECURSIVE_DELETE_ROOT = "recursive delete of /"
RECURSIVE_DELETE = "recursive delete"
DD_DEVICE = "dd to a device"
DD = "dd"
MKFS_DEVICE = "make filesystem on a device"
MKFS = "make filesystem"
BLOCK_DEVICE_WRITE = "write to a block device"
SQL_DROP = "SQL DROP"
SQL_TRUNCATE = "SQL TRUNCATE"
DOWNLOAD_TO_SHELL = "download piped to shell"
CHMOD_777_RECURSIVE = "recursive chmod 777"
CHMOD_777 = "chmod 777"
SHUTDOWN = "shutdown or reboot"
ALIAS = "alias change"
FUNCTION = "function definition"
BIND = "key binding"
SHELL_OPTION = "shell option"
SHELL_REDIRECTION = "shell redirection"
STTY = "terminal settings"
TRAP = "trap handler"
PROMPT = "prompt change"
PATH_CHANGE = "PATH change"
EVAL = "eval"
TOO_COMPLEX = "too complex to read"
TOO_LONG = "very long command"
ESCAPE = "terminal escape sequence"
SUDO = "sudo"

#: Weight of each reason.  The score is the highest weight, plus 5 for each
#: further reason, plus 15 when the command runs as root (L{SUDO} alone is 20),
#: capped at 100.
WEIGHTS: dict[str, int] = {
    RECURSIVE_DELETE_ROOT: 100,
    MKFS_DEVICE: 95,
    DD_DEVICE: 90,
    BLOCK_DEVICE_WRITE: 90,
    DOWNLOAD_TO_SHELL: 90,
    RECURSIVE_DELETE: 80,
    MKFS: 80,
    SHUTDOWN: 80,
    SQL_DROP: 70,
    SQL_TRUNCATE: 70,
    CHMOD_777_RECURSIVE: 70,
    DD: 50,
    BIND: 50,
    STTY: 50,
    TRAP: 50,
    PROMPT: 50,
    EVAL: 50,
    TOO_COMPLEX: 50,
    TOO_LONG: 50,
    ESCAPE: 50,
    ALIAS: 40,
    FUNCTION: 40,
    SHELL_OPTION: 40,
    SHELL_REDIRECTION: 40,
    CHMOD_777: 30,
    PATH_CHANGE: 30,
    SUDO: 20,
}

SUDO_BONUS = 15
EXTRA_REASON_BONUS = 5

#: How deep C{bash -c "..."}, C{$(...)}, C{eval} and friends are followed.
MAX_DEPTH = 6
#: Characters of nested text (substitutions, C{bash -c} strings, ...) read
#: beyond the command itself; past it the command is L{TOO_COMPLEX}.  This
#: bounds the work one command can cause on the reactor thread.
NESTED_BUDGET = 100_000
#: Longer commands are only searched with the regular expressions of the
#: fallback (fast on any text) and get L{TOO_LONG}.
MAX_READ = 32 * 1024

# -- the lexer ---------------------------------------------------------------------

_CONTROL_OPERATORS = ("&&", "||", ";;", ";&", "|&", "|", "&", ";", "(", ")")
_REDIRECTIONS = ("&>>", "<<<", "&>", ">>", "<<", "<>", ">|", ">&", "<&", ">", "<")
_WORD_BREAK = frozenset(" \t\r\n;&|()<>")


@attrs.frozen
class _Word:
    value: str  # with quotes and escapes removed
    raw: str  # as written
    ansi_c: bool = False  # contains $'...'
    downloads: bool = False  # contains $(curl ...), <(wget ...) and the like


@attrs.define
class _Command:
    words: list[_Word] = attrs.Factory(list)
    redirects: list[tuple[str, _Word]] = attrs.Factory(list)
    op_after: str = ";"


def _skip_quoted(s: str, j: int, quote: str) -> int:
    """Index just past the closing C{quote} for a quote opened before C{j}."""
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\" and quote != "'":
            j += 2
            continue
        if c == quote:
            return j + 1
        j += 1
    return n


def _balanced(s: str, j: int, open_: str = "(", close: str = ")") -> int:
    """Index of the C{close} matching an C{open_} just before C{j} (or C{len(s)})."""
    depth = 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c in "'\"`":
            j = _skip_quoted(s, j + 1, c)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return n


class _Lexer:
    """Splits shell text into commands; never raises on any text."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.subs: list[str] = []  # bodies of $(...), `...`, <(...), >(...)
        self.tokens: list[tuple[str, object]] = []

    def run(self) -> list[_Command]:
        s, n, i = self.s, len(self.s), 0
        while i < n:
            c = s[i]
            if c in " \t\r":
                i += 1
            elif c == "\n":
                self.tokens.append(("op", ";"))
                i += 1
            elif c == "#":
                end = s.find("\n", i)
                i = n if end < 0 else end
            elif c in "<>" and s.startswith("(", i + 1):
                end = _balanced(s, i + 2)
                self.subs.append(s[i + 2 : end])
                raw = s[i : end + 1]
                downloads = _DOWNLOAD_FIRST.match(self.subs[-1]) is not None
                self.tokens.append(("word", _Word(raw, raw, downloads=downloads)))
                i = end + 1
            else:
                op = next((o for o in _REDIRECTIONS if s.startswith(o, i)), None)
                if op is not None:
                    self.tokens.append(("redir", op))
                    i += len(op)
                    continue
                op = next((o for o in _CONTROL_OPERATORS if s.startswith(o, i)), None)
                if op is not None:
                    self.tokens.append(("op", op))
                    i += len(op)
                    continue
                i = self._word(i)
        return self._commands()

    def _word(self, i: int) -> int:
        s, n = self.s, len(self.s)
        start = i
        first_sub = len(self.subs)
        value: list[str] = []
        quoted = ansi_c = False
        while i < n:
            c = s[i]
            if c in _WORD_BREAK:
                break
            if c == "\\":
                if i + 1 < n:
                    if s[i + 1] != "\n":
                        value.append(s[i + 1])
                    i += 2
                else:
                    value.append(c)
                    i += 1
            elif c == "'":
                end = _skip_quoted(s, i + 1, "'")
                value.append(s[i + 1 : end - 1] if s[end - 1 : end] == "'" else s[i + 1 : end])
                quoted = True
                i = end
            elif c == "$" and s.startswith("'", i + 1):
                end = _skip_quoted(s, i + 2, "'")
                value.append(s[i + 2 : end - 1] if s[end - 1 : end] == "'" else s[i + 2 : end])
                quoted = ansi_c = True
                i = end
            elif c == '"':
                i = self._double_quoted(i + 1, value)
                quoted = True
            elif c == "$" and s.startswith("(", i + 1):
                end = _balanced(s, i + 2)
                self.subs.append(s[i + 2 : end])
                value.append(s[i : end + 1])
                i = end + 1
            elif c == "$" and s.startswith("{", i + 1):
                end = _balanced(s, i + 2, "{", "}")
                value.append(s[i : end + 1])
                i = end + 1
            elif c == "`":
                end = _skip_quoted(s, i + 1, "`")
                self.subs.append(s[i + 1 : end - 1] if s[end - 1 : end] == "`" else s[i + 1 : end])
                value.append(s[i:end])
                i = end
            else:
                value.append(c)
                i += 1
        if value and "".join(value).isdigit() and not quoted and i < n and s[i] in "<>":
            return i  # "2>file": the digits belong to the redirection
        downloads = any(_DOWNLOAD_FIRST.match(body) for body in self.subs[first_sub:])
        self.tokens.append(("word", _Word("".join(value), s[start:i], ansi_c, downloads)))
        return i

    def _double_quoted(self, i: int, value: list[str]) -> int:
        s, n = self.s, len(self.s)
        while i < n:
            c = s[i]
            if c == '"':
                return i + 1
            if c == "\\" and i + 1 < n:
                nxt = s[i + 1]
                if nxt in '"\\$`':
                    value.append(nxt)
                elif nxt != "\n":
                    value.append(c + nxt)
                i += 2
            elif c == "$" and s.startswith("(", i + 1):
                end = _balanced(s, i + 2)
                self.subs.append(s[i + 2 : end])
                value.append(s[i : end + 1])
                i = end + 1
            elif c == "`":
                end = _skip_quoted(s, i + 1, "`")
                self.subs.append(s[i + 1 : end - 1] if s[end - 1 : end] == "`" else s[i + 1 : end])
                value.append(s[i:end])
                i = end
            else:
                value.append(c)
                i += 1
        return n

    def _commands(self) -> list[_Command]:
        commands: list[_Command] = []
        current = _Command()
        tokens = self.tokens
        k = 0
        while k < len(tokens):
            kind, item = tokens[k]
            if kind == "word":
                current.words.append(item)  # type: ignore[arg-type]
            elif kind == "redir":
                if k + 1 < len(tokens) and tokens[k + 1][0] == "word":
                    current.redirects.append((item, tokens[k + 1][1]))  # type: ignore[arg-type]
                    k += 1
            else:
                current.op_after = item  # type: ignore[assignment]
                commands.append(current)
                current = _Command()
            k += 1
        commands.append(current)
        return commands


# -- reading one command ----------------------------------------------------------

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=", re.DOTALL)
_PROMPT_ASSIGNMENT = re.compile(r"(?:PROMPT_COMMAND|PS[0124])(?:\[[^\]]*\])?\+?=")
_PATH_ASSIGNMENT = re.compile(r"PATH\+?=")
_RESERVED = frozenset(
    {"!", "{", "}", "if", "then", "elif", "else", "fi", "do", "done", "while", "until"}
)
_SHELLS = frozenset({"sh", "bash", "rbash", "zsh", "dash", "ksh", "mksh", "ash", "fish"})
_DOWNLOADERS = frozenset({"curl", "wget", "fetch"})
_RUNS_TEXT = _SHELLS | {"eval", "source", "."}
_SAFE_DEVICES = frozenset(
    {"null", "zero", "full", "random", "urandom", "stdin", "stdout", "stderr", "tty", "ptmx"}
)
_ESCAPE_NOTATION = re.compile(r"\\(?:[eE]|0*33|x1[bB]|u001[bB]|U0000001[bB]|x9[bB]|0*233|c\[)")
_RAW_ESCAPE = re.compile("[\x1b\x9b]")
_SQL_DROP = re.compile(
    r"\bdrop\s+(?:temporary\s+|temp\s+)?(?:table|database|schema|index|view|materialized\s+view"
    r"|sequence|user|role|function|procedure|trigger|type|extension|keyspace|collection|owned"
    r"|tablespace|domain|policy|column|constraint)\b",
    re.IGNORECASE,
)
_SQL_TRUNCATE = re.compile(
    r"(?:^|[\s;(])truncate\s+(?:table\s+)?(?:only\s+)?[\"`\[]?[A-Za-z_]", re.IGNORECASE
)
_CHMOD_777 = re.compile(r"0*777|(?:a|ugo|[ugo]{3})[+=]rwx")
_TPUT_QUERIES = frozenset({"cols", "lines", "colors", "colours", "longname", "pairs", "it"})
_FUNCTION_DEFINITION = re.compile(
    r"(?:^|[;&|\s({])(?:function\s+[^\s;&|()<>'\"$`=]+\s*(?:\(\s*\)\s*)?|"
    r"[^\s;&|()<>'\"$`=]+\s*\(\s*\)\s*)[{(]"
)
# A substitution whose first command is a download: $(curl ...), <(wget ...).
_DOWNLOAD_FIRST = re.compile(r"\s*(?:[^\s;&|]*/)?(?:curl|wget|fetch)(?:\s|$)")
# Only for the regex fallback (bounded, so linear on any text).
_DOWNLOAD_PIPED = re.compile(
    r"\b(?:curl|wget|fetch)\b[^;&\n]{0,500}\|\s*(?:sudo\s+(?:-\S{1,20}\s+){0,5})?"
    r"(?:\S{0,100}/)?(?:ba|z|da|k|mk|a)?sh\b"
)
_DOWNLOAD_SUBSTITUTED = re.compile(
    r"(?:\b(?:ba|z|da|k|mk|a)?sh|\beval|\bsource|(?:^|[\s;&|])\.)\s[^;&|\n]{0,500}"
    r"(?:<\(|\$\(|`)\s*(?:\S{0,100}/)?(?:curl|wget|fetch)\b"
)


def _is_device(path: str) -> bool:
    if not path.startswith("/dev/"):
        return False
    rest = path[5:]
    return not (
        rest in _SAFE_DEVICES
        or rest.startswith(("fd/", "pts/", "tty", "shm/", "tcp/", "udp/", "stdout", "stderr"))
    )


def _skip_options(
    args: list[_Word], with_arg: str = "", long_with_arg: Iterable[str] = ()
) -> tuple[int, set[str]]:
    """
    Index of the first operand in C{args}, and the option letters seen.

    C{with_arg}: letters whose option takes an argument (C{-u root}, C{-uroot}).
    """
    long_with_arg = frozenset(long_with_arg)
    seen: set[str] = set()
    k = 0
    while k < len(args):
        a = args[k].value
        if a == "--":
            return k + 1, seen
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            seen.add(name)
            k += 2 if (name in long_with_arg and "=" not in a) else 1
            continue
        if not a.startswith("-") or a == "-":
            return k, seen
        letters = a[1:]
        k += 1
        for pos, letter in enumerate(letters):
            seen.add(letter)
            if letter in with_arg:
                if pos == len(letters) - 1:
                    k += 1  # the argument is the next word
                break
    return k, seen


def _basename(word: str) -> str:
    return posixpath.basename(word.lstrip("\\")) if word else ""


class _Reader:
    """Accumulates the reasons found in one piece of shell text and what it runs."""

    def __init__(self, budget: int = NESTED_BUDGET) -> None:
        self.reasons: set[str] = set()
        self.sudo = False
        self.budget = budget

    # -- whole texts --------------------------------------------------------------

    def text(self, text: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH or not text:
            return
        if depth > 0:
            self.budget -= len(text)
            if self.budget < 0:
                self.reasons.add(TOO_COMPLEX)
                return
        self._raw_checks(text)
        lexer = _Lexer(text)
        commands = lexer.run()
        pipeline: list[str] = []
        for command in commands:
            name = self.command(command.words, command.redirects, depth)
            pipeline.append(name)
            if command.op_after not in ("|", "|&"):
                self._pipeline(pipeline)
                pipeline = []
        for body in lexer.subs:
            self.text(body, depth + 1)

    def _raw_checks(self, text: str) -> None:
        if _RAW_ESCAPE.search(text):
            self.reasons.add(ESCAPE)
        if _FUNCTION_DEFINITION.search(text):
            self.reasons.add(FUNCTION)

    def _pipeline(self, names: list[str]) -> None:
        downloading = False
        for name in names:
            if name in _DOWNLOADERS:
                downloading = True
            elif downloading and name in _SHELLS:
                self.reasons.add(DOWNLOAD_TO_SHELL)

    # -- one simple command ---------------------------------------------------------

    def command(self, words: list[_Word], redirects: list[tuple[str, _Word]], depth: int) -> str:
        """Check one simple command; return the name of what it runs."""
        for op, target in redirects:
            if op not in ("<", "<<", "<&") and _is_device(target.value):
                self.reasons.add(BLOCK_DEVICE_WRITE)
            self._sql(target.value)
        for word in words:
            self._sql(word.value)
            if word.ansi_c and _ESCAPE_NOTATION.search(word.raw):
                self.reasons.add(ESCAPE)
        if depth > MAX_DEPTH:
            return ""
        # Reserved words and leading assignments (FOO=bar cmd).
        k = 0
        while k < len(words) and (words[k].value in _RESERVED or _ASSIGNMENT.match(words[k].value)):
            k += 1
        assignments = [w.value for w in words[:k]]
        args = words[k:]
        if not args:
            # Only assignments: they last for the rest of the session.
            for value in assignments:
                self._assignment(value)
            return ""
        name = _basename(args[0].value)
        first = args[0].value
        rest = args[1:]
        if name in _RUNS_TEXT and any(w.downloads for w in rest):
            self.reasons.add(DOWNLOAD_TO_SHELL)  # sh -c "$(curl ...)", bash <(curl ...)
        handler = _HANDLERS.get(name)
        if handler is not None:
            return handler(self, name, rest, redirects, depth)
        if name.startswith(("mkfs", "mke2fs", "mkswap", "mkdosfs")):
            self._mkfs(rest)
        elif first.lower() in ("drop", "truncate") or name == "truncate":
            self._sql(" ".join(w.value for w in args), statement=True)
        return name

    def _assignment(self, value: str) -> None:
        if _PROMPT_ASSIGNMENT.match(value):
            self.reasons.add(PROMPT)
        elif _PATH_ASSIGNMENT.match(value):
            self.reasons.add(PATH_CHANGE)

    def _sql(self, value: str, statement: bool = False) -> None:
        if _SQL_DROP.search(value):
            self.reasons.add(SQL_DROP)
        if (statement or " " in value or "\t" in value or "\n" in value) and _SQL_TRUNCATE.search(
            value
        ):
            self.reasons.add(SQL_TRUNCATE)

    def _mkfs(self, rest: list[_Word]) -> None:
        devices = [w for w in rest if _is_device(w.value)]
        self.reasons.add(MKFS_DEVICE if devices else MKFS)

    def nested(self, words: list[_Word], redirects, depth: int) -> str:
        return self.command(words, redirects, depth + 1)


# -- handlers by command name ------------------------------------------------------


def _wrapper(with_arg: str = "", long_with_arg: Iterable[str] = (), root: bool = False, skip=0):
    """A command that runs the rest of its arguments as a command."""

    def handle(reader: _Reader, name, rest, redirects, depth) -> str:
        if root:
            reader.sudo = True
        k, seen = _skip_options(rest, with_arg, long_with_arg)
        k += skip
        return reader.nested(rest[k:], redirects, depth)

    return handle


def _env(reader: _Reader, name, rest, redirects, depth) -> str:
    k, _seen = _skip_options(rest, "uCS", ("--unset", "--chdir", "--split-string"))
    for pos, word in enumerate(rest[:k]):
        if word.value in ("-S", "--split-string") and pos + 1 < len(rest):
            reader.text(rest[pos + 1].value, depth + 1)
        elif word.value.startswith(("-S", "--split-string=")) and len(word.value) > 2:
            reader.text(word.value.split("=", 1)[-1].removeprefix("-S"), depth + 1)
    while k < len(rest) and _ASSIGNMENT.match(rest[k].value):
        k += 1  # for that one command only
    return reader.nested(rest[k:], redirects, depth)


def _nice(reader: _Reader, name, rest, redirects, depth) -> str:
    k = 0
    while k < len(rest) and re.fullmatch(r"-\d+", rest[k].value):
        k += 1
    j, _ = _skip_options(rest[k:], "n", ("--adjustment",))
    return reader.nested(rest[k + j :], redirects, depth)


def _su(reader: _Reader, name, rest, redirects, depth) -> str:
    reader.sudo = True
    for pos, word in enumerate(rest):
        value = word.value
        if value in ("-c", "--command") and pos + 1 < len(rest):
            reader.text(rest[pos + 1].value, depth + 1)
        elif value.startswith("--command="):
            reader.text(value.split("=", 1)[1], depth + 1)
    return name


def _sudo(reader: _Reader, name, rest, redirects, depth) -> str:
    reader.sudo = True
    k, _seen = _skip_options(
        rest,
        "ugpChDrtUTR",
        (
            "--user",
            "--group",
            "--host",
            "--prompt",
            "--close-from",
            "--chdir",
            "--role",
            "--type",
            "--other-user",
            "--command-timeout",
        ),
    )
    while k < len(rest) and _ASSIGNMENT.match(rest[k].value):
        k += 1  # for that one command only
    return reader.nested(rest[k:], redirects, depth)


def _timeout(reader: _Reader, name, rest, redirects, depth) -> str:
    k, _ = _skip_options(rest, "sk", ("--signal", "--kill-after"))
    return reader.nested(rest[k + 1 :], redirects, depth)


def _chroot(reader: _Reader, name, rest, redirects, depth) -> str:
    k, _ = _skip_options(rest)
    return reader.nested(rest[k + 1 :], redirects, depth)


def _command_builtin(reader: _Reader, name, rest, redirects, depth) -> str:
    k, seen = _skip_options(rest)
    if seen & {"v", "V"}:
        return name  # a query: runs nothing
    return reader.nested(rest[k:], redirects, depth)


def _exec(reader: _Reader, name, rest, redirects, depth) -> str:
    k, _ = _skip_options(rest, "a")
    if k >= len(rest) and redirects:
        # "exec >file 2>&1": every later command's output goes elsewhere.
        reader.reasons.add(SHELL_REDIRECTION)
    return reader.nested(rest[k:], redirects, depth)


def _shell(reader: _Reader, name, rest, redirects, depth) -> str:
    for pos, word in enumerate(rest):
        value = word.value
        if value.startswith("-") and not value.startswith("--") and "c" in value[1:]:
            operands = [w for w in rest[pos + 1 :] if not w.value.startswith(("-", "+"))]
            if operands:
                reader.text(operands[0].value, depth + 1)
            break
        if not value.startswith(("-", "+")):
            break  # a script file: not something we can read
    return name


def _ssh(reader: _Reader, name, rest, redirects, depth) -> str:
    k, _ = _skip_options(rest, "bcDEeFIiJLlmOopQRSWw")
    if k + 1 < len(rest):
        reader.text(" ".join(w.value for w in rest[k + 1 :]), depth + 1)
    return name


def _eval(reader: _Reader, name, rest, redirects, depth) -> str:
    reader.reasons.add(EVAL)
    reader.text(" ".join(w.value for w in rest), depth + 1)
    return name


def _find(reader: _Reader, name, rest, redirects, depth) -> str:
    k = 0
    while k < len(rest):
        value = rest[k].value
        if value == "-delete":
            reader.reasons.add(RECURSIVE_DELETE)
        elif value in ("-exec", "-execdir", "-ok", "-okdir"):
            end = k + 1
            while end < len(rest) and rest[end].value not in (";", "+"):
                end += 1
            reader.nested(rest[k + 1 : end], [], depth)
            k = end
        k += 1
    return name


def _rm(reader: _Reader, name, rest, redirects, depth) -> str:
    recursive = root = False
    options_done = False
    for word in rest:
        value = word.value
        if not options_done and value == "--":
            options_done = True
        elif not options_done and value.startswith("--"):
            if value == "--recursive":
                recursive = True
            elif value == "--no-preserve-root":
                root = True
        elif not options_done and re.fullmatch(r"-[A-Za-z]+", value):
            if "r" in value or "R" in value:
                recursive = True
        elif re.fullmatch(r"/+(?:\*|\.|\.\.)?/*", value):
            root = True
    if recursive:
        reader.reasons.add(RECURSIVE_DELETE_ROOT if root else RECURSIVE_DELETE)
    return name


def _dd(reader: _Reader, name, rest, redirects, depth) -> str:
    device = any(w.value.startswith("of=") and _is_device(w.value[3:]) for w in rest)
    reader.reasons.add(DD_DEVICE if device else DD)
    return name


def _chmod(reader: _Reader, name, rest, redirects, depth) -> str:
    recursive = False
    mode = None
    for word in rest:
        value = word.value
        if value in ("-R", "--recursive") or re.fullmatch(r"-[a-zA-Z]*R[a-zA-Z]*", value):
            recursive = True
        elif mode is None and not value.startswith("-"):
            mode = value
    if mode is not None and _CHMOD_777.fullmatch(mode):
        reader.reasons.add(CHMOD_777_RECURSIVE if recursive else CHMOD_777)
    return name


def _shutdown(reader: _Reader, name, rest, redirects, depth) -> str:
    if name == "shutdown" and any(w.value == "-c" for w in rest):
        return name  # cancels a pending shutdown
    reader.reasons.add(SHUTDOWN)
    return name


def _init(reader: _Reader, name, rest, redirects, depth) -> str:
    if any(w.value in ("0", "6") for w in rest):
        reader.reasons.add(SHUTDOWN)
    return name


def _systemctl(reader: _Reader, name, rest, redirects, depth) -> str:
    verbs = {"reboot", "poweroff", "halt", "kexec", "soft-reboot"}
    targets = {"reboot.target", "poweroff.target", "halt.target", "kexec.target"}
    values = [w.value for w in rest]
    if verbs.intersection(values) or ("isolate" in values and targets.intersection(values)):
        reader.reasons.add(SHUTDOWN)
    return name


def _alias(reader: _Reader, name, rest, redirects, depth) -> str:
    if name == "unalias" or any("=" in w.value for w in rest):
        reader.reasons.add(ALIAS)
    return name


def _bind(reader: _Reader, name, rest, redirects, depth) -> str:
    listing = {"-p", "-P", "-v", "-V", "-s", "-S", "-l"}
    k = 0
    while k < len(rest):
        value = rest[k].value
        if value == "-m":
            k += 2
            continue
        if value not in listing:
            reader.reasons.add(BIND)
            break
        k += 1
    return name


def _set(reader: _Reader, name, rest, redirects, depth) -> str:
    for pos, word in enumerate(rest):
        value = word.value
        if value == "--" or value[:1] not in ("-", "+"):
            break
        if value in ("-o", "+o"):
            if pos + 1 < len(rest):
                reader.reasons.add(SHELL_OPTION)
            break
        if re.fullmatch(r"[-+][A-Za-z]+", value):
            reader.reasons.add(SHELL_OPTION)
            break
    return name


def _shopt(reader: _Reader, name, rest, redirects, depth) -> str:
    flags = {w.value for w in rest if w.value.startswith("-")}
    if any(("s" in f or "u" in f) for f in flags):
        reader.reasons.add(SHELL_OPTION)
    return name


def _stty(reader: _Reader, name, rest, redirects, depth) -> str:
    queries = {"-a", "--all", "-g", "--save", "size", "speed"}
    k = 0
    while k < len(rest):
        value = rest[k].value
        if value in ("-F", "-f"):
            k += 2
            continue
        if value.startswith(("--file=", "-F")):
            k += 1
            continue
        if value not in queries:
            reader.reasons.add(STTY)
            break
        k += 1
    return name


def _trap(reader: _Reader, name, rest, redirects, depth) -> str:
    if any(w.value not in ("-l", "-p") for w in rest) and not (
        rest and rest[0].value in ("-l", "-p")
    ):
        reader.reasons.add(TRAP)
    return name


def _declare(reader: _Reader, name, rest, redirects, depth) -> str:
    for word in rest:
        reader._assignment(word.value)
    return name


def _unset(reader: _Reader, name, rest, redirects, depth) -> str:
    for word in rest:
        if re.fullmatch(r"PROMPT_COMMAND|PS[0124]", word.value):
            reader.reasons.add(PROMPT)
        elif word.value == "PATH":
            reader.reasons.add(PATH_CHANGE)
    return name


def _printf(reader: _Reader, name, rest, redirects, depth) -> str:
    if any(_ESCAPE_NOTATION.search(w.raw) for w in rest):
        reader.reasons.add(ESCAPE)
    for pos, word in enumerate(rest):
        if word.value == "-v" and pos + 1 < len(rest):
            reader._assignment(rest[pos + 1].value + "=")
    return name


def _echo(reader: _Reader, name, rest, redirects, depth) -> str:
    interprets = False
    k = 0
    while k < len(rest) and re.fullmatch(r"-[neE]+", rest[k].value):
        interprets = interprets or "e" in rest[k].value
        k += 1
    if interprets and any(_ESCAPE_NOTATION.search(w.raw) for w in rest[k:]):
        reader.reasons.add(ESCAPE)
    return name


def _tput(reader: _Reader, name, rest, redirects, depth) -> str:
    k, seen = _skip_options(rest, "T")
    if "S" in seen or (k < len(rest) and rest[k].value not in _TPUT_QUERIES):
        reader.reasons.add(ESCAPE)
    return name


def _busybox(reader: _Reader, name, rest, redirects, depth) -> str:
    return reader.nested(rest, redirects, depth)


_HANDLERS = {
    "sudo": _sudo,
    "sudoedit": _wrapper(root=True),
    "doas": _wrapper("uC", root=True),
    "pkexec": _wrapper(long_with_arg=("--user",), root=True),
    "su": _su,
    "env": _env,
    "nice": _nice,
    "ionice": _wrapper("cnpPt"),
    "nohup": _wrapper(),
    "time": _wrapper("of"),
    "setsid": _wrapper(),
    "stdbuf": _wrapper("ioe"),
    "xargs": _wrapper("IdEaLnPs", ("--delimiter", "--max-args", "--max-procs", "--arg-file")),
    "watch": _wrapper("n", ("--interval",)),
    "timeout": _timeout,
    "chroot": _chroot,
    "command": _command_builtin,
    "builtin": _command_builtin,
    "exec": _exec,
    "busybox": _busybox,
    "ssh": _ssh,
    "eval": _eval,
    "find": _find,
    "rm": _rm,
    "dd": _dd,
    "chmod": _chmod,
    "shutdown": _shutdown,
    "reboot": _shutdown,
    "halt": _shutdown,
    "poweroff": _shutdown,
    "init": _init,
    "telinit": _init,
    "systemctl": _systemctl,
    "alias": _alias,
    "unalias": _alias,
    "bind": _bind,
    "set": _set,
    "shopt": _shopt,
    "stty": _stty,
    "trap": _trap,
    "export": _declare,
    "declare": _declare,
    "typeset": _declare,
    "readonly": _declare,
    "local": _declare,
    "unset": _unset,
    "printf": _printf,
    "echo": _echo,
    "tput": _tput,
}
for _name in _SHELLS:
    _HANDLERS[_name] = _shell


# -- the regex fallback -------------------------------------------------------------

_FALLBACK = [
    (
        re.compile(
            r"\brm\s+(?:\S+\s+){0,20}?(?:-\S*[rR]|--recursive)\S*\s+(?:\S+\s+){0,20}?/\*?(?:\s|$)"
        ),
        RECURSIVE_DELETE_ROOT,
    ),
    (re.compile(r"\brm\s+(?:\S+\s+){0,20}?(?:-\S*[rR]\S*|--recursive)\b"), RECURSIVE_DELETE),
    (re.compile(r"\bdd\b[^;&|\n]{0,500}\bof=/dev/"), DD_DEVICE),
    (re.compile(r"(?:^|[\s;&|])dd\s"), DD),
    (re.compile(r"\bmkfs\S*\s[^;&|\n]{0,500}/dev/"), MKFS_DEVICE),
    (re.compile(r"\bmkfs"), MKFS),
    (
        re.compile(r"\bchmod\s+(?:\S+\s+){0,20}?-\S*R\S*\s+(?:\S+\s+){0,20}?(?:0*777|a\+rwx)\b"),
        CHMOD_777_RECURSIVE,
    ),
    (
        re.compile(
            r"(?:^|[\s;&|])(?:shutdown|reboot|halt|poweroff)\b|\b(?:tel)?init\s+[06]\b"
            r"|\bsystemctl\s+(?:\S+\s+){0,20}?(?:reboot|poweroff|halt|kexec)\b"
        ),
        SHUTDOWN,
    ),
    (re.compile(r"(?:^|[\s;&|])(?:un)?alias\s+\S+="), ALIAS),
    (re.compile(r"(?:^|[\s;&|])bind\s+[^-\s]"), BIND),
    (
        re.compile(r"(?:^|[\s;&|])(?:set\s+[-+]o\s+\w|set\s+[-+][A-Za-z]|shopt\s+-[su])"),
        SHELL_OPTION,
    ),
    (re.compile(r"(?:^|[\s;&|])stty\s+(?!-a\b|-g\b|size\b)\S"), STTY),
    (re.compile(r"(?:^|[\s;&|])trap\s+(?!-[lp]\b)\S"), TRAP),
    (re.compile(r"(?:PROMPT_COMMAND|\bPS[0124])\+?="), PROMPT),
    (re.compile(r"(?:^|[\s;&|])eval\b"), EVAL),
    (
        re.compile(r"\b(?:printf|echo\s+-\w*e\w*)\b[^;&|\n]{0,500}" + _ESCAPE_NOTATION.pattern),
        ESCAPE,
    ),
    (re.compile(r"\btput\s+(?!cols\b|lines\b|colors\b)\S"), ESCAPE),
    (re.compile(r"(?:^|[\s;&|])(?:sudo|doas|su|pkexec)\b"), SUDO),
]


def _fallback(text: str) -> tuple[set[str], bool]:
    reasons = {reason for pattern, reason in _FALLBACK if pattern.search(text)}
    if _SQL_DROP.search(text):
        reasons.add(SQL_DROP)
    if _SQL_TRUNCATE.search(text) and not re.search(r"\btruncate\s+-", text, re.IGNORECASE):
        reasons.add(SQL_TRUNCATE)
    if _RAW_ESCAPE.search(text):
        reasons.add(ESCAPE)
    if _DOWNLOAD_PIPED.search(text) or _DOWNLOAD_SUBSTITUTED.search(text):
        reasons.add(DOWNLOAD_TO_SHELL)
    if RECURSIVE_DELETE_ROOT in reasons:
        reasons.discard(RECURSIVE_DELETE)
    sudo = SUDO in reasons
    reasons.discard(SUDO)
    return reasons, sudo


# -- the score ----------------------------------------------------------------------


def combine(reasons: Iterable[str], sudo: bool = False) -> Risk:
    """The L{Risk} for a set of reasons (see L{WEIGHTS})."""
    ordered = sorted(set(reasons) - {SUDO}, key=lambda r: (-WEIGHTS.get(r, 0), r))
    if ordered:
        value = WEIGHTS.get(ordered[0], 0) + EXTRA_REASON_BONUS * (len(ordered) - 1)
        if sudo:
            value += SUDO_BONUS
    else:
        value = WEIGHTS[SUDO] if sudo else 0
    if sudo:
        ordered.append(SUDO)
    return Risk(score=max(0, min(100, value)), reasons=tuple(ordered))


def _structured(text: str) -> tuple[set[str], bool]:
    reader = _Reader()
    reader.text(text)
    reasons = set(reader.reasons)
    if RECURSIVE_DELETE_ROOT in reasons:
        reasons.discard(RECURSIVE_DELETE)
    if MKFS_DEVICE in reasons:
        reasons.discard(MKFS)
    if DD_DEVICE in reasons:
        reasons.discard(DD)
    return reasons, reader.sudo


def score(command: str, kind: str = "shell") -> Risk:
    """
    The risk of running C{command}, a request of C{kind}.

    C{shell} and C{exec} commands are read as shell text; C{subsystem} names
    (C{sftp}) and C{forward} destinations score 0.  Never raises.
    """
    if kind in ("subsystem", "forward") or not isinstance(command, str) or not command:
        return Risk(score=0)
    if len(command) > MAX_READ:
        reasons, sudo = _fallback(command)
        reasons.add(TOO_LONG)
        return combine(reasons, sudo)
    try:
        reasons, sudo = _structured(command)
    except Exception:
        reasons, sudo = _fallback(command)
    return combine(reasons, sudo)
