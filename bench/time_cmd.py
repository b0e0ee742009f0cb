#!/usr/bin/env python3
"""Times whole processes: `time_cmd.py RUNS [--setup 'shell cmd'] -- CMD...` prints the median
and mean wall time in ms. posix_spawn + waitpid keeps the harness's own cost near 0.2 ms
(compare with `true`); a setup command, if given, runs untimed before each run."""
import os, statistics, subprocess, sys, time

args = sys.argv[1:]
runs = int(args.pop(0))
setup = None
if args[0] == "--setup":
    setup = args[1]
    args = args[2:]
assert args.pop(0) == "--"
devnull = os.open(os.devnull, os.O_WRONLY)
samples = []
for _ in range(runs):
    if setup:
        subprocess.run(setup, shell=True, check=True)
    fa = [(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)]
    t0 = time.perf_counter()
    pid = os.posix_spawnp(args[0], args, os.environ, file_actions=fa)
    _, status = os.waitpid(pid, 0)
    samples.append((time.perf_counter() - t0) * 1000)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{args} exited {os.waitstatus_to_exitcode(status)}")
print(f"median {statistics.median(samples):.2f} ms, mean {statistics.mean(samples):.2f} ms")
