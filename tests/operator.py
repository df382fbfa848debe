"""
The operator's side in tests: the real OpenSSH C{ssh}, C{sftp} and C{scp}.

Argument builders (L{ssh_argv}, L{sftp_argv}, L{scp_argv}) pin everything a
test depends on: no user or system config, one identity, one known_hosts file
with strict checking, no agent.  Run the result with L{run_ssh} (blocking:
only for tests with no in-process gateway) or L{spawn_ssh} (a Deferred, for
tests whose gateway runs on the trial reactor).

L{InteractiveSSH} runs a command (C{ssh -tt ...}) in a real terminal: a
private tmux server.  Its C{wait_*} methods block; the C{*_deferred} ones
poll with C{deferLater} so the reactor keeps running.

(This module is C{tests.operator}; import it as such, never with C{tests/}
itself on C{sys.path}, where it would shadow the standard C{operator}.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

DEFAULT_HOST = "127.0.0.1"
CLIENT_TIMEOUT = 60.0
TMUX_COMMAND_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
KILL_GRACE = 5.0

# Variables that would let a client reach past the test's own set-up.
_SCRUBBED_ENV = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_ASKPASS", "DISPLAY", "TMUX", "TMUX_PANE")

_T = TypeVar("_T")


class _CleanupRegistry(Protocol):
    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None: ...


# -- command lines -------------------------------------------------------------


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without agent, askpass or tmux variables."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(extra or {})
    return env


def client_options(
    identity: str | None, *, known_hosts: str, batch: bool | None = None
) -> list[str]:
    """
    The options common to ssh, sftp and scp.

    With C{identity} None the client offers only password authentication and,
    unless C{batch} is given, may prompt for it.
    """
    options = ["-F", "/dev/null"]
    if identity is not None:
        options += ["-i", identity, "-o", "IdentitiesOnly=yes"]
    else:
        options += [
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
    if batch is None:
        batch = identity is not None
    options += [
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"BatchMode={'yes' if batch else 'no'}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]
    return options


def _destination(user: str, host: str) -> str:
    return f"{user}@{host}"


def ssh_argv(
    port: int,
    user: str,
    identity: str | None,
    *,
    known_hosts: str,
    extra: Sequence[str] = (),
    command: Sequence[str] = (),
    tty: bool = False,
    host: str = DEFAULT_HOST,
    batch: bool | None = None,
) -> list[str]:
    """
    C{ssh} to C{user@host:port}.  C{tty} adds C{-tt}; C{extra} are more options
    (C{-s}, C{-L ...}, C{-o SendEnv=...}); C{command} follows the destination
    (for C{-s}, the subsystem name).
    """
    argv = ["ssh", *client_options(identity, known_hosts=known_hosts, batch=batch)]
    argv += ["-p", str(port)]
    if tty:
        argv.append("-tt")
    argv += [*extra, _destination(user, host), *command]
    return argv


def sftp_argv(
    port: int,
    user: str,
    identity: str | None,
    *,
    known_hosts: str,
    extra: Sequence[str] = (),
    batchfile: str | None = "-",
    host: str = DEFAULT_HOST,
    batch: bool | None = None,
) -> list[str]:
    """
    C{sftp} to C{user@host:port}, reading commands from C{batchfile} (C{-},
    the default, is stdin; None for an interactive session).
    """
    argv = ["sftp", *client_options(identity, known_hosts=known_hosts, batch=batch)]
    argv += ["-P", str(port)]
    if batchfile is not None:
        argv += ["-b", batchfile]
    host_part = f"[{host}]" if ":" in host else host
    argv += [*extra, _destination(user, host_part)]
    return argv


def scp_argv(
    port: int,
    user: str,
    identity: str | None,
    *,
    known_hosts: str,
    sources: Sequence[str],
    destination: str,
    legacy: bool = False,
    extra: Sequence[str] = (),
    host: str = DEFAULT_HOST,
    batch: bool | None = None,
) -> list[str]:
    """
    C{scp} between here and C{user@host:port}.  A path written C{:PATH} (in
    C{sources} or C{destination}) is C{PATH} on the target.  C{legacy} adds
    C{-O}: the old scp/rcp protocol over an C{exec} request instead of SFTP.
    """
    host_part = f"[{host}]" if ":" in host else host

    def locate(path: str) -> str:
        return f"{user}@{host_part}{path}" if path.startswith(":") else path

    argv = ["scp", *client_options(identity, known_hosts=known_hosts, batch=batch)]
    argv += ["-P", str(port)]
    if legacy:
        argv.append("-O")
    argv += [*extra, *(locate(s) for s in sources), locate(destination)]
    return argv


# -- running to completion -------------------------------------------------------


def run_ssh(
    argv: Sequence[str],
    input: bytes = b"",
    timeout: float = CLIENT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """
    Run a client to completion.  BLOCKS: never call it while an in-process
    gateway must serve the client (use L{spawn_ssh}).  Raises
    L{subprocess.TimeoutExpired} (after killing the client) on timeout.
    """
    return subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        timeout=timeout,
        env=client_env(env),
        check=False,
    )


class ClientTimeout(Exception):
    """A client spawned by L{spawn_ssh} ran past its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stdout: bytes, stderr: bytes):
        super().__init__(
            f"{shlex.join(argv)} still running after {timeout} s; killed. "
            f"stderr: {stderr.decode(errors='replace')!r}"
        )
        self.stdout = stdout
        self.stderr = stderr


class _CollectingProtocol(ProcessProtocol):
    def __init__(
        self,
        reactor: IReactorTime,
        argv: Sequence[str],
        stdin: bytes,
        timeout: float,
        done: Deferred[tuple[int, bytes, bytes]],
    ) -> None:
        self._reactor = reactor
        self._argv = argv
        self._stdin = stdin
        self._timeout = timeout
        self._done = done
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._timed_out = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._timer = self._reactor.callLater(self._timeout, self._kill)
        if self._stdin:
            self.transport.write(self._stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def _kill(self) -> None:
        self._timed_out = True
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except ProcessExitedAlready:
            # Exited, but something it started still holds its output open.
            self.transport.loseConnection()  # type: ignore[union-attr]

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        out, err = b"".join(self._out), b"".join(self._err)
        if self._timed_out:
            self._done.errback(ClientTimeout(self._argv, self._timeout, out, err))
            return
        code = reason.value.exitCode
        if code is None:
            code = -(reason.value.signal or 0)
        self._done.callback((code, out, err))


def spawn_ssh(
    reactor: Any,
    argv: Sequence[str],
    stdin: bytes = b"",
    timeout: float = CLIENT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Deferred[tuple[int, bytes, bytes]]:
    """
    Run a client on C{reactor} without blocking it.  The Deferred fires with
    C{(exit_code, stdout, stderr)} (exit code C{-N} for death by signal N) or
    fails with L{ClientTimeout} once the client, still running after
    C{timeout} seconds, has been killed and reaped.
    """
    executable = shutil.which(argv[0])
    if executable is None:
        raise FileNotFoundError(f"{argv[0]} is not on PATH")
    done: Deferred[tuple[int, bytes, bytes]] = Deferred()
    protocol = _CollectingProtocol(reactor, argv, stdin, timeout, done)
    reactor.spawnProcess(protocol, executable, list(argv), env=client_env(env))
    return done


# -- in a terminal ---------------------------------------------------------------


def _found(pattern: str | re.Pattern[str], screen: str) -> bool:
    if isinstance(pattern, str):
        return pattern in screen
    return pattern.search(screen) is not None


class InteractiveSSH:
    """
    A command (normally C{ssh -tt ...}) in a real terminal of C{width} x
    C{height}: a pane of a private tmux server (C{tmux -L <unique name>}).

    The pane stays after the command ends (C{remain-on-exit}), so its last
    screen can be read; the command's exit status is written to a file in
    C{workdir} and read by L{exit_status}.

    Key names for L{send_keys} are tmux's: C{Enter}, C{Up}, C{Tab}, C{C-c},
    C{C-d}, C{BSpace}, C{Escape}...
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        workdir: str,
        width: int = 100,
        height: int = 30,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.workdir = os.path.abspath(workdir)
        self.width = width
        self.height = height
        self.socket_name = f"wraith-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.status_path = os.path.join(self.workdir, f"{self.socket_name}.status")
        self._env = env
        self._socket_path: str | None = None
        self._started = False
        self._closed = False

    # -- tmux plumbing

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["tmux", "-L", self.socket_name, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=TMUX_COMMAND_TIMEOUT,
            env=client_env({"SHELL": "/bin/sh", **(self._env or {})}),
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def start(self) -> None:
        """Open the terminal and start the command in it."""
        if self._started:
            raise RuntimeError("already started")
        os.makedirs(self.workdir, exist_ok=True)
        self._started = True
        partial = shlex.quote(self.status_path + ".tmp")
        final = shlex.quote(self.status_path)
        shell_line = f"{shlex.join(self.argv)}; echo $? > {partial}; mv {partial} {final}"
        # One tmux invocation: the server runs these commands in order before
        # it looks at the child, so remain-on-exit is set even if it exits at once.
        self._tmux(
            "new-session",
            "-d",
            "-s",
            "wraith",
            "-x",
            str(self.width),
            "-y",
            str(self.height),
            shell_line,
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "set-option",
            "-g",
            "history-limit",
            "10000",
        )
        shown = self._tmux("display-message", "-p", "#{socket_path}", check=False)
        self._socket_path = shown.stdout.strip() or os.path.join(
            os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", self.socket_name
        )

    def close(self) -> None:
        """Kill the tmux server and with it the command.  Idempotent."""
        if not self._started or self._closed:
            return
        self._closed = True
        self._tmux("kill-server", check=False)
        # tmux leaves its socket behind.
        if self._socket_path and os.path.basename(self._socket_path) == self.socket_name:
            try:
                os.unlink(self._socket_path)
            except FileNotFoundError:
                pass

    # -- input

    def send_text(self, text: str) -> None:
        """Type C{text} literally (no key-name lookup)."""
        if text:
            self._tmux("send-keys", "-t", "wraith", "-l", "--", text)

    def send_keys(self, *keys: str) -> None:
        """Press the named keys in order: C{send_keys("Up", "Enter")}."""
        if keys:
            self._tmux("send-keys", "-t", "wraith", *keys)

    def send_line(self, text: str) -> None:
        """Type C{text} and press Enter."""
        self.send_text(text)
        self.send_keys("Enter")

    def send_bytes(self, data: bytes) -> None:
        """Send exactly C{data}, as if the terminal sent it (no key names, no paste markers)."""
        if data:
            self._tmux("send-keys", "-t", "wraith", "-H", *(f"{byte:02x}" for byte in data))

    def paste(self, data: bytes) -> None:
        """
        Paste C{data} as a terminal does: bracketed (C{ESC[200~ ... ESC[201~})
        when the program asked for it, each LF sent as CR.
        """
        path = os.path.join(self.workdir, f"{self.socket_name}.paste")
        with open(path, "wb") as f:
            f.write(data)
        try:
            self._tmux("load-buffer", "-b", "wraith-paste", path)
            self._tmux("paste-buffer", "-p", "-d", "-b", "wraith-paste", "-t", "wraith")
        finally:
            os.unlink(path)

    def resize(self, width: int, height: int) -> None:
        """Resize the terminal; the command gets SIGWINCH (ssh sends window-change)."""
        self._tmux("resize-window", "-t", "wraith", "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    # -- output

    def screen(self, *, history: bool = False) -> str:
        """
        The terminal's text, wrapped lines joined and trailing spaces kept
        (so an idle prompt reads C{"wraith$ "}).  C{history} adds the
        scrollback above the visible screen.  When the command has ended, tmux
        scrolls the screen up a line to print "Pane is dead": read what was on
        top with C{history=True}.
        """
        args = ["capture-pane", "-p", "-J", "-t", "wraith"]
        if history:
            args += ["-S", "-"]
        return self._tmux(*args).stdout

    def exit_status(self) -> int | None:
        """The command's exit status, or None while it runs."""
        try:
            with open(self.status_path, encoding="ascii") as f:
                return int(f.read().strip())
        except FileNotFoundError:
            return None

    # -- waiting, blocking (only without an in-process gateway)

    def _poll(self, probe: Callable[[], _T | None], timeout: float, what: str) -> _T:
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 2):
            result = probe()
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise TimeoutError(self._timeout_message(what, timeout))

    def _timeout_message(self, what: str, timeout: float) -> str:
        try:
            screen = self.screen()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            screen = f"<no screen: {e}>"
        return f"{what} not seen within {timeout} s; screen:\n{screen.rstrip()}"

    def _text_probe(self, pattern: str | re.Pattern[str]) -> Callable[[], str | None]:
        def probe() -> str | None:
            screen = self.screen()
            return screen if _found(pattern, screen) else None

        return probe

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> str:
        """BLOCKING: wait until C{pattern} is on screen; return the screen."""
        return self._poll(self._text_probe(pattern), timeout, repr(pattern))

    def wait_exit(self, timeout: float = 10.0) -> int:
        """BLOCKING: wait until the command ends; return its exit status."""
        return self._poll(self.exit_status, timeout, "exit of the command")

    # -- waiting without blocking the reactor

    def _poll_deferred(
        self, reactor: Any, probe: Callable[[], _T | None], timeout: float, what: str
    ) -> Deferred[_T]:
        async def poll() -> _T:
            deadline = reactor.seconds() + timeout
            for _ in range(int(timeout / POLL_INTERVAL) + 2):
                result = probe()
                if result is not None:
                    return result
                if reactor.seconds() >= deadline:
                    break
                await deferLater(reactor, POLL_INTERVAL)
            raise TimeoutError(self._timeout_message(what, timeout))

        return Deferred.fromCoroutine(poll())

    def wait_for_deferred(
        self, reactor: Any, pattern: str | re.Pattern[str], timeout: float = 10.0
    ) -> Deferred[str]:
        """Like L{wait_for}, polling on C{reactor}: the reactor keeps running."""
        return self._poll_deferred(reactor, self._text_probe(pattern), timeout, repr(pattern))

    def wait_exit_deferred(self, reactor: Any, timeout: float = 10.0) -> Deferred[int]:
        """Like L{wait_exit}, polling on C{reactor}: the reactor keeps running."""
        return self._poll_deferred(reactor, self.exit_status, timeout, "exit of the command")


def interactive_ssh(
    testcase: _CleanupRegistry,
    argv: Sequence[str],
    *,
    workdir: str | None = None,
    **kw: Any,
) -> InteractiveSSH:
    """
    Start C{argv} in an L{InteractiveSSH} for C{testcase}, closed (and its
    fresh C{workdir}, when none is given, removed) by the test's cleanups.
    """
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="wraith-tty-")
        testcase.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    terminal = InteractiveSSH(argv, workdir=workdir, **kw)
    testcase.addCleanup(terminal.close)
    terminal.start()
    return terminal
