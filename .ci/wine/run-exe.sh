#!/usr/bin/env bash
# The cargo runner for the Windows target under Wine: runs a test
# executable with wine64. Wine now and then fails to start a process at all:
# seen once in CI, an executable with no tests exited 1 before its test
# harness printed its first line ("running N tests"). A run that failed
# without printing anything is started once more, and said so; a run that
# printed anything stands as it is, so a failing test never passes by a
# retry, with one exception: Wine also fails, now and then, to start a
# process that a test starts (CreateProcess answers ERROR_INTERNAL_ERROR,
# "os error 1359", seen in CI from `portalock run` and from a unit test's
# child). A run whose output names that error is run once more, and said
# so; no test of portalock expects that error.
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for attempt in 1 2; do
    wine64 "$@" | tee "$out"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then
        exit 0
    fi
    if [ -s "$out" ] && ! grep -qE 'os error 1359|code: 1359' "$out"; then
        exit "$status"
    fi
    echo "wine.sh: $1 exited $status, before printing anything or after Wine failed to start a process (os error 1359) (attempt $attempt of 2)" >&2
done
exit "$status"
