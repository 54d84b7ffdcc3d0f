#!/usr/bin/env bash
# netfs.sh: run a command against a REAL network file system, one "lane" at a
# time: a server and two client mounts of its one export, as two separate
# client machines, inside a throwaway Linux guest (.ci/guest.sh).
#
#   bash .ci/netfs.sh run LANE [--] COMMAND [ARGS...]   boot a guest, set LANE up,
#                                          run COMMAND there, exit with its status
#   bash .ci/netfs.sh setup                only install what it needs (idempotent)
#
# LANE (the client mount options; PORTALOCK_NETFS_OPTS has them in full):
#   nfs4.2        kernel NFS server and client, vers=4.2
#   nfs3          vers=3, with locking (rpcbind, rpc.statd, lockd)
#   nfs3-nolock   vers=3,nolock (locks are local to each client)
#   smb3          Samba's smbd and the kernel's cifs client, SMB 3.1.1,
#                 byte-range locks sent to the server (the default); the
#                 server enforces them: while A holds a lock on a file, B's
#                 reads and writes of it fail (EACCES, EIO), and so does a
#                 conflicting flock (EACCES, not EWOULDBLOCK)
#   smb3-nobrl    the same with nobrl on both mounts (locks local to each client)
#
# The export is a fresh ext4 file system (256 MiB RAM disk, mode 1777). Client
# A mounts it through 127.0.0.1 while the guest's hostname is client-a, client
# B through 127.0.0.2 while it is client-b, each with its own superblock and
# cache (NFS: nosharecache, and so two NFSv4 client identities; SMB:
# nosharesock, two sessions): two machines as far as the server can tell.
# Data written through one client and closed are read through the other at
# once; attributes (stat) may lag a little (NFS: actimeo; cifs: 1 s).
#
# COMMAND runs as root in the host's current directory, as .ci/guest.sh runs
# it (stdin /dev/null; the host's environment; hostfs root; one virtual CPU,
# a process start costs ~30 ms), after the line
#   netfs: LANE up: A=... B=... (OPTIONS)
# on stderr, with the guest's hostname set to client-a, and with
#   PORTALOCK_NETFS=<LANE>        PORTALOCK_NETFS_OPTS=<client mount options>
#   PORTALOCK_NETFS_A=/mnt/netfs-a   PORTALOCK_NETFS_B=/mnt/netfs-b
#                                 the export through client A and client B
#   PORTALOCK_NETFS_SERVER=/mnt/netfs-server   the exported directory itself,
#                                 on the server's side (its local ext4)
#   PORTALOCK_NETFS_AS_B=<exe>    "$PORTALOCK_NETFS_AS_B" PROGRAM [ARGS...] runs
#                                 PROGRAM as a process of client B's machine:
#                                 new UTS, PID and mount namespaces, hostname
#                                 client-b, a machine id and a boot id of its
#                                 own (files bound over /etc/machine-id and
#                                 /proc/sys/kernel/random/boot_id there), the
#                                 caller's environment, stdin, stdout and
#                                 stderr; its exit status comes back (a death
#                                 by signal is repeated). PROGRAM is PID 2 (a
#                                 small init is PID 1; when PROGRAM ends, what
#                                 it left in there is killed). The caller sees
#                                 the wrapper's PID alone: the wrapper passes
#                                 on HUP INT QUIT TERM USR1 USR2 ALRM CONT
#                                 WINCH, PROGRAM dies with it (SIGKILL too),
#                                 and SIGSTOP stops the wrapper alone. Exit
#                                 125 when the namespaces cannot be made. A
#                                 static C program (target/netfs/as-b, built
#                                 with cc when missing or changed): ~10 ms more
#                                 than PROGRAM's own start.
#   PORTALOCK_NETFS_RESTART=<exe> restart the server as an admin would and
#                                 return once it answers again (exit 0; else
#                                 non-zero and a message). Run it as a guest
#                                 (client A) process, not through AS_B. NFS:
#                                 nfsd stopped (rpc.nfsd 0, its NFSv4 state
#                                 gone) and started again with a new grace
#                                 period (10 s; lease 10 s) that is NOT ended
#                                 early: clients reclaim their locks in it,
#                                 and other lock requests wait it out (a
#                                 client retries: up to ~15 s); NFSv3 with
#                                 locking: lockd also drops its locks and
#                                 restarts its grace, and the clients are
#                                 notified (sm-notify) and reclaim. SMB: smbd
#                                 stopped and started again; the clients
#                                 reconnect (their locks are not reclaimed).
#   GUEST_HOSTNAME=client-a  PORTALOCK_IN_GUEST=1   (.ci/guest.sh's)
# Guest-only (not the host's), besides guest.sh's /proc /sys /dev /run /mnt:
# /var/lib/nfs (a tmpfs); Samba's state and logs are under /run/samba.
#
# Exit status: COMMAND's; 124 on timeout; 125 when the guest or the lane's
# setup failed (why is printed); 2 on bad usage.
#
# Knobs (environment):
#   NETFS_TIMEOUT    seconds for the guest run: boot, setup, COMMAND, halt
#                    (default 900); exit 124 when hit
#   NETFS_VERBOSE=1  the lane's setup steps on stderr too (its log is printed
#                    on failure anyway)
#   GUEST_MEM, GUEST_VERBOSE   as for .ci/guest.sh (the RAM disk takes 256
#                    of the guest's default 1024 MiB)
#   NETFS_SMB_EXTRA  more cifs mount options for both SMB clients (for
#                    experiments: closetimeo=0, nolease, noserverino, ...)
#   NETFS_SMB_SHARE_EXTRA  more lines for the SMB share's section of
#                    smb.conf
#   NETFS_SMB_LEASES=1  Samba's default oplocks and leases on the share (the
#                    lanes turn them off: "oplocks = no"; see smb_start)
#   NETFS_SMBD_STRACE=FILE  run smbd under strace, its file operations (mkdir,
#                    unlink, rename, link, open) to FILE, each line with the
#                    smbd process that serves one client session
#
# Requirements: those of .ci/guest.sh. The first run installs $PKGS (below)
# with apt, without letting the packages start any daemon on the host (the
# servers run only inside the guest); later runs need no network. Boot, lane
# setup and halt take 5-10 s.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
GUEST=$(dirname "$SELF")/guest.sh
# Host side and guest side (the guest runs the host's binaries): guest.sh's
# own list, the NFS server and client, Samba and the cifs mount helper, and
# a C compiler with a static libc for the as-b helper.
PKGS="user-mode-linux kmod iproute2 util-linux procps e2fsprogs
      nfs-kernel-server nfs-common rpcbind samba cifs-utils gcc libc6-dev"
LANES="nfs4.2 nfs3 nfs3-nolock smb3 smb3-nobrl"
# Daemons that the packages above could start on the host when installed.
DAEMONS="smbd nmbd samba-bgqd winbindd rpcbind rpc.statd rpc.mountd rpc.idmapd nfsd nfsdcld blkmapd sm-notify"

die() { echo "netfs: $*" >&2; exit 125; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---------------------------------------------------------------------------
# Host side.

# PIDs of running $DAEMONS, one a line.
daemon_pids() {
    local d
    for d in $DAEMONS; do pgrep -x "$d" || true; done | sort -n
}

ensure_setup() {
    local p missing=() policy=/usr/sbin/policy-rc.d made_policy=0 before after new rc=0
    for p in $PKGS; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "netfs: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # No daemon may start on the host: invoke-rc.d asks policy-rc.d, and 101
    # means "not allowed" (Docker's images ship such a file already).
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# netfs.sh: no daemons while installing\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    before=$(daemon_pids)
    # Lock::Timeout: another apt (another CI script's setup) may be running.
    timeout 600 apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null ||
        echo "netfs: apt-get update failed; trying the install anyway" >&2
    timeout 1800 apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
    ((made_policy)) && rm -f "$policy"
    # Whatever started anyway (a package that does not ask policy-rc.d): stop
    # exactly those processes, and say so.
    after=$(daemon_pids)
    new=$(comm -13 <(echo "$before") <(echo "$after"))
    for p in $new; do
        echo "netfs: the install started $(ps -o comm= -p "$p" 2>/dev/null || echo '?') (PID $p) on the host; stopping it" >&2
        kill "$p" 2>/dev/null || continue
        for _ in {1..50}; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
}

cmd_run() {
    local lane=${1:-} tmo=${NETFS_TIMEOUT:-900}
    (($#)) && shift
    [ "${1:-}" = -- ] && shift
    case " $LANES " in *" $lane "*) [ -n "$lane" ] ;; *) false ;; esac ||
        { echo "netfs: unknown LANE '$lane' (one of: $LANES)" >&2; exit 2; }
    (($#)) || usage
    [[ $tmo =~ ^[1-9][0-9]*$ ]] || { echo "netfs: NETFS_TIMEOUT=$tmo is not a number of seconds" >&2; exit 2; }
    ensure_setup
    local as_b
    as_b=$(build_as_b)
    # guest.sh boots the guest, runs the lane's setup (__lane, below) there,
    # which then becomes COMMAND; it halts the guest and ends what is left.
    GUEST_TIMEOUT=$tmo exec bash "$GUEST" run -- bash "$SELF" __lane "$lane" "$as_b" -- "$@"
}

# ---------------------------------------------------------------------------
# Guest side: run by guest.sh as COMMAND, as root, in the host's current
# directory. Builtins where possible: every process start costs ~30 ms here.
# Setup output goes to $N/setup.log, shown on failure (its steps are shown
# as they go with NETFS_VERBOSE=1).

N=/run/netfs                      # guest-only: helpers, config, state
SRV=/mnt/netfs-server             # the export, server side
MNT_A=/mnt/netfs-a MNT_B=/mnt/netfs-b
EXPORT_MB=256

# (no $(...) here: each would fork)
say() {
    local s _
    read -r s _ </proc/uptime # seconds since boot
    echo "netfs: $* (${s}s)"
    [ "${NETFS_VERBOSE:-0}" = 1 ] && echo "netfs: $* (${s}s)" >&8 # (the saved stderr)
    return 0
}
ticks() { local s _; read -r s _ </proc/uptime; TICKS=$((10#${s/./})); } # since boot, in 1/100 s
fail() {
    say "FAILED: $*"
    echo "netfs: $LANE setup failed: $*; its log:" >&8
    local l
    while IFS= read -r l; do echo "  $l" >&8; done <"$N/setup.log"
    exit 125
}
# nap SECONDS: sleep without starting a process (a read that times out).
nap() { read -r -t "$1" -u "$TICK" _ || true; }
# daemon COMMAND...: run COMMAND (one that leaves a daemon behind), bounded,
# without our copies of COMMAND's stdout and stderr (fds 7, 8): guest.sh
# waits for those to close before it halts the guest.
daemon() { timeout 60 "$@" </dev/null 7>&- 8>&- {TICK}>&-; }

lane() {
    LANE=$1
    local as_b=$2 kind=${1%%[0-9]*}
    shift 2
    [ "${1:-}" = -- ] && shift
    set +e
    mkdir -p "$N/b" "$SRV" "$MNT_A" "$MNT_B"
    exec 7>&1 8>&2 >"$N/setup.log" 2>&1 # setup's own output: the log
    mkfifo "$N/tick" || fail "mkfifo"
    exec {TICK}<>"$N/tick"
    say "$LANE setup starts"

    # One modprobe for all (their parameters in a file of our own): the
    # export's RAM disk, the server, the client and (SMB) the crypto that
    # the SMB 3.1.1 session needs and cifs's default character set, loaded
    # before the mounts ask for them (see smb_clients).
    printf '%s\n' "options brd rd_nr=1 rd_size=$((EXPORT_MB * 1024)) max_part=0" \
        "options nfsd cltrack_prog=/nonexistent" >"$N/modprobe.conf"
    case $kind in
    nfs) modprobe -C "$N/modprobe.conf" -a brd lockd nfsd nfs nfsv3 nfsv4 || fail "modprobe (NFS)" ;;
    smb) modprobe -C "$N/modprobe.conf" -a brd cifs cmac sha512_generic gcm ccm ctr ghash-generic md4 arc4 des_generic \
        ecb hmac nls_iso8859-1 ||
        fail "modprobe (SMB)" ;;
    esac
    # Client B's server address: /32, so that it is a primary address of its
    # own, and so the source address of B's connections too (the server sees
    # client A at 127.0.0.1, client B at 127.0.0.2).
    ip addr add 127.0.0.2/32 dev lo || fail "ip addr add 127.0.0.2/32 dev lo"
    # The server's name while it starts (clients take theirs at mount time):
    # nfsd takes its NFSv4 server scope from it, and a server whose scope
    # changes across a restart is another server to its clients: they do not
    # reclaim (so $N/restart keeps this name too).
    echo netfs-server >/proc/sys/kernel/hostname

    # The server starts first (NFS: its grace periods run meanwhile); then
    # the export (a fresh ext4 on the RAM disk) is made and served, and
    # mounted by the two clients. Its inodes are 256 bytes, as on any ext4
    # of a real server (mke2fs gives a file system this small 128-byte
    # inodes): time stamps in nanoseconds and a creation time. With whole
    # seconds, NFSv3 clients miss a file's change within the same second,
    # and the SMB client takes a new file for an old one of the same
    # (reused) inode number: stale data and wrong file types that no
    # real server shows.
    "${kind}_start"
    mkfs.ext4 -q -F -I 256 -E nodiscard /dev/ram0 || fail "mkfs.ext4 /dev/ram0"
    mount -t ext4 /dev/ram0 "$SRV" || fail "mount the export's ext4"
    chmod 1777 "$SRV" || fail "chmod 1777 $SRV"
    "${kind}_serve"
    "${kind}_clients"
    "${kind}_restart_script"
    as_b_setup

    echo client-a >/proc/sys/kernel/hostname
    export GUEST_HOSTNAME=client-a PORTALOCK_NETFS=$LANE PORTALOCK_NETFS_OPTS=$OPTS \
        PORTALOCK_NETFS_A=$MNT_A PORTALOCK_NETFS_B=$MNT_B PORTALOCK_NETFS_SERVER=$SRV \
        PORTALOCK_NETFS_AS_B=$as_b PORTALOCK_NETFS_RESTART=$N/restart
    say "$LANE up"
    exec >&7 2>&8 7>&- 8>&- {TICK}>&-
    echo "netfs: $LANE up: A=$MNT_A B=$MNT_B ($OPTS)" >&2
    exec "$@"
}

# --- NFS --------------------------------------------------------------------
# The kernel's server (nfsd; rpc.mountd answers its export upcalls), for NFSv3
# also rpcbind, and rpc.statd for NLM locking (lockd is the kernel's).
nfs_start() {
    NFSD_VERS=(-N 3) LOCK=0 # rpc.nfsd's and rpc.mountd's version flags; NLM locks
    case $LANE in
    nfs4.2) OPTS=vers=4.2,nosharecache SRV_PATH=/ ;;
    nfs3) OPTS=vers=3,nosharecache SRV_PATH=$SRV NFSD_VERS=() LOCK=1 ;;
    nfs3-nolock) OPTS=vers=3,nolock,nosharecache SRV_PATH=$SRV NFSD_VERS=() ;;
    esac
    # nfs-utils' state: guest-only.
    mount -t tmpfs -o mode=755 tmpfs /var/lib/nfs || fail "tmpfs on /var/lib/nfs"
    mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/v4recovery "$N/sm-notify/sm" "$N/sm-notify/sm.bak"
    : >/var/lib/nfs/etab
    : >/var/lib/nfs/rmtab
    # Grace periods. NFSv4: 10 s (the least nfsd takes), and a 10 s lease,
    # settable only while nfsd is down. NLM: its shortest (nlm_grace_period 1
    # is rounded up to nlm_timeout, 3 s at least). Clients reclaim their locks
    # within them after a restart ($N/restart); at first start there is
    # nothing to reclaim, so the grace is ended (v4) or waited out (NLM).
    # Which NFSv4 clients may reclaim: nfsd's own records in v4recovery (the
    # "legacy" tracking; no helper: nfsdcltrack costs ~2 s of process starts,
    # nfsdcld a daemon, and it would end the grace once all clients reclaim).
    echo 1 >/proc/sys/fs/nfs/nlm_grace_period
    echo 3 >/proc/sys/fs/nfs/nlm_timeout
    mount -t nfsd nfsd /proc/fs/nfsd || fail "mount -t nfsd"
    echo 10 >/proc/fs/nfsd/nfsv4gracetime
    echo 10 >/proc/fs/nfsd/nfsv4leasetime
    if ((${#NFSD_VERS[@]} == 0)); then
        daemon rpcbind || fail "rpcbind"
        if ((LOCK)); then daemon rpc.statd --no-notify || fail "rpc.statd"; fi
    fi
    # nfsd (and with it lockd) needs no export to start.
    timeout 60 rpc.nfsd "${NFSD_VERS[@]}" 8 || fail "rpc.nfsd ${NFSD_VERS[*]} 8"
    ticks
    T_NFSD=$TICKS
    echo Y >/proc/fs/nfsd/v4_end_grace
    say "nfsd up"
}

nfs_serve() {
    # fsid=0: the export is the NFSv4 root itself (v4 clients mount "/"):
    # the automatic v4 pseudo root would have to include the guest's "/"
    # (hostfs), which cannot be exported.
    timeout 60 exportfs -i -o rw,sync,no_root_squash,no_subtree_check,insecure,fsid=0 "*:$SRV" || fail "exportfs"
    daemon rpc.mountd "${NFSD_VERS[@]}" || fail "rpc.mountd"
    say "NFS server up"
}

# Two clients, each its own NFSv4 identity: the client takes it from the
# hostname at mount time, and a server address of its own keeps the two
# apart (one address: one identity, whose delegations are never recalled).
nfs_clients() {
    echo client-a >/proc/sys/kernel/hostname
    timeout 90 mount.nfs "127.0.0.1:$SRV_PATH" "$MNT_A" -o "$OPTS" ||
        fail "mount.nfs 127.0.0.1:$SRV_PATH $MNT_A -o $OPTS"
    echo client-b >/proc/sys/kernel/hostname
    timeout 90 mount.nfs "127.0.0.2:$SRV_PATH" "$MNT_B" -o "$OPTS" ||
        fail "mount.nfs 127.0.0.2:$SRV_PATH $MNT_B -o $OPTS"
    echo client-a >/proc/sys/kernel/hostname
    # lockd started with nfsd: its grace (3 s) must be over before locks work.
    if ((LOCK)); then
        ticks
        local wait=$((T_NFSD + 320 - TICKS)) # in 1/100 s
        ((wait > 0)) && nap "$((wait / 100)).$((wait / 10 % 10))"
    fi
    say "NFS clients up"
}

# $N/restart for NFS.
nfs_restart_script() {
    {
        echo '#!/bin/bash'
        echo "# netfs.sh's server restart, lane $LANE: stop nfsd and start it again (see netfs.sh)."
        echo 'set -u'
        echo "A=$MNT_A B=$MNT_B LOCK=$LOCK VERS=(${NFSD_VERS[*]}) SMN=$N/sm-notify"
        cat <<'EOF'
fail() { echo "netfs restart: $*" >&2; exit 1; }
# Not from client B's namespaces (through AS_B): there, what it starts would
# die with them, and the server's processes are out of sight.
{ read -r c </proc/1/comm; } 2>/dev/null
[ "${c:-}" != as-b ] || fail "run it as a guest (client A) process, not through PORTALOCK_NETFS_AS_B"
# Stop: nfsd's threads end, and with them its NFSv4 state (clients, opens,
# locks, delegations); the kernel's export caches are flushed, as
# nfs-server.service does.
timeout 60 rpc.nfsd 0 || fail "rpc.nfsd 0 failed"
timeout 60 exportfs -f || fail "exportfs -f failed"
# Start, under the server's own name (nfsd takes its NFSv4 server scope from
# the hostname: were it the caller's, the clients would see another server
# and not reclaim), with a new grace period: not ended early, clients reclaim.
timeout 60 unshare --uts bash -c 'echo netfs-server >/proc/sys/kernel/hostname && exec rpc.nfsd "$@"' \
    rpc.nfsd "${VERS[@]}" 8 || fail "rpc.nfsd ${VERS[*]} 8 failed"
if ((LOCK)); then
    # lockd is shared with this guest's NFS clients, so it does not stop with
    # nfsd; SIGKILL makes it do what its stop and start would on a server of
    # its own: drop every lock it holds for clients and start its grace
    # period. The clients learn of it as after a reboot: sm-notify (run on a
    # copy of statd's list of monitored peers, which it would retire; its NSM
    # state number, kept in $SMN, goes up each time) notifies the statd of
    # each client, which tells the client's lockd to reclaim.
    lockd=
    for d in /proc/[0-9]*; do
        { read -r c <"$d/comm"; } 2>/dev/null && [ "$c" = lockd ] && lockd=${d#/proc/} && break
    done
    [ -n "$lockd" ] || fail "no lockd"
    kill -KILL "$lockd" || fail "cannot signal lockd"
    shopt -s nullglob
    peers=(/var/lib/nfs/sm/*)
    if ((${#peers[@]})); then
        cp -p "${peers[@]}" "$SMN/sm/" || fail "cannot copy statd's monitor list"
        timeout 30 sm-notify -d -f -P "$SMN" >"$SMN/log" 2>&1 || { cat "$SMN/log" >&2; fail "sm-notify failed"; }
    fi
fi
# Answering again: a statfs through each client goes to the server (and sets
# off the clients' recovery, NFSv4 reclaims included).
timeout 60 stat -f "$A" "$B" >/dev/null || fail "the server does not answer (stat -f $A $B)"
EOF
    } >"$N/restart"
    chmod 755 "$N/restart"
}

# --- SMB --------------------------------------------------------------------
# Samba's smbd, everything of its own under /run/samba (guest-only); a user
# with a password (guest access fails with EOPNOTSUPP).
smb_start() {
    mkdir -p /run/samba
    # No oplocks or leases: with them (Samba's default), a Linux 6.1 client's
    # open or listing of a file the other client had open waited on a lease
    # break for a minute and more at times (README, "NFS and SMB").
    # NETFS_SMB_LEASES=1 keeps Samba's default, to measure that.
    local oplocks='  oplocks = no'
    [ "${NETFS_SMB_LEASES:-0}" = 1 ] && oplocks=''
    cat >"$N/smb.conf" <<EOF
[global]
  netbios name = NETFS-SERVER
  server role = standalone server
  server min protocol = SMB2_10
  disable netbios = yes
  smb ports = 445
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  map to guest = never
  log level = 1
  log file = /run/samba/log.%m
  lock directory = /run/samba
  state directory = /run/samba
  cache directory = /run/samba
  private dir = /run/samba
  pid directory = /run/samba
  ncalrpc dir = /run/samba/ncalrpc
  binddns dir = /run/samba/bind-dns
[share]
  path = $SRV
  read only = no
$oplocks
${NETFS_SMB_SHARE_EXTRA:-}
EOF
    printf 'username=root\npassword=netfs\n' >"$N/smb.cred"
    timeout 60 smbpasswd -c "$N/smb.conf" -s -a root <<<$'netfs\nnetfs' >/dev/null || fail "smbpasswd -a root"
    if [ -n "${NETFS_SMBD_STRACE:-}" ]; then
        # Experiments: smbd in the foreground under strace, its file
        # operations (one line per call, with the smbd process of each
        # client session) in the file NETFS_SMBD_STRACE.
        strace --seccomp-bpf -f -tt -s 120 -o "$NETFS_SMBD_STRACE" \
            -e trace=mkdirat,unlinkat,renameat,renameat2,linkat,openat \
            smbd -F --no-process-group -s "$N/smb.conf" -l /run/samba \
            </dev/null 7>&- 8>&- {TICK}>&- &
    else
        daemon smbd -D -s "$N/smb.conf" -l /run/samba || fail "smbd"
    fi
    say "smbd started"
}

# smbd takes connections (it may take a moment after -D returns).
smb_serve() {
    local fd _
    for _ in {1..300}; do
        if { exec {fd}<>/dev/tcp/127.0.0.1/445; } 2>/dev/null; then
            exec {fd}>&-
            say "SMB server up"
            return 0
        fi
        nap 0.1
    done
    fail "smbd does not answer on 127.0.0.1:445"
}

# Two sessions (nosharesock: a connection each), through 127.0.0.1 and
# 127.0.0.2. The cache mode is cifs's default, cache=strict: data are cached
# only under a lease from the server, which the server breaks when the other
# client opens the file.
smb_clients() {
    OPTS=vers=3.1.1,nosharesock,cache=strict
    [ "$LANE" = smb3-nobrl ] && OPTS=$OPTS,nobrl
    OPTS=$OPTS${NETFS_SMB_EXTRA:+,$NETFS_SMB_EXTRA}
    # At the first session the kernel asks modprobe for each crypto template
    # that it instantiates (14 requests, ~1 s here), though what they could
    # load is loaded already: it is told of no modprobe meanwhile.
    local modprobe
    read -r modprobe </proc/sys/kernel/modprobe
    echo "$N/no-modprobe" >/proc/sys/kernel/modprobe
    echo client-a >/proc/sys/kernel/hostname
    timeout 90 mount.cifs //127.0.0.1/share "$MNT_A" -o "$OPTS,credentials=$N/smb.cred" ||
        fail "mount.cifs //127.0.0.1/share $MNT_A -o $OPTS"
    echo client-b >/proc/sys/kernel/hostname
    timeout 90 mount.cifs //127.0.0.2/share "$MNT_B" -o "$OPTS,credentials=$N/smb.cred" ||
        fail "mount.cifs //127.0.0.2/share $MNT_B -o $OPTS"
    echo "$modprobe" >/proc/sys/kernel/modprobe
    echo client-a >/proc/sys/kernel/hostname
    say "SMB clients up"
}

# $N/restart for SMB: smbd stopped (its parent and the children serving the
# two sessions) and started again; the clients reconnect.
smb_restart_script() {
    {
        echo '#!/bin/bash'
        echo "# netfs.sh's server restart, lane $LANE: stop smbd and start it again (see netfs.sh)."
        echo 'set -u'
        echo "A=$MNT_A B=$MNT_B CONF=$N/smb.conf OUT=$N/smbd.out"
        cat <<'EOF'
fail() { echo "netfs restart: $*" >&2; exit 1; }
# Not from client B's namespaces (through AS_B): there, what it starts would
# die with them, and the server's processes are out of sight.
{ read -r c </proc/1/comm; } 2>/dev/null
[ "${c:-}" != as-b ] || fail "run it as a guest (client A) process, not through PORTALOCK_NETFS_AS_B"
nap() { sleep "$1"; }
# smbd's PIDs, from /proc (builtins).
smbd_pids() {
    local d c
    for d in /proc/[0-9]*; do
        { read -r c <"$d/comm"; } 2>/dev/null && [ "$c" = smbd ] && echo "${d#/proc/}"
    done
}
pids=$(smbd_pids)
[ -n "$pids" ] || fail "smbd is not running"
# shellcheck disable=SC2086
kill -TERM $pids
for _ in {1..100}; do [ -z "$(smbd_pids)" ] && break; nap 0.1; done
pids=$(smbd_pids)
# shellcheck disable=SC2086
[ -z "$pids" ] || { kill -KILL $pids; nap 0.5; }
# (not on our stdout and stderr: the daemon would hold them open)
timeout 60 smbd -D -s "$CONF" -l /run/samba </dev/null >>"$OUT" 2>&1 || { cat "$OUT" >&2; fail "smbd failed to start"; }
for _ in {1..300}; do
    { exec {fd}<>/dev/tcp/127.0.0.1/445; } 2>/dev/null && { exec {fd}>&-; break; }
    nap 0.1
done
# Answering again: a statfs through each client (which reconnects first; it
# may fail while the reconnection is under way).
for _ in {1..60}; do
    timeout 10 stat -f "$A" "$B" >/dev/null 2>&1 && exit 0
    nap 0.5
done
fail "the server does not answer (stat -f $A $B)"
EOF
    } >"$N/restart"
    chmod 755 "$N/restart"
}

# --- client B's processes ---------------------------------------------------
# Client B's machine id and boot id: fresh ones, from the kernel's random
# UUIDs, in files that the as-b helper (below) binds over the guest's own.
as_b_setup() {
    local u
    read -r u </proc/sys/kernel/random/uuid
    echo "${u//-/}" >"$N/b/machine-id"
    read -r u </proc/sys/kernel/random/uuid
    echo "$u" >"$N/b/boot_id"
    [ -f /etc/machine-id ] || say "no /etc/machine-id here: client B has none either"
}

# The as-b helper, PORTALOCK_NETFS_AS_B: a small static C program, built on
# the host (cc; once, into target/netfs/), so that a call costs little more
# than PROGRAM's own start (~10 ms here; a Perl or shell wrapper 70-200 ms).
as_b_source() {
    cat <<EOF
/* as-b PROGRAM [ARGS...]: run PROGRAM as a process of client B's machine
 * (written by .ci/netfs.sh, which says more): new UTS, PID and mount
 * namespaces, hostname client-b, B's machine id and boot id bound over
 * /etc/machine-id and /proc/sys/kernel/random/boot_id there. PROGRAM is PID
 * 2; PID 1 is this program again, which reaps orphans and dies with us. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOST "client-b"
#define MACHINE_ID "$N/b/machine-id"
#define BOOT_ID "$N/b/boot_id"
EOF
    cat <<'EOF'
static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT, SIGWINCH};
static pid_t child; /* where the signals above go */

static void forward(int sig) { if (child > 0) kill(child, sig); }

static void catch_forwarded(void) {
    struct sigaction sa = {.sa_handler = forward};
    for (unsigned i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaction(forwarded[i], &sa, NULL);
}

static void fail(const char *what) {
    fprintf(stderr, "netfs as-b: %s: %s\n", what, strerror(errno));
    _exit(125);
}

int main(int argc, char **argv) {
    int status_pipe[2], status, st;
    if (argc < 2) {
        fputs("usage: as-b PROGRAM [ARGS...]\n", stderr);
        return 2;
    }
    /* Our children get B's namespaces; we stay outside, waiting. Mounts made
     * private first: nothing mounted in B's namespace shows in the guest's. */
    if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID)) fail("unshare");
    if (sethostname(HOST, strlen(HOST))) fail("sethostname");
    if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL)) fail("mount --make-rprivate /");
    if (pipe2(status_pipe, O_CLOEXEC)) fail("pipe");
    child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        /* B's init (PID 1): it dies when we do (SIGKILL included); B's own
         * /proc, machine id and boot id; PROGRAM as PID 2, with the signals
         * we pass on; its wait status goes to us (PID 1 cannot die of most
         * signals, so we repeat a death by signal ourselves). */
        close(status_pipe[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) fail("mount /proc");
        if (access("/etc/machine-id", F_OK) == 0 && mount(MACHINE_ID, "/etc/machine-id", NULL, MS_BIND, NULL))
            fail("bind " MACHINE_ID " over /etc/machine-id");
        if (mount(BOOT_ID, "/proc/sys/kernel/random/boot_id", NULL, MS_BIND, NULL))
            fail("bind " BOOT_ID " over the boot id");
        child = fork();
        if (child < 0) fail("fork");
        if (child == 0) {
            execvp(argv[1], argv + 1);
            int e = errno;
            fprintf(stderr, "netfs as-b: %s: %s\n", argv[1], strerror(e));
            _exit(e == ENOENT ? 127 : 126);
        }
        catch_forwarded();
        for (;;) {
            pid_t r = waitpid(-1, &st, 0);
            if (r == child) {
                if (write(status_pipe[1], &st, sizeof st) != sizeof st) _exit(125);
                _exit(0);
            }
            if (r < 0 && errno != EINTR) fail("waitpid");
        }
    }
    close(status_pipe[1]);
    catch_forwarded();
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) fail("waitpid");
    if (read(status_pipe[0], &st, sizeof st) == sizeof st) status = st; /* else: init's own */
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    signal(WTERMSIG(status), SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, WTERMSIG(status));
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    kill(getpid(), WTERMSIG(status));
    return 128 + WTERMSIG(status);
}
EOF
}

# build_as_b: (re)build target/netfs/as-b when its source has changed; print its path.
build_as_b() {
    local dir src
    dir=$(dirname "$(dirname "$SELF")")/target/netfs
    mkdir -p "$dir" || die "cannot create $dir"
    src=$(as_b_source)
    if [ ! -x "$dir/as-b" ] || [ "$src" != "$(cat "$dir/as-b.c" 2>/dev/null)" ]; then
        printf '%s\n' "$src" >"$dir/as-b.c.$$"
        cc -O2 -static -Wall -o "$dir/as-b.$$" -x c "$dir/as-b.c.$$" >&2 ||
            { rm -f "$dir/as-b.c.$$" "$dir/as-b.$$"; die "cannot build the as-b helper (cc)"; }
        mv "$dir/as-b.$$" "$dir/as-b"
        mv "$dir/as-b.c.$$" "$dir/as-b.c"
    fi
    echo "$dir/as-b"
}

case ${1:-} in
run) shift; cmd_run "$@" ;;
setup) ensure_setup; build_as_b >/dev/null; echo "netfs: ready ($(linux.uml --version 2>/dev/null | head -n 1))" ;;
__lane) shift; lane "$@" ;;
*) usage ;;
esac
