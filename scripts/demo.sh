#!/usr/bin/env bash
# The demo `make demo` runs (inside the KVM test host when this machine has no
# vmx/svm): husk checks the host, then boots microVMs with its own VMM and runs
# commands in them: one in the default busybox root filesystem, one in a root
# filesystem made from a directory, showing an exit status coming back.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
husk="${HUSK_BIN:-target/release/husk}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

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
echo "== demo OK"
