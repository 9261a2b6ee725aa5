#!/usr/bin/env python3
"""Container start benchmark: `husk run` vs `runc run` vs `crun run`.

The same bundle (a busybox rootfs, process `/bin/true`, no terminal) is run
end to end by each runtime, alternating, N times; each run uses a fresh
container id and is deleted after. Measured from the host: wall time of the
`run` command (create + start + the process + exit), which is what an engine
waits for. husk's rootfs image is cached after the first run (the cold run is
reported separately). Needs a KVM with vmx/svm for husk: run it through
tests/testhost/run (make bench-run does).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from rootfs import busybox_rootfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_bundle(path):
    rootfs = os.path.join(path, "rootfs")
    busybox_rootfs(rootfs)
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["/bin/true"],
                    "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def timed(argv):
    start = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.monotonic() - start, p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle)
        runtimes = {
            "husk": [args.husk, "--root", os.path.join(work, "husk-state")],
            "runc": ["runc", "--root", os.path.join(work, "runc-state")],
            "crun": ["crun", "--root", os.path.join(work, "crun-state")],
        }
        # husk's first run builds the cached rootfs image: report it apart.
        cold, p = timed(runtimes["husk"] + ["run", "--bundle", bundle, "cold"])
        if p.returncode != 0:
            print(f"husk cold run failed: {p.stderr}", file=sys.stderr)
            sys.exit(1)
        times = {name: [] for name in runtimes}
        for i in range(args.runs):
            for name, base in runtimes.items():
                cid = f"{name}-{i}"
                t, p = timed(base + ["run", "--bundle", bundle, cid])
                subprocess.run(base + ["delete", "--force", cid], capture_output=True)
                if p.returncode != 0:
                    print(f"{name} run {i} failed ({p.returncode}): {p.stderr}", file=sys.stderr)
                    sys.exit(1)
                times[name].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"run benchmark: `run` of /bin/true, {args.runs} runs each, busybox bundle")
    print()
    print("| runtime | median | min-max | ratio to crun |")
    print("|---|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {med[name] * 1000:.0f} ms | {min(v) * 1000:.0f}-{max(v) * 1000:.0f} ms | {med[name] / med['crun']:.1f}x |")
    print()
    print(f"husk cold (first run, builds the rootfs image): {cold * 1000:.0f} ms")


if __name__ == "__main__":
    main()
