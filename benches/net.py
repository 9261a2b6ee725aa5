#!/usr/bin/env python3
"""Network benchmark: TCP throughput and round-trip latency to a container,
husk vs runc, side by side in one run.

Both containers sit in identical network namespaces wired as the CNI bridge
plugin does (a bridge with the gateway address in this namespace, a veth per
container namespace with an address and a default route) and run the same
`iperf3 -s` from the same rootfs (busybox plus iperf3 and its libraries).
From this namespace: `iperf3 -c` to each (host -> container, and -R for
container -> host), alternating, N rounds; `ping` for the round trip. husk
runs twice: with its virtio-net offloads (checksum/TSO) and without.
Needs a KVM with vmx/svm for husk: run it through tests/testhost/run
(make bench-net does).
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

from common import encode_cmd
from rootfs import busybox_rootfs, copy_with_libs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = "10.77.0"
BRIDGE = "hbnet"


def sh(cmd, check=True):
    p = subprocess.run(["bash", "-ec", cmd], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"`{cmd}` failed: {p.stdout}{p.stderr}")
    return p.stdout


def make_bundle(path, netns, annotations):
    rootfs = os.path.join(path, "rootfs")
    busybox_rootfs(rootfs)
    copy_with_libs(shutil.which("iperf3"), rootfs)
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": [shutil.which("iperf3"), "-s"],
                    "env": ["PATH=/bin:/usr/bin"], "cwd": "/tmp"},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "annotations": annotations,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                 {"type": "network", "path": f"/var/run/netns/{netns}"}]},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def add_netns(name, host):
    veth = f"hv{name}"
    sh(f"""ip netns add {name}
        ip link add {veth} type veth peer name {veth}p
        ip link set {veth} master {BRIDGE} up
        ip link set {veth}p netns {name}
        ip -n {name} link set {veth}p name eth0
        ip -n {name} addr add {NET}.{host}/24 dev eth0
        ip -n {name} link set eth0 up
        ip -n {name} link set lo up
        ip -n {name} route add default via {NET}.1""")



def start_qemu(husk, ns, host, rootfs, work, vhost):
    """QEMU microvm on the husk kernel, its tap in `ns` redirected to eth0."""
    kernel = sh(f"{ROOT}/kernels/build.sh --print-path").strip().splitlines()[-1]
    image = os.path.join(work, f"{ns}.ext4")
    initrd = os.path.join(work, f"{ns}.cpio")
    sh(f"{husk} image {rootfs} {image} && {husk} initramfs {initrd}")
    link = json.loads(sh(f"ip -n {ns} -j link show eth0"))[0]
    mac, mtu = link["address"], link["mtu"]
    iperf3 = shutil.which("iperf3")
    cmd = ["/bin/sh", "-c",
           f"ip link set lo up; ip link set eth0 up; ip addr add {NET}.{host}/24 dev eth0; "
           f"ip route add default via {NET}.1; exec {iperf3} -s"]
    append = ("console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check quiet "
              f"husk.quiet=1 husk.overlay=1 husk.root=/dev/vda husk.cmd={encode_cmd(cmd)}")
    tap = "husktapq"
    argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64",
            "-M", "microvm,acpi=off,rtc=off,x-option-roms=off", "-accel", "kvm", "-cpu", "host",
            "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-serial", f"file:{work}/{ns}.console",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-drive", f"id=root,file={image},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost={'on' if vhost else 'off'}",
            "-device", f"virtio-net-device,netdev=n0,mac={mac}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["ip", "-n", ns, "link", "show", tap], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    sh(f"""ip -n {ns} link set {tap} mtu {mtu} up
        for pair in "eth0 {tap}" "{tap} eth0"; do set -- $pair
          ip netns exec {ns} tc qdisc add dev $1 ingress
          ip netns exec {ns} tc filter add dev $1 parent ffff: protocol all matchall action mirred egress redirect dev $2
        done""")
    return proc


def iperf(ip, seconds, reverse):
    """Bits per second received, or None when the server did not answer."""
    argv = ["iperf3", "-c", ip, "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    argv += ["-R"] if reverse else []
    for _ in range(60):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            continue
        if p.returncode == 0:
            try:
                return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"]
            except (ValueError, KeyError):
                pass  # the server was busy with the previous test: retry
        time.sleep(1)
    sys.exit(f"iperf3 to {ip} failed: {p.stdout[-500:]}{p.stderr[-500:]}")


def ping_ms(ip, count):
    out = sh(f"busybox ping -c {count} -i 0.2 -W 5 {ip}")
    # round-trip min/avg/max = 0.123/0.456/0.789 ms
    line = [l for l in out.splitlines() if "min/avg/max" in l][0]
    return float(line.split("=")[1].split("/")[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--husk", default=os.path.join(ROOT, "target/release/husk"))
    args = ap.parse_args()
    for tool in ("iperf3", "busybox", "runc", "ip", "tc"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/install-deps.sh installs it)")
    setups = {
        "husk": ([args.husk], {}, 2),
        "husk (no offload)": ([args.husk], {"io.husk.net.offload": "false"}, 3),
        "QEMU microvm": ("qemu", False, 5),
        "QEMU microvm + vhost-net": ("qemu", True, 6),
        "runc": (["runc"], {}, 4),
    }
    work = tempfile.mkdtemp()
    started = []
    qemus = []
    try:
        sh(f"ip link add {BRIDGE} type bridge && ip addr add {NET}.1/24 dev {BRIDGE} && ip link set {BRIDGE} up")
        for i, (name, (base, ann, host)) in enumerate(setups.items()):
            ns = f"hbn{i}"
            add_netns(ns, host)
            bundle = os.path.join(work, f"b{i}")
            os.makedirs(bundle)
            make_bundle(bundle, ns, {} if base == "qemu" else ann)
            if base == "qemu":
                qemus.append(start_qemu(args.husk, ns, host, os.path.join(bundle, "rootfs"), work, ann))
                continue
            argv = base + ["--root", os.path.join(work, f"state{i}"), "run", "-d", "--bundle", bundle, f"c{i}"]
            # A detached container keeps the stdio it is given: a file,
            # not a pipe that would never reach EOF.
            log = os.path.join(work, f"run{i}.log")
            with open(log, "w") as f:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
            if p.returncode != 0:
                sys.exit(f"{name}: run failed: {open(log).read()}")
            started.append(base + ["--root", os.path.join(work, f"state{i}"), "delete", "--force", f"c{i}"])
        results = {name: {"up": [], "down": [], "rtt": []} for name in setups}
        for _ in range(args.runs):
            for name, (_, _, host) in setups.items():
                ip = f"{NET}.{host}"
                results[name]["up"].append(iperf(ip, args.seconds, False))
                results[name]["down"].append(iperf(ip, args.seconds, True))
                results[name]["rtt"].append(ping_ms(ip, 10))
    finally:
        for q in qemus:
            q.kill()
            q.wait()
        for argv in started:
            subprocess.run(argv, capture_output=True)
        for i in range(len(setups)):
            subprocess.run(["ip", "netns", "del", f"hbn{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    def med(name, key):
        return statistics.median(results[name][key])

    print(f"network benchmark: iperf3 TCP, {args.seconds} s x {args.runs} rounds each direction; ping RTT (10 x {args.runs})")
    print()
    print("| runtime | host -> container | container -> host | RTT | throughput vs runc (->, <-) |")
    print("|---|---|---|---|---|")
    for name in setups:
        up, down, rtt = med(name, "up"), med(name, "down"), med(name, "rtt")
        print(f"| {name} | {up / 1e6:.0f} Mbit/s ({min(results[name]['up']) / 1e6:.0f}-{max(results[name]['up']) / 1e6:.0f}) "
              f"| {down / 1e6:.0f} Mbit/s ({min(results[name]['down']) / 1e6:.0f}-{max(results[name]['down']) / 1e6:.0f}) "
              f"| {rtt:.2f} ms | {up / med('runc', 'up'):.2f}, {down / med('runc', 'down'):.2f} |")


if __name__ == "__main__":
    main()
