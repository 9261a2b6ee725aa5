#!/usr/bin/env python3
"""Container start benchmark: `husk run` vs `runc run` vs `crun run` vs
gVisor's `runsc run`, and husk in both of its start-up modes.

The same bundle (a busybox rootfs, process `/bin/true`, no terminal) is run
end to end by each contender, alternating, N times; each run uses a fresh
container id and is deleted after. Measured from the host: wall time of the
`run` command (create + start + the process + exit), which is what an engine
waits for. Each contender's first run is reported apart and left out of the
statistics: husk's builds its cached rootfs image and its template VM (boots
a VM and snapshots it), the others load their binaries cold.

husk is measured twice: "husk" as it starts by default, restoring the
container VM from the template's snapshot, and "husk-cold" with the same
rootfs but config.json annotated `io.husk.snapshot: "false"`, booting the
guest kernel for every container. Besides the table the summary prints the
ratios of medians husk/crun, husk/runc, husk/runsc and husk-cold/husk.

runsc runs with RUNSC_FLAGS: the ptrace platform (its default in Debian 12's
0.0~20221219; no KVM needed) and `--network=none` (loopback only: husk's
container has no NIC here either, and runsc's netstack would otherwise be set
up for every run). Its cgroup is set up as runc's is. A runtime that is not
installed or whose first run fails is not silently dropped: it is listed with
the reason, in the output and in the JSON file.

Needs a KVM with vmx/svm for husk: run it through tests/testhost/run
(make bench-run does). Prints a Markdown table; --json FILE also writes the
raw numbers.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import HUSK_MODES, bench_args, make_bundle, variant_bundle, version, write_json

# gVisor: the syscall-intercepting platform that works without KVM, and no
# network stack (the bundle has no network namespace to wire one into).
RUNSC_FLAGS = ["--platform=ptrace", "--network=none"]
# The runtime the table's ratios are taken against.
BASELINE = "crun"
# The ratios of medians the summary prints, (numerator, denominator).
RATIOS = [("husk", "crun"), ("husk", "runc"), ("husk", "runsc"), ("husk-cold", "husk")]
# Lines of a failing first run's stderr kept as the reason.
REASON_LINES = 5


def timed(argv):
    start = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.monotonic() - start, p


def failure(p):
    """The tail of a failed command's output, on one line."""
    lines = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()
    return f"exit status {p.returncode}: " + " / ".join(lines[-REASON_LINES:])


def main():
    args = bench_args(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, ["/bin/true"])
        # The same rootfs (so the same cached image), cold-booted.
        cold_bundle = os.path.join(work, "bundle-cold")
        variant_bundle(bundle, cold_bundle, HUSK_MODES["cold"])
        # Each contender: its command line and its bundle. husk first, so
        # its first run builds the rootfs image husk-cold then finds.
        runtimes = {
            "husk": ([args.husk, "--root", os.path.join(work, "husk-state")], bundle),
            "husk-cold": ([args.husk, "--root", os.path.join(work, "husk-cold-state")], cold_bundle),
            "runc": (["runc", "--root", os.path.join(work, "runc-state")], bundle),
            "crun": (["crun", "--root", os.path.join(work, "crun-state")], bundle),
            "runsc": (["runsc", "--root", os.path.join(work, "runsc-state")] + RUNSC_FLAGS, bundle),
        }
        for other in args.husk_other:
            label, _, path = other.partition("=")
            if not path or not os.access(path, os.X_OK):
                sys.exit(f"--husk-other {other!r}: LABEL=PATH of a husk binary")
            runtimes[f"husk ({label})"] = ([path, "--root", os.path.join(work, f"husk-{label}-state")],
                                           bundle)
        versions = {name: version([base[0], "--version"]) for name, (base, _) in runtimes.items()}
        first = {}
        unavailable = {}
        for name, (base, bdir) in list(runtimes.items()):
            if not shutil.which(base[0]):
                unavailable[name] = f"{base[0]} not found (scripts/install-deps.sh installs it)"
            else:
                t, p = timed(base + ["run", "--bundle", bdir, "first"])
                subprocess.run(base + ["delete", "--force", "first"], capture_output=True)
                if p.returncode == 0:
                    first[name] = t
                else:
                    unavailable[name] = f"first run failed, {failure(p)}"
            if name in unavailable:
                if name in ("husk", BASELINE):
                    sys.exit(f"{name}: {unavailable[name]}")
                print(f"{name}: NOT MEASURED: {unavailable[name]}", file=sys.stderr)
                del runtimes[name]
        times = {name: [] for name in runtimes}
        for i in range(args.runs):
            for name, (base, bdir) in runtimes.items():
                cid = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{name}-{i}")
                t, p = timed(base + ["run", "--bundle", bdir, cid])
                subprocess.run(base + ["delete", "--force", cid], capture_output=True)
                if p.returncode != 0:
                    print(f"{name} run {i} failed ({p.returncode}): {p.stderr}", file=sys.stderr)
                    sys.exit(1)
                times[name].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    ratios = {f"{a}/{b}": med[a] / med[b] for a, b in RATIOS if a in med and b in med}
    print(f"run benchmark: `run` of /bin/true, {args.runs} runs each after a first run, busybox bundle")
    print()
    print(f"| runtime | median | min-max | ratio to {BASELINE} | first run |")
    print("|---|---|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {med[name] * 1000:.0f} ms | {min(v) * 1000:.0f}-{max(v) * 1000:.0f} ms "
              f"| {med[name] / med[BASELINE]:.1f}x | {first[name] * 1000:.0f} ms |")
    for name, reason in unavailable.items():
        print(f"| {name} | not measured | | | |")
    print()
    print("ratios of medians: " + ", ".join(
        f"{r} {ratios[r]:.2f}x" if r in ratios else f"{r} n/a" for r in (f"{a}/{b}" for a, b in RATIOS)))
    print("husk restores its container VM from a template's snapshot; husk-cold (config.json annotated "
          "io.husk.snapshot: \"false\") boots the guest kernel.")
    print("husk's first run builds the cached rootfs image and the template VM; husk-cold's first run "
          "finds the image.")
    for name, reason in unavailable.items():
        print(f"{name} not measured: {reason}")
    print("versions: " + "; ".join(f"{n}: {v}" for n, v in versions.items()))
    if args.json:
        write_json(args.json, "run", {
            "runs": args.runs, "process": ["/bin/true"], "runsc_flags": RUNSC_FLAGS, "versions": versions,
            "annotations": {"husk": HUSK_MODES["restore"], "husk-cold": HUSK_MODES["cold"]},
            "results": {name: {"times_s": times[name], "first_s": first[name]} for name in times},
            "ratios": ratios, "unavailable": unavailable})


if __name__ == "__main__":
    main()
