"""What several benchmarks share: an OCI bundle, process memory from
/proc/PID/smaps, host memory from /proc/meminfo, and the JSON result file."""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from rootfs import busybox_rootfs

# The checkout: benches/ sits in it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIB = 1024
MIB = 1 << 20
# A mapping's header line in /proc/PID/smaps: "start-end perms offset dev inode [path]".
SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")
# The kernel merges adjacent anonymous mappings with the same permissions, so
# the VMA holding guest RAM can be a little larger than the guest (a VMM's
# guest RAM mapping next to a thread's small rw area): up to this much more
# still counts as the guest-RAM mapping.
GUEST_MAPPING_SLACK = 16 * MIB
# The OCI annotation choosing how a husk container VM without NICs starts:
# "false" cold-boots the guest kernel; "true" or absent (the default)
# restores a snapshot of a booted template VM.
ANNOTATION_SNAPSHOT = "io.husk.snapshot"
# husk's start-up modes, each with the annotations that select it.
HUSK_MODES = {"restore": {}, "cold": {ANNOTATION_SNAPSHOT: "false"}}


def make_bundle(path, args, annotations=None):
    """An OCI bundle at `path`: the busybox rootfs running `args` as root, no
    terminal, pid/ipc/uts/mount namespaces, /proc and a /dev tmpfs."""
    rootfs = os.path.join(path, "rootfs")
    busybox_rootfs(rootfs)
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
    }
    if annotations:
        config["annotations"] = annotations
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def variant_bundle(src, path, annotations):
    """An OCI bundle at `path` that runs bundle `src`'s rootfs (the same
    directory, by its absolute path: one rootfs image for both) with
    `annotations` added to src's config.json."""
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    config["root"]["path"] = os.path.abspath(os.path.join(src, config["root"]["path"]))
    config["annotations"] = {**config.get("annotations", {}), **annotations}
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def process_memory(pid, guest_bytes=None):
    """Resident memory of process `pid` from /proc/PID/smaps, in KiB.

    The guest RAM of a VMM is its one large mapping: at least `guest_bytes`
    and at most GUEST_MAPPING_SLACK more (the largest-resident one if several
    match), anonymous after a cold boot, the template's memory file mapped
    copy-on-write after a restore (pages it only read are the page cache's,
    shared by every VM of that template); it is counted apart:
      rss_kib, pss_kib    the process without the guest-RAM mapping
      guest_rss_kib       guest RAM the guest has touched (that mapping's RSS)
      guest_pss_kib       that mapping's PSS: shared template pages divided
                          among the VMs mapping them
    With guest_bytes None every mapping counts as the process's own and the
    guest_* values are None. Returns None when the process is gone.
    """
    mappings = []  # [size, rss, pss, anonymous or a file] per mapping, in order
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                m = SMAPS_HEADER.match(line)
                if m:
                    # "[heap]", "[stack]", "[vdso]" ... are never guest RAM.
                    mappings.append([int(m.group(2), 16) - int(m.group(1), 16), 0, 0,
                                     not m.group(3).startswith("[")])
                elif line.startswith("Rss:"):
                    mappings[-1][1] = int(line.split()[1])
                elif line.startswith("Pss:"):
                    mappings[-1][2] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    guest = None
    if guest_bytes is not None:
        candidates = [m for m in mappings
                      if m[3] and guest_bytes <= m[0] <= guest_bytes + GUEST_MAPPING_SLACK]
        if candidates:
            guest = max(candidates, key=lambda m: m[1])
    own = [m for m in mappings if m is not guest]
    return {"rss_kib": sum(m[1] for m in own), "pss_kib": sum(m[2] for m in own),
            "guest_rss_kib": guest[1] if guest else None, "guest_pss_kib": guest[2] if guest else None}


def mem_available_kib():
    """MemAvailable from /proc/meminfo, in KiB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def version(argv):
    """The first line `argv` prints (e.g. `runc --version`), or None."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (p.stdout or p.stderr).strip().splitlines()
    return out[0] if out else None


def timed_ok(argv, env=None):
    """Seconds `argv` took; a failure ends the benchmark with its output."""
    start = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                       timeout=1800)
    elapsed = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr[-2000:]}")
    return elapsed


def ms_summary(values):
    """'median ms (min-max)' of seconds, or 'n/a'."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.median(values) * 1000:.0f} ms ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"


def machine():
    """Where a benchmark ran, for its JSON file."""
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1])
    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "cpu": cpu, "mem_total_kib": total}


def write_json(path, bench, data):
    """Writes `data` with the benchmark's name, the date and the machine."""
    out = {"bench": bench, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine()}
    out.update(data)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def bench_args(doc, runs=10):
    """The options the start-up benchmarks share: --runs, --husk, --json;
    the caller adds its own and parses."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--husk-other", action="append", default=[], metavar="LABEL=PATH",
                    help="another husk binary, side by side (e.g. an earlier build); repeatable")
    return ap


def encode_cmd(args):
    """husk-init's `husk.cmd=` value for a command line without the agent."""
    import base64
    raw = json.dumps({"args": args}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
