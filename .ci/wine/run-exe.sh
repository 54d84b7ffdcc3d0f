#!/usr/bin/env bash
# The cargo runner for the Windows target under Wine: runs a test
# executable with wine64. Wine now and then fails to start a process at all:
# seen once in CI, an executable with no tests exited 1 before its test
# harness printed its first line ("running N tests"). A run that failed
# without printing anything is started once more, and said so; a run that
# printed anything stands as it is, so a failing test never passes by a
# retry.
set -uo pipefail
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
for attempt in 1 2; do
    wine64 "$@" | tee "$out"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ] || [ -s "$out" ]; then
        exit "$status"
    fi
    echo "wine.sh: $1 exited $status before printing anything (attempt $attempt of 2)" >&2
done
exit "$status"
