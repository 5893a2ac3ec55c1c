#!/usr/bin/env bash
# Try the agent's Home Assistant discovery against a real Home Assistant core, all on loopback.
#
#   scripts/ha_check.sh            # venv in ${HA_VENV:-/tmp/ha-venv}, created on first use (~5 min, ~400 MB)
#   HA_VENV=/opt/ha scripts/ha_check.sh --keep
#
# Home Assistant gets its own virtual environment, never the project's: `homeassistant` pins dozens of packages
# (aiohttp, cryptography, orjson, paho-mqtt 1.6.1 for its MQTT integration) that would fight the agent's. 2024.3 is
# the last release that installs on Python 3.11 (later ones need 3.12). What is checked: see scripts/ha_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."

HA_VERSION="${HA_VERSION:-2024.3.3}"
HA_VENV="${HA_VENV:-/tmp/ha-venv}"
PY311="${PY311:-python3.11}"
PROJECT_PY="${PROJECT_PY:-$(pwd)/.venv/bin/python}"
[ -x "$PROJECT_PY" ] || PROJECT_PY="$(command -v python3)"

if ! "$HA_VENV/bin/python" -c "import homeassistant, paho.mqtt, janus, hass_frontend, sqlalchemy, numpy" 2>/dev/null; then
    command -v "$PY311" >/dev/null || { echo "error: $PY311 not found (Home Assistant $HA_VERSION needs Python 3.11)" >&2; exit 2; }
    echo "installing Home Assistant $HA_VERSION into $HA_VENV (once; takes minutes)"
    "$PY311" -m venv "$HA_VENV"
    "$HA_VENV/bin/pip" install --quiet "homeassistant==$HA_VERSION"
    # The requirements of the integrations every start loads (frontend, onboarding, cloud, ...; without them Home
    # Assistant falls into recovery mode and never sets up MQTT) and of mqtt itself, pinned by HA 2024.3.3's
    # manifests (dependencies and after_dependencies), installed now so that `hass --skip-pip` fetches nothing at
    # run time. josepy<2: acme (cloud) still uses josepy 1's ComparableX509; numpy for camera (turbojpeg).
    "$HA_VENV/bin/pip" install --quiet \
        -c "$("$HA_VENV/bin/python" -c 'import homeassistant, os; print(os.path.dirname(homeassistant.__file__))')/package_constraints.txt" \
        "josepy<2" numpy Pillow==10.2.0 PyTurboJPEG==1.7.1 SQLAlchemy==2.0.27 aiodhcpwatcher==0.8.2 \
        aiodiscover==1.6.1 aiohttp-fast-url-dispatcher==0.3.0 aiohttp-zlib-ng==0.3.1 aiohttp_cors==0.7.0 \
        async-upnp-client==0.38.2 bleak-retry-connector==3.4.0 bleak==0.21.1 bluetooth-adapters==0.18.0 \
        bluetooth-auto-recovery==1.3.0 bluetooth-data-tools==1.19.0 cached_ipaddress==0.3.0 dbus-fast==2.21.1 \
        fnv-hash-fast==0.5.0 ha-ffmpeg==3.1.0 habluetooth==2.4.2 hass-nabucasa==0.78.0 hassil==1.6.1 \
        home-assistant-frontend==20240307.0 home-assistant-intents==2024.3.12 ifaddr==0.2.0 janus==1.0.0 \
        mutagen==1.47.0 paho-mqtt==1.6.1 psutil-home-assistant==0.0.1 pyserial==3.5 python-matter-server==5.7.0 \
        pyudev==0.23.2 securetar==2024.2.1 sentry-sdk==1.40.3 webrtc-noise-gain==1.2.3 zeroconf==0.131.0
fi
exec "$PROJECT_PY" scripts/ha_check.py --hass "$HA_VENV/bin/hass" "$@"
