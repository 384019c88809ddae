#!/usr/bin/env bash
# The Python package's check, as CI runs it (.ci/run): pip install . (CPU build: EQFLOW_CUDA=OFF
# skips the ten-minute kernel build) in a fresh virtual environment, then pytest tests/python
# against the installed copy.
#
# torch is Debian's python3-torch (CPU only, ~80 MB with its dependencies; PyPI's Linux wheels
# import only with several GB of CUDA libraries), seen through --system-site-packages, so the
# venv uses Debian's python3. torchdiffeq (pure Python; scipy from Debian) and safetensors (a
# small wheel) come from PyPI and are optional: their tests skip without them. Installs the
# Debian packages when missing (root).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3-venv python3-dev python3-pip python3-numpy python3-pytest python3-torch
          python3-scipy)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "python-tests: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$tmp/venv"
echo "python-tests: pip install . (EQFLOW_CUDA=OFF)"
EQFLOW_CUDA=OFF CMAKE_BUILD_PARALLEL_LEVEL=2 "$tmp/venv/bin/pip" install --quiet .
"$tmp/venv/bin/pip" install --quiet --no-deps torchdiffeq ||
    echo "python-tests: torchdiffeq not installed; its test skips"
# safetensors (its own writer, for the re-saved-model test); optional likewise.
"$tmp/venv/bin/pip" install --quiet --no-deps safetensors ||
    echo "python-tests: safetensors not installed; its test skips"

set +e
"$tmp/venv/bin/python" -m pytest tests/python -q -rs -p no:cacheprovider
rc=$?
set -e
# pytest exits 5 when it collected nothing: the suite is missing, which must not pass.
if [ "$rc" -eq 5 ]; then
    echo "python-tests: pytest collected no tests in tests/python" >&2
    exit 1
fi
exit "$rc"
