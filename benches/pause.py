#!/usr/bin/env python3
"""Pause/resume latency: `husk pause` / `husk resume` vs `runc pause` /
`runc resume` on the same running container kind.

The bundle: the busybox rootfs running `sleep 100000` (a container that is
busy doing nothing, as most paused ones are). Each runtime runs one
container detached in a cgroup of its own, then pauses and resumes it N
times, alternating with the other runtime; measured from the host as the
wall time of each command, which is what an engine waits for (`podman
pause` runs `RUNTIME pause` and reads the state). husk freezes the cgroup
holding the VMM and its fs server (the whole VM); runc freezes the
container's processes. Both wait for the kernel's `frozen 1`.

Needs a KVM with vmx/svm for husk: run it through tests/testhost/run (make
bench-pause does). Prints a Markdown table; --json FILE also writes the raw
numbers.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from common import bench_args, make_bundle, ms_summary, version, write_json
from common import timed_ok as timed


def main():
    ap = bench_args(__doc__, runs=10)
    args = ap.parse_args()
    if not shutil.which("runc"):
        sys.exit("runc not found (scripts/install-deps.sh installs it)")
    work = tempfile.mkdtemp(prefix="husk-pause-")
    state = os.path.join(work, "state")
    runtimes = {"husk": [args.husk, "--root", state], "runc": ["runc", "--root", state + "-runc"]}
    results = {name: {"pause": [], "resume": []} for name in runtimes}
    started = []
    try:
        for name, rt in runtimes.items():
            bundle = os.path.join(work, f"b-{name}")
            make_bundle(bundle, ["sleep", "100000"])
            # A cgroup of its own (`/<id>` by default for both). Its stdio
            # goes nowhere: a detached container keeps what it is given
            # open, and a pipe would never end.
            subprocess.run(rt + ["run", "--detach", "--bundle", bundle, f"pause-{name}"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True, timeout=600)
            started.append((rt, f"pause-{name}"))
        for _ in range(args.runs):
            for name, rt in runtimes.items():
                cid = f"pause-{name}"
                results[name]["pause"].append(timed(rt + ["pause", cid]))
                results[name]["resume"].append(timed(rt + ["resume", cid]))
    finally:
        for rt, cid in started:
            subprocess.run(rt + ["delete", "--force", cid], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"pause / resume of a running `sleep` container, {args.runs} runs each:")
    print()
    print("| runtime | pause, median (min-max) | resume, median (min-max) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {ms_summary(r['pause'])} | {ms_summary(r['resume'])} |")
    husk, runc = results["husk"], results["runc"]
    print()
    print(f"husk/runc: pause {statistics.median(husk['pause']) / statistics.median(runc['pause']):.2f}, "
          f"resume {statistics.median(husk['resume']) / statistics.median(runc['resume']):.2f}")
    if args.json:
        write_json(args.json, "pause", {"args": vars(args), "results": results,
                                        "runc": version(["runc", "--version"])})


if __name__ == "__main__":
    main()
