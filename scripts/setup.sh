#!/usr/bin/env bash
# One-time (idempotent) setup of a fresh Debian/Ubuntu machine for starfish-edge:
# system packages only when missing, then the Python package with every extra a CPU machine can use.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
EXTRAS="${STARFISH_EXTRAS:-edge,train,shore,dev}"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# The shore station's tests: a real headless browser (Debian's, driven by Playwright / Selenium) and PostgreSQL.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing system packages: ${need_apt[*]}"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
    else
        echo "setup: please install ${need_apt[*]} with your package manager" >&2
    fi
fi

# torch/torchvision are pinned in pyproject (train extra); on this project's machines pip takes them from local disk.
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
echo "setup: done ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'), extras: ${EXTRAS})"
