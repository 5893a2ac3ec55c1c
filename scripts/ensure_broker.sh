#!/usr/bin/env bash
# Make sure a Mosquitto broker listens on 127.0.0.1:1883 (the tests' and the demo's default broker).
set -euo pipefail
if "${PYTHON:-python3}" - <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 1883)) == 0 else 1)
PY
then
    exit 0
fi
if ! command -v mosquitto >/dev/null 2>&1; then
    echo "ensure_broker: mosquitto is not installed (apt-get install mosquitto)" >&2
    exit 1
fi
if [ -f /etc/mosquitto/mosquitto.conf ]; then
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
else
    mosquitto -d -p 1883
fi
sleep 1
echo "ensure_broker: started mosquitto on 127.0.0.1:1883"
