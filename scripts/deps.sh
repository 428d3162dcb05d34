#!/usr/bin/env bash
# Installs what pier's build and tests need on Debian 12, and nothing when it is all present.
# Usage: scripts/deps.sh [build|bench]   (build: compiler, cmake, jansson, test clients;
#                                          bench: also the peer servers, load and profiling tools)
set -eu
want=(gcc clang cmake ninja-build make pkg-config libjansson-dev libcmocka-dev libssl-dev openssl curl wrk python3
      python3-websockets libclang-rt-14-dev zlib1g-dev node-ws chromium haproxy prometheus nghttp2-client)
if [ "${1:-build}" = bench ]; then
    want+=(g++ libuv1-dev libevent-dev libboost-dev libboost-system-dev nginx-light h2o util-linux iproute2 procps linux-perf valgrind)
fi
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
