#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 for the shore storage tests (they skip, saying why, when it does
# not). Starts the installed Debian cluster when it is down; never changes its configuration.
set -uo pipefail
ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
ready && exit 0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure_postgres: PostgreSQL is not installed (apt-get install postgresql); its tests will be skipped" >&2
    exit 0
fi
for version in $(ls /etc/postgresql 2>/dev/null); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>&1 || true
done
for _ in $(seq 1 20); do ready && { echo "ensure_postgres: PostgreSQL is up on 127.0.0.1:5432"; exit 0; }; sleep 0.5; done
echo "ensure_postgres: PostgreSQL did not come up on 127.0.0.1:5432; its tests will be skipped" >&2
exit 0
