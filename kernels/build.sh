#!/usr/bin/env bash
# Build husk's guest kernel (vmlinux) from Debian's linux-source-6.1 package.
#
# Usage: kernels/build.sh [--print-path]
#   --print-path  print where the vmlinux for the current config lives (or will
#                 live) and exit without building.
#
# The result is cached outside the checkout, keyed by a hash of this script, the
# config fragment and the linux-source package version, so an unchanged config
# never rebuilds (not even from a fresh clone on the same machine):
#   ${HUSK_KERNEL_CACHE:-${HUSK_CACHE:-$HOME/.cache/husk}/kernels}/<key>/vmlinux
# and a `default` symlink in that directory points at the newest build; husk uses
# it when no kernel is named.  Progress goes to stderr; the last line on stdout
# is the path of vmlinux.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fragment="$here/husk-x86_64.config"
cache="${HUSK_KERNEL_CACHE:-${HUSK_CACHE:-$HOME/.cache/husk}/kernels}"
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz

log() { printf 'kernels/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_pkgs=()
dpkg-query -W -f='${Status}' "$src_pkg" 2>/dev/null | grep -q 'ok installed' || need_pkgs+=("$src_pkg")
for tool_pkg in make:make gcc:gcc bc:bc bison:bison flex:flex xz:xz-utils perl:perl; do
    command -v "${tool_pkg%%:*}" >/dev/null || need_pkgs+=("${tool_pkg#*:}")
done
dpkg-query -W -f='${Status}' libelf-dev 2>/dev/null | grep -q 'ok installed' || need_pkgs+=(libelf-dev)
if [ "${#need_pkgs[@]}" -gt 0 ] && [ "${1:-}" != --print-path ]; then
    [ "$(id -u)" -eq 0 ] || die "missing packages ${need_pkgs[*]}; run as root or install them"
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${need_pkgs[@]}" >&2; } ||
        die "apt-get could not install ${need_pkgs[*]}"
fi

src_version="$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || echo not-installed)"
key="$( { cat "$fragment" "$here/build.sh"; echo "$src_version"; } | sha256sum | cut -c1-16)"
out="$cache/$key"

if [ "${1:-}" = --print-path ]; then
    echo "$out/vmlinux"
    exit 0
fi

if [ -f "$out/vmlinux" ]; then
    log "cached: $out/vmlinux (config $key, $src_pkg $src_version)"
    ln -sfn "$key" "$cache/default"
    echo "$out/vmlinux"
    exit 0
fi

[ -f "$src_tar" ] || die "$src_tar not found although $src_pkg is installed"
mkdir -p "$cache"
build="$cache/$key.build.$$"
trap 'rm -rf "$build"' EXIT
mkdir -p "$build"
start=$(date +%s)
log "unpacking $src_tar"
tar -C "$build" -xf "$src_tar"
tree="$build/linux-source-6.1"
[ -d "$tree" ] || die "unexpected layout in $src_tar"

jobs="$(nproc)"
mk() { make -C "$tree" ARCH=x86_64 -j"$jobs" "$@" >&2; }
mk tinyconfig
"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$fragment" >&2
mk olddefconfig

# Every option the fragment enables must have survived olddefconfig (a missing
# dependency silently drops it otherwise); every disabled one must be off.
missing=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            grep -qx "$line" "$tree/.config" || missing+=("$line") ;;
        "# CONFIG_"*" is not set")
            opt="${line#\# }"; opt="${opt%% *}"
            ! grep -q "^$opt=" "$tree/.config" || missing+=("$line") ;;
    esac
done < "$fragment"
if [ "${#missing[@]}" -gt 0 ]; then
    die "options from $(basename "$fragment") not in the final .config: ${missing[*]}"
fi

log "building vmlinux with $jobs jobs"
mk vmlinux
mkdir -p "$build/out"
cp "$tree/vmlinux" "$tree/.config" "$build/out/"
strip --strip-debug "$build/out/vmlinux" 2>/dev/null || true
rm -rf "$out"
mv "$build/out" "$out"
ln -sfn "$key" "$cache/default"
log "built $out/vmlinux in $(( $(date +%s) - start )) s"
echo "$out/vmlinux"
