#!/usr/bin/env python3
"""Checkpoint/restore latency: `husk checkpoint` / `husk restore` vs `runc
checkpoint` / `runc restore` (CRIU) on the same running container kind.

The bundle: the busybox rootfs running a shell loop (`while true; do sleep
1; done`: a shell and a child, as small as containers come). Each runtime
runs one container detached, then checkpoints it into a fresh directory and
restores it from there, N times, alternating with the other runtime;
measured from the host as the wall time of each command, which is what an
engine waits for. Also the checkpoint's size on disk (allocated blocks: a
VM's is its guest RAM's non-zero pages; CRIU's the processes' pages).

husk writes the whole VM (guest RAM, device and vCPU state, the fs
servers' open files) and restores it without a boot; runc has CRIU dump and
restore the container's processes. A runtime whose checkpoint fails (CRIU
needs kernel features a host may lack) is reported as such.

Needs a KVM with vmx/svm for husk: run it through tests/testhost/run (make
bench-checkpoint does). Prints a Markdown table; --json FILE also writes the
raw numbers.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import bench_args, make_bundle, ms_summary, version, write_json

LOOP = ["sh", "-c", "while true; do sleep 1; done"]


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def run_timed(argv):
    """(seconds, None), or (None, the end of its error) when it failed.
    Its stderr goes to a file, not a pipe: a detached container (`restore
    --detach`) keeps what it was given open, and a pipe would never end."""
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=err, timeout=600)
        elapsed = time.monotonic() - start
        if p.returncode != 0:
            err.seek(0)
            text = err.read().decode(errors="replace")
            return None, " ".join(text.split())[-300:] or f"exit {p.returncode}"
    return elapsed, None


def main():
    ap = bench_args(__doc__, runs=5)
    args = ap.parse_args()
    if not shutil.which("runc"):
        sys.exit("runc not found (scripts/install-deps.sh installs it)")
    work = tempfile.mkdtemp(prefix="husk-ckpt-")
    state = os.path.join(work, "state")
    runtimes = {"husk": [args.husk, "--root", state], "runc": ["runc", "--root", state + "-runc"]}
    results = {name: {"checkpoint": [], "restore": [], "bytes": [], "error": None}
               for name in runtimes}
    bundles = {}
    running = []
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for name, rt in runtimes.items():
            bundle = os.path.join(work, f"b-{name}")
            make_bundle(bundle, LOOP)
            bundles[name] = bundle
            subprocess.run(rt + ["run", "--detach", "--bundle", bundle, f"ck-{name}"],
                           check=True, timeout=600, **quiet)
            running.append((rt, f"ck-{name}"))
        for i in range(args.runs):
            for name, rt in runtimes.items():
                if results[name]["error"]:
                    continue
                cid = f"ck-{name}"
                image = os.path.join(work, f"img-{name}-{i}")
                secs, err = run_timed(rt + ["checkpoint", "--image-path", image, cid])
                if err:
                    results[name]["error"] = err
                    continue
                results[name]["checkpoint"].append(secs)
                results[name]["bytes"].append(disk_bytes(image))
                secs, err = run_timed(rt + ["restore", "--detach", "--image-path", image,
                                            "--bundle", bundles[name], cid])
                if err:
                    results[name]["error"] = err
                    continue
                results[name]["restore"].append(secs)
                shutil.rmtree(image, ignore_errors=True)
    finally:
        for rt, cid in running:
            subprocess.run(rt + ["delete", "--force", cid], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"checkpoint / restore of a running shell loop, {args.runs} runs each:")
    print()
    print("| runtime | checkpoint, median (min-max) | restore, median (min-max) | size on disk |")
    print("|---|---|---|---|")
    for name, r in results.items():
        if r["error"]:
            print(f"| {name} | failed: {r['error']} | | |")
            continue
        size = statistics.median(r["bytes"]) / (1 << 20)
        print(f"| {name} | {ms_summary(r['checkpoint'])} | {ms_summary(r['restore'])} | "
              f"{size:.1f} MiB |")
    husk, runc = results["husk"], results["runc"]
    if not husk["error"] and not runc["error"]:
        print()
        print(f"husk/runc: checkpoint "
              f"{statistics.median(husk['checkpoint']) / statistics.median(runc['checkpoint']):.2f}, "
              f"restore {statistics.median(husk['restore']) / statistics.median(runc['restore']):.2f}")
    if args.json:
        write_json(args.json, "checkpoint", {"args": vars(args), "results": results,
                                             "runc": version(["runc", "--version"]),
                                             "criu": version(["criu", "--version"])})


if __name__ == "__main__":
    main()
