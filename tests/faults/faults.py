"""Drives the fault-injection build of pier (PIER_FAULTS=ON, ASan+UBSan) through every
server with many seeds; see tests/faults/run.sh. Exits 0 only if no run found a bug and
at least --floor faults were injected in all (10,000 for the full run; none required for
a partial one, --only or --seeds, unless --floor says so).

  faults.py --build build-faults [--only echo,http] [--seeds 1,2,3] [--rate 0.02] [--keep-going]
"""
import argparse
import collections
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import echo_faults  # noqa: E402
import http_faults  # noqa: E402
import msg_faults  # noqa: E402
import regress  # noqa: E402
import startup_faults  # noqa: E402
import tls_faults  # noqa: E402
from lib import Failure  # noqa: E402

# Each scenario: its run function, its default seeds and the fault rates its seeds take
# in turn (the probability that one call fails). A low rate lets connections live long
# enough to reach deep states; a high one hits set-up and tear-down paths.
SCENARIOS = collections.OrderedDict([
    ("regress", (regress.run, [0], [0])),
    ("startup", (startup_faults.run, list(range(1, 25)), [0.005, 0.02, 0.1, 0.3])),
    ("echo", (echo_faults.run, list(range(1, 11)), [0.01, 0.03, 0.1])),
    ("http", (http_faults.run, list(range(1, 11)), [0.01, 0.02, 0.05])),
    ("msg", (msg_faults.run_server, list(range(1, 8)), [0.01, 0.02, 0.05])),
    ("reconnect", (msg_faults.run_client, list(range(1, 7)), [0.1, 0.2])),
    ("tls", (tls_faults.run, list(range(1, 7)), [0.01, 0.03, 0.1])),
])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--floor", type=int, default=None)
    ap.add_argument("--keep-going", action="store_true")
    a = ap.parse_args()
    if a.floor is None:
        a.floor = 0 if a.only or a.seeds else 10000
    binary = os.path.abspath(os.path.join(a.build, "pier"))
    if not os.access(binary, os.X_OK):
        print("faults: no %s (build with -DPIER_FAULTS=ON first)" % binary)
        return 2
    only = [s for s in a.only.split(",") if s] or list(SCENARIOS)
    t0 = time.monotonic()
    total, failures = 0, []
    for name in only:
        fn, seeds, rates = SCENARIOS[name]
        if a.seeds:
            seeds = [int(s) for s in a.seeds.split(",")]
        stats = collections.Counter()
        injected, ts = 0, time.monotonic()
        for i, seed in enumerate(seeds):
            rate = a.rate or rates[i % len(rates)]
            t_seed = time.monotonic()
            try:
                n, detail = fn(binary, seed, rate, stats)
            except Failure as e:
                failures.append("%s seed %d" % (name, seed))
                print("FAIL %s seed %d (rate %g): %s" % (name, seed, rate, e), flush=True)
                if not a.keep_going:
                    break
                continue
            except Exception:
                failures.append("%s seed %d" % (name, seed))
                print("FAIL %s seed %d: driver error\n%s" % (name, seed, traceback.format_exc()), flush=True)
                if not a.keep_going:
                    break
                continue
            injected += n or 0
            print("  %-9s seed %-3d rate %-5g %5.1f s %6s faults injected  %s" % (
                name, seed, rate, time.monotonic() - t_seed, n, detail), flush=True)
        total += injected
        extra = ", ".join("%s %d" % kv for kv in sorted(stats.items()))
        print("%-9s %d seeds, %d faults injected, %.1f s%s" % (name, len(seeds), injected, time.monotonic() - ts,
                                                               ("; " + extra) if extra else ""), flush=True)
        if failures and not a.keep_going:
            break
    print("faults: %d injected in all, %.1f s, %d failed runs%s" % (
        total, time.monotonic() - t0, len(failures), (": " + ", ".join(failures)) if failures else ""))
    if failures:
        return 1
    if total < a.floor:
        print("faults: only %d faults injected, below the floor of %d: the check would be vacuous" % (total, a.floor))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
