#!/usr/bin/env python3
"""Start of a container from a real-sized image: husk's rootfs over
virtio-fs (the default) vs its block rootfs (`io.husk.rootfs=block`) vs runc.

The image: busybox plus the host's Python 3 (its binary, the libraries ldd
names and its whole standard library, /usr/lib/python3.X: ~60 MB, a few
thousand files, the size of a slim Python image). The process imports a few
standard modules and exits: `python3 -c "import json, email.parser,
http.client, decimal"`.

Contenders, alternating, N rounds, each run with a fresh container id:
  husk virtio-fs         the default: the bundle's rootfs served from the
                         host; nothing is built per image
  husk virtio-fs (new tree)  the same on a fresh copy of the tree each run:
                         the first container of a new image (the template
                         VM does not depend on the image)
  husk block (cached)    io.husk.rootfs=block with the image already in the
                         cache (the second container of an unchanged tree)
  husk block (new tree)  io.husk.rootfs=block on a fresh copy of the tree,
                         as an engine's vfs driver or a fresh bundle gives
                         every container: an ext4 image is built each time
  runc                   the floor
measured from the host as the wall time of `RUNTIME run` (create + start +
the process + delete), which is what an engine waits for. The first run of
each contender is left out (husk's template VM is built then).

Then the same through podman (`podman run --rm IMAGE python3 -c ...`, the
image imported from the same tree, vfs storage), husk vs husk-cold (the
annotation io.husk.snapshot=false) vs runc, which is the start a podman user
sees: with `--network none` and with podman's default network (one NIC on
its bridge, what `podman run` gives without options).

Needs a KVM with vmx/svm for husk: make bench-image runs it through the KVM
test host. Prints Markdown tables; --json FILE also writes the raw numbers.
"""

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile

from common import bench_args, ms_summary, version, write_json
from common import timed_ok as timed
from rootfs import busybox_rootfs, copy_with_libs

SCRIPT = "import json, email.parser, http.client, decimal"
IMAGE = "localhost/husk-bench-python:latest"


def python_tree(rootfs):
    """busybox, the host's python3 with its libraries and its standard
    library, at the host's paths."""
    busybox_rootfs(rootfs)
    # The distribution's python (a pyenv or venv one may come first on PATH).
    binary = os.path.realpath("/usr/bin/python3")
    if not binary.startswith("/usr/"):
        sys.exit(f"python3 at {binary}: need the distribution's (/usr/bin/python3)")
    copy_with_libs(binary, rootfs)
    os.symlink(os.path.basename(binary), os.path.join(rootfs, "usr/bin/python3"))
    stdlib = sysconfig.get_paths(vars={"installed_base": "/usr", "base": "/usr"})["stdlib"]
    if not stdlib.startswith("/usr/lib/python3"):
        stdlib = "/usr/lib/python3." + binary.rsplit(".", 1)[-1]
    shutil.copytree(stdlib, os.path.join(rootfs, stdlib.lstrip("/")), symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "tests", "idlelib"))
    # Extension modules Python loads from lib-dynload need their libraries.
    for so in glob.glob(os.path.join(stdlib, "lib-dynload", "*.so")):
        copy_with_libs(so, rootfs)


def tree_stats(rootfs):
    files, size = 0, 0
    for d, _, names in os.walk(rootfs):
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def bundle(path, rootfs, annotations=None):
    """A bundle at `path` running the script on `rootfs` (an absolute
    path, so several bundles share one tree)."""
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": ["/usr/bin/python3", "-c", SCRIPT],
                    "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
        "root": {"path": rootfs},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]},
    }
    if annotations:
        config["annotations"] = annotations
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return path


def main():
    ap = bench_args(__doc__, runs=5)
    ap.add_argument("--podman-runs", type=int, default=3)
    ap.add_argument("--podman-networks", default="none,default",
                    help="comma-separated: none (--network none), default (podman's bridge)")
    args = ap.parse_args()
    for tool in ("runc", "podman"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/install-deps.sh installs it)")
    work = tempfile.mkdtemp(prefix="husk-image-")
    cache = os.path.join(work, "cache")
    env = dict(os.environ, HUSK_CACHE=cache)
    # A cache of its own (no image or template of an earlier run), with
    # the kernels of the usual one.
    if "HUSK_KERNEL" not in env and "HUSK_KERNEL_CACHE" not in env:
        usual = os.environ.get("HUSK_CACHE") or os.path.expanduser("~/.cache/husk")
        env["HUSK_KERNEL_CACHE"] = os.path.join(usual, "kernels")
    results = {}
    podman = {}
    try:
        tree = os.path.join(work, "tree")
        python_tree(tree)
        files, size = tree_stats(tree)
        state = os.path.join(work, "state")
        share = bundle(os.path.join(work, "b-share"), tree)
        block = bundle(os.path.join(work, "b-block"), tree, {"io.husk.rootfs": "block"})
        plain = bundle(os.path.join(work, "b-runc"), tree)

        def fresh_block(n):
            copy = os.path.join(work, f"tree-{n}")
            subprocess.run(["cp", "-a", tree, copy], check=True)
            return bundle(os.path.join(work, f"b-new-{n}"), copy, {"io.husk.rootfs": "block"})

        def fresh_share(n):
            copy = os.path.join(work, f"tree-s{n}")
            subprocess.run(["cp", "-a", tree, copy], check=True)
            return bundle(os.path.join(work, f"b-snew-{n}"), copy)

        contenders = {
            "husk virtio-fs": lambda n: [args.husk, "--root", state, "run", "--bundle", share, f"s{n}"],
            "husk virtio-fs (new tree)": lambda n: [args.husk, "--root", state, "run", "--bundle",
                                                    fresh_share(n), f"t{n}"],
            "husk block (cached)": lambda n: [args.husk, "--root", state, "run", "--bundle", block, f"c{n}"],
            "husk block (new tree)": lambda n: [args.husk, "--root", state, "run", "--bundle",
                                                fresh_block(n), f"n{n}"],
            "runc": lambda n: ["runc", "--root", state + "-runc", "run", "--bundle", plain, f"r{n}"],
        }
        results = {name: [] for name in contenders}
        for n in range(args.runs + 1):
            for name, argv in contenders.items():
                t = timed(argv(n), env)
                if n > 0:
                    results[name].append(t)
            for d in glob.glob(os.path.join(work, "tree-*")):
                shutil.rmtree(d, ignore_errors=True)

        # Through podman: the same tree as an image.
        tar = os.path.join(work, "tree.tar")
        subprocess.run(["tar", "-C", tree, "-cf", tar, "."], check=True)
        pod = os.path.join(work, "podman")
        base = ["podman", "--root", os.path.join(pod, "storage"), "--runroot", os.path.join(pod, "run"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        timed(base + ["import", tar, IMAGE], env)
        runtimes = {
            "husk": [args.husk, []],
            "husk-cold": [args.husk, ["--annotation", "io.husk.snapshot=false"]],
            "runc": [shutil.which("runc"), []],
        }
        networks = {
            "none": ["--network", "none"],
            "default": [],
        }
        wanted = [n for n in args.podman_networks.split(",") if n]
        for net in wanted:
            if net not in networks:
                sys.exit(f"--podman-networks: {net!r} is not one of {', '.join(networks)}")
        podman = {net: {name: [] for name in runtimes} for net in wanted}
        for n in range(args.podman_runs + 1):
            for net in wanted:
                for name, (runtime, extra) in runtimes.items():
                    t = timed(base + ["--runtime", runtime, "run", "--rm"] + networks[net] + extra
                              + [IMAGE, "/usr/bin/python3", "-c", SCRIPT], env)
                    if n > 0:
                        podman[net][name].append(t)
        subprocess.run(base + ["rm", "--all", "--force"], capture_output=True)
        subprocess.run(base + ["rmi", "--all", "--force"], capture_output=True)
    finally:
        subprocess.run(["umount", "-R", os.path.join(work, "podman", "storage")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"image start: busybox + python3 ({files} files, {size / (1 << 20):.0f} MiB), "
          f"`python3 -c \"{SCRIPT}\"`, {args.runs} runs each (first left out)")
    print()
    print("| contender | `run` wall time, median (min-max) | / runc |")
    print("|---|---|---|")
    runc = statistics.median(results["runc"])
    for name, values in results.items():
        print(f"| {name} | {ms_summary(values)} | {statistics.median(values) / runc:.2f} |")
    print()
    print(f"`podman run --rm [--network none] IMAGE python3 -c ...`, {args.podman_runs} runs each "
          "(first left out):")
    print()
    print("| network | runtime | wall time, median (min-max) | / runc |")
    print("|---|---|---|---|")
    for net, by_runtime in podman.items():
        prunc = statistics.median(by_runtime["runc"])
        label = "`--network none`" if net == "none" else "default (bridge, 1 NIC)"
        for name, values in by_runtime.items():
            print(f"| {label} | {name} | {ms_summary(values)} | {statistics.median(values) / prunc:.2f} |")
    if args.json:
        write_json(args.json, "image", {"args": vars(args), "tree": {"files": files, "bytes": size},
                                        "oci": results, "podman": podman,
                                        "runc": version(["runc", "--version"]),
                                        "podman_version": version(["podman", "--version"])})


if __name__ == "__main__":
    main()
