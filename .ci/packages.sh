# shellcheck shell=bash
# The Debian packages portalock's build and tests need, installed only if
# missing. Sourced (not run) by .ci/test and .ci/run; .ci/guest.sh installs
# what the guest needs itself.
#
# The build needs a C toolchain (for linking, and for signal-hook's
# siginfo helper, feature `cli`). The tests need kill(1) (to pause holders
# with SIGSTOP), redis-server (the `redis` feature's tests start their
# own), script(1) (a terminal for the Ctrl-C test), unshare(1) (a PID
# namespace), flock(1) (the CLI is compared with it) and mkfifo(1) (the
# fault matrix). The `etcd` feature builds with protoc and its
# well-known types (protobuf-compiler, libprotobuf-dev), and its tests
# start their own etcd (etcd-server).
#
#   install_missing_packages [COMMAND...]
#
# also installs each COMMAND (from the Debian package of the same name) if
# it is not on the PATH: .ci/run adds python3 for its module check. It
# calls `apt-get update` first, and only when something is missing, so a
# machine that has everything is left alone (and needs no network).

install_missing_packages() {
    local missing=() command
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    [ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing+=(procps)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v script >/dev/null 2>&1 || missing+=(bsdutils)
    { command -v unshare && command -v flock; } >/dev/null 2>&1 || missing+=(util-linux)
    command -v mkfifo >/dev/null 2>&1 || missing+=(coreutils)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    [ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    for command in "$@"; do
        command -v "$command" >/dev/null 2>&1 || missing+=("$command")
    done
    [ ${#missing[@]} -gt 0 ] || return 0

    printf '==> installing the missing Debian packages: %s\n' "${missing[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        printf 'no apt-get here: install %s (or their equivalents) and run again\n' \
            "${missing[*]}" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            printf 'not root and no sudo: install %s as root and run again\n' \
                "${missing[*]}" >&2
            return 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
}
