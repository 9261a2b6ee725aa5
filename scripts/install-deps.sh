#!/usr/bin/env bash
# Installs what building and testing husk needs on Debian 12, and nothing that
# is already there. Run as root (apt-get); `make demo` and `make test` call it.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Debian packages: tool -> package (checked by command), then plain packages.
# runc and crun are the speed floor the benchmarks compare against, runsc
# (gVisor) the sandboxed peer; python3-matplotlib draws their chart; iproute2,
# iptables, iperf3 and the CNI plugins serve the network tests and benchmark,
# fio the storage benchmark; gcc with libc6-dev (static libc) builds the
# seccomp probe of the end-to-end tests;
# podman, conmon, containerd and docker.io the engine tests; uidmap and
# slirp4netns rootless podman; criu only because podman's checkpoint and
# restore check its version before they call the runtime (husk does not
# use it); protoc (protobuf-compiler) builds the Kubernetes CRI client of the
# CRI end-to-end tests (the k8s-cri crate's protobufs).
declare -A tools=(
    [qemu-system-x86_64]=qemu-system-x86
    [busybox]=busybox-static
    [mkfs.ext4]=e2fsprogs
    [debugfs]=e2fsprogs
    [modprobe]=kmod
    [cpio]=cpio
    [make]=make
    [gcc]=gcc
    [bc]=bc
    [bison]=bison
    [flex]=flex
    [xz]=xz-utils
    [python3]=python3
    [runc]=runc
    [crun]=crun
    [runsc]=runsc
    [ip]=iproute2
    [tc]=iproute2
    [iperf3]=iperf3
    [fio]=fio
    [iptables]=iptables
    [podman]=podman
    [conmon]=conmon
    [criu]=criu
    [newuidmap]=uidmap
    [slirp4netns]=slirp4netns
    [containerd]=containerd
    [ctr]=containerd
    [dockerd]=docker.io
    [protoc]=protobuf-compiler
)
want=()
for tool in "${!tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || want+=("${tools[$tool]}")
done
# busybox must be the static build: it is copied into guest root filesystems.
if command -v busybox >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    want+=(busybox-static)
fi
for pkg in libelf-dev libc6-dev linux-source-6.1 containernetworking-plugins python3-matplotlib; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || want+=("$pkg")
done
if [ "${#want[@]}" -gt 0 ]; then
    mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages ${want[*]}: run as root, or install them"
    log "installing ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${want[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${want[@]}" >&2; } ||
        die "apt-get could not install ${want[*]}"
fi

command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain with rustup (1.89 or newer)"
# The guest init is a static musl binary.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        log "adding the rust target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl >&2 || die "rustup could not add x86_64-unknown-linux-musl"
    fi
else
    rustc --print target-libdir --target x86_64-unknown-linux-musl >/dev/null 2>&1 ||
        die "the Rust target x86_64-unknown-linux-musl is missing and rustup is not available"
fi
