#!/usr/bin/env bash
# portalock's test suite for Windows (x86_64-pc-windows-gnu), run under Wine.
#
#   bash .ci/wine.sh [cargo test arguments...]
#
# Runs as root on Debian (CI does): installs Wine and mingw-w64 if missing,
# builds the ProcessPrng stand-in DLL (.ci/wine/bcryptprimitives.c: Rust's
# std imports ProcessPrng, which Wine 8 lacks), prepares a private Wine
# prefix, and runs `cargo test` with every feature but `etcd` for the
# Windows target with Wine as the runner (.ci/wine/run-exe.sh, which starts once more a test
# executable that Wine failed to start). Native builds are untouched: the
# runner and linker are set through environment variables for that target
# only.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-pc-windows-gnu
wine_dir=/usr/lib/wine

missing=()
[ -x "$wine_dir/wine64" ] || missing+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || missing+=(gcc-mingw-w64-x86-64)
if [ ${#missing[@]} -gt 0 ]; then
    echo "wine.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export PATH="$wine_dir:$PATH"
export WINEDEBUG=-all
# A process start and a system call cost many times more under Wine than
# natively: a child's answer may take longer than the 30 s a native run
# allows (the eight fencing processes' thousand acquisitions, on a busy
# machine). Only a failing test waits that long.
export PORTALOCK_TEST_EVENT_TIMEOUT="${PORTALOCK_TEST_EVENT_TIMEOUT:-120}"
export WINEPREFIX="${WINEPREFIX:-$PWD/target/wine-prefix}"
export WINEDLLOVERRIDES="mscoree,mshtml="

shim="$PWD/target/wine-shim/bcryptprimitives.dll"
mkdir -p "$(dirname "$shim")"
x86_64-w64-mingw32-gcc -shared -O2 -o "$shim" \
    .ci/wine/bcryptprimitives.c .ci/wine/bcryptprimitives.def -ladvapi32

if [ ! -d "$WINEPREFIX/drive_c/windows/system32" ]; then
    echo "wine.sh: creating the Wine prefix $WINEPREFIX"
    wine64 wineboot -i >/dev/null 2>&1 || true
    wineserver -w || true
fi
cp "$shim" "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/.ci/wine/run-exe.sh"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

status=0
# Every feature but `etcd` (its tests need a Unix etcd; its client is
# portable Rust that the native build checks).
features=$(python3 .ci/features.py --except etcd)
timeout 1500 cargo test --features "$features" --target "$target" "$@" || status=$?
wineserver -k >/dev/null 2>&1 || true
exit "$status"
