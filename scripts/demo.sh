#!/usr/bin/env bash
# The demo `make demo` runs (inside the KVM test host when this machine has no
# vmx/svm): husk checks the host, then boots microVMs with its own VMM and runs
# commands in them: one in the default busybox root filesystem, one in a root
# filesystem made from a directory, showing an exit status coming back; then
# an OCI container through podman with husk as its runtime (an image imported
# from a busybox tarball: no registry is needed), and its start time next to
# runc's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
husk="$(readlink -f "${HUSK_BIN:-target/release/husk}")"
work="$(mktemp -d)"
cleanup() {
    # podman's storage is on a tmpfs of the demo's own.
    umount -l "$work/podman" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== husk check"
"$husk" check

echo
echo "== husk boot -- /bin/echo hello"
"$husk" boot -- /bin/echo hello

echo
echo "== a microVM with 2 vCPUs and 256 MiB"
"$husk" boot --vcpus 2 --mem 256 -- sh -c \
    'echo "Hello from a microVM: $(uname -sr), $(nproc) vCPUs, $(($(sed -n "s/MemTotal: *\([0-9]*\).*/\1/p" /proc/meminfo) / 1024)) MiB, up $(cut -d" " -f1 /proc/uptime) s"'

echo
echo "== a root filesystem from a directory; the guest writes to it and exits 7"
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,tmp}
cp /bin/busybox "$root/bin/busybox"
for applet in sh echo cat; do ln -s busybox "$root/bin/$applet"; done
echo "written on the host" > "$root/etc/motd"
set +e
"$husk" boot --rootfs "$root" -- sh -c 'cat /etc/motd; echo "and in the guest" >> /etc/motd; cat /etc/motd; exit 7'
status=$?
set -e
echo "== exit status: $status"
[ "$status" -eq 7 ] || { echo "demo FAILED: expected exit status 7" >&2; exit 1; }

echo
echo "== an OCI container through podman, in a microVM (podman --runtime $husk)"
command -v podman >/dev/null || { echo "demo FAILED: podman is not installed (make deps)" >&2; exit 1; }
pw="$work/podman"
mkdir -p "$pw"
mount -t tmpfs tmpfs "$pw"
image_root="$pw/rootfs"
mkdir -p "$image_root"/{bin,etc,proc,sys,dev,tmp,root}
cp /bin/busybox "$image_root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$image_root/bin/$applet"
done
tar -C "$image_root" -cf "$pw/image.tar" .
pod() {
    podman --root "$pw/storage" --runroot "$pw/run" --storage-driver vfs \
        --cgroup-manager cgroupfs --events-backend file "$@"
}
pod import -q "$pw/image.tar" localhost/husk-demo >/dev/null
host_kernel="$(uname -r)"
pod --runtime "$husk" run --rm localhost/husk-demo sh -c \
    "echo \"Hello from a podman container in a microVM: kernel \$(uname -r) (the host's is $host_kernel), \$(nproc) vCPU, its own eth0: \$(ip -4 -o addr show eth0 | awk '{print \$4}')\""

# Start-up, side by side: `podman run --rm IMAGE true` with the default
# network, once to warm up (husk's first container of a VM size builds its
# snapshot template), then RUNS times each; the median.
runs="${DEMO_RUNS:-3}"
median_ms() {
    local runtime="$1" times=() i start end
    pod --runtime "$runtime" run --rm localhost/husk-demo true
    for ((i = 0; i < runs; i++)); do
        start=$(date +%s%N)
        pod --runtime "$runtime" run --rm localhost/husk-demo true
        end=$(date +%s%N)
        times+=($(((end - start) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p"
}
husk_ms="$(median_ms "$husk")"
runc_ms="$(median_ms "$(command -v runc)")"
echo "== podman run --rm IMAGE true, median of $runs: husk ${husk_ms} ms, runc ${runc_ms} ms ($(awk -v h="$husk_ms" -v r="$runc_ms" 'BEGIN { printf "%.2f", h / r }')x)"
echo "   (in the KVM test host, i.e. under QEMU's emulation, compare the two only with each other; docs/benchmarks.md has both)"
echo "== demo OK"
