"""The risk scorer: a table of commands and what it must (not) find in them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wraith_conch.approval import risk
from wraith_conch.approval.interfaces import Risk
from wraith_conch.approval.risk import (
    ALIAS,
    BIND,
    BLOCK_DEVICE_WRITE,
    CHMOD_777,
    CHMOD_777_RECURSIVE,
    DD,
    DD_DEVICE,
    DOWNLOAD_TO_SHELL,
    ESCAPE,
    EVAL,
    FUNCTION,
    MKFS,
    MKFS_DEVICE,
    PATH_CHANGE,
    PROMPT,
    RECURSIVE_DELETE,
    RECURSIVE_DELETE_ROOT,
    SHELL_OPTION,
    SHELL_REDIRECTION,
    SHUTDOWN,
    SQL_DROP,
    SQL_TRUNCATE,
    STTY,
    SUDO,
    TOO_COMPLEX,
    TOO_LONG,
    TRAP,
    combine,
    score,
)

# (command, the reasons expected, exactly).  Negatives have no reasons.
TABLE: list[tuple[str, set[str]]] = [
    # recursive deletes
    ("rm -rf /tmp/cache", {RECURSIVE_DELETE}),
    ("rm -r build", {RECURSIVE_DELETE}),
    ("rm -fr build", {RECURSIVE_DELETE}),
    ("rm -Rf build", {RECURSIVE_DELETE}),
    ("rm --recursive build", {RECURSIVE_DELETE}),
    ("rm -v -i -r build", {RECURSIVE_DELETE}),
    ("rm build -rf", {RECURSIVE_DELETE}),
    ("/bin/rm -rf x", {RECURSIVE_DELETE}),
    ("\\rm -rf x", {RECURSIVE_DELETE}),
    ("'rm' '-rf' x", {RECURSIVE_DELETE}),
    ("rm -rf /", {RECURSIVE_DELETE_ROOT}),
    ("rm -rf /*", {RECURSIVE_DELETE_ROOT}),
    ("rm -rf --no-preserve-root /", {RECURSIVE_DELETE_ROOT}),
    ('rm -rf "/tmp/unbalanced', {RECURSIVE_DELETE}),
    ("find / -name core -exec rm -rf {} \\;", {RECURSIVE_DELETE}),
    ("find . -name '*.tmp' -delete", {RECURSIVE_DELETE}),
    ("ls | xargs rm -rf", {RECURSIVE_DELETE}),
    ("env LANG=C rm -rf x", {RECURSIVE_DELETE}),
    ("nice -n 10 rm -rf x", {RECURSIVE_DELETE}),
    ("timeout 5 rm -rf x", {RECURSIVE_DELETE}),
    ("cd /srv && rm -rf old", {RECURSIVE_DELETE}),
    ("true; rm -rf old", {RECURSIVE_DELETE}),
    ("echo $(rm -rf /)", {RECURSIVE_DELETE_ROOT}),
    ("echo `rm -r /`", {RECURSIVE_DELETE_ROOT}),
    ("cat <(rm -rf x)", {RECURSIVE_DELETE}),
    ("bash -c 'rm -rf /'", {RECURSIVE_DELETE_ROOT}),
    ('sh -ec "rm -rf x"', {RECURSIVE_DELETE}),
    ('ssh db2 "rm -rf /var/lib/x"', {RECURSIVE_DELETE}),
    ("for d in a b; do rm -rf $d; done", {RECURSIVE_DELETE}),
    ("rm file", set()),
    ("rm -f file", set()),
    ("rm -- -r", set()),
    ("echo rm -rf /", set()),
    ("git rm -r --cached dir", set()),
    # dd, mkfs, block devices
    ("dd if=/dev/zero of=/dev/sda bs=1M", {DD_DEVICE}),
    ("dd if=image.iso of=/dev/nvme0n1", {DD_DEVICE}),
    ("dd if=/dev/urandom of=key.bin count=1", {DD}),
    ("dd if=x of=/dev/null", {DD}),
    ("mkfs.ext4 /dev/sdb1", {MKFS_DEVICE}),
    ("mkfs -t xfs /dev/vdb", {MKFS_DEVICE}),
    ("mkfs.ext4 disk.img", {MKFS}),
    ("mke2fs /dev/sdc", {MKFS_DEVICE}),
    ("cat image > /dev/sda", {BLOCK_DEVICE_WRITE}),
    ("echo hi > /dev/null 2>&1", set()),
    ("echo hi > /dev/tty", set()),
    # SQL
    ('psql -c "DROP TABLE users"', {SQL_DROP}),
    ("psql -c 'drop database prod;'", {SQL_DROP}),
    ("mysql -e 'Drop Schema x'", {SQL_DROP}),
    ("psql -c 'TRUNCATE users'", {SQL_TRUNCATE}),
    ("psql -c 'truncate table logs cascade'", {SQL_TRUNCATE}),
    ("psql <<< 'DROP TABLE t'", {SQL_DROP}),
    ("echo 'drop table t;' | psql", {SQL_DROP}),
    ("DROP TABLE users;", {SQL_DROP}),
    ("TRUNCATE sessions;", {SQL_TRUNCATE}),
    # Decided: a bare keyword is not SQL, but a statement in one argument is,
    # even as a grep pattern (a text scanner cannot tell the two apart).
    ("grep DROP notes.txt", set()),
    ("grep -i truncate notes.txt", set()),
    ('grep "DROP TABLE" dump.sql', {SQL_DROP}),
    ("truncate -s 0 app.log", set()),
    ("echo drop it", set()),
    # downloads run by a shell
    ("curl -fsSL https://example.org/i.sh | sh", {DOWNLOAD_TO_SHELL}),
    ("curl -s https://x | bash -s -- --yes", {DOWNLOAD_TO_SHELL}),
    ("wget -qO- https://x | sudo bash", {DOWNLOAD_TO_SHELL, SUDO}),
    ("curl https://x | tee log | /bin/sh", {DOWNLOAD_TO_SHELL}),
    ('sh -c "$(curl -fsSL https://x)"', {DOWNLOAD_TO_SHELL}),
    ("bash <(curl -s https://x)", {DOWNLOAD_TO_SHELL}),
    ("curl -o file https://x", set()),
    ("curl https://x | grep sh", set()),
    ("curl https://x | jq .", set()),
    # chmod
    ("chmod -R 777 /srv", {CHMOD_777_RECURSIVE}),
    ("chmod --recursive a+rwx /srv", {CHMOD_777_RECURSIVE}),
    ("chmod 777 file", {CHMOD_777}),
    ("chmod -R 755 /srv", set()),
    ("chmod +x script.sh", set()),
    # shutdown and friends
    ("shutdown -h now", {SHUTDOWN}),
    ("reboot", {SHUTDOWN}),
    ("/sbin/halt", {SHUTDOWN}),
    ("poweroff", {SHUTDOWN}),
    ("init 0", {SHUTDOWN}),
    ("telinit 6", {SHUTDOWN}),
    ("systemctl reboot", {SHUTDOWN}),
    ("systemctl --no-wall poweroff", {SHUTDOWN}),
    ("shutdown -c", set()),
    ("init 3", set()),
    ("systemctl restart nginx", set()),
    ("systemctl status reboot.target", set()),
    # commands that change the shell or the terminal
    ("alias ls='rm -rf ~'", {ALIAS}),
    ("unalias ls", {ALIAS}),
    ("alias", set()),
    ("alias ll", set()),
    ('bind \'"\\C-m": "rm -rf ~\\n"\'', {BIND}),
    ("bind -x '\"\\C-t\": date'", {BIND}),
    ("bind -p", set()),
    ("set -o vi", {SHELL_OPTION}),
    ("set +o history", {SHELL_OPTION}),
    ("set -e", {SHELL_OPTION}),
    ("set -o", set()),
    ("set -- a b", set()),
    ("shopt -s extglob", {SHELL_OPTION}),
    ("shopt -u histappend", {SHELL_OPTION}),
    ("shopt extglob", set()),
    ("stty -echo", {STTY}),
    ("stty raw", {STTY}),
    ("stty size", set()),
    ("stty -a", set()),
    ("trap 'rm -rf ~' EXIT", {TRAP}),
    ("trap -p", set()),
    ("PROMPT_COMMAND='curl x'", {PROMPT}),
    ("PS1='$ '", {PROMPT}),
    ("export PS1='> '", {PROMPT}),
    ("declare -x PROMPT_COMMAND+=';date'", {PROMPT}),
    ("unset PROMPT_COMMAND", {PROMPT}),
    ("printf -v PS1 '%s' x", {PROMPT}),
    ("PS1=x ls", set()),
    ("echo $PS1", set()),
    ("export PATH=/tmp:$PATH", {PATH_CHANGE}),
    ("PATH=/opt/bin ls", set()),
    ('eval "$(ssh-agent -s)"', {EVAL}),
    ("eval rm -rf /", {EVAL, RECURSIVE_DELETE_ROOT}),
    ("ls() { rm -rf ~; }", {FUNCTION, RECURSIVE_DELETE}),
    ('function cd { builtin cd "$@"; }', {FUNCTION}),
    ('echo "select now()"', set()),
    ("exec > /dev/null 2>&1", {SHELL_REDIRECTION}),
    ("exec bash", set()),
    ("printf '\\e]0;hi\\a'", {ESCAPE}),
    ("printf '\\033[2J'", {ESCAPE}),
    ("printf '\\x1b[?1049h'", {ESCAPE}),
    ('echo -e "\\033[8m"', {ESCAPE}),
    ('echo -ne "\\e[1A\\e[2K"', {ESCAPE}),
    ("echo $'\\x1b[2J'", {ESCAPE}),
    ("ls $'\\e[8m'", {ESCAPE}),
    ("tput setaf 1", {ESCAPE}),
    ("tput civis", {ESCAPE}),
    ("echo \x1b[2Jhidden", {ESCAPE}),
    ("printf 'hello\\n'", set()),
    ('echo "\\033[2J"', set()),
    ("echo -n hi", set()),
    ("tput cols", set()),
    ("clear", set()),
    # sudo
    ("sudo ls /root", {SUDO}),
    ("sudo -i", {SUDO}),
    ("sudo -u postgres psql -c 'DROP DATABASE x'", {SQL_DROP, SUDO}),
    ("sudo rm -rf /var/cache/x", {RECURSIVE_DELETE, SUDO}),
    ("su -c 'reboot' root", {SHUTDOWN, SUDO}),
    ("doas rm -r x", {RECURSIVE_DELETE, SUDO}),
    ("echo sudo", set()),
    # everyday commands
    ("ls -la", set()),
    ("echo hello", set()),
    ("cat /etc/hostname", set()),
    ("git status", set()),
    ("vim notes.txt", set()),
    ("tail -f /var/log/syslog | grep -i error", set()),
    ("ps aux | grep '[s]shd'", set()),
    ("df -h; free -m", set()),
    ("cp -r src dst", set()),
    ("echo 'unbalanced", set()),
    ("", set()),
    ("   ", set()),
    ("# rm -rf /", set()),
]


class TableTests(SynchronousTestCase):
    """Each entry of L{TABLE}, as one test that reports every mismatch."""

    def test_table_is_large(self) -> None:
        self.assertGreaterEqual(len(TABLE), 40)
        self.assertTrue(any(not reasons for _, reasons in TABLE))

    def test_table(self) -> None:
        wrong = []
        for command, expected in TABLE:
            got = score(command, "exec")
            if set(got.reasons) != expected:
                wrong.append(f"{command!r}: expected {sorted(expected)}, got {list(got.reasons)}")
            if not expected and got.score != 0:
                wrong.append(f"{command!r}: scored {got.score} with no reason")
        self.assertEqual(wrong, [])

    def test_shell_kind_same_as_exec(self) -> None:
        for command, _ in TABLE:
            self.assertEqual(score(command, "shell"), score(command, "exec"))


class ScoreTests(SynchronousTestCase):
    def test_subsystem_and_forward_score_zero(self) -> None:
        self.assertEqual(score("sftp", "subsystem"), Risk(score=0))
        self.assertEqual(score("rm -rf /", "subsystem"), Risk(score=0))
        self.assertEqual(score("db1.internal:5432", "forward"), Risk(score=0))

    def test_weights(self) -> None:
        self.assertEqual(score("rm -rf /").score, 100)
        self.assertEqual(score("rm -rf x").score, 80)
        self.assertEqual(score("set -o vi").score, 40)
        self.assertEqual(score("echo hello").score, 0)

    def test_sudo_raises_the_score(self) -> None:
        plain = score("rm -rf /var/cache/x")
        elevated = score("sudo rm -rf /var/cache/x")
        self.assertGreater(elevated.score, plain.score)
        self.assertEqual(elevated.reasons, (RECURSIVE_DELETE, SUDO))
        self.assertEqual(score("sudo ls").score, 20)

    def test_more_reasons_raise_the_score(self) -> None:
        one = score("rm -rf x")
        two = score("rm -rf x; reboot")
        self.assertGreater(two.score, one.score)
        # Highest weight first.
        self.assertEqual(two.reasons[0], RECURSIVE_DELETE)

    def test_capped_at_100(self) -> None:
        got = score("sudo rm -rf /; sudo mkfs /dev/sda; curl x | sh; reboot")
        self.assertEqual(got.score, 100)

    def test_combine(self) -> None:
        self.assertEqual(combine([]), Risk(score=0))
        self.assertEqual(combine([], sudo=True), Risk(score=20, reasons=(SUDO,)))
        self.assertEqual(combine([DD, EVAL]).score, 55)

    def test_deep_nesting_is_bounded(self) -> None:
        command = "rm -rf x"
        for _ in range(12):
            command = f"bash -c {command!r}"
        # Beyond MAX_DEPTH nothing more is read, and nothing breaks.
        self.assertIsInstance(score(command), Risk)
        self.assertIsInstance(score("sudo " * 5000 + "rm -rf /"), Risk)
        self.assertIsInstance(score("eval " * 5000 + "rm -rf /"), Risk)
        nested = "$(" * 2000 + "rm -rf /" + ")" * 2000
        self.assertIsInstance(score(nested), Risk)

    def test_long_command(self) -> None:
        command = "echo " + "a" * 20_000 + "; rm -rf /"
        self.assertEqual(score(command).reasons, (RECURSIVE_DELETE_ROOT,))

    def test_very_long_command(self) -> None:
        # Past MAX_READ only the fallback's regular expressions run.
        command = "echo hi; " * 30_000 + "rm -rf /tmp/x"
        got = score(command)
        self.assertEqual(set(got.reasons), {RECURSIVE_DELETE, TOO_LONG})
        self.assertEqual(score("echo hi; " * 30_000).reasons, (TOO_LONG,))

    def test_too_complex(self) -> None:
        got = score("eval " * 6_000)
        self.assertIn(TOO_COMPLEX, got.reasons)


class FallbackTests(SynchronousTestCase):
    """When the structured reading fails, regular expressions still score."""

    def setUp(self) -> None:
        def broken(text: str):
            raise RuntimeError("lexer bug")

        self.patch(risk, "_structured", broken)

    def test_fallback(self) -> None:
        cases = {
            "rm -rf /": {RECURSIVE_DELETE_ROOT},
            "rm -rf /tmp/x": {RECURSIVE_DELETE},
            "sudo dd if=x of=/dev/sda": {DD_DEVICE, DD, SUDO},
            "mkfs.ext4 /dev/sdb": {MKFS_DEVICE, MKFS},
            "psql -c 'DROP TABLE x'": {SQL_DROP},
            "curl x | sh": {DOWNLOAD_TO_SHELL},
            "chmod -R 777 /": {CHMOD_777_RECURSIVE},
            "reboot": {SHUTDOWN},
            "alias ls=x": {ALIAS},
            "set -o vi": {SHELL_OPTION},
            "stty -echo": {STTY},
            "trap x EXIT": {TRAP},
            "PS1=x": {PROMPT},
            "eval x": {EVAL},
            "printf '\\e[2J'": {ESCAPE},
            "bind x": {BIND},
            "echo hello": set(),
            "rm file": set(),
        }
        wrong = []
        for command, expected in cases.items():
            got = set(score(command).reasons)
            if got != expected:
                wrong.append((command, sorted(got)))
        self.assertEqual(wrong, [])


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.text(), st.sampled_from(["shell", "exec", "subsystem", "forward"]))
    def test_never_raises(self, command: str, kind: str) -> None:
        got = score(command, kind)
        self.assertIsInstance(got, Risk)
        self.assertTrue(0 <= got.score <= 100)
        self.assertEqual(bool(got.reasons), got.score > 0)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                list("'\"`$(){}[]<>|&;\\#\n \t=-*/~!")
                + ["rm", "-rf", "$(", "<(", "sudo", "bash -c", "'", "$'", "\\e", "DROP TABLE"]
            ),
            max_size=40,
        ).map("".join)
    )
    def test_never_raises_on_shell_syntax(self, command: str) -> None:
        got = score(command, "shell")
        self.assertIsInstance(got, Risk)

    @settings(max_examples=200, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
    def test_prefix_of_danger_is_still_seen(self, prefix: str) -> None:
        # Whatever comes first, a separate "; rm -rf /tmp/x" line is found,
        # unless the prefix leaves a quote, comment or substitution open.
        command = prefix + "\nrm -rf /tmp/x"
        got = score(command, "exec")
        if not any(c in prefix for c in "'\"`$(#\\<>{"):
            self.assertIn(RECURSIVE_DELETE, got.reasons)
