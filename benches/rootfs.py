"""The busybox root filesystem the benchmarks give every contender."""

import os
import shutil
import subprocess


def busybox_rootfs(rootfs):
    """Fills `rootfs` with the static busybox and its applet links."""
    os.makedirs(os.path.join(rootfs, "bin"))
    for d in ("etc", "proc", "sys", "dev", "tmp", "root"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))


def copy_with_libs(binary, rootfs):
    """Copies a dynamic binary and what ldd says it loads into `rootfs`, at
    the same paths."""
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
    files = [binary]
    for line in ldd.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.append(word)
    for f in files:
        real = os.path.realpath(f)
        dest = os.path.join(rootfs, f.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.exists(dest):
            shutil.copy(real, dest)
