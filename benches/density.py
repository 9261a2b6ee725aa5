#!/usr/bin/env python3
"""Density benchmark: how many idle containers fit, how fast they start
together, and what each one costs in host memory. husk vs runc.

For each runtime: N containers of the same busybox bundle (process
`sleep 100000`, no terminal), each with its own id under one shared --root,
are created and started by a pool of --jobs threads at once
(`create --pid-file` then `start`). Measured:

  create time     wall time of each `create` (for husk: restore or boot the
                  VM up to the agent), and `start`; median (min-max) over the
                  containers
  create rate     containers started per second over the whole phase
  process RSS/PSS resident / proportional memory of each container's process
                  (husk: the VMM, runc: the container's process) from
                  /proc/PID/smaps, without the guest-RAM mapping (the one
                  mapping of exactly the guest's size; common.process_memory,
                  as the boot benchmark measures it)
  guest touched   RSS of that guest-RAM mapping: guest RAM actually in use
                  (after a restore, pages read from the template's memory
                  file count in every VM's RSS)
  guest PSS       PSS of that mapping: after a restore, the template's pages
                  the VMs share divided among them (after a cold boot, RSS)
  host per ctr    (MemAvailable before - after) / N, read SETTLE_S seconds
                  after the last start, once the guests are idle: everything
                  a container costs the host (VMM, guest RAM, KVM, page
                  tables, page cache, runc's shim-less process and cgroup)

Then every container is deleted (`delete --force`, by the same pool) and the
benchmark checks that none is left: `list` is empty and no container process
(for husk: no `husk ... vmm` process of that --root) is still running.

husk starts its container VMs by default from a snapshot of a booted
template VM (restore: guest RAM maps the template's memory file
copy-on-write); --cold (make bench-density COLD=1) annotates the bundle
`io.husk.snapshot: "false"` and husk boots the guest kernel for every
container. The output and the JSON file say which mode ran.

A warm-up container (created, started, deleted) comes first, so husk's cached
rootfs image (and, restoring, its template VM) is built before anything is
timed.

--until-full starts containers in batches of --jobs until a create fails,
MemAvailable would drop under --margin-mib, or --max is reached, and reports
how many were running. Needs a KVM with vmx/svm for husk: run it through
tests/testhost/run (make bench-density does; the test host's memory is
HUSK_TESTHOST_MEM, in MiB). Prints a Markdown table; --json FILE also writes
the raw numbers.
"""

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import HUSK_MODES, KIB, make_bundle, mem_available_kib, process_memory, version, write_json
from run import RUNSC_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Guest RAM of each husk container (set through the annotation, so the
# guest-RAM mapping's size is known); husk's default.
GUEST_MEM_MIB = 128
ANNOTATION_MEMORY_MIB = "io.husk.vm.memory_mib"
PROCESS = ["sleep", "100000"]
# Seconds to wait after the last start before reading memory: the guests
# finish booting their userspace and go idle.
SETTLE_S = 5
# Seconds to wait for a deleted container's process to be gone.
GONE_TIMEOUT_S = 30
# Bound for any single runtime command.
COMMAND_TIMEOUT_S = 600
RUNTIMES = ("husk", "runc", "crun", "runsc")
HUSK_MODE_TEXT = {"restore": "husk mode: restore (template VM snapshot, the default)",
                  "cold": "husk mode: cold (guest kernel boot, io.husk.snapshot: \"false\")"}


def run_cmd(argv, log):
    """Runs argv with stdio on `log` (a detached container keeps the stdio it
    is given: a pipe would never reach EOF). Returns (seconds, rc)."""
    start = time.monotonic()
    with open(log, "ab") as f:
        try:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                timeout=COMMAND_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return time.monotonic() - start, rc


def tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " / ".join(f.read().strip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def alive(pid):
    """Whether `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def vmm_pids(husk_root):
    """husk VMM processes (`husk --root ROOT vmm ID`) of this --root."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"vmm" in argv and husk_root.encode() in argv and alive(entry):
            pids.append(int(entry))
    return pids


class Runtime:
    def __init__(self, name, argv, state_root, bundle, work, guest_bytes):
        self.name, self.base, self.state_root = name, argv, state_root
        self.bundle, self.work, self.guest_bytes = bundle, work, guest_bytes

    def start(self, cid):
        """create + start one container; a dict with the times and its pid."""
        log = os.path.join(self.work, f"{cid}.log")
        pidfile = os.path.join(self.work, f"{cid}.pid")
        r = {"id": cid}
        r["create_s"], rc = run_cmd(self.base + ["create", "--bundle", self.bundle, "--pid-file", pidfile, cid], log)
        if rc != 0:
            r["error"] = f"create: exit status {rc}: {tail(log)}"
            return r
        r["start_s"], rc = run_cmd(self.base + ["start", cid], log)
        if rc != 0:
            r["error"] = f"start: exit status {rc}: {tail(log)}"
            return r
        with open(pidfile) as f:
            r["pid"] = int(f.read().strip())
        return r

    def delete(self, cid):
        return run_cmd(self.base + ["delete", "--force", cid], os.path.join(self.work, f"{cid}.log"))

    def listed(self):
        p = subprocess.run(self.base + ["list", "--quiet"], capture_output=True, text=True)
        return p.stdout.split()

    def leftovers(self, pids):
        """Container processes still running after every delete."""
        left = {p for p in pids if alive(p)}
        if self.name == "husk":
            left |= set(vmm_pids(self.state_root))
        return sorted(left)


def start_many(rt, pool, ids):
    return list(pool.map(rt.start, ids))


def bench(rt, args):
    """One runtime's whole round: warm-up, start N, measure, delete, check."""
    warm = rt.start(f"{rt.name}-warm")
    rt.delete(warm["id"])
    if "error" in warm:
        return {"error": f"warm-up container failed: {warm['error']}"}
    time.sleep(SETTLE_S)
    before = mem_available_kib()
    started = []
    stop = None
    margin_kib = args.margin_mib * KIB
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        if not args.until_full:
            started = start_many(rt, pool, [f"{rt.name}-{i}" for i in range(args.count)])
        else:
            while True:
                ok = [r for r in started if "error" not in r]
                if len(started) > len(ok):
                    stop = "a create/start failed"
                    break
                if len(started) >= args.max:
                    stop = f"--max {args.max} reached"
                    break
                avail = mem_available_kib()
                per = (before - avail) / len(ok) if ok else 0
                if avail - args.jobs * per < margin_kib:
                    stop = f"MemAvailable ({avail // KIB} MiB) would drop under the {args.margin_mib} MiB margin"
                    break
                n = min(args.jobs, args.max - len(started))
                started += start_many(rt, pool, [f"{rt.name}-{len(started) + i}" for i in range(n)])
        wall = time.monotonic() - t0
        running = [r for r in started if "error" not in r]
        time.sleep(SETTLE_S)
        after = mem_available_kib()
        for r in running:
            r["mem"] = process_memory(r["pid"], rt.guest_bytes)
        t1 = time.monotonic()
        deletes = list(pool.map(rt.delete, [r["id"] for r in started]))
        delete_wall = time.monotonic() - t1
    deadline = time.monotonic() + GONE_TIMEOUT_S
    pids = [r["pid"] for r in running]
    while rt.leftovers(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "count": len(running), "attempted": len(started), "stop": stop, "wall_s": wall,
        "rate_per_s": len(running) / wall if wall > 0 else None,
        "mem_available_before_kib": before, "mem_available_after_kib": after,
        "mem_available_deleted_kib": mem_available_kib(),
        "host_per_container_kib": (before - after) / len(running) if running else None,
        "delete_wall_s": delete_wall, "delete_failures": sum(1 for _, rc in deletes if rc != 0),
        "left_listed": rt.listed(), "left_processes": rt.leftovers(pids),
        "containers": started,
    }


def med_range(values, scale, unit, digits):
    """'median unit (min-max)' of values times scale, or 'n/a'."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "n/a"
    f = lambda v: f"{v:.{digits}f}"  # noqa: E731
    return f"{f(statistics.median(values))} {unit} ({f(min(values))}-{f(max(values))})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=16, help="containers per runtime (without --until-full)")
    ap.add_argument("--jobs", type=int, default=4, help="creates running at once")
    ap.add_argument("--until-full", action="store_true", help="start containers until no more fit")
    ap.add_argument("--margin-mib", type=int, default=256, help="--until-full: MemAvailable to keep free")
    ap.add_argument("--max", type=int, default=1000, help="--until-full: stop at this many")
    ap.add_argument("--runtimes", default="husk,runc", help=f"comma-separated, of {', '.join(RUNTIMES)}")
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    ap.add_argument("--cold", action="store_true",
                    help="husk boots each guest kernel instead of restoring the template VM's snapshot")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    names = args.runtimes.split(",")
    for name in names:
        if name not in RUNTIMES:
            sys.exit(f"unknown runtime {name} (known: {', '.join(RUNTIMES)})")
        if not shutil.which(args.husk if name == "husk" else name):
            sys.exit(f"{name} not found (scripts/install-deps.sh installs it)")
    results = {}
    versions = {}
    husk_mode = "cold" if args.cold else "restore"
    # The other runtimes ignore husk's annotations.
    annotations = {ANNOTATION_MEMORY_MIB: str(GUEST_MEM_MIB), **HUSK_MODES[husk_mode]}
    with tempfile.TemporaryDirectory() as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle, PROCESS, annotations)
        for name in names:
            state = os.path.join(work, f"{name}-state")
            exe = args.husk if name == "husk" else name
            argv = [exe, "--root", state] + (RUNSC_FLAGS if name == "runsc" else [])
            versions[name] = version([exe, "--version"])
            logs = os.path.join(work, f"{name}-logs")
            os.makedirs(logs)
            rt = Runtime(name, argv, state, bundle, logs, GUEST_MEM_MIB << 20 if name == "husk" else None)
            results[name] = bench(rt, args)

    mode = "until full" if args.until_full else f"{args.count} each"
    print(f"density benchmark: idle `{' '.join(PROCESS)}` containers, {mode}, {args.jobs} creates at once, "
          f"husk guests {GUEST_MEM_MIB} MiB, {HUSK_MODE_TEXT[husk_mode]}")
    print()
    print("| runtime | running | create, median (min-max) | start | create rate | process RSS excl. guest RAM "
          "| process PSS excl. guest RAM | guest RAM touched | guest RAM PSS | host memory per container |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | | | | | | |")
            failed = True
            continue
        ok = [c for c in r["containers"] if "error" not in c]
        mems = [c["mem"] for c in ok if c.get("mem")]
        host = r["host_per_container_kib"]
        print(f"| {name} | {r['count']} | {med_range([c['create_s'] for c in ok], 1000, 'ms', 0)} "
              f"| {med_range([c['start_s'] for c in ok], 1000, 'ms', 0)} "
              f"| {r['rate_per_s']:.2f}/s | {med_range([m['rss_kib'] for m in mems], 1 / KIB, 'MiB', 1)} "
              f"| {med_range([m['pss_kib'] for m in mems], 1 / KIB, 'MiB', 1)} "
              f"| {med_range([m['guest_rss_kib'] for m in mems], 1 / KIB, 'MiB', 1)} "
              f"| {med_range([m['guest_pss_kib'] for m in mems], 1 / KIB, 'MiB', 1)} "
              f"| {f'{host / KIB:.1f} MiB' if host is not None else 'n/a'} |")
    print()
    for name, r in results.items():
        if "error" in r:
            continue
        errors = [c for c in r["containers"] if "error" in c]
        if args.until_full:
            print(f"{name}: {r['count']} running when it stopped: {r['stop']}")
        for c in errors[:3]:
            print(f"{name}: {c['id']} failed: {c['error']}")
        if errors and not args.until_full:
            failed = True
        print(f"{name}: deleted in {r['delete_wall_s']:.1f} s, {r['delete_failures']} delete failures; "
              f"MemAvailable {r['mem_available_before_kib'] // KIB} MiB before, "
              f"{r['mem_available_after_kib'] // KIB} MiB with the containers, "
              f"{r['mem_available_deleted_kib'] // KIB} MiB after deleting them")
        if r["left_listed"] or r["left_processes"] or r["delete_failures"]:
            print(f"{name}: LEFT BEHIND: listed {r['left_listed']}, processes {r['left_processes']}")
            failed = True
        else:
            print(f"{name}: nothing left (list empty, no container processes)")
    print("versions: " + "; ".join(f"{n}: {v}" for n, v in versions.items()))
    if args.json:
        write_json(args.json, "density", {
            "count": args.count, "until_full": args.until_full, "jobs": args.jobs,
            "margin_mib": args.margin_mib, "process": PROCESS, "guest_mem_mib": GUEST_MEM_MIB,
            "settle_s": SETTLE_S, "husk_mode": husk_mode, "annotations": annotations,
            "versions": versions, "results": results})
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
