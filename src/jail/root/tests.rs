use super::*;

use crate::test_support::{close_inherited, in_child};

fn need_root() {
    crate::test_support::need_root("mount(2), as the VMM");
}

/// A state directory with a record and one read-only share staged as
/// `storage::share` does (a read-only tmpfs with the source bound in it).
fn staged(dir: &Path) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let source = dir.join("source");
    std::fs::create_dir_all(state.join("share")).unwrap();
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(state.join("state.json"), b"{}").unwrap();
    std::fs::write(source.join("f"), b"shared").unwrap();
    let share = state.join("share");
    mount(
        Some("tmpfs"),
        &share,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    std::fs::create_dir(share.join("m0")).unwrap();
    mount(
        Some(&source),
        &share.join("m0"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    (state, share)
}

/// Runs `f` in a child with a mount namespace of its own and a staged state
/// directory under a fresh temporary directory (`f` gets both); checks
/// that nothing of it reached this namespace.
fn with_staged(f: impl FnOnce(&Path, PathBuf, PathBuf) -> bool) {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().to_path_buf();
    assert!(in_child(move || {
        close_inherited();
        private_namespace().unwrap();
        let (state, share) = staged(&top);
        f(&top, state, share)
    }));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir.path().display().to_string()));
}

/// The top-level names under `/`.
fn roots() -> Vec<String> {
    let mut roots: Vec<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    roots.sort();
    roots
}

/// What no jail shows or lets a thread add.
fn nothing_of_the_host(top: &Path) {
    assert_eq!(std::env::current_dir().unwrap(), Path::new("/"));
    assert!(!Path::new("/proc/self/cgroup").exists());
    assert!(!Path::new("/sys/fs/cgroup").exists());
    assert!(!Path::new("/dev/urandom").exists());
    assert!(!Path::new("/etc/passwd").exists());
    assert!(!Path::new("/proc/1").exists());
    assert!(!top.join("source").exists(), "the share's source");
    assert_eq!(
        std::fs::write("/planted", b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    // `..` stops at the jail's root.
    assert!(!Path::new("/../../etc/passwd").exists());
}

fn first_component(top: &Path) -> String {
    top.components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_vmm_jail_holds_the_state_dir_and_sockets_only() {
    with_staged(|top, state, share| {
        let sockets = top.join("short/0123");
        std::fs::create_dir_all(&sockets).unwrap();
        std::fs::write(sockets.join("vsock"), b"s").unwrap();
        std::fs::write(top.join("short/other"), b"o").unwrap();
        let jail = Jail {
            state_dir: state.clone(),
            share: Some(share.clone()),
            socket_dir: Some(sockets.clone()),
        };
        jail.enter().unwrap();
        assert_eq!(roots(), vec![first_component(top)]);
        // What the VMM still uses, at the paths it had.
        assert_eq!(std::fs::read(state.join("state.json")).unwrap(), b"{}");
        std::fs::write(state.join("vmm.log"), b"x").unwrap();
        assert_eq!(std::fs::read(sockets.join("vsock")).unwrap(), b"s");
        // The shares are the fs server's: an empty mount point here.
        assert!(!share.join("m0/f").exists());
        assert!(!Path::new("/proc").exists());
        assert!(
            !top.join("short/other").exists(),
            "beside the socket directory"
        );
        nothing_of_the_host(top);
        true
    });
}

#[test]
fn the_fs_server_jail_holds_the_shares_and_its_proc_files_only() {
    with_staged(|top, state, share| {
        let jail = Jail {
            state_dir: state.clone(),
            share: Some(share.clone()),
            socket_dir: None,
        };
        jail.enter_fs_server().unwrap();
        let mut want = vec![first_component(top), "proc".to_owned()];
        want.sort();
        want.dedup();
        assert_eq!(roots(), want);
        assert_eq!(std::fs::read(share.join("m0/f")).unwrap(), b"shared");
        assert!(std::fs::read_dir("/proc/self/fd").unwrap().count() >= 3);
        assert!(std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(" / "));
        // No record, no log, no sockets.
        assert!(!state.join("state.json").exists());
        nothing_of_the_host(top);
        true
    });
}

#[test]
fn a_directory_descriptor_from_before_fails_the_jail() {
    with_staged(|_, state, _| {
        let held = std::fs::File::open("/etc").unwrap();
        let err = Jail {
            state_dir: state,
            share: None,
            socket_dir: None,
        }
        .enter()
        .unwrap_err();
        drop(held);
        matches!(err, RootError::OpenDirectory { ref target, .. } if target == "/etc")
            && err.to_string().contains("descriptor")
    });
}

#[test]
fn jail_paths_are_absolute_without_dot_dot() {
    let j = Path::new("/j");
    assert_eq!(inside(j, Path::new("/a/b")).unwrap(), Path::new("/j/a/b"));
    assert_eq!(inside(j, Path::new("/a/./b")).unwrap(), Path::new("/j/a/b"));
    assert!(inside(j, Path::new("a/b")).is_err());
    assert!(inside(j, Path::new("/a/../../b")).is_err());
    assert!(inside(j, Path::new("")).is_err());
}

/// The VMM of a user namespace: its jail is made in the staging namespace
/// before the main thread moves into the view and the process into the
/// user namespace; a thread started then gets the staging root back (with
/// the staging namespace's mounts under it, which its own mount namespace,
/// the view's, does not have), then `chroot`s into the jail, which holds
/// what a pivoted one does; the main thread keeps the view.
#[test]
fn a_vmm_in_a_user_namespace_gets_the_staging_root_then_its_jail() {
    use crate::jail::ns::{Ns, UserNs};
    with_staged(|top, state, share| {
        let sockets = top.join("short/0123");
        std::fs::create_dir_all(&sockets).unwrap();
        std::fs::write(sockets.join("vsock"), b"s").unwrap();
        let view = top.join("view");
        std::fs::create_dir(&view).unwrap();
        std::fs::write(view.join("in-the-view"), b"v").unwrap();
        let jail = Jail {
            state_dir: state.clone(),
            share: Some(share.clone()),
            socket_dir: Some(sockets.clone()),
        }
        .prepare()
        .unwrap();
        let staging = StagingRoot::open().unwrap();
        let map = "0 100000 65536\n";
        let userns = UserNs::prepare(&Ns::New, std::process::id(), map, map).unwrap();
        // The main thread's view, as storage::view makes it.
        slave_mount_namespace(CloneFlags::CLONE_FS).unwrap();
        mount(
            Some(&view),
            &view,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        nix::unistd::chdir(&view).unwrap();
        nix::unistd::pivot_root(".", ".").unwrap();
        umount2(".", MntFlags::MNT_DETACH).unwrap();
        nix::unistd::chdir("/").unwrap();
        let host_ns = std::fs::read_link(format!("/proc/{}/ns/user", std::process::id()));
        userns.enter().unwrap();
        let main_in_view = roots() == vec!["in-the-view".to_owned()];
        let top = top.to_path_buf();
        let worker = std::thread::spawn(move || {
            let top = top.as_path();
            staging.enter().unwrap();
            // The staging namespace's mounts (the share's tmpfs and its
            // bind) are there again, and /proc shows another user namespace.
            let staged = std::fs::read(share.join("m0/f")).unwrap() == b"shared"
                && std::fs::read_link("/proc/self/ns/user").ok() != host_ns.ok();
            jail.enter().unwrap();
            assert_eq!(roots(), vec![first_component(top)]);
            assert_eq!(std::fs::read(state.join("state.json")).unwrap(), b"{}");
            assert_eq!(std::fs::read(sockets.join("vsock")).unwrap(), b"s");
            assert!(
                !share.join("m0/f").exists(),
                "the shares are the fs server's"
            );
            assert!(!Path::new("/proc").exists());
            nothing_of_the_host(top);
            // Without CAP_SYS_CHROOT (a VMM thread drops it) there is no way
            // back out.
            crate::jail::caps::limit_thread(0, crate::jail::caps::last_cap()).unwrap();
            let stuck =
                nix::unistd::chroot("/..").is_err() && roots() == vec![first_component(top)];
            staged && stuck
        });
        let worker_ok = worker.join().unwrap();
        main_in_view && worker_ok && roots() == vec!["in-the-view".to_owned()]
    });
}
