//! Mounting the rootfs snapshot containerd hands to `Create` (a `bind` of
//! the native snapshotter's directory, an `overlay` of overlayfs's layers).
//!
//! Done in the shim's own process with mount(2). The `containerd-shim`
//! crate's `mount_rootfs` forks and waits for the child through the crate's
//! global reaper, which this shim turns off (see [`super`]), so it is not
//! used.

use std::path::Path;

use nix::mount::MsFlags;

/// One mount from containerd: type, source, fstab-style options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec<'a> {
    pub fs_type: &'a str,
    pub source: &'a str,
    pub options: &'a [String],
}

/// The mount(2) arguments an option list stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Propagation flags, applied by a second call.
    pub propagation: MsFlags,
    /// Options the filesystem reads (`lowerdir=...`), comma-joined.
    pub data: String,
}

/// Maps an fstab option to (flag, whether it clears the flag).
fn flag_of(option: &str) -> Option<(MsFlags, bool)> {
    Some(match option {
        "rw" => (MsFlags::MS_RDONLY, true),
        "ro" => (MsFlags::MS_RDONLY, false),
        "suid" => (MsFlags::MS_NOSUID, true),
        "nosuid" => (MsFlags::MS_NOSUID, false),
        "dev" => (MsFlags::MS_NODEV, true),
        "nodev" => (MsFlags::MS_NODEV, false),
        "exec" => (MsFlags::MS_NOEXEC, true),
        "noexec" => (MsFlags::MS_NOEXEC, false),
        "async" => (MsFlags::MS_SYNCHRONOUS, true),
        "sync" => (MsFlags::MS_SYNCHRONOUS, false),
        "atime" => (MsFlags::MS_NOATIME, true),
        "noatime" => (MsFlags::MS_NOATIME, false),
        "diratime" => (MsFlags::MS_NODIRATIME, true),
        "nodiratime" => (MsFlags::MS_NODIRATIME, false),
        "relatime" => (MsFlags::MS_RELATIME, false),
        "norelatime" => (MsFlags::MS_RELATIME, true),
        "strictatime" => (MsFlags::MS_STRICTATIME, false),
        "bind" => (MsFlags::MS_BIND, false),
        "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, false),
        "remount" => (MsFlags::MS_REMOUNT, false),
        "defaults" => (MsFlags::empty(), false),
        _ => return None,
    })
}

fn propagation_of(option: &str) -> Option<MsFlags> {
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Splits an option list into mount flags, propagation and data.
pub fn parse_options(options: &[String]) -> Parsed {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        if let Some((f, clear)) = flag_of(o) {
            if clear {
                flags.remove(f);
            } else {
                flags.insert(f);
            }
        } else if let Some(p) = propagation_of(o) {
            propagation.insert(p);
        } else {
            data.push(o.as_str());
        }
    }
    Parsed {
        flags,
        propagation,
        data: data.join(","),
    }
}

/// Mounts `m` at `target`: the mount, a read-only remount for a read-only
/// bind (the kernel ignores `MS_RDONLY` on the first call), propagation.
pub fn mount(m: &MountSpec<'_>, target: &Path) -> nix::Result<()> {
    let p = parse_options(m.options);
    let data = (!p.data.is_empty()).then_some(p.data.as_str());
    let fs_type = (!m.fs_type.is_empty()).then_some(m.fs_type);
    let source = (!m.source.is_empty()).then_some(m.source);
    nix::mount::mount(source, target, fs_type, p.flags, data)?;
    let bind = p.flags.contains(MsFlags::MS_BIND);
    if bind && p.flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)?;
    }
    if !p.propagation.is_empty() {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            p.propagation,
            None::<&str>,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn native_snapshot_binds_are_recursive_and_writable() {
        let p = parse_options(&opts(&["rbind", "rw"]));
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(p.propagation.is_empty());
        assert!(p.data.is_empty());
    }

    #[test]
    fn overlay_layers_go_to_data_and_flags_clear_in_order() {
        let p = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
            "ro",
            "rw",
            "nosuid",
            "rprivate",
        ]));
        assert_eq!(p.flags, MsFlags::MS_NOSUID);
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
    }

    #[test]
    fn binding_a_directory_and_read_only_binds() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (mount(2)); CI runs as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        // A private mount namespace keeps the test's mounts to itself.
        let result = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            let o = opts(&["rbind", "ro"]);
            let m = MountSpec {
                fs_type: "bind",
                source: src.to_str().unwrap(),
                options: &o,
            };
            mount(&m, &dst).unwrap();
            let read = std::fs::read_to_string(dst.join("f")).unwrap();
            let write = std::fs::write(dst.join("g"), "y");
            nix::mount::umount2(&dst, nix::mount::MntFlags::MNT_DETACH).unwrap();
            let bad = MountSpec {
                fs_type: "bind",
                source: "/nonexistent/source",
                options: &o,
            };
            (read, write.is_err(), mount(&bad, &dst).is_err())
        })
        .join()
        .unwrap();
        assert_eq!(result, ("x".to_owned(), true, true));
    }
}
