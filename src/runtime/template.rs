//! Template VMs: a container VM without NICs starts from a snapshot instead
//! of booting.
//!
//! The first container of a kind boots a template VM: the same kernel,
//! initramfs, root image, memory, vCPUs and command line as the container's
//! VM, with a vsock socket of its own. When husk-init's agent listens (the
//! root image is mounted under its overlay, nothing of any container is in
//! the guest yet) the VMM snapshots it ([`crate::vmm::snapshot`]) into
//! `<cache>/templates/<key>/` and the template VM ends. Every container of
//! the same kind then restores that snapshot: its guest RAM maps the memory
//! file copy-on-write, and the agent, already listening, gets the
//! container's setup as after a cold boot. The agent sets the guest's wall
//! clock and mixes fresh host entropy into the guest's random pool at
//! create, so clones share neither the template's time nor its random
//! state.
//!
//! The key covers everything the guest saw while booting: the kernel,
//! husk-init and the root image (path, size, modification time, inode), its
//! virtio-fs devices' tags (a template's serve an empty directory; the
//! guest only probes them), the
//! memory size, vCPU count, command line and vsock CID, the husk binary (its
//! device model and snapshot format), and the host's CPU flags and kernel
//! release (KVM's CPUID and MSRs). A changed input makes a new key; the
//! least recently used templates beyond [`DEFAULT_MAX_TEMPLATES`] are removed
//! ([`crate::lru`]).
//! Concurrent creates of the same kind build it once (a lock file, removed
//! when the build is over; [`crate::lockfile`]).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::lockfile::LockFile;

use crate::vmm::config::{ConsoleOutput, Snapshot, VmConfig, VsockConfig};
use crate::vmm::{snapshot, VmExit};

/// Directory of the templates under husk's cache root.
pub const TEMPLATES_DIR: &str = "templates";
/// A template VM that has not reached its agent after this long is given up.
const TEMPLATE_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How many templates the cache keeps; building one more removes the least
/// recently used beyond this (`$HUSK_TEMPLATES_MAX` overrides; each holds
/// the non-zero pages of a booted guest, ~20 MiB with the default kernel).
const DEFAULT_MAX_TEMPLATES: usize = 8;
/// The empty directory a template VM's virtio-fs devices serve (in its
/// work directory, removed before the snapshot is kept).
const TEMPLATE_SHARE_DIR: &str = "share";
/// Environment variable overriding [`DEFAULT_MAX_TEMPLATES`].
pub const ENV_TEMPLATES_MAX: &str = "HUSK_TEMPLATES_MAX";

/// Why no template could be made or found.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template VM: {0}")]
    Build(#[from] crate::vmm::builder::BuildError),
    #[error("template VM ended without a snapshot ({0:?}); its console: {1}")]
    NoSnapshot(VmExit, String),
    #[error("a VM with NICs cannot start from a template")]
    HasNics,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a file contributes to the key: enough to notice it was replaced or
/// rebuilt.
fn file_identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}:{}:{}:{}",
            path.display(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(e) => format!("{}:{e}", path.display()),
    }
}

/// The host facts a snapshot depends on: CPU flags and kernel release.
fn host_identity() -> String {
    let flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("flags"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{flags}|{release}")
}

/// The template key of a container VM; `init` is the husk-init binary its
/// initramfs was built from.
pub fn key(config: &VmConfig, init: &Path) -> String {
    let mut text = format!(
        "format={}|husk={}|kernel={}|init={}|mem={}|vcpus={}|cmdline={}|cid={:?}|host={}",
        snapshot::FORMAT,
        std::env::current_exe()
            .map(|p| file_identity(&p))
            .unwrap_or_default(),
        file_identity(&config.kernel),
        file_identity(init),
        config.mem_mib,
        config.vcpus,
        config.cmdline,
        config.vsock.as_ref().map(|v| v.guest_cid),
        host_identity(),
    );
    for disk in &config.block {
        text.push_str(&format!(
            "|disk={}:{}:{}",
            file_identity(&disk.path),
            disk.read_only,
            disk.id
        ));
    }
    // A shared-directory device is part of the VM; what it serves is not
    // (the template serves an empty directory and the guest only probes
    // it, see `build`).
    for fs in &config.fs {
        text.push_str(&format!("|fs={}", fs.tag));
    }
    format!(
        "{:016x}{:016x}",
        crate::runtime::state::fnv1a(text.as_bytes()),
        crate::runtime::state::fnv1a(text.chars().rev().collect::<String>().as_bytes())
    )
}

/// Whether `dir` holds a complete snapshot.
fn complete(dir: &Path) -> bool {
    dir.join(snapshot::STATE_FILE).is_file() && dir.join(snapshot::MEMORY_FILE).is_file()
}

/// The complete template for VMs like `config` under `cache`, if there is
/// one (marked used); `init` is the husk-init binary of its initramfs.
pub fn find(config: &VmConfig, init: &Path, cache: &Path) -> Option<PathBuf> {
    if !config.net.is_empty() {
        return None;
    }
    found(cache.join(TEMPLATES_DIR).join(key(config, init)))
}

/// `dir` if it is a complete template (marked used).
fn found(dir: PathBuf) -> Option<PathBuf> {
    complete(&dir).then(|| {
        crate::lru::mark_used(&dir);
        dir
    })
}

/// The snapshot directory for VMs like `config` under `cache`, booting and
/// snapshotting the template VM first if there is none (the config must
/// then carry its initramfs). `init` is the husk-init binary of the
/// config's initramfs. Writing `stop` ends a build under way (the caller
/// gave up); nothing of it is left.
pub fn ensure(
    config: &VmConfig,
    init: &Path,
    cache: &Path,
    stop: Option<Arc<EventFd>>,
) -> Result<PathBuf, TemplateError> {
    if !config.net.is_empty() {
        return Err(TemplateError::HasNics);
    }
    let templates = cache.join(TEMPLATES_DIR);
    let key = key(config, init);
    let dir = templates.join(&key);
    if let Some(dir) = found(dir.clone()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&templates).map_err(io_at(&templates))?;
    crate::lru::remove_stale_work(&templates);
    let lock_path = templates.join(format!("{key}{}", crate::lru::LOCK_SUFFIX));
    let lock = LockFile::acquire(&lock_path).map_err(io_at(&lock_path))?;
    // Another create may have built it while we waited for the lock.
    let outcome = if complete(&dir) {
        Ok(false)
    } else {
        build_into(
            config,
            &dir,
            &templates.join(crate::lru::work_name(&key, "")),
            stop,
        )
    };
    // Nobody needs the lock file once this build is over (a waiter starts
    // over on a new one, and finds the template complete).
    if let Err(e) = lock.remove() {
        log::warn!("template {key}: removing {}: {e}", lock_path.display());
    }
    if outcome? {
        log::info!("template {key}: snapshot of a booted VM written");
        evict(
            &templates,
            crate::lru::max_from_env(ENV_TEMPLATES_MAX, DEFAULT_MAX_TEMPLATES),
        );
    }
    Ok(dir)
}

/// Boots the template VM into the work directory `work` and, once it is
/// snapshotted, renames it to `dir` (`Ok(true)`). A failed or stopped build
/// leaves nothing.
fn build_into(
    config: &VmConfig,
    dir: &Path,
    work: &Path,
    stop: Option<Arc<EventFd>>,
) -> Result<bool, TemplateError> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io_at(work))?;
    let built = build(config, work, stop);
    // Only the snapshot's two files stay; the socket and console go.
    let console = work.join("console.log");
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(work.join("vsock"));
    let _ = std::fs::remove_dir(work.join(TEMPLATE_SHARE_DIR));
    let finished = match built {
        Ok(VmExit::Snapshotted) if complete(work) => {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(work, dir)
                .map(|()| true)
                .map_err(io_at(dir))
        }
        Ok(other) => Err(TemplateError::NoSnapshot(
            other,
            crate::runtime::vmm_process::console_tail(&console_text),
        )),
        Err(e) => Err(e),
    };
    if finished.is_err() {
        let _ = std::fs::remove_dir_all(work);
    }
    finished
}

/// Removes what builds that died left in the template cache under `cache`.
pub fn remove_stale_work(cache: &Path) {
    crate::lru::remove_stale_work(&cache.join(TEMPLATES_DIR));
}

/// Removes the least recently used complete templates beyond `keep`. A VM
/// restored from a removed one keeps its mapping (the file lives on until
/// unmapped).
fn evict(templates: &Path, keep: usize) {
    crate::lru::evict(templates, keep, |p| p.is_dir() && complete(p), "template");
}

/// Boots the template VM of `config` and snapshots it into `work`; writing
/// `stop` ends it early.
fn build(
    config: &VmConfig,
    work: &Path,
    stop: Option<Arc<EventFd>>,
) -> Result<VmExit, TemplateError> {
    let mut t = config.clone();
    // The template's virtio-fs devices serve an empty directory, read-only:
    // the guest probes them at boot and mounts nothing; a restored
    // container's device serves its own shares from the first FUSE request
    // on.
    if !t.fs.is_empty() {
        let empty = work.join(TEMPLATE_SHARE_DIR);
        std::fs::create_dir_all(&empty).map_err(io_at(&empty))?;
        for fs in &mut t.fs {
            fs.root = empty.clone();
            fs.read_only = true;
        }
    }
    t.console = ConsoleOutput::File(work.join("console.log"));
    t.vsock = config.vsock.as_ref().map(|v| VsockConfig {
        guest_cid: v.guest_cid,
        uds_path: work.join("vsock"),
    });
    t.timeout = Some(TEMPLATE_BOOT_TIMEOUT);
    t.timeline = None;
    t.snapshot = Some(Snapshot::TakeWhenAgentListens(work.to_path_buf()));
    // No seccomp filters: the template VM runs husk-init only (no
    // container's code), and its VMM thread writes the snapshot files.
    let controls = crate::vmm::builder::RunControls {
        stop,
        taps: Vec::new(),
        seccomp: None,
        jail: None,
        vsock_listener: None,
        socket_owner: None,
        fs_servers: Vec::new(),
    };
    Ok(crate::vmm::builder::run_with(t, controls)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::config::BlockConfig;

    fn config(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let image = dir.join("root.img");
        std::fs::write(&image, b"i").unwrap();
        let mut c = VmConfig::new(kernel);
        c.block = vec![BlockConfig {
            path: image,
            read_only: true,
            id: "husk-root".into(),
        }];
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.join("a/vsock"),
        });
        c
    }

    #[test]
    fn the_key_ignores_per_container_paths_but_not_what_the_guest_saw() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("husk-init");
        std::fs::write(&init, b"init").unwrap();
        let a = config(dir.path());
        let mut b = a.clone();
        b.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: dir.path().join("b/vsock"),
        });
        b.console = ConsoleOutput::Discard;
        b.timeline = Some(dir.path().join("b"));
        assert_eq!(key(&a, &init), key(&b, &init));

        // A shared-directory device makes another kind of VM; which
        // directory it serves does not.
        let mut shared = a.clone();
        shared.fs = vec![crate::vmm::config::FsConfig {
            tag: "husk".into(),
            root: dir.path().join("c1/share"),
            read_only: false,
            ids: Default::default(),
        }];
        assert_ne!(key(&a, &init), key(&shared, &init));
        let mut other_share = shared.clone();
        other_share.fs[0].root = dir.path().join("c2/share");
        assert_eq!(key(&shared, &init), key(&other_share, &init));

        let mut more_mem = a.clone();
        more_mem.mem_mib += 64;
        assert_ne!(key(&a, &init), key(&more_mem, &init));
        let mut other_cmdline = a.clone();
        other_cmdline.cmdline.push_str(" x=1");
        assert_ne!(key(&a, &init), key(&other_cmdline, &init));
        let before = key(&a, &init);
        std::fs::write(dir.path().join("root.img"), b"a new image").unwrap();
        assert_ne!(
            before,
            key(&a, &init),
            "a rebuilt image is another template"
        );
    }

    #[test]
    fn eviction_keeps_the_most_recently_used_complete_templates() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, age_s: i64| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join(snapshot::STATE_FILE), b"{}").unwrap();
            std::fs::write(d.join(snapshot::MEMORY_FILE), b"").unwrap();
            crate::lru::tests::used_ago(&d, age_s);
            d
        };
        let oldest = make("a", 300);
        let old = make("b", 200);
        let newer = make("c", 100);
        let building = dir.path().join("d.building.1");
        std::fs::create_dir(&building).unwrap();
        // Used just now: the oldest becomes the newest.
        crate::lru::mark_used(&oldest);
        evict(dir.path(), 2);
        assert!(oldest.exists() && newer.exists());
        assert!(!old.exists());
        assert!(building.exists(), "an incomplete one is not a template");
    }

    #[test]
    fn a_vm_with_nics_gets_no_template_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.net = vec![crate::vmm::config::NetConfig {
            tap: "t0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            offload: true,
        }];
        let cache = dir.path().join("cache");
        assert!(matches!(
            ensure(&c, Path::new("/i"), &cache, None),
            Err(TemplateError::HasNics)
        ));
        assert!(!cache.exists());
    }

    #[test]
    fn a_template_vm_that_cannot_boot_leaves_no_directory_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        // A kernel that is no kernel fails before any VM runs.
        c.mem_mib = 64;
        let cache = dir.path().join("cache");
        let err = ensure(&c, Path::new("/i"), &cache, None).unwrap_err();
        assert!(matches!(err, TemplateError::Build(_)), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.join(TEMPLATES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(left.is_empty(), "not even the lock file: {left:?}");
    }
}
