//! End to end, in the KVM test host: host directories shared with the
//! container over virtio-fs (OCI directory bind mounts), through husk's
//! runc-compatible command line. Every assertion about what happened is
//! made on the host side.

mod common;

use std::path::{Path, PathBuf};

use common::oci::*;

/// A bind mount of `source` on `destination` with `options`.
fn bind(destination: &str, source: &Path, options: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": options,
    })
}

fn add_mounts(config: &mut serde_json::Value, mounts: Vec<serde_json::Value>) {
    let list = config["mounts"].as_array_mut().unwrap();
    list.extend(mounts);
}

/// Every file and directory under `dir` (relative paths), sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_directory_bind_is_shared_both_ways() {
    let env = Env::new();
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    let script = "cat /data/in && echo from the guest > /data/out && mkdir -p /data/d/e \
                  && ln -s out /data/link && ln /data/out /data/hard && mv /data/in /data/moved \
                  && ls /data";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        add_mounts(c, vec![bind("/data", &data, &["rbind", "rw"])])
    });
    let run = env.husk(&["run", "--bundle", b(&bundle), "share1"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("from the host"), "{}", run.stdout);
    env.assert_gone("share1");
    // Everything the guest did is on the host, as the host sees files.
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "from the guest\n"
    );
    assert!(data.join("d/e").is_dir());
    assert_eq!(
        std::fs::read_link(data.join("link")).unwrap(),
        Path::new("out")
    );
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(data.join("hard")).unwrap().ino(),
        std::fs::metadata(data.join("out")).unwrap().ino()
    );
    assert!(!data.join("in").exists() && data.join("moved").is_file());
    // Root in the container writes files owned by root on the host (no
    // user namespace in this spec).
    assert_eq!(std::fs::metadata(data.join("out")).unwrap().uid(), 0);
}

#[test]
fn a_read_only_bind_refuses_writes_even_after_a_remount_in_the_guest() {
    let env = Env::new();
    let data = env.dir.path().join("ro");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "original\n").unwrap();
    // The guest is root with every capability here: it can remount its
    // copy read-write; the host's copy stays read-only regardless.
    let script = "echo changed > /data/f; echo first=$?; \
                  mount -o remount,rw /data; echo remount=$?; \
                  echo changed > /data/f; echo second=$?; touch /data/new; echo touch=$?; \
                  cat /data/f";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        add_mounts(c, vec![bind("/data", &data, &["bind", "ro"])]);
        c["process"]["capabilities"] = serde_json::json!({
            "bounding": ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"],
            "effective": ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"],
            "permitted": ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"],
        });
    });
    let run = env.husk(&["run", "--bundle", b(&bundle), "ro1"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains("first=1"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("second=1") && out.contains("touch=1"), "{out}");
    assert!(out.contains("original"), "{out}");
    assert_eq!(
        std::fs::read_to_string(data.join("f")).unwrap(),
        "original\n"
    );
    assert!(!data.join("new").exists());
}

#[test]
fn escapes_from_a_share_reach_nothing_of_the_host() {
    let env = Env::new();
    let top = env.dir.path().join("top");
    let share = top.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(top.join("secret"), "host secret\n").unwrap();
    // Planted on the host: links that point out of the share.
    std::os::unix::fs::symlink("/", share.join("to-root")).unwrap();
    std::os::unix::fs::symlink("../secret", share.join("to-secret")).unwrap();
    let before = tree(&top);
    let secret = "host secret";
    // The guest tries: `..` past the mount, the planted links (they
    // resolve in the guest's own tree), a symlink to / of its own then
    // writing through it, /proc/self/fd of a share file, renames and hard
    // links out of the share.
    let script = "cat /data/../secret /data/to-secret /data/to-root/secret 2>&1; \
                  ls /data/to-root/ >/dev/null; \
                  ln -s / /data/mine; echo planted > /data/mine/tmp/through-link; \
                  exec 3</data/to-root; ls /proc/self/fd/3/ > /dev/null; \
                  echo x > /data/f; mv /data/f /tmp/f; ln /data/to-secret /tmp/h 2>&1; \
                  mkdir -p /data/d; mv /data/d /data/d/../../escaped 2>&1; \
                  cat /data/to-secret; echo done";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        add_mounts(c, vec![bind("/data", &share, &["rbind", "rw"])])
    });
    let run = env.husk(&["run", "--bundle", b(&bundle), "esc1"]);
    assert!(
        run.stdout.contains("done"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "a host file outside the share was read:\n{}",
        run.stdout
    );
    // Outside the share, the host is unchanged.
    let after: Vec<PathBuf> = tree(&top)
        .into_iter()
        .filter(|p| !p.starts_with("share"))
        .collect();
    let before: Vec<PathBuf> = before
        .into_iter()
        .filter(|p| !p.starts_with("share"))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        std::fs::read_to_string(top.join("secret")).unwrap(),
        "host secret\n"
    );
    assert!(!Path::new("/tmp/through-link").exists());
    assert!(!Path::new("/escaped").exists());
    // What stayed inside: the guest's own symlink is a symlink, not a
    // way out.
    assert_eq!(
        std::fs::read_link(share.join("mine")).unwrap(),
        Path::new("/")
    );
}

#[test]
fn a_full_share_gives_enospc_inside_and_nothing_else() {
    let env = Env::new();
    let small = env.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let script = "dd if=/dev/zero of=/data/big bs=64k count=64 2>&1; echo dd=$?; \
                  rm /data/big; echo ok > /data/after; cat /data/after";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        add_mounts(c, vec![bind("/data", &small, &["bind"])])
    });
    let run = env.husk(&["run", "--bundle", b(&bundle), "full1"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("No space left on device"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("dd=1"), "{}", run.stdout);
    // Space freed in the guest is free on the host, and the share works.
    assert!(run.stdout.contains("\nok"), "{}", run.stdout);
    assert_eq!(
        std::fs::read_to_string(small.join("after")).unwrap(),
        "ok\n"
    );
    env.assert_gone("full1");
}

#[test]
fn a_missing_bind_source_fails_create_naming_it_and_leaves_nothing() {
    let env = Env::new();
    let missing = env.dir.path().join("no-such-dir");
    let bundle = env.bundle("b", &["true"], |c| {
        add_mounts(c, vec![bind("/data", &missing, &["rbind"])])
    });
    let done = env.husk(&["create", "--bundle", b(&bundle), "miss1"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("no-such-dir"), "{}", done.stderr);
    env.assert_gone("miss1");
}

#[test]
fn two_containers_share_one_directory_live() {
    let env = Env::new();
    let data = env.dir.path().join("both");
    std::fs::create_dir(&data).unwrap();
    // The first container waits for a file the second writes; each sees
    // the other's writes through the host directory.
    let wait =
        "i=0; while [ ! -e /data/from-b ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                cat /data/from-b; echo a > /data/from-a";
    let a = env.bundle("a", &["sh", "-c", wait], |c| {
        add_mounts(c, vec![bind("/data", &data, &["rbind"])])
    });
    let bb = env.bundle("bb", &["sh", "-c", "echo b > /data/from-b"], |c| {
        add_mounts(c, vec![bind("/data", &data, &["rbind"])])
    });
    assert!(env
        .husk(&["create", "--bundle", b(&a), "live-a"])
        .status
        .success());
    assert!(env.husk(&["start", "live-a"]).status.success());
    let second = env.husk(&["run", "--bundle", b(&bb), "live-b"]);
    assert_eq!(second.status.code(), Some(0), "{}", second.stderr);
    env.wait_status("live-a", "stopped");
    assert_eq!(std::fs::read_to_string(data.join("from-a")).unwrap(), "a\n");
    assert!(env.husk(&["delete", "live-a"]).status.success());
    env.assert_gone("live-a");
}

/// A file bind mount (what engines do with /etc/hosts and resolv.conf) is
/// the host's file, live: an engine rewriting it in place is seen inside.
#[test]
fn a_bound_file_stays_live() {
    let env = Env::new();
    let hosts = env.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let wait = "i=0; while ! grep -q db /etc/hosts && [ $i -lt 300 ]; do \
                sleep 0.1; i=$((i+1)); done; grep -q db /etc/hosts && exit 42; exit 1";
    let bundle = env.bundle("b", &["sh", "-c", wait], |c| {
        add_mounts(c, vec![bind("/etc/hosts", &hosts, &["rbind", "ro"])])
    });
    assert!(env
        .husk(&["create", "--bundle", b(&bundle), "file1"])
        .status
        .success());
    assert!(env.husk(&["start", "file1"]).status.success());
    std::thread::sleep(std::time::Duration::from_secs(2));
    // In place, as `podman network connect` updates it.
    std::fs::write(&hosts, "127.0.0.1 localhost\n10.88.0.5 db\n").unwrap();
    env.wait_status("file1", "stopped");
    // It ended because it saw the new line, not at its timeout.
    let exit = husk::runtime::state::State::load(&env.root(), "file1")
        .ok()
        .and_then(|st| st.exit_status);
    assert_eq!(exit, Some(husk::runtime::state::ExitStatus::Code(42)));
    assert!(env.husk(&["delete", "file1"]).status.success());
    env.assert_gone("file1");
}

/// The container's root is the bundle's rootfs directory itself: what the
/// container writes is there on the host after it ends (and for the next
/// container of the bundle), what the host writes while it runs (as
/// `podman cp` does) is seen inside, and no image is built.
#[test]
fn the_rootfs_is_the_bundles_directory_both_ways() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let script = "echo kept > /etc/motd && mkdir -p /var/lib/app && echo 1 > /var/lib/app/n \
                  && echo t > /tmp/t && rm /etc/hostname \
                  && i=0; while [ ! -e /copied-in ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
                  cat /copied-in > /seen";
    let bundle = env.bundle("b", &["sh", "-c", script], |_| {});
    let rootfs = bundle.join("rootfs");
    let (kernel, init) = (common::kernel(), common::init_binary());
    let with_cache = |args: &[&str]| {
        env.husk_with_env(
            &[
                ("HUSK_CACHE", &cache),
                ("HUSK_KERNEL", &kernel),
                ("HUSK_INIT", &init),
            ],
            args,
        )
    };
    assert!(with_cache(&["create", "--bundle", b(&bundle), "root1"])
        .status
        .success());
    assert!(with_cache(&["start", "root1"]).status.success());
    // The host writes into the running container's root.
    std::fs::write(rootfs.join("copied-in"), "from the host\n").unwrap();
    env.wait_status("root1", "stopped");
    let exit = husk::runtime::state::State::load(&env.root(), "root1")
        .ok()
        .and_then(|st| st.exit_status);
    assert_eq!(exit, Some(husk::runtime::state::ExitStatus::Code(0)));
    assert!(with_cache(&["delete", "root1"]).status.success());
    env.assert_gone("root1");
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap();
    assert_eq!(read("etc/motd"), "kept\n");
    assert_eq!(read("var/lib/app/n"), "1\n");
    // /tmp is the rootfs's, as under runc (no tmpfs over it).
    assert_eq!(read("tmp/t"), "t\n");
    assert_eq!(read("seen"), "from the host\n");
    assert!(!rootfs.join("etc/hostname").exists());
    // No image was built for it.
    let images: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(images.is_empty(), "{images:?}");

    // The next container of the bundle starts from what the last one left.
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["process"]["args"] = serde_json::json!(["cat", "/etc/motd", "/seen"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let run = with_cache(&["run", "--bundle", b(&bundle), "root2"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "kept\nfrom the host\n");
    env.assert_gone("root2");
}

/// `root.readonly` with the rootfs on the host: writes are refused inside,
/// mount points the spec needs are still made, and the host tree only
/// gains those.
#[test]
fn a_read_only_root_from_the_host_refuses_writes() {
    let env = Env::new();
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let script = "echo x > /etc/motd; echo rc=$?; echo y > /data/ok && echo data-ok";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        c["root"]["readonly"] = true.into();
        add_mounts(c, vec![bind("/data", &data, &["rbind"])])
    });
    let rootfs = bundle.join("rootfs");
    assert!(!rootfs.join("data").exists());
    let before = tree(&rootfs);
    let run = env.husk(&["run", "--bundle", b(&bundle), "ro1"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("rc=1"), "{}", run.stdout);
    assert!(run.stdout.contains("data-ok"), "{}", run.stdout);
    assert!(
        run.stderr.contains("Read-only file system"),
        "{}",
        run.stderr
    );
    env.assert_gone("ro1");
    assert!(!rootfs.join("etc/motd").exists());
    assert_eq!(std::fs::read_to_string(data.join("ok")).unwrap(), "y\n");
    let mut after = tree(&rootfs);
    after.retain(|p| p != Path::new("data"));
    assert_eq!(after, before, "only the mount point was added");
}

/// `io.husk.rootfs=block`: the rootfs is a cached image under an overlay
/// in guest memory (writes do not reach the bundle), built once and reused;
/// a value husk does not know fails create, naming it, and leaves nothing.
#[test]
fn a_block_rootfs_is_opt_in_cached_and_keeps_writes_in_the_guest() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let bundle = env.bundle("b", &["sh", "-c", "echo x > /w && cat /w"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.rootfs": "block"});
    });
    let (kernel, init) = (common::kernel(), common::init_binary());
    let with_cache = |args: &[&str]| {
        env.husk_with_env(
            &[
                ("HUSK_CACHE", &cache),
                ("HUSK_KERNEL", &kernel),
                ("HUSK_INIT", &init),
            ],
            args,
        )
    };
    for id in ["blk1", "blk2"] {
        let run = with_cache(&["run", "--bundle", b(&bundle), id]);
        assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
        assert_eq!(run.stdout, "x\n");
        env.assert_gone(id);
    }
    assert!(!bundle.join("rootfs/w").exists());
    let images: Vec<_> = std::fs::read_dir(cache.join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ext4"))
        .collect();
    assert_eq!(images.len(), 1, "one image, reused: {images:?}");

    let bad = env.bundle("bad", &["true"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.rootfs": "ext4"});
    });
    let done = with_cache(&["create", "--bundle", b(&bad), "blk3"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("io.husk.rootfs") && done.stderr.contains("block"),
        "{}",
        done.stderr
    );
    env.assert_gone("blk3");
}

/// A user-namespaced container (`linux.uidMappings`/`gidMappings`, as
/// `podman run --uidmap` gives): its rootfs, chowned to the range as
/// engines do, is root's inside; what root creates is owned by the range's
/// first ids on the host, a chown inside lands shifted, and a host file
/// outside the range shows as nobody.
#[test]
fn user_namespace_mappings_apply_to_the_containers_files() {
    use std::os::unix::fs::MetadataExt as _;
    const HOST_UID: u32 = 100_000;
    const HOST_GID: u32 = 200_000;
    let env = Env::new();
    let data = env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("hosts-own"), "root's\n").unwrap();
    // The volume is the range's, as one chowns a directory for such a
    // container; a file in it stays the host root's.
    std::os::unix::fs::chown(&data, Some(HOST_UID), Some(HOST_GID)).unwrap();
    let script = "stat -c '%u:%g' / /data/hosts-own && echo x > /made && chown 5:6 /made \
                  && mkdir /data/dir && stat -c '%u:%g' /made /data/dir";
    let bundle = env.bundle("b", &["sh", "-c", script], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": HOST_UID, "size": 65536}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": HOST_GID, "size": 65536}]);
        add_mounts(c, vec![bind("/data", &data, &["rbind"])]);
    });
    let rootfs = bundle.join("rootfs");
    // As an engine chowns an image's layer for the mapping.
    let chown = std::process::Command::new("chown")
        .args(["-R", "-h", &format!("{HOST_UID}:{HOST_GID}")])
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(chown.success());
    let run = env.husk(&["run", "--bundle", b(&bundle), "userns1"]);
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "0:0\n65534:65534\n5:6\n0:0\n");
    env.assert_gone("userns1");
    let owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&rootfs.join("made")), (HOST_UID + 5, HOST_GID + 6));
    assert_eq!(owner(&data.join("dir")), (HOST_UID, HOST_GID));
    assert_eq!(owner(&data.join("hosts-own")), (0, 0));

    // A mapping the kernel would refuse fails create, naming it.
    let bad = env.bundle("bad", &["true"], |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 10},
                               {"containerID": 5, "hostID": 5000, "size": 10}]);
    });
    let done = env.husk(&["create", "--bundle", b(&bad), "userns2"]);
    assert!(!done.status.success());
    assert!(done.stderr.contains("linux.uidMappings"), "{}", done.stderr);
    env.assert_gone("userns2");
}
