#!/bin/sh
# Runs every libFuzzer target built in BUILD_DIR/fuzz for SECONDS seconds each, on a copy
# of its seed corpus (fuzz/corpus/<name>, where fuzz_http_parser uses corpus/http_parser
# or else corpus/http), so the checked-in corpus never changes. Exits non-zero if a
# target crashes or none was built.
#   usage: fuzz/run.sh BUILD_DIR SECONDS
set -u
if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$1
secs=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pier-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

found=0
failed=0
for bin in "$build"/fuzz/fuzz_*; do
    [ -x "$bin" ] || continue
    found=$((found + 1))
    name=$(basename "$bin")
    short=${name#fuzz_}
    seeds="$here/corpus/$short"
    [ -d "$seeds" ] || seeds="$here/corpus/${short%%_*}"
    corpus="$work/$name/corpus"
    mkdir -p "$corpus"
    [ -d "$seeds" ] && cp "$seeds"/* "$corpus"/ 2>/dev/null
    echo "== $name for ${secs}s ($(ls "$corpus" | wc -l) seeds)"
    if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/$name/" "$corpus" >"$work/$name/log" 2>&1; then
        grep -E 'stat::number_of_executed_units|Done' "$work/$name/log" | tail -2
    else
        failed=$((failed + 1))
        echo "!! $name failed:"
        tail -60 "$work/$name/log"
        for a in "$work/$name"/crash-* "$work/$name"/leak-* "$work/$name"/timeout-* "$work/$name"/oom-*; do
            [ -f "$a" ] || continue
            mkdir -p "$build/fuzz-artifacts"
            cp "$a" "$build/fuzz-artifacts/"
            echo "   artifact kept: $build/fuzz-artifacts/$(basename "$a")"
        done
    fi
done
if [ "$found" -eq 0 ]; then
    echo "no fuzz targets in $build/fuzz (configure with -DPIER_FUZZ=ON and clang)" >&2
    exit 1
fi
[ "$failed" -eq 0 ] || exit 1
echo "all $found fuzz targets ran ${secs}s without a crash"
