#!/bin/bash
# `podman run --rm IMAGE true` with podman's default network (one NIC on its
# bridge): husk (restored from a template VM) vs husk-cold (the annotation
# io.husk.snapshot=false) vs runc. A busybox image imported from a tarball
# (no registry needed), podman's storage on a tmpfs of its own; first checks
# which path each husk mode takes (a detached container's timeline), then one
# warm-up run each and RUNS (default 5) rounds, alternating; prints medians.
# Needs a KVM with vmx/svm for husk: run it through tests/testhost/run.
set -u
runs=${RUNS:-5}
w=$(mktemp -d); mkdir -p $w/pw; mount -t tmpfs tmpfs $w/pw
r=$w/pw/rootfs; mkdir -p $r/{bin,etc,proc,sys,dev,tmp,root}; cp /bin/busybox $r/bin/
for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $r/bin/$a; done
tar -C $r -cf $w/pw/i.tar .
pod() { podman --root $w/pw/storage --runroot $w/pw/run --storage-driver vfs --cgroup-manager cgroupfs --events-backend file "$@"; }
pod import -q $w/pw/i.tar localhost/husk-podman-net >/dev/null
husk=$(readlink -f "${HUSK_BIN:-$(dirname "$0")/../target/release/husk}")
declare -A rt=([husk]="--runtime $husk" [husk-cold]="--runtime $husk" [runc]="--runtime runc")
declare -A ann=([husk]="" [husk-cold]="--annotation io.husk.snapshot=false" [runc]="")
# Which path each husk mode takes, from a detached container's timeline.
for m in husk husk-cold; do
  id=$(pod ${rt[$m]} run ${ann[$m]} -d localhost/husk-podman-net sleep 100)
  echo "$m: restored=$(grep -c '^vmm.restored' /run/husk/$id/timeline)"
  pod rm -f -t 0 $id >/dev/null
done
for m in husk husk-cold runc; do pod ${rt[$m]} run ${ann[$m]} --rm localhost/husk-podman-net true; done
declare -A t
for ((i = 0; i < runs; i++)); do
  for m in husk husk-cold runc; do
    s=$(date +%s%N); pod ${rt[$m]} run ${ann[$m]} --rm localhost/husk-podman-net true; e=$(date +%s%N)
    t[$m]="${t[$m]:-} $(( (e-s)/1000000 ))"
  done
done
for m in husk husk-cold runc; do
  sorted=$(echo ${t[$m]} | tr ' ' '\n' | sort -n | tr '\n' ' ')
  med=$(echo ${t[$m]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  echo "$m: median $med ms (runs: $sorted)"
done
umount -l $w/pw
rm -rf $w
