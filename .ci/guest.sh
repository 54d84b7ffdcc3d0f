#!/usr/bin/env bash
# guest.sh: run a command as root in a throwaway Linux guest of its own, for
# portalock's tests that must change what a test may not change on this
# machine: the wall clock first (the guest can step its clock; the host's
# stays as it is), the hostname, the boot id.
#
#   bash .ci/guest.sh run [--] COMMAND [ARGS...]   boot a guest, run COMMAND in
#                                                  it, halt it, exit with COMMAND's status
#   bash .ci/guest.sh setup                        only install what it needs (idempotent)
#
# The guest is User-Mode Linux: Debian's linux.uml (Linux 6.1) runs a Linux
# kernel as ordinary host processes (no KVM). Its root file system IS the
# host's "/" (hostfs, read-write), so host binaries, the work tree, /tmp,
# ~/.cargo and target/ are used as they are. Its kernel, clocks, boot id,
# hostname, processes and mounts are its own. Boot + halt take a few seconds.
#
# COMMAND runs as root (PID 1's child) in the host's current directory, which
# must not be under /proc, /sys, /dev, /run or /mnt (guest-only there), with
# stdin /dev/null and stdout/stderr streamed back: as pipes, or as a terminal
# where the host's is a terminal. It gets the host's environment (less PWD,
# OLDPWD, SHLVL, _ and exported functions) plus
#   PORTALOCK_IN_GUEST=1   GUEST_HOSTNAME=<the guest's hostname>
# Guest-only (not the host's): /proc /sys /dev (devtmpfs, devpts, a tmpfs on
# /dev/shm) and a tmpfs on each of /run and /mnt; /tmp is the host's. The
# network is the loopback interface alone. One virtual CPU; UML traps every
# system call (ptrace), so a system call costs ~0.1 ms and a process start
# tens of ms: fork-heavy work runs slowly. Kernel modules come from UML's
# own set (/usr/lib/uml/modules): the kernel loads them on demand, and
# `modprobe` (a wrapper first in COMMAND's PATH) finds them.
#
# Exit status: COMMAND's; 124 on timeout; 125 when the guest or its setup
# failed (the tails of the UML and guest console logs are printed then);
# 2 on bad usage.
#
# Knobs (environment):
#   GUEST_TIMEOUT   seconds for the guest run: boot, COMMAND, halt (default
#                   900; installing packages is not counted); exit 124 when hit
#   GUEST_MEM       guest memory in MiB (default 1024)
#   GUEST_VERBOSE=1 the guest's own messages (boot, halt) on stderr too
#   GUEST_UML       the UML kernel to boot (default linux.uml, Debian's) and
#   GUEST_UML_MODULES  its modules (default /usr/lib/uml/modules): to try
#                   another kernel, e.g. a newer Debian's user-mode-linux
#                   unpacked with `dpkg-deb -x` (a wrapper script that runs it
#                   through that release's ld.so if it needs a newer libc)
#
# Requirements: x86_64 Debian 12, root, apt reaching Debian's archive. The
# first run installs $PKGS (below) with apt; later runs need no network.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
# Everything the guest needs, host side and guest side, in one list (a guest
# that serves NFS or SMB would add nfs-kernel-server, samba, ...).
PKGS="user-mode-linux kmod iproute2 util-linux procps"
GUEST_NAME=portalock-guest

log() { [ "${GUEST_VERBOSE:-0}" = 1 ] && echo "guest.sh: $*" >&2; return 0; }
die() { echo "guest.sh: $*" >&2; exit 125; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

ensure_setup() {
    local p missing=()
    for p in $PKGS; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "guest.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Lock::Timeout: another apt (another CI script's setup) may be running.
    timeout 600 apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null ||
        echo "guest.sh: apt-get update failed; trying the install anyway" >&2
    timeout 1200 apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# Host side.
cmd_run() {
    [ "${1:-}" = -- ] && shift
    (($#)) || usage
    local mem=${GUEST_MEM:-1024} tmo=${GUEST_TIMEOUT:-900} rc=0 memdir=/dev/shm here
    [[ $mem =~ ^[1-9][0-9]*$ ]] || { echo "guest.sh: GUEST_MEM=$mem is not a number of MiB" >&2; exit 2; }
    [[ $tmo =~ ^[1-9][0-9]*$ ]] || { echo "guest.sh: GUEST_TIMEOUT=$tmo is not a number of seconds" >&2; exit 2; }
    # The guest mounts its own file systems over these: the host's are hidden there.
    here=$(pwd -P)
    for p in "$PWD" "$here"; do
        case $p in /mnt | /mnt/* | /run | /run/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*)
            echo "guest.sh: the current directory $p is hidden inside the guest" >&2; exit 2 ;;
        esac
    done
    ensure_setup

    # State shared with the guest, in a directory it sees: the host's /tmp
    # (not $TMPDIR, which may be under /run).
    run=$(mktemp -d /tmp/portalock-guest.XXXXXX)
    upid='' ugid='' relays=()
    trap cleanup_run EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    cp "$SELF" "$run/guest.sh"            # the guest side, safe from edits meanwhile
    printf '%s\0' "$@" >"$run/argv"
    printf '%s' "$PWD" >"$run/cwd"
    env -0 >"$run/env"
    # modprobe for the guest (the kernel's, and COMMAND's through its PATH):
    # UML's modules are in /usr/lib/uml/modules, not in the host's
    # /lib/modules, and `modprobe -d DIR` looks in DIR/lib/modules/$(uname -r).
    mkdir -p "$run/uml/lib" "$run/bin"
    ln -s "${GUEST_UML_MODULES:-/usr/lib/uml/modules}" "$run/uml/lib/modules"
    printf '#!/bin/sh\nexec /usr/sbin/modprobe -d %s "$@"\n' "$run/uml" >"$run/bin/modprobe"
    chmod +x "$run/bin/modprobe"

    # Where the host's stdout/stderr is a terminal, COMMAND gets a terminal
    # too (the guest's tty1/tty2), but UML writes to it through a pipe and a
    # relay (cat): UML would otherwise switch the host's terminal to raw mode,
    # which also turns Ctrl-C into a plain character.
    local out_tty=0 err_tty=0
    exec 3>&1 4>&2
    if [ -t 1 ]; then out_tty=1; relay 1; exec 3>"$run/relay-1"; fi
    if [ -t 2 ]; then err_tty=1; relay 2; exec 4>"$run/relay-2"; fi

    # COMMAND's own time limit inside: GUEST_TIMEOUT less 20 s for boot and
    # halt (above 60 s), so that the guest reports it and still halts cleanly.
    printf '%s\n' "$((tmo > 60 ? tmo - 20 : tmo))" "$out_tty" "$err_tty" "$GUEST_NAME" >"$run/params"
    printf '#!/bin/bash\nexec /bin/bash %q __guest %q\n' "$run/guest.sh" "$run" >"$run/init"
    chmod +x "$run/init"
    # UML backs the guest's memory with a file in $TMPDIR: /dev/shm (tmpfs)
    # is fastest when it has room.
    [ -d "$memdir" ] && (($(df -Pm "$memdir" | awk 'NR==2{print $4}') > mem + 256)) || memdir=/tmp
    local uml=${GUEST_UML:-linux.uml}
    log "starting UML ($("$uml" --version 2>/dev/null | head -n 1), ${mem}M, timeout ${tmo}s)"
    # con0 (the guest's console) -> console.log; con1/con2 (the guest's
    # tty1/tty2) -> our stdout/stderr; no other consoles or serial lines.
    # `timeout` leads its own process group; linux.uml, its child, makes
    # another one for itself and the host processes that carry the guest's.
    # (exec: so that $! is timeout's PID, not that of a subshell around it)
    (TMPDIR=$memdir exec timeout -k 5 "$tmo" "$uml" mem="${mem}M" \
        root=/dev/root rootfstype=hostfs rootflags=/ rw init="$run/init" quiet \
        con=null ssl=null con0=null,fd:5 con1=null,fd:3 con2=null,fd:4 \
        5>"$run/console.log" </dev/null >"$run/uml.log" 2>&1) &
    upid=$!
    exec 3>&- 4>&- # the relays' ends are UML's alone now: they see EOF when it is gone
    find_uml_group
    wait "$upid" || rc=$?
    if ((rc == 124)); then
        echo "guest.sh: timed out after ${tmo}s (GUEST_TIMEOUT)" >&2
    elif [ -s "$run/rc" ]; then
        rc=$(<"$run/rc")
        [[ $rc =~ ^[0-9]+$ ]] || rc=125
        ((rc != 124)) || echo "guest.sh: COMMAND timed out inside the guest (GUEST_TIMEOUT=${tmo})" >&2
    else
        rc=125
    fi
    stop_uml
    if ((rc == 125 || rc == 124)); then
        echo "guest.sh: guest run failed (exit $rc); the UML and guest console logs end with:" >&2
        echo "--- UML (linux.uml stdout/stderr)" >&2
        tail -n 15 "$run/uml.log" >&2 || true
        echo "--- guest console" >&2
        tail -n 40 "$run/console.log" >&2 || true
    fi
    exit "$rc"
}

# relay FD: a cat that copies the FIFO $run/relay-FD to our FD (it ends at EOF).
relay() {
    mkfifo "$run/relay-$1"
    cat "$run/relay-$1" >&"$1" 3>&- 4>&- &
    relays+=($!)
}

# The process group of linux.uml (see above): recorded while it runs, so that
# stop_uml can end it even after linux.uml itself is gone.
find_uml_group() {
    local u _
    for _ in {1..50}; do
        u=$(pgrep -P "$upid" | head -n 1) || true
        [ -n "$u" ] && ugid=$(ps -o pgid= -p "$u" | tr -d ' ') && [ -n "$ugid" ] && return 0
        kill -0 "$upid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# End what is left of the guest (its process groups, by number), then the relays.
stop_uml() {
    local groups=() g _
    [ -n "${upid:-}" ] && groups+=("-$upid")
    [ -n "${ugid:-}" ] && [ "$ugid" != "$(ps -o pgid= -p $$ | tr -d ' ')" ] && groups+=("-$ugid")
    if ((${#groups[@]})) && kill -0 -- "${groups[@]}" 2>/dev/null; then
        kill -TERM -- "${groups[@]}" 2>/dev/null || true
        for _ in {1..20}; do kill -0 -- "${groups[@]}" 2>/dev/null || break; sleep 0.25; done
        kill -KILL -- "${groups[@]}" 2>/dev/null || true
    fi
    upid='' ugid=''
    # The relays end at EOF, once no UML process holds the pipes.
    for g in "${relays[@]}"; do
        for _ in {1..20}; do kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
        kill "$g" 2>/dev/null || true
    done
    relays=()
    return 0
}

cleanup_run() {
    set +e
    stop_uml
    [ -n "${run:-}" ] && rm -rf "$run"
    return 0
}

# ---------------------------------------------------------------------------
# Guest side: PID 1 inside UML (the host's bash, through hostfs). Builtins
# where possible: every process start costs tens of ms here.
guest() {
    local run=$1 tmo out_tty err_tty name rc=0
    { read -r tmo; read -r out_tty; read -r err_tty; read -r name; } <"$run/params"
    set +e +u
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm
    exec </dev/null >/dev/console 2>&1 # our own messages: the console log

    local verbose=0 kv
    while IFS= read -r -d '' kv; do
        [ "$kv" = GUEST_VERBOSE=1 ] && verbose=1
    done <"$run/env"
    say() { echo "guest: $*"; [ "$verbose" = 1 ] && echo "guest: $*" >&4; return 0; }
    up() { local s _; read -r s _ </proc/uptime; echo "${s}s"; } # since boot
    # Halting: flush hostfs writes (COMMAND's files, $run/rc) to the host
    # first; the guest's page cache would otherwise lose them. PID 1 must not
    # just exit (the kernel panics), so power off, and wait for it.
    ghalt() {
        sync
        say "halt (rc $(<"$run/rc")) at $(up)"
        echo o >/proc/sysrq-trigger
        sleep 5
        halt -f -p
        sleep 10
    }
    gfail() { say "$*"; echo "guest.sh: in the guest: $*" >&4; echo 125 >"$run/rc"; ghalt; }
    trap ghalt EXIT

    # COMMAND's output leaves through the guest's tty1/tty2, which UML
    # connects to the host's stdout/stderr (or to the relays in front of a
    # terminal there). Raw: bytes pass unchanged (a host terminal adds the \r).
    stty -F /dev/tty1 raw -echo
    stty -F /dev/tty2 raw -echo
    exec 3>/dev/tty1 4>/dev/tty2
    say "init at $(up)"

    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/lock
    mount -t tmpfs -o mode=755 tmpfs /mnt
    echo "$name" >/proc/sys/kernel/hostname
    echo "$run/bin/modprobe" >/proc/sys/kernel/modprobe
    ip link set lo up || gfail "cannot bring lo up"

    # COMMAND's environment: the host's, and ours.
    local argv=() pids=() p
    while IFS= read -r -d '' kv; do
        # shellcheck disable=SC2163 # "$kv" is NAME=VALUE
        case $kv in PWD=* | OLDPWD=* | SHLVL=* | _=* | BASH_FUNC_*) ;; *) export "$kv" 2>/dev/null ;; esac
    done <"$run/env"
    export PORTALOCK_IN_GUEST=1 GUEST_HOSTNAME=$name PATH=$run/bin:$PATH
    while IFS= read -r -d '' kv; do argv+=("$kv"); done <"$run/argv"
    cd "$(<"$run/cwd")" || gfail "cannot cd to $(<"$run/cwd")"

    # Pipes, as test harnesses give, unless the host side is a terminal.
    mkfifo /run/guest-out /run/guest-err
    if [ "$out_tty" = 1 ]; then exec 5>&3; else cat /run/guest-out >&3 & pids+=($!); exec 5>/run/guest-out; fi
    if [ "$err_tty" = 1 ]; then exec 6>&4; else cat /run/guest-err >&4 & pids+=($!); exec 6>/run/guest-err; fi
    say "COMMAND starts at $(up): ${argv[*]}"
    # (timeout(1) puts COMMAND in a process group of its own, which it ends
    # on timeout; its relative timer ignores steps of the wall clock)
    timeout -k 5 "$tmo" "${argv[@]}" >&5 2>&6 3>&- 4>&- 5>&- 6>&-
    rc=$?
    exec 5>&- 6>&-
    # Let the copies drain (a daemon that COMMAND left may hold the pipes).
    for p in "${pids[@]}"; do
        for _ in {1..50}; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill "$p" 2>/dev/null
    done
    say "COMMAND exited $rc at $(up)"
    echo "$rc" >"$run/rc"
    ghalt
}

case ${1:-} in
run) shift; cmd_run "$@" ;;
setup) ensure_setup; echo "guest.sh: ready ($(linux.uml --version 2>/dev/null | head -n 1))" ;;
__guest) guest "$2" ;;
*) usage ;;
esac
