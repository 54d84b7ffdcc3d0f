#!/usr/bin/env bash
# Python file-lock peers: uncontended cycle and two-process hand-off.
# Creates target/peers-venv, installs the latest locket, portalocker,
# filelock and fasteners from PyPI, then runs benches/peers.py with the
# arguments given here (e.g. --quick).
#
#   bash benches/peers.sh [--quick] [--dir DIR]...
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/target/peers-venv"

if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "peers.sh: the Python venv module is missing;" \
            "on Debian/Ubuntu run: apt-get install python3-venv" >&2
        exit 1
    fi
    mkdir -p "$root/target"
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        echo "peers.sh: python3 -m venv failed;" \
            "on Debian/Ubuntu run: apt-get install python3-venv" >&2
        rm -rf "$venv"
        exit 1
    fi
fi

py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade --disable-pip-version-check \
    locket portalocker filelock fasteners

"$py" - <<'EOF'
from importlib.metadata import version
print("installed: " + ", ".join(
    f"{n} {version(n)}" for n in ("locket", "portalocker", "filelock", "fasteners")))
EOF

exec "$py" "$here/peers.py" "$@"
