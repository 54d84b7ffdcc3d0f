"""Python file-lock peers, measured on this machine next to a raw flock floor.

What it measures, for locket, portalocker, filelock (FileLock and
SoftFileLock) and fasteners (InterProcessLock):

1. Uncontended cycle: acquire() + release() of one lock object created
   once, in each directory (default /tmp and /dev/shm). Median of 7 rounds
   of N iterations, N chosen so a round takes about 0.3 s; microseconds per
   cycle. The floor is fcntl.flock LOCK_EX / LOCK_UN on a file kept open.
2. Ping-pong hand-off: two processes (this script re-run with --child)
   contend for one lock. Each one waits for the same "go" line from the
   parent, then loops 200 times (50 with --quick): blocking acquire, record
   time.time_ns() "got", hold 2 ms, record "release", release, ask again.
   The parent merges both event lists by time. A release by X followed by
   a "got" of the other process is a hand-off (latency = got - release);
   followed by a "got" of X itself while the other still had acquisitions
   to make, it is a barge; once the other process has finished, X's
   re-acquisitions are "solo" and count as neither. Barge % is of the
   contended transitions (hand-offs + barges). Children that do not finish
   within 120 s are killed and reported as failed. The floor is a blocking
   fcntl.flock on a file each child keeps open.

Output is Markdown on stdout (progress goes to stderr).

Run (creates target/peers-venv and installs the four libraries from PyPI):

    bash benches/peers.sh [--quick] [--dir DIR]...

Direct use with a Python that has the libraries:
    python3 benches/peers.py [--quick] [--dir DIR]... [--peers a,b,...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version

LIBS = ("locket", "portalocker", "filelock", "fasteners")
ROUNDS = 7
ROUND_SECONDS = 0.3
HOLD_SECONDS = 0.002
CHILD_LIMIT_SECONDS = 120.0
READY_LIMIT_SECONDS = 30.0
LONG_TIMEOUT = 600.0  # seconds; "wait as long as it takes" for peers that need a number


# --------------------------------------------------------------------------
# Peers: name -> (label, factory). A factory takes a path and returns
# (acquire, release) for one lock object created once.


def _locket(path):
    import locket

    lock = locket.lock_file(path)  # timeout=None: blocking flock
    return lock.acquire, lock.release


def _portalocker(path):
    import portalocker

    lock = portalocker.Lock(path, timeout=LONG_TIMEOUT, fail_when_locked=False)
    return lock.acquire, lock.release


def _portalocker_blocking(path):
    import portalocker

    # Blocking flags: the first attempt blocks in flock(LOCK_EX), no polling.
    lock = portalocker.Lock(path, flags=portalocker.LockFlags.EXCLUSIVE, fail_when_locked=False)
    return lock.acquire, lock.release


def _filelock(path):
    import filelock

    lock = filelock.FileLock(path)  # timeout=-1: wait forever
    return lock.acquire, lock.release


def _filelock_soft(path):
    import filelock

    lock = filelock.SoftFileLock(path)
    return lock.acquire, lock.release


def _fasteners(path):
    import fasteners

    lock = fasteners.InterProcessLock(path)

    def acquire():
        if not lock.acquire(blocking=True, timeout=LONG_TIMEOUT):
            raise TimeoutError(f"fasteners: no lock on {path} in {LONG_TIMEOUT} s")

    return acquire, lock.release


def _floor(path):
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def acquire():
        fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        fcntl.flock(fd, fcntl.LOCK_UN)

    return acquire, release


PEERS = {
    "locket": ("locket `lock_file`", _locket),
    "portalocker": ("portalocker `Lock`", _portalocker),
    "filelock": ("filelock `FileLock`", _filelock),
    "filelock-soft": ("filelock `SoftFileLock`", _filelock_soft),
    "fasteners": ("fasteners `InterProcessLock`", _fasteners),
    "floor": ("floor: `fcntl.flock` on a file kept open", _floor),
    # Ping-pong only: portalocker's own blocking mode, for contrast with
    # its default (non-blocking flock polled every check_interval).
    "portalocker-blocking": ("portalocker `Lock`, `flags=LockFlags.EXCLUSIVE` (blocking)", _portalocker_blocking),
}
CYCLE_PEERS = ["locket", "portalocker", "filelock", "filelock-soft", "fasteners", "floor"]
PINGPONG_PEERS = CYCLE_PEERS[:-1] + ["portalocker-blocking", "floor"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# 1. Uncontended cycle


def cycle_us(peer: str, path: str) -> float:
    acquire, release = PEERS[peer][1](path)
    perf = time.perf_counter_ns

    def run(n: int) -> int:
        t0 = perf()
        for _ in range(n):
            acquire()
            release()
        return perf() - t0

    # Warm up and calibrate: double n until a batch takes 30 ms.
    n = 1
    while True:
        ns = run(n)
        if ns >= 30_000_000:
            break
        n *= 2
    n = max(1, round(n * ROUND_SECONDS * 1e9 / ns))

    per_cycle = []
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(ROUNDS):
            gc.collect()
            gc.disable()
            ns = run(n)
            if gc_was_enabled:
                gc.enable()
            per_cycle.append(ns / n / 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(per_cycle)


# --------------------------------------------------------------------------
# 2. Ping-pong hand-off


def child_main(peer: str, path: str, count: int) -> int:
    acquire, release = PEERS[peer][1](path)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    events = []
    now = time.time_ns
    for _ in range(count):
        acquire()
        events.append(("got", now()))
        time.sleep(HOLD_SECONDS)
        events.append(("release", now()))
        release()
    out.write(json.dumps({"pid": os.getpid(), "events": events}) + "\n")
    out.flush()
    return 0


class ChildFailed(Exception):
    pass


def _pump(procs, bufs, deadline, until) -> None:
    """Read the children's stdout/stderr into bufs until until() or EOF on all, bounded by deadline."""
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        for name in ("stdout", "stderr"):
            f = getattr(p, name)
            if f is not None and not f.closed:
                sel.register(f, selectors.EVENT_READ, (i, name))
    try:
        while not until():
            if not sel.get_map():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            for key, _ in sel.select(timeout=min(left, 1.0)):
                i, name = key.data
                chunk = os.read(key.fd, 65536)
                if chunk:
                    bufs[i][name] += chunk
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
    finally:
        sel.close()


def pingpong(peer: str, path: str, count: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", peer, path, str(count)]
    procs = []
    bufs = [{"stdout": b"", "stderr": b""} for _ in range(2)]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
                )
            )
        try:
            _pump(
                procs,
                bufs,
                time.monotonic() + READY_LIMIT_SECONDS,
                lambda: all(b"\n" in b["stdout"] for b in bufs) or any(p.poll() is not None for p in procs),
            )
        except TimeoutError:
            raise ChildFailed(f"children not ready within {READY_LIMIT_SECONDS:.0f} s") from None
        for i, b in enumerate(bufs):
            if not b["stdout"].startswith(b"ready\n"):
                raise ChildFailed(f"child {i} did not start: {_tail(b['stderr'])}")
            b["stdout"] = b["stdout"][len(b"ready\n"):]
        for p in procs:  # both start at the same moment
            p.stdin.write(b"go\n")
        for p in procs:
            p.stdin.close()
        deadline = time.monotonic() + CHILD_LIMIT_SECONDS
        try:
            _pump(procs, bufs, deadline, lambda: False)
            for p in procs:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except (TimeoutError, subprocess.TimeoutExpired):
            raise ChildFailed(f"did not finish within {CHILD_LIMIT_SECONDS:.0f} s (killed)") from None
        results = []
        for i, (p, b) in enumerate(zip(procs, bufs)):
            if p.returncode != 0:
                raise ChildFailed(f"child {i} exited {p.returncode}: {_tail(b['stderr'])}")
            results.append(json.loads(b["stdout"].decode()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return analyse([r["events"] for r in results])


def _tail(stderr: bytes) -> str:
    lines = [l for l in stderr.decode(errors="replace").splitlines() if l.strip()]
    return lines[-1].strip() if lines else "(no stderr)"


def analyse(per_proc: list[list]) -> dict:
    merged = sorted(
        ((t, kind, who) for who, events in enumerate(per_proc) for kind, t in events),
        key=lambda e: (e[0], e[1] == "got"),  # at equal times a release sorts first
    )
    last_got = [max(t for kind, t in events if kind == "got") for events in per_proc]
    latencies, barges, solo = [], 0, 0
    for i, (t, kind, who) in enumerate(merged):
        if kind != "release":
            continue
        nxt = next((e for e in merged[i + 1:] if e[1] == "got"), None)
        if nxt is None:
            continue
        if nxt[2] != who:
            latencies.append((nxt[0] - t) / 1000.0)
        elif last_got[1 - who] > t:  # the other one still had acquisitions to make
            barges += 1
        else:
            solo += 1
    latencies.sort()
    n = len(latencies)
    contended = n + barges
    return {
        "handoffs": n,
        "median": statistics.median(latencies) if n else None,
        "p99": latencies[max(0, math.ceil(0.99 * n) - 1)] if n else None,
        "max": latencies[-1] if n else None,
        "barges": barges,
        "barge_pct": 100.0 * barges / contended if contended else None,
        "solo": solo,
        "wall_s": (merged[-1][0] - merged[0][0]) / 1e9,
    }


# --------------------------------------------------------------------------
# Reporting


def fs_type(path: str) -> str:
    real = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def fmt_us(v) -> str:
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f} us"
    return f"{v:.2f} us" if v < 100 else f"{v:.1f} us"


def lib_versions() -> str:
    out = []
    for name in LIBS:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 ping-pong acquisitions per process instead of 200")
    ap.add_argument(
        "--dir",
        action="append",
        default=None,
        help="directory to lock in (a fresh temp dir is made inside it); may be repeated "
        "(default: /tmp and, if present, /dev/shm)",
    )
    ap.add_argument("--peers", help="comma-separated subset of: " + ", ".join(PEERS))
    ap.add_argument("--child", nargs=3, metavar=("PEER", "PATH", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        peer, path, count = args.child
        try:
            return child_main(peer, path, int(count))
        except BaseException:
            traceback.print_exc()
            return 1

    wanted = set(PEERS) if not args.peers else set(args.peers.split(","))
    unknown = wanted - set(PEERS)
    if unknown:
        ap.error(f"unknown peers: {', '.join(sorted(unknown))}")
    count = 50 if args.quick else 200

    bases = args.dir or ["/tmp"] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
    dirs = []  # (label, temp dir)
    try:
        for base in bases:
            os.makedirs(base, exist_ok=True)
            dirs.append((f"`{base}` ({fs_type(base)})", tempfile.mkdtemp(prefix="portalock-peers-", dir=base)))

        cycle = {}
        for peer in (p for p in CYCLE_PEERS if p in wanted):
            for label, d in dirs:
                log(f"cycle     {peer:<22} {label}")
                try:
                    cycle[peer, label] = fmt_us(cycle_us(peer, os.path.join(d, f"cycle-{peer}.lock")))
                except Exception as e:  # noqa: BLE001 - reported in the table
                    cycle[peer, label] = f"failed: {type(e).__name__}: {e}"

        pp = {}
        for label, d in dirs:
            for peer in (p for p in PINGPONG_PEERS if p in wanted):
                log(f"ping-pong {peer:<22} {label}")
                try:
                    pp[peer, label] = pingpong(peer, os.path.join(d, f"pingpong-{peer}.lock"), count)
                except (ChildFailed, ValueError, KeyError) as e:
                    pp[peer, label] = f"failed: {e}"
    finally:
        for _, d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    print(f"Versions: {lib_versions()}; Python {platform.python_version()}.")
    print(
        f"Machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs. "
        f"Ping-pong: 2 processes x {count} acquisitions, hold {HOLD_SECONDS * 1000:.0f} ms."
    )
    print()
    if cycle:
        print("## Uncontended acquire + release (median of 7 rounds, ~0.3 s each)")
        print()
        print("| peer | " + " | ".join(label for label, _ in dirs) + " |")
        print("| --- |" + " --- |" * len(dirs))
        for peer in (p for p in CYCLE_PEERS if p in wanted):
            print(f"| {PEERS[peer][0]} | " + " | ".join(cycle[peer, label] for label, _ in dirs) + " |")
        print()
    for label, _ in dirs:
        peers = [p for p in PINGPONG_PEERS if p in wanted]
        if not peers:
            break
        print(f"## Ping-pong hand-off, {label}")
        print()
        print("| peer | hand-offs | median | p99 | max | barges | barges % | solo | wall |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for peer in peers:
            r = pp[peer, label]
            if isinstance(r, str):
                print(f"| {PEERS[peer][0]} | {r} | | | | | | | |")
                continue
            pct = "n/a" if r["barge_pct"] is None else f"{r['barge_pct']:.1f} %"
            print(
                f"| {PEERS[peer][0]} | {r['handoffs']} | {fmt_us(r['median'])} | {fmt_us(r['p99'])} "
                f"| {fmt_us(r['max'])} | {r['barges']} | {pct} | {r['solo']} | {r['wall_s']:.2f} s |"
            )
        print()
    print(
        "Hand-off latency: \"got\" of one process minus \"release\" (taken just before release()) of the other. "
        "Barge: the releaser re-acquired while the other still had acquisitions to make; "
        "barges % = barges / (hand-offs + barges). "
        "Solo: re-acquisitions after the other process had finished (no contention)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
