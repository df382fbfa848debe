"""
The test infrastructure on its own, without the gateway: a real sshd from
L{tests.sshd}, reached by the real OpenSSH clients of L{tests.operator}.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time

import pexpect
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

from tests.operator import (
    ClientTimeout,
    interactive_ssh,
    run_ssh,
    scp_argv,
    sftp_argv,
    spawn_ssh,
    ssh_argv,
)
from tests.sshd import (
    LOGIN_USER,
    TargetSSHD,
    process_alive,
    running_as_root,
    start_sshd,
    write_ed25519_key,
)

PROMPT = "wraith$ "


def _argv(sshd: TargetSSHD, *command: str, **kw: object) -> list[str]:
    return ssh_argv(
        sshd.port,
        sshd.user,
        sshd.client_key_path,
        known_hosts=sshd.known_hosts_path,
        command=command,
        host=sshd.address,
        **kw,  # type: ignore[arg-type]
    )


def _needs_login_user() -> None:
    if not running_as_root():
        raise SkipTest("the wraithtest user and its prompt exist only when tests run as root")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class TargetSSHDTests(TestCase):
    """L{TargetSSHD} serves real logins of the unprivileged login user."""

    timeout = 60

    def test_exec_as_login_user(self) -> None:
        sshd = start_sshd(self)
        done = run_ssh(_argv(sshd, "id", "-un"))
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr), (0, f"{sshd.user}\n".encode(), b"")
        )
        if running_as_root():
            self.assertEqual(sshd.user, LOGIN_USER)
            self.assertNotEqual(pwd.getpwnam(sshd.user).pw_uid, 0)
        self.assertIn(f"Accepted publickey for {sshd.user} from 127.0.0.1", sshd.log())

    def test_stdin_and_exit_status(self) -> None:
        sshd = start_sshd(self)
        done = run_ssh(_argv(sshd, "cat; exit 7"), input=b"through the target\n")
        self.assertEqual((done.returncode, done.stdout), (7, b"through the target\n"))

    def test_commands_in_log_at_debug3(self) -> None:
        sshd = start_sshd(self, log_level="DEBUG3")
        self.assertEqual(run_ssh(_argv(sshd, "echo", "wraith-marker")).returncode, 0)
        self.assertIn("entering command echo wraith-marker\n", sshd.log())

    def test_accepted_environment(self) -> None:
        sshd = start_sshd(self)
        done = run_ssh(
            _argv(sshd, "echo $WRAITH_TEST_VALUE", extra=["-o", "SetEnv=WRAITH_TEST_VALUE=42"])
        )
        self.assertEqual(done.stdout, b"42\n")

    def test_files(self) -> None:
        """The known_hosts line pins the host key; keys and config sit in basedir."""
        sshd = start_sshd(self)
        with open(sshd.known_hosts_path, encoding="ascii") as f:
            line = f.read()
        self.assertTrue(line.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 "), line)
        with open(sshd.host_key_path + ".pub", encoding="ascii") as f:
            self.assertEqual(line.split()[1:3], f.read().split()[:2])
        self.assertEqual(os.stat(sshd.client_key_path).st_mode & 0o777, 0o600)
        with open(sshd.client_key_path, encoding="ascii") as f:
            self.assertEqual(f.readline(), "-----BEGIN OPENSSH PRIVATE KEY-----\n")
        for path in (sshd.host_key_path, sshd.known_hosts_path, sshd.client_key_path):
            self.assertEqual(os.path.dirname(path), sshd.basedir)

    def test_wrong_host_key_refused(self) -> None:
        sshd = start_sshd(self)
        other = start_sshd(self)
        argv = ssh_argv(
            sshd.port,
            sshd.user,
            sshd.client_key_path,
            known_hosts=other.known_hosts_path,
            command=["true"],
        )
        done = run_ssh(argv)
        self.assertEqual(done.returncode, 255)
        self.assertIn(b"No ED25519 host key is known for", done.stderr)

    def test_authorize_key(self) -> None:
        sshd = start_sshd(self)
        key = os.path.join(sshd.basedir, "second_key")
        pubkey = write_ed25519_key(key, "second")
        argv = ssh_argv(
            sshd.port, sshd.user, key, known_hosts=sshd.known_hosts_path, command=["true"]
        )
        refused = run_ssh(argv)
        self.assertEqual(refused.returncode, 255)
        self.assertIn(b"Permission denied (publickey)", refused.stderr)
        sshd.authorize_key(pubkey)
        self.assertEqual(run_ssh(argv).returncode, 0)

    def test_no_password_unless_asked(self) -> None:
        sshd = start_sshd(self)
        argv = ssh_argv(sshd.port, sshd.user, None, known_hosts=sshd.known_hosts_path, batch=True)
        done = run_ssh(argv + ["true"])
        self.assertEqual(done.returncode, 255)
        self.assertIn(b"Permission denied (publickey)", done.stderr)

    def test_ipv6(self) -> None:
        if not _ipv6_loopback():
            raise SkipTest("no IPv6 loopback here")
        sshd = start_sshd(self, address="::1")
        with open(sshd.known_hosts_path, encoding="ascii") as f:
            self.assertTrue(f.read().startswith(f"[::1]:{sshd.port} ssh-ed25519 "))
        done = run_ssh(_argv(sshd, "echo $SSH_CONNECTION"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith(b"::1 "), done.stdout)

    def test_stop_ends_connections(self) -> None:
        """stop() is idempotent and ends sessions, and what they left, on the target."""
        sshd = start_sshd(self)
        left = run_ssh(_argv(sshd, "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"))
        leftover = int(left.stdout)
        self.assertTrue(process_alive(leftover))
        client = subprocess.Popen(
            _argv(sshd, "echo started; exec sleep 60"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        self.addCleanup(client.wait, 10)
        self.addCleanup(client.kill)
        assert client.stdout is not None
        self.assertEqual(client.stdout.readline(), b"started\n")
        started = time.monotonic()
        sshd.stop()
        sshd.stop()
        self.assertEqual(client.wait(10), 255)
        self.assertLess(time.monotonic() - started, 10)
        self.assertIn("Received signal 15; terminating.", sshd.log())
        self.assertFalse(process_alive(leftover))

    def test_sftp_and_scp(self) -> None:
        """sftp, scp over SFTP and legacy scp (-O) all reach the target."""
        sshd = start_sshd(self)
        remote = os.path.join(sshd.basedir, "remote")
        os.mkdir(remote)
        entry = pwd.getpwnam(sshd.user)
        os.chown(remote, entry.pw_uid, entry.pw_gid)
        local = os.path.join(sshd.basedir, "local.txt")
        with open(local, "wb") as f:
            f.write(b"payload\n")

        common = (sshd.port, sshd.user, sshd.client_key_path)
        done = run_ssh(
            sftp_argv(*common, known_hosts=sshd.known_hosts_path),
            input=f"put {local} {remote}/sftp.txt\nls {remote}\n".encode(),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        for legacy, name in [(False, "scp.txt"), (True, "legacy.txt")]:
            done = run_ssh(
                scp_argv(
                    *common,
                    known_hosts=sshd.known_hosts_path,
                    sources=[local],
                    destination=f":{remote}/{name}",
                    legacy=legacy,
                )
            )
            self.assertEqual(done.returncode, 0, done.stderr)
        back = os.path.join(sshd.basedir, "back.txt")
        done = run_ssh(
            scp_argv(
                *common,
                known_hosts=sshd.known_hosts_path,
                sources=[f":{remote}/legacy.txt"],
                destination=back,
                legacy=True,
            )
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        for name in ("sftp.txt", "scp.txt", "legacy.txt"):
            path = os.path.join(remote, name)
            self.assertEqual(os.stat(path).st_uid, entry.pw_uid)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), b"payload\n")
        with open(back, "rb") as f:
            self.assertEqual(f.read(), b"payload\n")
        log = sshd.log()
        # sftp and scp over SFTP open the subsystem; legacy scp runs a command
        # (sshd does not log the command line itself at DEBUG1).
        self.assertEqual(log.count(f"Starting session: subsystem 'sftp' for {sshd.user}"), 2)
        self.assertEqual(log.count(f"Starting session: command for {sshd.user}"), 2)


class SpawnSSHTests(TestCase):
    """spawn_ssh runs a client without blocking the reactor."""

    timeout = 60

    def setUp(self) -> None:
        self.sshd = start_sshd(self)

    async def test_spawn(self) -> None:
        code, out, err = await spawn_ssh(
            reactor, _argv(self.sshd, "cat; id -un >&2; exit 4"), stdin=b"in\n"
        )
        self.assertEqual((code, out, err), (4, b"in\n", f"{self.sshd.user}\n".encode()))

    def test_timeout_kills(self) -> Deferred[None]:
        started = time.monotonic()
        d = spawn_ssh(reactor, _argv(self.sshd, "exec sleep 30"), timeout=1.0)
        d = self.assertFailure(d, ClientTimeout)

        def check(error: ClientTimeout) -> None:
            self.assertLess(time.monotonic() - started, 10)

        return d.addCallback(check)

    async def test_timeout_output_held_open(self) -> None:
        """The timeout also ends a client that exited while its child holds stdout."""
        d = spawn_ssh(reactor, ["sh", "-c", "sleep 30 & echo $! >&2; exit 0"], timeout=1.0)
        try:
            await d
        except ClientTimeout as e:
            pid = int(e.stderr)
        else:
            self.fail("no ClientTimeout")
        os.kill(pid, signal.SIGKILL)


class InteractiveSSHTests(TestCase):
    """InteractiveSSH drives ssh -tt in a real terminal."""

    timeout = 60

    def setUp(self) -> None:
        self.sshd = start_sshd(self)

    def test_blocking(self) -> None:
        _needs_login_user()
        terminal = interactive_ssh(self, _argv(self.sshd, tty=True))
        terminal.wait_for(PROMPT)
        terminal.send_line("echo h''i")
        screen = terminal.wait_for("\nhi\n")
        self.assertEqual(screen.splitlines()[:3], [PROMPT + "echo h''i", "hi", PROMPT])
        self.assertIsNone(terminal.exit_status())
        terminal.send_line("exit 3")
        self.assertEqual(terminal.wait_exit(), 3)
        terminal.close()
        terminal.close()

    async def test_deferred(self) -> None:
        """The *_deferred waits poll on the reactor; keys, resize and Ctrl-C work."""
        _needs_login_user()
        terminal = interactive_ssh(self, _argv(self.sshd, tty=True), width=100, height=30)
        await terminal.wait_for_deferred(reactor, PROMPT)
        terminal.send_line("stty size")
        await terminal.wait_for_deferred(reactor, "\n30 100\n")
        terminal.resize(120, 40)
        terminal.send_line("stty size")
        await terminal.wait_for_deferred(reactor, "\n40 120\n")
        terminal.send_line("echo one")
        await terminal.wait_for_deferred(reactor, "\none\n")
        terminal.send_keys("Up", "Enter")
        await terminal.wait_for_deferred(reactor, "\none\n" + PROMPT + "echo one\none\n")
        # Ctrl-C before the target's shell has read Enter would discard the
        # line (the pty flushes its input on SIGINT): wait for the echo.
        terminal.send_line("sleep 3")
        await terminal.wait_for_deferred(reactor, PROMPT + "sleep 3\n")
        terminal.send_keys("C-c")
        await terminal.wait_for_deferred(reactor, "sleep 3\n^C\n" + PROMPT)
        # The login shell leaves with the status of its last command: 130 (SIGINT).
        terminal.send_keys("C-d")
        self.assertEqual(await terminal.wait_exit_deferred(reactor), 130)
        log = self.sshd.log()
        self.assertIn("req pty-req", log)
        self.assertIn("req window-change", log)

    async def test_session_killed(self) -> None:
        """When the target goes away, ssh ends with 255 and the screen stays readable."""
        _needs_login_user()
        terminal = interactive_ssh(self, _argv(self.sshd, tty=True))
        await terminal.wait_for_deferred(reactor, PROMPT)
        self.sshd.stop()
        self.assertEqual(await terminal.wait_exit_deferred(reactor), 255)
        # Once the pane is dead tmux scrolls its screen up to print a notice:
        # what was on top is in the history.
        self.assertIn(PROMPT + "Connection to 127.0.0.1 closed", terminal.screen(history=True))


class PasswordTests(TestCase):
    """password_auth=True lets the login user in with sshd.password (root only)."""

    timeout = 60

    def test_password_login(self) -> None:
        sshd = start_sshd(self, password_auth=True)
        assert sshd.password is not None
        argv = ssh_argv(sshd.port, sshd.user, None, known_hosts=sshd.known_hosts_path, tty=True)
        child = pexpect.spawn(argv[0], argv[1:], timeout=15, encoding="utf-8")
        self.addCleanup(child.close, force=True)
        child.expect_exact("password: ")
        child.sendline(sshd.password)
        child.expect_exact(PROMPT)
        child.sendline("id -un; exit 5")
        child.expect_exact(f"{LOGIN_USER}\r\n")
        child.expect(pexpect.EOF)
        child.close()
        self.assertEqual(child.exitstatus, 5)
        self.assertIn(f"Accepted password for {LOGIN_USER}", sshd.log())

    def test_wrong_password(self) -> None:
        sshd = start_sshd(self, password_auth=True)
        argv = ssh_argv(sshd.port, sshd.user, None, known_hosts=sshd.known_hosts_path)
        child = pexpect.spawn(argv[0], [*argv[1:], "true"], timeout=15)
        self.addCleanup(child.close, force=True)
        child.expect_exact(b"password: ")
        child.sendline(b"not-" + (sshd.password or "").encode())
        child.expect_exact(b"Permission denied")
        child.expect(pexpect.EOF)
        child.close()
        self.assertEqual(child.exitstatus, 255)
