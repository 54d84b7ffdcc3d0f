#!/usr/bin/env bash
# Two clients of one network file system on this machine, for portalock's
# network tests: an sshd on 127.0.0.1 (key authentication only) serves
# BASE/export, mounted twice with sshfs at BASE/a and BASE/b.
#
#   .ci/sshfs.sh up BASE     install what is missing, start sshd, mount
#   .ci/sshfs.sh down BASE   unmount, stop sshd
#
# Runs as root (CI does). Caching is off on both mounts (attributes,
# entries, data), so each sees the other's writes at once, as NFS clients
# with `noac` would.
set -euo pipefail

cmd=${1:?usage: sshfs.sh up|down BASE}
base=${2:?usage: sshfs.sh up|down BASE}

down() {
    for m in a b; do
        if mountpoint -q "$base/$m" 2>/dev/null; then
            fusermount -u "$base/$m" || umount -l "$base/$m" || true
        fi
    done
    if [ -f "$base/ssh/sshd.pid" ]; then
        kill "$(cat "$base/ssh/sshd.pid")" 2>/dev/null || true
        rm -f "$base/ssh/sshd.pid"
    fi
}

case "$cmd" in
down)
    down
    ;;
up)
    missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
    command -v sshfs >/dev/null 2>&1 || missing+=(sshfs)
    command -v fusermount >/dev/null 2>&1 || missing+=(fuse3)
    command -v mountpoint >/dev/null 2>&1 || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    [ -e /dev/fuse ] || { echo "sshfs.sh: /dev/fuse is missing" >&2; exit 1; }
    down
    rm -rf "$base/ssh"
    mkdir -p "$base/export" "$base/a" "$base/b" "$base/ssh" /run/sshd
    chmod 700 "$base/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$base/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$base/ssh/client_key"
    cp "$base/ssh/client_key.pub" "$base/ssh/authorized_keys"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat > "$base/ssh/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $base/ssh/host_key
PidFile $base/ssh/sshd.pid
AuthorizedKeysFile $base/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CONF
    /usr/sbin/sshd -f "$base/ssh/sshd_config"
    for _ in $(seq 50); do
        [ -s "$base/ssh/sshd.pid" ] && break
        sleep 0.1
    done
    for m in a b; do
        sshfs "root@127.0.0.1:$base/export" "$base/$m" \
            -p "$port" \
            -o IdentityFile="$base/ssh/client_key" \
            -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o BatchMode=yes -o LogLevel=ERROR \
            -o cache=no -o attr_timeout=0 -o entry_timeout=0 \
            -o negative_timeout=0 -o direct_io
    done
    for m in a b; do
        mountpoint -q "$base/$m" || { echo "sshfs.sh: $base/$m is not mounted" >&2; exit 1; }
    done
    echo "sshfs.sh: $base/a and $base/b mount $base/export over sshd on 127.0.0.1:$port"
    ;;
*)
    echo "usage: sshfs.sh up|down BASE" >&2
    exit 2
    ;;
esac
