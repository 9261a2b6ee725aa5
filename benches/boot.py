#!/usr/bin/env python3
"""Boot benchmark: husk vs QEMU -M microvm, side by side, same everything.

Both VMMs boot the same kernel (kernels/build.sh), the same husk-init
initramfs, the same busybox ext4 image on virtio-blk and the same command
line; both run /bin/true. Each run is a fresh VMM process. Measured from the
host, for each run:

  boot-to-init  spawn of the VMM process -> husk-init's first console line
                (HUSK_BOOTMARK=1 on the command line makes init print it)
  boot-to-exit  spawn -> the VMM process has exited
  VMM RSS       resident memory of the VMM process minus its guest-RAM
                mapping, sampled from /proc/PID/smaps while the guest sleeps

Runs alternate between the VMMs so drift hits both alike. Needs a KVM with
vmx/svm: run it through tests/testhost/run (make bench-boot does).
Prints a Markdown table; --json FILE also writes the raw numbers.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, bench_args, encode_cmd, ms_summary, process_memory, version, write_json
from rootfs import busybox_rootfs

MARK = b"husk-init: started"
MEM_MIB = 128


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def kernel_path():
    out = sh(os.path.join(ROOT, "kernels/build.sh"), "--print-path", capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]



def run_once(argv, sample_rss):
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buf = b""
    to_init = None
    rss = None
    while True:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        buf += chunk
        if to_init is None and MARK in buf:
            to_init = time.monotonic() - start
            if sample_rss:
                time.sleep(0.3)  # the guest runs `sleep 1`: the VMM is idle
                mem = process_memory(proc.pid, MEM_MIB << 20)
                rss = mem["rss_kib"] if mem else None
    proc.wait()
    total = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    return {"to_init": to_init, "to_exit": total, "rss_kib": rss, "rc": proc.returncode,
            "out": buf.decode(errors="replace"), "err": err}


def main():
    args = bench_args(__doc__).parse_args()

    kernel = kernel_path()
    with tempfile.TemporaryDirectory() as work:
        root = os.path.join(work, "root")
        busybox_rootfs(root)
        image = os.path.join(work, "root.ext4")
        initrd = os.path.join(work, "initramfs.cpio")
        sh(args.husk, "image", root, image)
        sh(args.husk, "initramfs", initrd)

        def cases(cmd):
            # One command line for both; husk appends its own virtio_mmio entry,
            # QEMU microvm (acpi=off) its own.
            base = ("console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check quiet "
                    "husk.quiet=1 HUSK_BOOTMARK=1 husk.root=/dev/vda")
            husk = [args.husk, "boot", "--kernel", kernel, "--rootfs", image, "--mem", str(MEM_MIB),
                    "--cmdline", "HUSK_BOOTMARK=1", "--"] + cmd
            qemu = ["qemu-system-x86_64", "-M", "microvm,acpi=off,rtc=off,x-option-roms=off",
                    "-accel", "kvm", "-cpu", "host", "-m", str(MEM_MIB), "-smp", "1",
                    "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
                    "-kernel", kernel, "-initrd", initrd,
                    "-append", f"{base} husk.cmd={encode_cmd(cmd)}",
                    "-drive", f"id=root,file={image},format=raw,if=none",
                    "-device", "virtio-blk-device,drive=root",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
            return {"husk": husk, "qemu-microvm": qemu}

        results = {"husk": [], "qemu-microvm": []}
        rss = {"husk": [], "qemu-microvm": []}
        for i in range(args.runs):
            for name, argv in cases(["/bin/true"]).items():
                r = run_once(argv, False)
                ok = r["to_init"] is not None and (r["rc"] == 0 if name == "husk" else r["rc"] == 1)
                if not ok:
                    print(f"{name} run {i} failed (rc {r['rc']}):\n{r['out'][-2000:]}\n{r['err'][-2000:]}", file=sys.stderr)
                    sys.exit(1)
                results[name].append(r)
        for name, argv in cases(["/bin/sleep", "1"]).items():
            for _ in range(3):
                r = run_once(argv, True)
                rss[name].append(r["rss_kib"])

    husk_init = statistics.median(r["to_init"] for r in results["husk"])
    qemu_init = statistics.median(r["to_init"] for r in results["qemu-microvm"])
    husk_exit = statistics.median(r["to_exit"] for r in results["husk"])
    qemu_exit = statistics.median(r["to_exit"] for r in results["qemu-microvm"])
    print(f"boot benchmark: {args.runs} runs each, {MEM_MIB} MiB, 1 vCPU, kernel {kernel}")
    print()
    print("| VMM | boot-to-init, median (min-max) | boot-to-exit `/bin/true`, median (min-max) | VMM RSS excl. guest RAM, median |")
    print("|---|---|---|---|")
    for name in ("husk", "qemu-microvm"):
        r = results[name]
        kib = [k for k in rss[name] if k is not None]
        rss_text = f"{statistics.median(kib) / 1024:.1f} MiB" if kib else "n/a"
        print(f"| {name} | {ms_summary([x['to_init'] for x in r])} | {ms_summary([x['to_exit'] for x in r])} | {rss_text} |")
    print()
    print(f"ratio husk/qemu: boot-to-init {husk_init / qemu_init:.2f}, boot-to-exit {husk_exit / qemu_exit:.2f}")
    if args.json:
        write_json(args.json, "boot", {
            "runs": args.runs, "mem_mib": MEM_MIB, "kernel": kernel,
            "versions": {"husk": version([args.husk, "--version"]),
                         "qemu-microvm": version(["qemu-system-x86_64", "--version"])},
            "results": {k: [{x: v[x] for x in ("to_init", "to_exit", "rc")} for v in vs]
                        for k, vs in results.items()},
            "rss_kib": rss})


if __name__ == "__main__":
    main()
