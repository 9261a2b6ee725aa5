#!/usr/bin/env python3
"""Storage benchmark: file I/O inside a container, husk vs runc, side by side
in one run.

Contenders, each running the same fio jobs from the same rootfs (busybox
plus Debian's fio and its libraries):
- husk, virtio-fs: in a directory bind mount (a volume) shared from the host
  over husk's virtio-fs device;
- husk, block rootfs: in the container's root file system (reads from the
  rootfs ext4 image over virtio-blk, writes into the guest-memory overlay);
- runc: in the same kind of directory bind mount (the host's file system
  directly);
- QEMU + virtiofsd: QEMU's microvm machine on the same guest kernel and
  husk-init, its root the same rootfs as an ext4 image, the volume served by
  virtiofsd over vhost-user (guest RAM a shared memfd; the maintained Rust
  virtiofsd from crates.io, which `make bench-deps` installs, else Debian's
  C one from QEMU), the same cache policy as husk's (`cache=auto`). Each job
  runs in a VM of its own. Its time is the VM's (no container runtime around
  it); the fio figures are inside the guest either way.

Jobs: sequential write (1 MiB blocks, fsync at the end) and read of a file,
4 KiB random reads and writes for a fixed time, and metadata (fio's
filecreate / filestat / filedelete engines over many small files). The read
jobs read a file laid out before the container starts and drop the reader's
page cache of it first (`invalidate`), so a husk guest reads through its
device each time; the host's page cache is warm for everyone (in the KVM
test host all files live in memory anyway). Timings in the test host are
emulated: compare the ratios between contenders of one run.
Needs a KVM with vmx/svm for husk: run it through tests/testhost/run
(make bench-storage does).
"""

import argparse
import signal
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, encode_cmd, version, write_json

# The maintained (Rust) virtiofsd, as `make bench-deps` installs it from
# crates.io, else Debian 12's C one from QEMU 7.2 (it hangs on some metadata
# jobs in the test host: docs/benchmarks.md).
VIRTIOFSD_RUST = os.path.join(ROOT, "target/tools/bin/virtiofsd")
VIRTIOFSD_C = "/usr/lib/qemu/virtiofsd"
QEMU_MIB = 512
from rootfs import busybox_rootfs, copy_with_libs

BEGIN = "=== fio begin"
END = "=== fio end"


def jobs(size_mb, rand_mb, seconds, files):
    """(name, fio arguments, result key) of every job, in run order."""
    common = "--ioengine=psync --thread --group_reporting --output-format=json"
    return [
        ("seq write", f"--name=sw --rw=write --bs=1M --size={size_mb}M --filename=seq-w --end_fsync=1 {common}", "write_bw"),
        ("seq read", f"--name=sr --rw=read --bs=1M --size={size_mb}M --filename=seq-r --invalidate=1 {common}", "read_bw"),
        ("4k rand read", f"--name=rr --rw=randread --bs=4k --size={rand_mb}M --filename=rand --invalidate=1 "
                         f"--runtime={seconds} --time_based {common}", "read_iops"),
        ("4k rand write", f"--name=rw --rw=randwrite --bs=4k --size={rand_mb}M --filename=rand "
                          f"--runtime={seconds} --time_based {common}", "write_iops"),
        ("file create", f"--name=fc --ioengine=filecreate --nrfiles={files} --filesize=4k --bs=4k --rw=write "
                        f"--openfiles=1 --create_on_open=1 --directory=meta --thread --output-format=json", "write_iops"),
        ("file stat", f"--name=fc --ioengine=filestat --nrfiles={files} --filesize=4k --bs=4k --rw=read "
                      f"--openfiles=1 --directory=meta --thread --output-format=json", "read_iops"),
        ("file delete", f"--name=fc --ioengine=filedelete --nrfiles={files} --filesize=4k --bs=4k --rw=write "
                        f"--openfiles=1 --directory=meta --thread --output-format=json", "write_iops"),
    ]


def script(workdir, job_list):
    """The container's shell script: each job's fio JSON between markers."""
    fio = shutil.which("fio")
    lines = [f"set -e; mkdir -p {workdir}/meta; cd {workdir}"]
    for name, argv, _ in job_list:
        lines.append(f"echo '{BEGIN} {name}'; {fio} {argv}; echo '{END}'")
    return "; ".join(lines)


def parse(output, job_list):
    """{job name: value} from the container's output: MB/s for bandwidth,
    operations/s for IOPS."""
    values = {}
    blocks = output.split(BEGIN)[1:]
    for (name, _, key), block in zip(job_list, blocks):
        text = block.split("\n", 1)[1].split(END)[0]
        data = json.loads(text[text.index("{"):])
        job = data["jobs"][0]
        side, what = key.split("_")
        v = job[side]["bw_bytes"] / 1e6 if what == "bw" else job[side]["iops"]
        values[name] = v
    if len(values) != len(job_list):
        sys.exit(f"fio output incomplete: {output[-2000:]}")
    return values


def make_bundle(path, shell, mounts, annotations=None):
    rootfs = os.path.join(path, "rootfs")
    busybox_rootfs(rootfs)
    copy_with_libs(shutil.which("fio"), rootfs)
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": ["/bin/sh", "-c", shell], "env": ["PATH=/bin:/usr/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ] + mounts,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                  "resources": {"memory": {"limit": 512 << 20}}},
    }
    if annotations:
        config["annotations"] = annotations
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return rootfs



def virtiofsd_argv(binary, sock, vol):
    """How `binary` (either virtiofsd) serves `vol` on `sock`, cache=auto."""
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    if "--shared-dir" in help_text:
        return [binary, f"--socket-path={sock}", f"--shared-dir={vol}", "--cache=auto"]
    return [binary, f"--socket-path={sock}", "-o", f"source={vol}", "-o", "cache=auto"]


def qemu_virtiofsd(husk, work, vol, job_list, virtiofsd_binary):
    """QEMU microvm + virtiofsd with `vol` on /data: one QEMU argv per job
    (each job runs in a VM of its own, as each husk round runs in a
    container of its own), and the virtiofsd argv to start before each (it
    serves one VM)."""
    d = os.path.join(work, "qemu")
    os.makedirs(d, exist_ok=True)
    rootfs = os.path.join(d, "rootfs")
    busybox_rootfs(rootfs)
    copy_with_libs(shutil.which("fio"), rootfs)
    os.makedirs(os.path.join(rootfs, "data"), exist_ok=True)
    # In the image: the jobs are longer than a kernel command line.
    for n, job in enumerate(job_list):
        with open(os.path.join(rootfs, f"bench-{n}.sh"), "w") as f:
            f.write(f"mount -t virtiofs vol /data && {script('/data', [job])}\n")
    image = os.path.join(d, "root.ext4")
    initrd = os.path.join(d, "initramfs.cpio")
    subprocess.run([husk, "image", rootfs, image], check=True, capture_output=True)
    subprocess.run([husk, "initramfs", initrd], check=True, capture_output=True)
    kernel = subprocess.run([os.path.join(ROOT, "kernels/build.sh"), "--print-path"], check=True,
                            capture_output=True, text=True).stdout.strip().splitlines()[-1]
    sock = os.path.join(d, "vfsd.sock")
    qemus = []
    for n in range(len(job_list)):
        cmd = ["/bin/sh", f"/bench-{n}.sh"]
        append = ("console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check quiet "
                  f"husk.quiet=1 husk.overlay=1 husk.root=/dev/vda husk.cmd={encode_cmd(cmd)}")
        qemus.append([
            "qemu-system-x86_64", "-M", "microvm,acpi=off,rtc=off,x-option-roms=off,memory-backend=mem",
            "-accel", "kvm", "-cpu", "host", "-m", str(QEMU_MIB), "-smp", "1",
            # virtio 1.0 over mmio (virtiofsd's libvhost-user has no legacy).
            "-global", "virtio-mmio.force-legacy=false",
            "-object", f"memory-backend-memfd,id=mem,size={QEMU_MIB}M,share=on",
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-drive", f"id=root,file={image},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-chardev", f"socket,id=vfs,path={sock}",
            "-device", "vhost-user-fs-device,chardev=vfs,tag=vol",
            # husk-init's power-off: microvm without ACPI cannot reset.
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    return qemus, virtiofsd_argv(virtiofsd_binary, sock, vol), sock


# Tries of one QEMU job VM. In the KVM test host a QEMU guest sometimes
# resets in the middle of a job (no console message; QEMU's -no-reboot
# then exits 0): the job is run again in a new VM, and the retries are
# reported (husk's guests, on the same kernel, have not shown this).
QEMU_TRIES = 3
qemu_retries = 0


def run_qemu(qemus, virtiofsd, sock):
    """One round of QEMU + virtiofsd: every job's VM in turn, the guest
    consoles' output."""
    global qemu_retries
    out = []
    for qemu in qemus:
        for attempt in range(QEMU_TRIES):
            output, why = run_qemu_vm(qemu, virtiofsd, sock)
            if output is not None:
                out.append(output)
                break
            qemu_retries += 1
            print(f"QEMU + virtiofsd: try {attempt + 1} of a job failed: {why}", file=sys.stderr)
        else:
            sys.exit(f"QEMU + virtiofsd: a job failed {QEMU_TRIES} times: {why}")
    return "".join(out)


def run_qemu_vm(qemu, virtiofsd, sock):
    """One QEMU + virtiofsd VM: (the guest console's output, None), or
    (None, why it failed)."""
    if os.path.exists(sock):
        os.unlink(sock)
    # A session of its own: the Rust virtiofsd forks into its sandbox, and
    # the child holds the socket's pid-file lock until it is gone.
    daemon = subprocess.Popen(virtiofsd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            if daemon.poll() is not None:
                sys.exit(f"virtiofsd exited: {daemon.stderr.read()[-2000:]}")
            time.sleep(0.05)
        try:
            p = subprocess.run(qemu, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return None, "no end in 900 s"
        # isa-debug-exit makes QEMU's status odd; the end marker after the
        # job (the script runs under `set -e`) tells success.
        if p.stdout.count(END) == 0:
            return None, f"status {p.returncode}, no fio report: {p.stdout[-300:]!r}"
        return p.stdout.replace("\r\n", "\n"), None
    finally:
        stop_session(daemon)


def stop_session(daemon):
    """Ends `daemon` and every process of its session."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(daemon.pid, sig)
        except ProcessLookupError:
            pass
        end = time.monotonic() + wait
        while time.monotonic() < end:
            daemon.poll()
            try:
                os.killpg(daemon.pid, 0)
            except ProcessLookupError:
                daemon.wait()
                return
            time.sleep(0.05)
    daemon.wait()


def lay_out(directory, size_mb, rand_mb):
    """The files the read jobs read, written before the container starts."""
    os.makedirs(directory, exist_ok=True)
    for name, mb in (("seq-r", size_mb), ("rand", rand_mb)):
        with open(os.path.join(directory, name), "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=128, help="sequential file size")
    ap.add_argument("--rand-mb", type=int, default=32, help="random I/O file size")
    ap.add_argument("--seconds", type=int, default=5, help="random I/O job length")
    ap.add_argument("--files", type=int, default=1000, help="files of the metadata jobs")
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--qemu", action="store_true", help="add QEMU + virtiofsd (see docs/benchmarks.md)")
    ap.add_argument("--husk-other", action="append", default=[], metavar="LABEL=PATH",
                    help="another husk binary over virtio-fs, side by side (e.g. an earlier build); repeatable")
    ap.add_argument("--virtiofsd", default=VIRTIOFSD_RUST if os.path.exists(VIRTIOFSD_RUST) else VIRTIOFSD_C,
                    help="the virtiofsd QEMU uses (default: crates.io's from make bench-deps, else Debian's)")
    args = ap.parse_args()
    for tool in ("fio", "busybox", "runc") + (("qemu-system-x86_64", args.virtiofsd) if args.qemu else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/install-deps.sh installs it)")
    job_list = jobs(args.size_mb, args.rand_mb, args.seconds, args.files)
    work = tempfile.mkdtemp(prefix="husk-storage-")
    contenders = {}
    try:
        # husk over virtio-fs and runc: a volume at /data.
        for name, runtime in (("husk virtio-fs", [args.husk]), ("runc bind mount", ["runc"])):
            d = os.path.join(work, name.split()[0] + "-vol")
            vol = os.path.join(d, "vol")
            lay_out(vol, args.size_mb, args.rand_mb)
            make_bundle(d, script("/data", job_list),
                        [{"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]}])
            contenders[name] = (runtime, d, vol)
        # Other husk builds over virtio-fs, each with a volume of its own.
        for i, other in enumerate(args.husk_other):
            label, _, path = other.partition("=")
            if not path or not os.access(path, os.X_OK):
                sys.exit(f"--husk-other {other!r}: LABEL=PATH of a husk binary")
            d = os.path.join(work, f"other{i}-vol")
            vol = os.path.join(d, "vol")
            lay_out(vol, args.size_mb, args.rand_mb)
            make_bundle(d, script("/data", job_list),
                        [{"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "rw"]}])
            contenders[f"husk virtio-fs ({label})"] = ([path], d, vol)
        # husk in its block rootfs: the read files are in the image.
        d = os.path.join(work, "husk-block")
        rootfs = make_bundle(d, script("/work", job_list), [], {"io.husk.rootfs": "block"})
        lay_out(os.path.join(rootfs, "work"), args.size_mb, args.rand_mb)
        contenders["husk block rootfs"] = ([args.husk], d, None)
        if args.qemu:
            vol = os.path.join(work, "qemu-vol")
            lay_out(vol, args.size_mb, args.rand_mb)
            contenders["QEMU + virtiofsd"] = (qemu_virtiofsd(args.husk, work, vol, job_list, args.virtiofsd),
                                              None, vol)

        results = {name: {job: [] for job, _, _ in job_list} for name in contenders}
        for r in range(args.runs):
            for name, (runtime, bundle, vol) in contenders.items():
                if bundle is None:
                    output = run_qemu(*runtime)
                else:
                    state = os.path.join(work, "state")
                    argv = runtime + ["--root", state, "run", "--bundle", bundle, f"s{r}"]
                    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                       timeout=3600)
                    if p.returncode != 0:
                        sys.exit(f"{name}: run failed ({p.returncode}): {p.stdout[-2000:]}{p.stderr[-2000:]}")
                    output = p.stdout
                for job, v in parse(output, job_list).items():
                    results[name][job].append(v)
                if vol:
                    for f in ("seq-w",):
                        try:
                            os.unlink(os.path.join(vol, f))
                        except FileNotFoundError:
                            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"storage benchmark: fio {version(['fio', '--version'])}, {args.runs} rounds; sequential "
          f"{args.size_mb} MiB, random 4 KiB over {args.rand_mb} MiB for {args.seconds} s, "
          f"metadata over {args.files} files"
          + (f"; QEMU with {version([args.virtiofsd, '--version'])}, {qemu_retries} job VMs retried"
             if args.qemu else ""))
    print()
    names = list(contenders)
    qemu = "QEMU + virtiofsd" in results
    others = [n for n in names if n.startswith("husk virtio-fs (")]
    print("| job | " + " | ".join(names) + " | husk virtio-fs / runc |"
          + (" husk virtio-fs / QEMU + virtiofsd |" if qemu else "")
          + "".join(f" husk virtio-fs / {n} |" for n in others))
    print("|---|" + "---|" * (len(names) + 1 + qemu + len(others)))
    for job, _, key in job_list:
        unit = "MB/s" if key.endswith("bw") else "ops/s"
        cells = []
        for name in names:
            vals = results[name][job]
            cells.append(f"{statistics.median(vals):.0f} {unit} ({min(vals):.0f}-{max(vals):.0f})")
        ratio = statistics.median(results["husk virtio-fs"][job]) / statistics.median(results["runc bind mount"][job])
        row = f"| {job} | " + " | ".join(cells) + f" | {ratio:.2f} |"
        if qemu:
            row += f" {statistics.median(results['husk virtio-fs'][job]) / statistics.median(results['QEMU + virtiofsd'][job]):.2f} |"
        for n in others:
            row += f" {statistics.median(results['husk virtio-fs'][job]) / statistics.median(results[n][job]):.2f} |"
        print(row)
    if args.json:
        write_json(args.json, "storage", {"args": vars(args), "results": results,
                                          "runc": version(["runc", "--version"]),
                                          "qemu": None if not args.qemu else version(["qemu-system-x86_64", "--version"]),
                                          "virtiofsd": None if not args.qemu else version([args.virtiofsd, "--version"]),
                                          "qemu_retries": qemu_retries})


if __name__ == "__main__":
    main()
