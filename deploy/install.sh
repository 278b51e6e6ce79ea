#!/usr/bin/env bash
# Installs Tandem from this checkout into a self-contained virtual environment at TARGET:
# exactly the locked runtime dependencies (uv.lock, no dev or bench groups, hashes checked,
# wheels only: nothing is compiled), then Tandem itself as a wheel (not editable, so TARGET
# does not depend on this checkout), everything compiled to bytecode.
#
#   deploy/install.sh /opt/tandem            # then /opt/tandem/bin/tandem
#   deploy/install.sh --python python3.12 /opt/tandem
#
# The interpreter: --python (a path, a name or a version range), by default any Python the
# project supports (>=3.11,<3.14) that uv finds; where there is none (Ubuntu 22.04 ships 3.10)
# uv fetches a standalone build, if it may reach the internet.
#
# The Containerfile runs this in its build stage; tests/deploy/test_install.py runs it into a
# temporary directory and starts `tandem gateway serve` from there; deploy/edge/install.sh runs
# it on a factory box. It needs uv (found on PATH or in .tools/, or installed into .tools/ from
# PyPI as deploy/bootstrap.sh does) and a uv cache or network access to the package index;
# nothing it installs fetches anything at run time.
set -euo pipefail

python=">=3.11,<3.14"  # pyproject.toml's requires-python
target=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) target="$1"; shift ;;
  esac
done
if [ -z "$target" ]; then
  echo "install.sh: usage: deploy/install.sh [--python PYTHON] TARGET" >&2
  exit 2
fi

src="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

if ! command -v uv >/dev/null 2>&1; then
  if [ ! -x "$src/.tools/bin/uv" ]; then
    # A private venv for uv itself: works where the system pip is "externally managed" (PEP 668).
    python3 -m venv "$src/.tools"
    "$src/.tools/bin/pip" install --quiet --disable-pip-version-check uv
  fi
  export PATH="$src/.tools/bin:$PATH"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The lock, as a requirements file with hashes: the runtime dependencies only.
(cd "$src" && uv export --quiet --frozen --no-dev --no-emit-project --format requirements.txt \
  --output-file "$work/requirements.txt")

uv venv --quiet --allow-existing --python "$python" "$target"
uv pip install --quiet --python "$target/bin/python" --require-hashes --no-deps --only-binary :all: \
  --compile-bytecode -r "$work/requirements.txt"

# Tandem itself: built into a wheel (hatchling), installed without touching the locked set.
uv build --quiet --wheel --out-dir "$work/dist" "$src"
uv pip install --quiet --python "$target/bin/python" --no-deps --compile-bytecode "$work"/dist/tandem-*.whl

"$target/bin/tandem" --version >/dev/null
echo "installed $("$target/bin/tandem" --version) into $target ($(du -sh "$target" | cut -f1))"
