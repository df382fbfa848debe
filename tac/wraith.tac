# An example .tac deployment of the wraith gateway, for `twistd -y`.
#
# It builds the very service `twistd wraith ...` builds: the settings are
# `twistd wraith` flags, parsed and validated by the plugin's own
# wraith_conch.tap.Options, and the service tree comes from the plugin's own
# makeService.  Only where the flags come from differs.  They are read, in
# this order, from
#
#   1. FLAGS below (edit it, or leave it empty);
#   2. WRAITH_ARGS, one string split like a shell command line, e.g.
#      WRAITH_ARGS='--target db1.internal:22 --approval ws://127.0.0.1:8022/gateway';
#   3. one environment variable per flag: WRAITH_ and the flag name in upper
#      case with "_" for "-", e.g. WRAITH_TARGET for --target,
#      WRAITH_TARGET_KNOWN_HOSTS for --target-known-hosts.  WRAITH_LISTEN may
#      hold several endpoints separated by blanks.
#
# A flag given more than once takes its last value, except --listen, which
# adds an endpoint each time.  Other WRAITH_* variables are ignored.
#
#     WRAITH_TARGET=db1.internal:22 \
#     WRAITH_TARGET_KNOWN_HOSTS=/etc/wraith/known_hosts \
#     WRAITH_TARGET_IDENTITY=/etc/wraith/target_ed25519 \
#     WRAITH_AUTHORIZED_KEYS=/etc/wraith/authorized_keys \
#     WRAITH_APPROVAL=ws://127.0.0.1:8022/gateway \
#     WRAITH_APPROVAL_TOKEN_FILE=/etc/wraith/approval_token \
#     twistd -n --pidfile= -y tac/wraith.tac
#
# A bad setting stops twistd with the same one-line message the plugin gives
# (e.g. "wraith.tac: --approval: not a ws:// or wss:// URL: ..."), before anything listens.
#
# Logs: with --log-format=text (the default) twistd writes them as usual
# (--logfile, or stdout with -n).  With --log-format=json this file installs
# the JSON observer on the application, and twistd's --logfile is not used:
# the JSON lines go to the file named by WRAITH_LOG_FILE (rotated at 1 MB as
# twistd rotates its own), or to stdout when WRAITH_LOG_FILE is unset or "-".
# Set WRAITH_LOG_FILE when twistd runs as a daemon (without -n): a daemon's
# stdout goes nowhere.

import os
import shlex

from twisted.application import service
from twisted.logger import ILogObserver
from twisted.python import usage

from wraith_conch.logs import json_observer_for_twistd
from wraith_conch.tap import Options, makeService

FLAGS: list[str] = []


def flags_from_environment(environ) -> list[str]:
    """The flags given by WRAITH_ARGS and the per-flag WRAITH_* variables."""
    flags = shlex.split(environ.get("WRAITH_ARGS", ""))
    for description in environ.get("WRAITH_LISTEN", "").split():
        flags.append(f"--listen={description}")
    for parameter in Options.optParameters:
        name = parameter[0]
        variable = "WRAITH_" + name.upper().replace("-", "_")
        if variable in environ:
            flags.append(f"--{name}={environ[variable]}")
    return flags


def parse_flags(flags: list[str]) -> Options:
    """Parse and validate exactly as `twistd wraith` does; exit with its message."""
    options = Options()
    try:
        options.parseOptions(flags)
    except usage.UsageError as e:
        # twistd reports a SystemExit raised here as it is: one line, exit 1.
        raise SystemExit(f"wraith.tac: {e}") from None
    return options


options = parse_flags(FLAGS + flags_from_environment(os.environ))

application = service.Application("wraith")
makeService(options).setServiceParent(application)

if options.config.log_format == "json":
    application.setComponent(
        ILogObserver, json_observer_for_twistd(os.environ.get("WRAITH_LOG_FILE") or "-", True)
    )
