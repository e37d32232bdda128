#!/usr/bin/env bash
# Install everything goalkeeper needs on Debian 12, idempotently:
#   - system packages (real Nix 2.8 is the test oracle; libcap-dev, gcc and the
#     Python headers build python-prctl; sqlite3 for inspecting store databases),
#   - a virtualenv .venv with goalkeeper (editable) and its test dependencies.
# Works with Debian's python3 or a pyenv one (set PYTHON to choose another).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nix-bin libcap-dev sqlite3 python3 python3-venv python3-dev gcc ca-certificates)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "install.sh: installing ${missing[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: goalkeeper needs Python >= 3.11; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
# a venv without pip (no python3-venv, or an interrupted run) must be made again
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    "$python" -m venv .venv
fi

# Reinstall only when the dependencies changed: pip needs the network even
# when everything is already there (it builds the editable wheel in isolation).
stamp=.venv/goalkeeper-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import goalkeeper.tools.cli' 2>/dev/null; then
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
    .venv/bin/python -m pip install -q -e '.[test]' </dev/null
    echo "$want" > "$stamp"
fi
# Bytecode, as a regular (non-editable) pip install writes it: without it every
# goalkeeper process compiles its modules from source again (0.2 s per start).
.venv/bin/python -m compileall -q actors sandbox store protocol tools >/dev/null
echo "install.sh: ready ($(.venv/bin/goalkeeper --version), $(nix-store --version))"
