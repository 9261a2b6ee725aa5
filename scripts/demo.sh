#!/usr/bin/env bash
# The demo `make demo` runs (inside the KVM test host when this machine has no
# vmx/svm): husk checks the host, builds a busybox root filesystem image and
# the husk-init initramfs, and boots husk's guest kernel with them, running a
# command whose exit status husk-init reports back.
#
# Until husk's own VMM lands, the microVM is QEMU's `-M microvm`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
husk="${HUSK_BIN:-target/release/husk}"
kernel="$(kernels/build.sh --print-path)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== husk check"
"$husk" check

echo "== building a busybox root filesystem image"
root="$work/rootfs"
mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
echo husk-demo > "$root/etc/hostname"
"$husk" image "$root" "$work/rootfs.ext4"
"$husk" initramfs "$work/initramfs.cpio"

script='echo; echo "Hello from a microVM: $(uname -sr), $(nproc) vCPU, $(cut -d" " -f1 /proc/uptime)s after boot"; exit 0'
json="$(python3 -c 'import json,sys; print(json.dumps({"args": ["sh", "-c", sys.argv[1]]}))' "$script")"
cmd="$(printf '%s' "$json" | base64 -w0 | tr '+/' '-_' | tr -d '=')"

echo "== booting $kernel under QEMU microvm"
set +e
timeout 120 qemu-system-x86_64 \
    -M microvm,acpi=off,rtc=off,x-option-roms=off -accel kvm -cpu host -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
    -kernel "$kernel" -initrd "$work/initramfs.cpio" \
    -append "console=ttyS0 quiet reboot=k panic=-1 husk.root=/dev/vda husk.cmd=$cmd" \
    -drive "id=root,file=$work/rootfs.ext4,format=raw,if=none" -device virtio-blk-device,drive=root \
    -device isa-debug-exit,iobase=0xf4,iosize=4 </dev/null | tee "$work/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
report="$(grep -a 'husk-init: exit' "$work/console.log" | tail -1 | tr -d '\r')"
echo "== guest reported: ${report:-nothing} (QEMU exit status $qemu_rc)"
case "$report" in
    *"exit code=0") echo "== demo OK" ;;
    *) echo "== demo FAILED" >&2; exit 1 ;;
esac
