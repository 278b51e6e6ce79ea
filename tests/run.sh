#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, type check, tests.
# Starts the Redis server the tests use when none answers on 127.0.0.1:6379; the OCI registry
# and any extra Redis servers are started by the tests themselves on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/bootstrap.sh --test
export PATH="$PWD/.venv/bin:$PATH"

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p /tmp/tandem-test-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/tandem-test-redis --logfile /tmp/tandem-test-redis/redis.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy tandem gateway edge_agent registry simulators cli bench
echo "== pytest"; pytest -q -p no:cacheprovider "$@"
