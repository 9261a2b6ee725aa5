#!/usr/bin/env python3
"""Where husk's container start goes: `husk create` + `husk start` of
/bin/true, N times in each start-up mode, cut into slices by the
container's start-up timeline.

The two modes (common.HUSK_MODES) run the same rootfs: "restore", husk's
default, maps the memory of a snapshot of a booted template VM and restores
its devices and vCPUs; "cold" (config.json annotated `io.husk.snapshot:
"false"`) boots the guest kernel. One warm-up container of each mode comes
first (restore's builds the cached rootfs image and the template VM: its
template slice is printed apart), then the modes alternate, run after run.

Every moment is the host's CLOCK_MONOTONIC (one clock for all processes):
this script's own reading just before it spawns `husk create`; the marks
`create` and `start` write (`create.begin` ... `start.end`); the VMM's
(`vmm.main`, `vmm.go` once create's hooks ran, `vmm.template` once the
template is found or built (restore only), `vmm.build` when the VM build
starts, `vmm.restored` once guest memory is mapped and the devices' and
vCPUs' state restored (restore only), `vmm.vcpus` just before the vCPU
threads start, `vmm.agent` once husk-init's agent answered, `vmm.created`);
and husk-init's own, which it writes to the boot timer port and the VMM
timestamps on arrival (`guest.init`: init's first instructions,
`guest.agent`: the agent listens, both cold only: a restored guest booted
in the template; `guest.holder`: the container's holder process runs,
forked and executed in the container's namespaces; `guest.setup`: the
holder made the container's file systems; `guest.exec`: the container
process has been executed).
They are read from `<state>/<id>/timeline` before the container is deleted.
Each mode's slices chain from the spawn of `create` to `guest.exec`, so
they add up to its total; a slice whose marks are missing is reported so.

With `--userns` every bundle also has a new user namespace (container ids
0-65535 on host ids 100000-165535): the VMM then does its privileged work
on one thread before it enters the namespace (docs/oci.md, "The state
pid's user namespace"), marked `vmm.userns` once its worker has the host's
paths back; the slice from `vmm.build` to it is the jail, the view and
the namespace.

Between `create` returning and `start` there is only this script's spawn of
`husk start` (an engine's own gap). Needs a KVM with vmx/svm: run it through
tests/testhost/run (make bench-breakdown does).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import HUSK_MODES, bench_args, make_bundle, variant_bundle, write_json

# How long a container's VMM may take to end after its process did.
END_WAIT_S = 60
# The slices of each mode, each from one moment to the next; the first
# moment is this script's, taken right before it spawns `husk create`.
SLICES_COLD = [
    ("husk create process start", "spawn", "create.begin"),
    ("bundle, state, rootfs (share, or cached image)", "create.begin", "create.rootfs"),
    ("VMM process spawn", "create.rootfs", "vmm.main"),
    ("host hooks / go-ahead", "vmm.main", "vmm.go"),
    ("network attach, VM config", "vmm.go", "vmm.build"),
    ("KVM: VM, memory, kernel load, devices, vCPUs", "vmm.build", "vmm.vcpus"),
    ("guest kernel boot to init", "vmm.vcpus", "guest.init"),
    ("init to agent listening", "guest.init", "guest.agent"),
    ("agent connect, Create to the holder running (fork, exec)", "guest.agent", "guest.holder"),
    ("holder: the container's mounts, devices, masks", "guest.holder", "guest.setup"),
    ("setup answered to created", "guest.setup", "vmm.created"),
    ("readiness to create's exit", "vmm.created", "create.end"),
    ("create exit to start (engine gap)", "create.end", "start.begin"),
    ("start to the process's first instruction", "start.begin", "guest.exec"),
]
SLICES_RESTORE = [
    ("husk create process start", "spawn", "create.begin"),
    ("bundle, state, rootfs (share, or cached image)", "create.begin", "create.rootfs"),
    ("VMM process spawn", "create.rootfs", "vmm.main"),
    ("host hooks / go-ahead", "vmm.main", "vmm.go"),
    ("VM config, template lookup (cached)", "vmm.go", "vmm.template"),
    ("template found to VM build", "vmm.template", "vmm.build"),
    ("restore: KVM VM, memory map, devices, vCPU state", "vmm.build", "vmm.restored"),
    ("vCPU threads start", "vmm.restored", "vmm.vcpus"),
    ("agent connect (already listening)", "vmm.vcpus", "vmm.agent"),
    ("Create to the holder running (agent's part, fork, exec)", "vmm.agent", "guest.holder"),
    ("holder: the container's mounts, devices, masks", "guest.holder", "guest.setup"),
    ("setup answered to created", "guest.setup", "vmm.created"),
    ("readiness to create's exit", "vmm.created", "create.end"),
    ("create exit to start (engine gap)", "create.end", "start.begin"),
    ("start to the process's first instruction", "start.begin", "guest.exec"),
]
SLICES = {"restore": SLICES_RESTORE, "cold": SLICES_COLD}
MODE_TEXT = {"restore": "restored from the template VM's snapshot (husk's default)",
             "cold": "cold boot of the guest kernel (io.husk.snapshot: \"false\")"}
TOTAL = ("total: spawn of create to the process's first instruction", "spawn", "guest.exec")
# The restore warm-up's slice that builds the template VM (boot + snapshot).
TEMPLATE_BUILD = ("template VM build (first container: boot, snapshot)", "vmm.go", "vmm.template")
# With --userns: the user namespace's part of the VMM, after vmm.build.
USERNS_SLICE = ("jail, view, user namespace (one thread), worker start", "vmm.build", "vmm.userns")
# Container ids 0-65535 on these host ids, with --userns.
USERNS_MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def with_userns(slices):
    """`slices` with USERNS_SLICE put in after vmm.build."""
    out = []
    for label, a, b in slices:
        if a == USERNS_SLICE[1]:
            out.append(USERNS_SLICE)
            a = USERNS_SLICE[2]
        out.append((label, a, b))
    return out


for _slices in list(SLICES.values()) + [with_userns(s) for s in SLICES.values()]:
    # Each slice starts where the one before ended, the first at the total's
    # start and the last at its end: they add up to the total.
    assert [a for _, a, _ in _slices] == [TOTAL[1]] + [b for _, _, b in _slices[:-1]]
    assert _slices[-1][2] == TOTAL[2]


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


def summarize(slices, runs):
    """{label: [ms per run that has both marks]} of `slices` and the total."""
    return {label: [(m[b] - m[a]) / 1e6 for m in runs if a in m and b in m]
            for label, a, b in slices + [TOTAL]}


def print_table(mode, slices, runs, values):
    print(f"{mode}: {MODE_TEXT[mode]}, {len(runs)} runs")
    print()
    print("| slice | median | min-max | share of total |")
    print("|---|---|---|---|")
    total = statistics.median(values[TOTAL[0]]) if values[TOTAL[0]] else None
    for label, _, _ in slices + [TOTAL]:
        v = values[label]
        if not v:
            print(f"| {label} | missing | | |")
            continue
        med = statistics.median(v)
        share = f"{100 * med / total:.0f}%" if total else ""
        print(f"| {label} | {med:.1f} ms | {min(v):.1f}-{max(v):.1f} ms | {share} |")
    missing = sorted({n for _, a, b in slices for n in (a, b)} - set().union(*[set(m) for m in runs]))
    if missing:
        print(f"\nmissing marks: {', '.join(missing)}")
    print()


def main():
    ap = bench_args(__doc__)
    ap.add_argument("--userns", action="store_true",
                    help="give every container a new user namespace (the VMM enters it too)")
    args = ap.parse_args()
    slice_sets = {mode: with_userns(SLICES[mode]) if args.userns else SLICES[mode] for mode in SLICES}
    with tempfile.TemporaryDirectory() as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, ["/bin/true"])
        if args.userns:
            config_path = os.path.join(bundle, "config.json")
            with open(config_path) as f:
                config = json.load(f)
            config["linux"]["namespaces"].append({"type": "user"})
            config["linux"]["uidMappings"] = USERNS_MAP
            config["linux"]["gidMappings"] = USERNS_MAP
            with open(config_path, "w") as f:
                json.dump(config, f)
        # The same rootfs in each mode, so one cached image.
        bundles = {}
        for mode, annotations in HUSK_MODES.items():
            bundles[mode] = os.path.join(work, f"bundle-{mode}")
            variant_bundle(bundle, bundles[mode], annotations)
        root = os.path.join(work, "state")
        husk = [args.husk, "--root", root]
        # Restore's warm-up builds the cached rootfs image and the template.
        warm = {mode: one_start(husk, root, bundles[mode], f"warm-{mode}") for mode in HUSK_MODES}
        runs = {mode: [] for mode in HUSK_MODES}
        for i in range(args.runs):
            for mode in HUSK_MODES:
                runs[mode].append(one_start(husk, root, bundles[mode], f"{mode}-{i}"))
    slices = {mode: summarize(slice_sets[mode], runs[mode]) for mode in HUSK_MODES}
    userns = ", every container with a new user namespace" if args.userns else ""
    print(f"husk start-up breakdown: create + start of /bin/true{userns}, {args.runs} runs per mode (after a "
          "warm-up of each, modes alternating), medians with min-max, host monotonic clock")
    print()
    for mode in HUSK_MODES:
        print_table(mode, slice_sets[mode], runs[mode], slices[mode])
    w = warm["restore"]
    for label, a, b in (TEMPLATE_BUILD, TOTAL):
        gone = [n for n in (a, b) if n not in w]
        took = f"missing marks ({', '.join(gone)})" if gone else f"{(w[b] - w[a]) / 1e6:.1f} ms"
        print(f"restore warm-up, {label}: {took}")
    booted = sum(1 for m in runs["restore"] if "guest.init" in m)
    if booted:
        print(f"{booted} restore runs booted cold (no template: see the VMM's log)")
    totals = {mode: slices[mode][TOTAL[0]] for mode in HUSK_MODES}
    if all(totals.values()):
        print(f"total, median: restore {statistics.median(totals['restore']):.1f} ms, "
              f"cold {statistics.median(totals['cold']):.1f} ms "
              f"(cold/restore {statistics.median(totals['cold']) / statistics.median(totals['restore']):.2f}x)")
    if args.json:
        write_json(args.json, "breakdown", {
            "runs": args.runs, "process": ["/bin/true"], "userns": args.userns,
            "modes": {mode: {"annotations": HUSK_MODES[mode],
                             "slices": [[label, a, b] for label, a, b in slice_sets[mode] + [TOTAL]],
                             "slices_ms": slices[mode], "marks_ns": runs[mode], "warmup_marks_ns": warm[mode]}
                      for mode in HUSK_MODES}})


if __name__ == "__main__":
    main()
