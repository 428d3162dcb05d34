#!/bin/sh
# The fault-injection run (make test-faults): BUILD_DIR holds a pier built with
# -DPIER_FAULTS=ON, ideally under ASan+UBSan. Drives every server through many seeds
# (tests/faults/faults.py says how) and fails on a sanitizer report, a leak, a hang, a
# corrupt stream, a server that does not recover or exit cleanly, or too few faults.
#   tests/faults/run.sh build-faults [--only http,msg] [--seeds 1,2] [--rate 0.05]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: tests/faults/run.sh BUILD_DIR [faults.py flags]}
shift
if ! grep -q 'PIER_FAULTS:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    echo "tests/faults/run.sh: $build is not configured with -DPIER_FAULTS=ON" >&2
    exit 2
fi
exec env PYTHONDONTWRITEBYTECODE=1 timeout -k 10 600 /usr/bin/python3 "$here/faults.py" --build "$build" "$@"
