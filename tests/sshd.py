"""
A real OpenSSH C{sshd} as the gateway's target server in tests.

L{TargetSSHD} writes a host key, a client key and an C{sshd_config} into a
directory, starts C{/usr/sbin/sshd -D -e} on 127.0.0.1 (or ::1) and stops it,
together with the per-connection processes it forked.

When the tests run as root (as CI does) the login user is the unprivileged
system user C{wraithtest}, created on first use, whose home holds a quiet
C{.bashrc} with the prompt C{wraith$ }.  Its own C{~/.ssh/authorized_keys} is
never used: each server reads the keys from a file in its own directory.
When the tests run as another user, that user is the login user (it is the
only one a non-root sshd can log in) and password authentication is skipped.

Use L{start_sshd} from a test case: it starts the server and registers its
stop (and the removal of its directory) as cleanups.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import unittest
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"

LOGIN_USER = "wraithtest"
LOGIN_HOME = "/home/wraithtest"
LOGIN_SHELL = "/bin/bash"

# Root-only state shared by concurrent test processes: the lock that
# serialises creating the user, and the password of this boot.
STATE_DIR = "/run/wraith_conch-tests"
LOCK_PATH = os.path.join(STATE_DIR, "wraithtest.lock")
PASSWORD_PATH = os.path.join(STATE_DIR, "wraithtest.password")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LOCK_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
POLL_INTERVAL = 0.02
BIND_ATTEMPTS = 3

# The login shell's start-up files.  Nothing here prints anything; history
# stays in memory so that Up recalls only what this session typed.
BASH_PROFILE = """\
# Written by wraith_conch's tests/sshd.py.  Login shells read the same file.
if [ -f ~/.bashrc ]; then . ~/.bashrc; fi
"""
BASHRC = """\
# Written by wraith_conch's tests/sshd.py: a deterministic, quiet shell.
PS1='wraith$ '
PS2='> '
unset PROMPT_COMMAND MAILCHECK HISTFILE
"""
HOME_FILES: dict[str, str] = {
    ".bash_profile": BASH_PROFILE,
    ".bashrc": BASHRC,
    # Replaces Debian's skeleton, which runs clear_console when a login shell ends.
    ".bash_logout": "",
    ".hushlogin": "",
}


class _CleanupRegistry(Protocol):
    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None: ...


def running_as_root() -> bool:
    """Whether the tests run as root (and can create the login user)."""
    return os.geteuid() == 0


def _run(argv: list[str], *, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, input=input, capture_output=True, timeout=COMMAND_TIMEOUT, check=False
    )


def _write_if_changed(path: str, content: str, mode: int) -> None:
    """Write C{content} to C{path} atomically unless it already holds it."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == content and stat.S_IMODE(os.stat(path).st_mode) == mode:
                return
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".wraith-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class _StateLock:
    """An exclusive C{flock} on L{LOCK_PATH}, waited for at most L{LOCK_TIMEOUT}."""

    def __enter__(self) -> _StateLock:
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        self._fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT
        for _ in range(int(LOCK_TIMEOUT / POLL_INTERVAL) + 1):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_INTERVAL)
        os.close(self._fd)
        raise TimeoutError(f"could not lock {LOCK_PATH} within {LOCK_TIMEOUT} s")

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _ensure_login_user(*, with_password: bool) -> str | None:
    """
    As root: create the user C{wraithtest} if it is missing, (re)write its
    start-up files, and when C{with_password} set its password to this boot's
    value (shared by concurrent test processes) and return it.

    The account is created with the password field C{*}: not locked (with
    C{UsePAM no} sshd refuses every method, publickey too, to an account whose
    password starts with C{!}) and matching no password.
    """
    with _StateLock():
        try:
            pwd.getpwnam(LOGIN_USER)
        except KeyError:
            done = _run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--create-home",
                    "--home-dir",
                    LOGIN_HOME,
                    "--shell",
                    LOGIN_SHELL,
                    "--password",
                    "*",
                    "--comment",
                    "wraith_conch test login",
                    LOGIN_USER,
                ]
            )
            # 9: the name is taken (someone outside our lock created it).
            if done.returncode not in (0, 9):
                raise RuntimeError(
                    f"useradd {LOGIN_USER} failed ({done.returncode}): "
                    f"{done.stderr.decode(errors='replace').strip()}"
                ) from None
        entry = pwd.getpwnam(LOGIN_USER)
        if not os.path.isdir(LOGIN_HOME):
            os.makedirs(LOGIN_HOME, mode=0o755)
            os.chown(LOGIN_HOME, entry.pw_uid, entry.pw_gid)
        for name, content in HOME_FILES.items():
            # Owned by root and read-only for the user: a test's shell
            # cannot change the prompt the next test waits for.
            _write_if_changed(os.path.join(LOGIN_HOME, name), content, 0o644)
        if not with_password:
            return None
        try:
            with open(PASSWORD_PATH, encoding="ascii") as f:
                password = f.read().strip()
        except FileNotFoundError:
            password = ""
        if not password:
            password = secrets.token_urlsafe(18)
            _write_if_changed(PASSWORD_PATH, password + "\n", 0o600)
        done = _run(["chpasswd"], input=f"{LOGIN_USER}:{password}\n".encode())
        if done.returncode != 0:
            raise RuntimeError(
                f"chpasswd failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        return password


def _free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
    return port


def write_ed25519_key(path: str, comment: str) -> str:
    """Write a new ed25519 private key (OpenSSH format, 0600) and its .pub; return the .pub line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode('ascii')} {comment}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    os.chmod(path, 0o600)
    with open(path + ".pub", "w", encoding="ascii") as f:
        f.write(line + "\n")
    return line


def _check_config_path(path: str) -> None:
    if any(c.isspace() or c in "\"'%#" for c in path):
        raise ValueError(f"sshd_config cannot take this path safely: {path!r}")


def _reachable_by(path: str, uid: int, gids: set[int]) -> str | None:
    """Return the first directory on C{path} that C{uid} cannot search, or None."""
    current = os.path.abspath(path)
    for _ in range(current.count(os.sep) + 1):
        st = os.stat(current)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return current
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return None


def _descendants(pid: int) -> list[int]:
    """The processes below C{pid}, from /proc (empty where /proc is missing)."""
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    queue = [pid]
    while queue and len(found) < len(names):
        for child in children.get(queue.pop(), []):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def _carrying(variable: bytes) -> list[int]:
    """The processes whose initial environment holds C{variable} (C{b"NAME=value"})."""
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if variable in environ.split(b"\0"):
            found.append(int(name))
    return found


def process_alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class TargetSSHD:
    """A real sshd on 127.0.0.1 (or ::1) with a generated config, for one test module/case."""

    def __init__(
        self,
        basedir: str,
        *,
        address: str = "127.0.0.1",
        password_auth: bool = False,
        log_level: str = "DEBUG1",
        extra_host_key: bool = False,
    ) -> None:
        """
        C{extra_host_key}: also serve an ECDSA host key that known_hosts
        does not pin (a client must ask for the pinned type).

        C{log_level} is sshd's C{LogLevel}: at C{DEBUG3} the log also shows
        each C{exec} command line (C{mm_audit_run_command entering command ...}),
        which C{DEBUG1} does not.
        """
        if password_auth and not running_as_root():
            raise unittest.SkipTest("password authentication to the test sshd needs root")
        self.basedir = os.path.abspath(basedir)
        self.address = address
        self.password_auth = password_auth
        self.log_level = log_level
        self.extra_host_key = extra_host_key
        self.port = 0
        self.password: str | None = None
        self.user = LOGIN_USER if running_as_root() else pwd.getpwuid(os.getuid()).pw_name
        self.config_path = os.path.join(self.basedir, "sshd_config")
        self.host_key_path = os.path.join(self.basedir, "ssh_host_ed25519_key")
        self.known_hosts_path = os.path.join(self.basedir, "known_hosts")
        self.client_key_path = os.path.join(self.basedir, "client_ed25519")
        self.authorized_keys_path = os.path.join(self.basedir, "authorized_keys")
        self.pid_path = os.path.join(self.basedir, "sshd.pid")
        self.log_path = os.path.join(self.basedir, "sshd.log")
        self.host_public_key = ""
        self.client_public_key = ""
        self._process: subprocess.Popen[bytes] | None = None
        # Set in every session's environment, so that stop() finds what the
        # sessions left running after their connection ended.
        self._session_marker = f"WRAITH_SSHD_INSTANCE={secrets.token_hex(8)}"

    # -- set-up ---------------------------------------------------------------

    def start(self) -> None:
        """
        Generate the keys and config and start sshd; return once it has
        printed C{Server listening} and answered a TCP connection with its
        banner.  Raise L{RuntimeError} carrying sshd's output if it does not.
        """
        if self._process is not None:
            raise RuntimeError("this TargetSSHD was already started")
        os.makedirs(self.basedir, exist_ok=True)
        _check_config_path(self.basedir)
        if running_as_root():
            self.password = _ensure_login_user(with_password=self.password_auth)
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
            entry = pwd.getpwnam(self.user)
            gids = {entry.pw_gid, *os.getgrouplist(self.user, entry.pw_gid)}
            blocked = _reachable_by(self.basedir, entry.pw_uid, gids)
            if blocked is not None:
                raise RuntimeError(
                    f"sshd reads {self.authorized_keys_path} as {self.user}, who cannot "
                    f"enter {blocked}: use a directory all users can search "
                    "(start_sshd makes one)"
                )
            os.chmod(self.basedir, 0o755)
        self.host_public_key = write_ed25519_key(self.host_key_path, "wraith-target-host")
        self.client_public_key = write_ed25519_key(self.client_key_path, "wraith-test-client")
        with open(self.authorized_keys_path, "w", encoding="ascii") as f:
            f.write(self.client_public_key + "\n")
        os.chmod(self.authorized_keys_path, 0o644)

        failures: list[str] = []
        for _ in range(BIND_ATTEMPTS):
            self.port = _free_port(self.address)
            self._write_known_hosts()
            self._write_config()
            output = self._launch()
            if output is None:
                return
            failures.append(output)
            if "Address already in use" not in output:
                break
        raise RuntimeError(
            f"sshd did not start on {self.address}:{self.port}:\n" + "\n---\n".join(failures)
        )

    def _write_known_hosts(self) -> None:
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        key = " ".join(self.host_public_key.split()[:2])
        with open(self.known_hosts_path, "w", encoding="ascii") as f:
            f.write(f"{host} {key}\n")

    def _ecdsa_host_key(self) -> str:
        path = os.path.join(self.basedir, "ssh_host_ecdsa_key")
        if not os.path.exists(path):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", path],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        return path

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.address}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            *([f"HostKey {self._ecdsa_host_key()}"] if self.extra_host_key else []),
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            f"AllowUsers {self.user}",
            "UsePAM no",
            f"PasswordAuthentication {'yes' if self.password_auth else 'no'}",
            "PermitEmptyPasswords no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "Subsystem sftp internal-sftp",
            "AcceptEnv LANG LC_* WRAITH_TEST_*",
            f"LogLevel {self.log_level}",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "MaxStartups 100",
            "MaxSessions 100",
            "LoginGraceTime 30",
            f"SetEnv {self._session_marker}",
        ]
        with open(self.config_path, "w", encoding="ascii") as f:
            f.write("# Generated by wraith_conch tests/sshd.py\n" + "\n".join(lines) + "\n")

    def _launch(self) -> str | None:
        """Start sshd once; None when it serves, else its output."""
        log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", self.config_path, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        listening = f"Server listening on {self.address} port {self.port}"
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            output = self.log()[log_offset:]
            if self._process.poll() is not None:
                return f"sshd exited with {self._process.returncode}:\n{output}"
            if listening in output and self._answers():
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stop()
        return f"sshd was not serving after {START_TIMEOUT} s:\n{self.log()[log_offset:]}"

    def _answers(self) -> bool:
        """Whether a TCP connection gets the server's SSH banner."""
        try:
            with socket.create_connection((self.address, self.port), timeout=2.0) as s:
                return s.recv(256).startswith(b"SSH-2.0-")
        except OSError:
            return False

    # -- use --------------------------------------------------------------------

    def authorize_key(self, pubkey_line: str) -> None:
        """Let C{pubkey_line} (an authorized_keys line) log in as L{user}."""
        line = pubkey_line.strip()
        if not line or "\n" in line:
            raise ValueError("one authorized_keys line expected")
        with open(self.authorized_keys_path, "a", encoding="ascii") as f:
            f.write(line + "\n")

    def log(self) -> str:
        """Everything sshd and its connection processes wrote to stderr so far (LF line ends)."""
        try:
            with open(self.log_path, "rb") as f:
                # sshd ends lines on stderr with CRLF.
                return f.read().decode("utf-8", errors="replace").replace("\r\n", "\n")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # -- tear-down --------------------------------------------------------------

    def stop(self) -> None:
        """
        Stop sshd, the connection processes it forked and whatever its
        sessions left running (a command without a pty outlives its
        connection).  Idempotent.
        """
        process = self._process
        if process is None:
            return
        self._process = None
        forked = _descendants(process.pid)
        forked += [
            pid
            for pid in _carrying(self._session_marker.encode())
            if pid not in forked and pid != os.getpid()
        ]
        if process.poll() is None:
            process.terminate()
        for pid in forked:
            try:
                os.kill(pid, 15)
            except OSError as e:
                if e.errno != errno.ESRCH:
                    raise
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _ in range(int(STOP_TIMEOUT / POLL_INTERVAL) + 1):
            left = [pid for pid in forked if process_alive(pid)]
            if not left:
                return
            if time.monotonic() >= deadline:
                for pid in left:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                return
            time.sleep(POLL_INTERVAL)


def make_basedir(prefix: str = "wraith-sshd-") -> str:
    """A fresh directory under the system temp dir that the login user can search."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


def start_sshd(testcase: _CleanupRegistry, *, basedir: str | None = None, **kw: Any) -> TargetSSHD:
    """
    Start a L{TargetSSHD} for C{testcase} and register its stop as a cleanup.

    Without C{basedir}, a fresh directory is made under the system temp dir
    (the test's own temp dir may sit below a directory the login user cannot
    enter) and removed after the test.  C{kw} goes to L{TargetSSHD}.
    """
    if basedir is None:
        basedir = make_basedir()
        testcase.addCleanup(shutil.rmtree, basedir, ignore_errors=True)
    sshd = TargetSSHD(basedir, **kw)
    testcase.addCleanup(sshd.stop)
    sshd.start()
    return sshd
