#!/usr/bin/env bash
# One-time (idempotent) setup of a fresh Debian/Ubuntu machine for starfish-edge:
# system packages only when missing, then a project virtual environment (.venv/) holding the package with every
# extra a CPU machine can use. The system interpreter is never installed into: Debian 12 and Ubuntu 24.04 refuse
# that (PEP 668, "externally-managed-environment"), and a project should not depend on what else lives there.
#
# Environment: PYTHON (interpreter that creates the venv, default python3), STARFISH_VENV (default .venv),
# STARFISH_EXTRAS (default edge,train,dev), STARFISH_PIP_ARGS (extra pip arguments, e.g. --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${STARFISH_VENV:-.venv}"
EXTRAS="${STARFISH_EXTRAS-edge,train,shore,dev}"
read -r -a PIP_ARGS <<<"${STARFISH_PIP_ARGS:-}"

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing system packages: $*"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
    else
        echo "setup: please install $* with your package manager" >&2
        return 1
    fi
}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# The shore station's tests: a real headless browser (Debian's, driven by Playwright / Selenium) and PostgreSQL.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian splits venv support (ensurepip) out of the interpreter package.
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=("python3-venv")
fi
if ((${#need_apt[@]})); then
    apt_install "${need_apt[@]}" || true
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the project virtual environment $VENV (with $("$PYTHON" -c 'import sys; print(sys.executable)'))"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Skip pip when this venv already holds this checkout with these extras and this pyproject.toml: a second `make`
# costs a hash, not a dependency resolution.
stamp="$(cat pyproject.toml <(echo "extras=${EXTRAS} args=${PIP_ARGS[*]:-} repo=$(pwd -P)") | sha256sum | cut -d' ' -f1)"
marker="$VENV/.starfish-setup"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] && "$VPY" -c 'import starfish_cli' >/dev/null 2>&1; then
    echo "setup: $VENV is up to date (extras: ${EXTRAS:-none})"
    exit 0
fi

# torch/torchvision are pinned in pyproject (train extra); on this project's machines pip takes them from local disk.
target="."; [ -n "$EXTRAS" ] && target=".[${EXTRAS}]"
"$VPY" -m pip install --quiet --disable-pip-version-check ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} -e "$target"
echo "$stamp" >"$marker"
echo "setup: done ($("$VPY" -c 'import sys; print(sys.version.split()[0])') in $VENV, extras: ${EXTRAS:-none})"
