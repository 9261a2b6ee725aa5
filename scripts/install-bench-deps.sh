#!/usr/bin/env bash
# What the benchmarks need beyond scripts/install-deps.sh: the maintained
# (Rust) virtiofsd from crates.io for the storage benchmark's QEMU +
# virtiofsd contender (Debian 12 only has QEMU 7.2's C virtiofsd, which hangs
# on fio's metadata jobs in the test host), built into target/tools.
set -euo pipefail

log() { printf 'install-bench-deps: %s\n' "$*" >&2; }

here="$(cd "$(dirname "$0")/.." && pwd)"
version=1.14.0
bin="$here/target/tools/bin/virtiofsd"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
    exit 0
fi
# Its seccomp and capability handling link these C libraries.
want=()
for pkg in libseccomp-dev libcap-ng-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || want+=("$pkg")
done
if [ "${#want[@]}" -gt 0 ]; then
    log "installing ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${want[@]}" >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends "${want[@]}" >&2; }
fi
log "building virtiofsd $version from crates.io into target/tools"
cargo install --locked --quiet virtiofsd --version "$version" --root "$here/target/tools" >&2
