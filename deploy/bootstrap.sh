#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine with Python 3.11+ to run Tandem from this checkout:
# uv (from PyPI), then the exact locked dependencies into .venv. With --test it also installs
# the servers the test suite talks to (Debian's docker-registry, redis-server, tinyproxy and
# dnsmasq), Debian's chromium with its chromedriver (the ops page's browser test) and a real
# engine (llama.cpp's server and a small model: deploy/test-engine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test_servers=0
[ "${1:-}" = "--test" ] && want_test_servers=1

if ! command -v uv >/dev/null 2>&1; then
  # A private venv for uv itself: works where the system pip is "externally managed" (PEP 668).
  if [ ! -x .tools/bin/uv ]; then
    python3 -m venv .tools
    .tools/bin/pip install --quiet --disable-pip-version-check uv
  fi
  export PATH="$PWD/.tools/bin:$PATH"
fi

if [ "$want_test_servers" = 1 ]; then
  missing=()
  command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # a real forward proxy for the outbound transport's tests
  command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/bin/tinyproxy ] || [ -x /usr/sbin/tinyproxy ] || missing+=(tinyproxy)
  # a real DNS server whose records change, for the pool's DNS discovery tests
  command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  # a real headless browser for the ops page (tests/ops/test_page_browser.py), driven by Selenium
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# Bytecode is compiled at install, as a packaged install would: start-up time (the edge agent's
# budget is 1 s) must not depend on whether PYTHONDONTWRITEBYTECODE is set where it runs.
uv sync --frozen --quiet --compile-bytecode
.venv/bin/python -m compileall -q -j 0 tandem gateway edge_agent registry simulators cli >/dev/null

if [ "$want_test_servers" = 1 ]; then
  # A real OpenAI-compatible engine for tests/engine/ (its first build takes ~6-15 minutes and
  # is cached per machine).
  bash deploy/test-engine.sh
fi
