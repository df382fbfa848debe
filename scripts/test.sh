#!/usr/bin/env bash
# Install everything the test suite needs, then run it:
#
#     bash scripts/test.sh [pytest arguments...]
#
# As root with apt-get (CI, a fresh Debian 12), the system packages the tests
# drive are installed first; otherwise they must already be there.
# PYTHON picks the interpreter (default python3), e.g. PYTHON=.venv/bin/python.
# WRAITH_SKIP_APT=1 skips apt-get even as root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"

# The real programs the tests use: the target server, the operator's clients,
# a terminal for interactive sessions.  One list: add packages here.
APT_PACKAGES=(
    openssh-server
    openssh-client
    tmux
    bash
    procps
    # Outbound proxies for forwarding tests; Tor runs offline.
    microsocks
    tinyproxy
    tor
    # Plays recordings back; the reviewer console is tested in a real browser.
    asciinema
    chromium
    # fail2ban-regex checks the shipped filters against real log output.
    fail2ban
    # TLS listeners: a certificate, ssh through s_client, curl against --stealth.
    openssl
    curl
)
# Only when the interpreter has no pip (Debian's own python3).
PIP_APT_PACKAGES=(python3-pip python3-venv)

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export LANG="${LANG:-C.UTF-8}"

log() { printf 'scripts/test.sh: %s\n' "$*" >&2; }

if [[ "$(id -u)" == 0 && -z "${WRAITH_SKIP_APT:-}" ]] && command -v apt-get >/dev/null; then
    log "installing system packages: ${APT_PACKAGES[*]}"
    apt-get update </dev/null
    packages=("${APT_PACKAGES[@]}")
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        packages+=("${PIP_APT_PACKAGES[@]}")
    fi
    apt-get install -y --no-install-recommends "${packages[@]}" </dev/null
else
    for program in /usr/sbin/sshd ssh scp sftp tmux; do
        command -v "$program" >/dev/null || log "warning: $program is missing; tests that need it will fail"
    done
fi

# Debian marks its python3 as externally managed (PEP 668).  CI runs as root
# in a throw-away container, where installing into it is what we want;
# elsewhere, point PYTHON at a virtualenv.
if "$PYTHON" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    if [[ "$(id -u)" == 0 ]]; then
        export PIP_BREAK_SYSTEM_PACKAGES=1
    else
        log "warning: $PYTHON is externally managed; set PYTHON=path/to/venv/bin/python"
    fi
fi

if [[ -f setup.py ]]; then
    log "installing the package with its test extra"
    # editable_mode=compat puts the checkout itself on sys.path (a .pth line):
    # Twisted looks for plugins in twisted/plugins/ under sys.path entries, and
    # the default editable mode's import hook is not one, so `twistd wraith`
    # would be found only when run from the checkout.
    "$PYTHON" -m pip install --no-input -e '.[test]' --config-settings editable_mode=compat </dev/null
else
    log "no setup.py: installing requirements-test.txt"
    "$PYTHON" -m pip install --no-input -r requirements-test.txt </dev/null
fi

log "running the test suite"
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider tests "$@" </dev/null || status=$?
if [[ "$status" == 5 ]]; then
    log "FAILED: pytest collected no tests; the suite has vanished"
    exit 1
fi
exit "$status"
