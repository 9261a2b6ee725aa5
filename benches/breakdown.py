#!/usr/bin/env python3
"""Where husk's container start goes: `husk create` + `husk start` of
/bin/true, N times, cut into slices by the container's start-up timeline.

Every moment is the host's CLOCK_MONOTONIC (one clock for all processes):
this script's own reading just before it spawns `husk create`; the marks
`create` and `start` write (`create.begin` ... `start.end`); the VMM's
(`vmm.main`, `vmm.go` once create's hooks ran, `vmm.build` when the VM
build starts, `vmm.vcpus` just before the vCPU threads start,
`vmm.agent` once husk-init's agent answered, `vmm.created`); and husk-init's
own, which it writes to the boot timer port and the VMM timestamps on
arrival (`guest.init`: init's first instructions, `guest.agent`: the agent
listens, `guest.exec`: the container process has been executed). They are
read from `<state>/<id>/timeline` before the container is deleted.

Between `create` returning and `start` there is only this script's spawn of
`husk start` (an engine's own gap). Needs a KVM with vmx/svm: run it through
tests/testhost/run (make bench-breakdown does).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import bench_args, make_bundle, write_json

# How long a container's VMM may take to end after its process did.
END_WAIT_S = 60
# The slices, each from one moment to the next; the first moment is this
# script's, taken right before it spawns `husk create`.
SLICES = [
    ("husk create process start", "spawn", "create.begin"),
    ("bundle, state, rootfs image (cached)", "create.begin", "create.image"),
    ("VMM process spawn", "create.image", "vmm.main"),
    ("host hooks / go-ahead", "vmm.main", "vmm.go"),
    ("network attach, VM config", "vmm.go", "vmm.build"),
    ("KVM: VM, memory, kernel load, devices, vCPUs", "vmm.build", "vmm.vcpus"),
    ("guest kernel boot to init", "vmm.vcpus", "guest.init"),
    ("init to agent listening", "guest.init", "guest.agent"),
    ("agent connect + container setup", "guest.agent", "vmm.created"),
    ("readiness to create's exit", "vmm.created", "create.end"),
    ("create exit to start (engine gap)", "create.end", "start.begin"),
    ("start to the process's first instruction", "start.begin", "guest.exec"),
]
TOTAL = ("total: spawn of create to the process's first instruction", "spawn", "guest.exec")


def read_timeline(path):
    marks = {}
    with open(path) as f:
        for line in f:
            name, _, ns = line.strip().rpartition(" ")
            if name and ns.isdigit():
                marks.setdefault(name, int(ns))
    return marks


def one_start(husk, root, bundle, cid):
    # The container's stdio is create's: the VMM keeps it open, so create's
    # output goes to files, not to pipes a wait would block on.
    with tempfile.TemporaryFile() as err:
        spawn = time.monotonic_ns()
        p = subprocess.run(husk + ["create", "--bundle", bundle, cid],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        if p.returncode != 0:
            err.seek(0)
            sys.exit(f"husk create failed: {err.read().decode(errors='replace').strip()}")
    p = subprocess.run(husk + ["start", cid], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"husk start failed: {p.stderr.strip()}")
    deadline = time.monotonic() + END_WAIT_S
    while True:
        st = subprocess.run(husk + ["state", cid], capture_output=True, text=True)
        if '"stopped"' in st.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    marks = read_timeline(os.path.join(root, cid, "timeline"))
    marks["spawn"] = spawn
    subprocess.run(husk + ["delete", "--force", cid], capture_output=True)
    return marks


def main():
    args = bench_args(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, ["/bin/true"])
        root = os.path.join(work, "state")
        husk = [args.husk, "--root", root]
        one_start(husk, root, bundle, "warm")  # builds the cached rootfs image
        runs = [one_start(husk, root, bundle, f"b{i}") for i in range(args.runs)]
    slices = {}
    for label, a, b in SLICES + [TOTAL]:
        vals = [(m[b] - m[a]) / 1e6 for m in runs if a in m and b in m]
        slices[label] = vals
    print(f"husk start-up breakdown: create + start of /bin/true, {args.runs} runs (after a warm-up), "
          "medians with min-max, host monotonic clock")
    print()
    print("| slice | median | min-max | share of total |")
    print("|---|---|---|---|")
    total = statistics.median(slices[TOTAL[0]]) if slices[TOTAL[0]] else None
    for label, _, _ in SLICES + [TOTAL]:
        v = slices[label]
        if not v:
            print(f"| {label} | missing | | |")
            continue
        med = statistics.median(v)
        share = f"{100 * med / total:.0f}%" if total else ""
        print(f"| {label} | {med:.1f} ms | {min(v):.1f}-{max(v):.1f} ms | {share} |")
    missing = sorted({n for _, a, b in SLICES for n in (a, b)} - set().union(*[set(m) for m in runs]))
    if missing:
        print(f"\nmissing marks: {', '.join(missing)}")
    if args.json:
        write_json(args.json, "breakdown", {"runs": args.runs, "process": ["/bin/true"],
                                            "slices_ms": slices, "marks_ns": runs})


if __name__ == "__main__":
    main()
