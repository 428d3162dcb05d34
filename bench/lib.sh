# Shared helpers for bench/echo and bench/http (sourced, not run).
# Servers are started pinned to CPU 0 and loads to CPU 1; every process started through
# start_server is stopped when the script exits, however it exits.

HZ=$(getconf CLK_TCK)
PIDS=()

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
note() { echo "$BENCH_NAME: $*" >&2; }

bench_checks() {
    [ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (server on CPU 0, load on CPU 1)"
    command -v taskset >/dev/null || die "taskset missing (util-linux); run scripts/deps.sh bench"
    command -v ss >/dev/null || die "ss missing (iproute2)"
    # Many connections need many descriptors on each side; raise the soft limit.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [ "$(ulimit -n)" -ge 2100 ] || note "warning: ulimit -n is $(ulimit -n); 1000 connections may fail"
    # One benchmark at a time: two runs pinned to the same CPUs spoil each other's numbers.
    exec 9>"${TMPDIR:-/tmp}/pier-bench.lock"
    if ! flock -n 9; then
        note "another bench/echo or bench/http run is going on; waiting for it (up to 10 min)"
        flock -w 600 9 || die "gave up waiting for the other benchmark run"
    fi
    local busy
    busy=$(busy_percent)
    if [ "$busy" -gt 10 ]; then
        note "warning: CPUs already ${busy}% busy before the benchmark (other work running);"
        note "         the server and the load share their CPUs with it, so numbers will be low and noisy"
    fi
    BUSY_BEFORE=$busy
}

# Percent of all CPUs busy over one second, from /proc/stat (user+nice+system+irq+softirq+steal).
busy_percent() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    echo "$a $b" | awk '{ d = $4 - $2; print (d > 0 ? int(100 * ($3 - $1) / d + 0.5) : 0) }'
}

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do
        pkill -KILL -P "$p" 2>/dev/null # children (nginx workers) by parent id
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PIDS=()
    [ -n "${TMPD:-}" ] && rm -rf "$TMPD"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop() { # stop PID: TERM, up to 2 s for a clean exit, then KILL (with its children)
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    pkill -KILL -P "$1" 2>/dev/null
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# CPU ticks used by this shell's finished, waited-for children (cutime+cstime): the
# difference around a load run is the load generator's CPU time.
load_ticks() {
    local rest
    rest=$(cat /proc/$$/stat)
    rest=${rest##*) }
    set -- $rest
    echo $((${14} + ${15}))
}

# CPU ticks of a process and its child processes, all threads: "TOTAL USER", where
# TOTAL is utime+stime and USER is utime alone (the rest is kernel time).
cpu_ticks() {
    local total=0 user=0 p rest
    for p in "$1" $(pgrep -P "$1"); do
        rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${rest##*) } # fields after the ")" that ends the command name
        set -- $rest
        total=$((total + ${12} + ${13}))
        user=$((user + ${12}))
    done
    echo "$total $user"
}

# free_port PORT: PORT, or the next port up that nothing listens on (up to 100 tries).
free_port() {
    local p=$1
    while listening "$p"; do
        p=$((p + 1))
        [ "$p" -lt $(($1 + 100)) ] || { echo "$1"; return 1; }
    done
    echo "$p"
}

# start_server NAME PORT LOG CMD...: runs CMD pinned to CPU 0 and waits up to 5 s for
# the port to listen. Sets SPID. Returns 1 (after saying why) if it did not come up.
start_server() {
    local name=$1 port=$2 log=$3
    shift 3
    if listening "$port"; then
        note "port $port already in use, skipping $name"
        return 1
    fi
    taskset -c 0 "$@" >"$log" 2>&1 9>&- &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 50); do
        listening "$port" && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    note "$name did not start listening on $port (log: $log)"
    sed 's/^/    /' "$log" >&2
    stop "$SPID"
    return 1
}

# build OUT SRC COMPILER FLAGS...: compiles bench/peers/SRC into bench/build/OUT when
# the binary is missing or older than its source.
build() {
    local out=$1 src=$2 cc=$3
    shift 3
    mkdir -p "$ROOT/bench/build"
    if [ ! -x "$ROOT/bench/build/$out" ] || [ "$ROOT/bench/peers/$src" -nt "$ROOT/bench/build/$out" ]; then
        note "building $out"
        $cc -O2 -Wall -Wextra -o "$ROOT/bench/build/$out" "$ROOT/bench/peers/$src" "$@" || die "building $out failed"
    fi
}

# record_result KEY ROW: keep a printed row (columns after the first two) for the summary.
declare -A RESULTS
RESULT_KEYS=()
record_result() {
    [ -n "${RESULTS[$1]:-}" ] || RESULT_KEYS+=("$1")
    RESULTS[$1]+="$2"$'\n'
}

# print_summary ROUNDS OUT FORMAT...: with more than one round, the median of each
# numeric column per server and case (in the order first seen), one printf FORMAT per
# column after the first two, appended to OUT.
print_summary() {
    [ "$1" -gt 1 ] || return 0
    local rounds=$1 out=$2 k
    shift 2
    echo "# median of $rounds rounds" | tee -a "$out"
    for k in "${RESULT_KEYS[@]}"; do
        printf '%s' "${RESULTS[$k]}" | awk -v fmts="$*" '
            { n++; name = $1; c = $2; ncol = NF
              for (i = 3; i <= NF; i++) { v = $i; sub("%", "", v); col[i, n] = v + 0 } }
            END {
                split(fmts, f, " ")
                line = sprintf("%-7s %-11s", name, c)
                for (i = 3; i <= ncol; i++) {
                    for (a = 1; a <= n; a++) tmp[a] = col[i, a]
                    for (a = 1; a <= n; a++)
                        for (b = a + 1; b <= n; b++)
                            if (tmp[b] < tmp[a]) { t = tmp[a]; tmp[a] = tmp[b]; tmp[b] = t }
                    m = n % 2 ? tmp[(n + 1) / 2] : (tmp[n / 2] + tmp[n / 2 + 1]) / 2
                    line = line " " sprintf(f[i - 2], m)
                }
                print line "   (" n " runs)"
            }' | tee -a "$out"
    done
}

# field NAME LINE: the value of NAME=value in a line of output.
field() {
    local re="(^| )$1=([^ ]+)"
    [[ $2 =~ $re ]] && echo "${BASH_REMATCH[2]}"
}

machine_line() {
    echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r); ${BUSY_BEFORE:-?}% busy before the run"
}
