//! Template VMs: a container VM starts from a snapshot instead of booting.
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
//! A container's NICs are in its template too, as devices with nothing
//! behind them ([`Detached`](crate::vmm::devices::virtio::net::Detached))
//! and placeholder MACs ([`placeholder_mac`]): the guest probes them, and
//! each restored VM rebuilds them on its own taps at the saved ring
//! positions. The agent then finds each NIC by its placeholder, gives it the
//! container's MAC ([`mark_probed_macs`]) and configures it as after a cold
//! boot.
//!
//! The key covers everything the guest saw while booting: the kernel,
//! husk-init and the root image (path, size, modification time, inode), its
//! virtio-fs devices' tags (a template's serve an empty directory; the
//! guest only probes them), its NICs' shape (count, MTU, offloads; not
//! their taps or MACs), the
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
}

/// The MAC a template VM's `index`th NIC has (locally administered,
/// `02:68:75:73:..`, "husk"): what a restored guest's interface is found by
/// before it gets the container's MAC.
pub fn placeholder_mac(index: usize) -> [u8; 6] {
    // At most a few dozen virtio devices fit the VM's IRQ lines.
    let [hi, lo] = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
    [0x02, b'h', b'u', b's', hi, lo]
}

/// Tells the guest of a VM restored from a template (`config`, the
/// container's own VM config) which interface each of `setup`'s NICs is:
/// the one with the placeholder MAC of its device's place among the VM's
/// NICs.
pub fn mark_probed_macs(config: &VmConfig, setup: &mut crate::agent_proto::NetSetup) {
    for (index, nic) in config.net.iter().enumerate() {
        let mac = crate::net::inspect::format_mac(&nic.mac);
        if let Some(g) = setup
            .nics
            .iter_mut()
            .find(|g| g.mac.eq_ignore_ascii_case(&mac))
        {
            g.probed_mac = Some(crate::net::inspect::format_mac(&placeholder_mac(index)));
        }
    }
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
    // What the guest's driver read at probe: the features (offloads) and
    // the MTU it may set; the MAC it is told later, the tap is the host's.
    for nic in &config.net {
        text.push_str(&format!("|nic=mtu:{}:offload:{}", nic.mtu, nic.offload));
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
    let t = template_config(config, work)?;
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

/// The template VM of a container VM `config`, working in `work`: the same
/// VM with nothing of the container's: its shares are an empty directory,
/// its NICs detached with placeholder MACs, its console and vsock socket
/// its own.
fn template_config(config: &VmConfig, work: &Path) -> Result<VmConfig, TemplateError> {
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
    for (index, nic) in t.net.iter_mut().enumerate() {
        nic.tap = format!("template-nic{index}");
        nic.mac = placeholder_mac(index);
        nic.detached = true;
    }
    t.timeout = Some(TEMPLATE_BOOT_TIMEOUT);
    t.timeline = None;
    t.snapshot = Some(Snapshot::TakeWhenAgentListens(work.to_path_buf()));
    Ok(t)
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

    fn nic(tap: &str, last: u8, mtu: u16) -> crate::vmm::config::NetConfig {
        crate::vmm::config::NetConfig {
            tap: tap.into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, last],
            mtu,
            offload: true,
            detached: false,
        }
    }

    #[test]
    fn the_key_follows_the_nics_shape_not_their_taps_or_macs() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("husk-init");
        std::fs::write(&init, b"init").unwrap();
        let none = config(dir.path());
        let mut one = none.clone();
        one.net = vec![nic("husktap0", 2, 1500)];
        assert_ne!(key(&none, &init), key(&one, &init));
        let mut other = none.clone();
        other.net = vec![nic("husktap7", 9, 1500)];
        assert_eq!(key(&one, &init), key(&other, &init), "another tap and MAC");
        let mut two = one.clone();
        two.net.push(nic("husktap1", 3, 1500));
        assert_ne!(key(&one, &init), key(&two, &init), "the count");
        let mut mtu = none.clone();
        mtu.net = vec![nic("husktap0", 2, 65520)];
        assert_ne!(key(&one, &init), key(&mtu, &init), "the MTU");
        let mut plain = one.clone();
        plain.net[0].offload = false;
        assert_ne!(key(&one, &init), key(&plain, &init), "the offloads");
    }

    #[test]
    fn a_template_has_the_nics_detached_with_placeholder_macs_and_nothing_of_the_container() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.net = vec![nic("husktap0", 2, 1500), nic("husktap1", 3, 9000)];
        c.fs = vec![crate::vmm::config::FsConfig {
            tag: "husk".into(),
            root: dir.path().join("rootfs"),
            read_only: false,
            ids: Default::default(),
        }];
        let work = dir.path().join("work");
        let t = template_config(&c, &work).unwrap();
        assert_eq!(t.net.len(), 2);
        for (i, (n, orig)) in t.net.iter().zip(&c.net).enumerate() {
            assert!(n.detached, "{n:?}");
            assert_eq!(n.mac, placeholder_mac(i));
            assert_eq!((n.mtu, n.offload), (orig.mtu, orig.offload));
            assert!(!n.tap.starts_with("husktap"), "{n:?}");
        }
        assert_ne!(placeholder_mac(0), placeholder_mac(1));
        assert_eq!(placeholder_mac(1), [0x02, b'h', b'u', b's', 0, 1]);
        assert_eq!(t.fs[0].root, work.join(TEMPLATE_SHARE_DIR));
        assert!(t.fs[0].read_only);
        assert_eq!(t.vsock.as_ref().unwrap().uds_path, work.join("vsock"));
        assert!(matches!(t.snapshot, Some(Snapshot::TakeWhenAgentListens(ref w)) if *w == work));
        // The key is the container's: the template is found by it.
        let init = dir.path().join("husk-init");
        std::fs::write(&init, b"init").unwrap();
        assert_eq!(key(&t, &init), key(&c, &init));
    }

    #[test]
    fn each_nic_of_the_setup_is_told_its_placeholder_by_its_devices_place() {
        use crate::agent_proto::{GuestNic, NetSetup};
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.net = vec![nic("husktap0", 2, 1500), nic("husktap1", 3, 1500)];
        let guest_nic = |mac: &str, name: &str| GuestNic {
            mac: mac.into(),
            name: name.into(),
            mtu: 1500,
            addrs: Vec::new(),
            probed_mac: None,
        };
        // The setup lists them in another order, MACs in upper case.
        let mut setup = NetSetup {
            nics: vec![
                guest_nic("0A:58:0A:58:00:03", "eth1"),
                guest_nic("0a:58:0a:58:00:02", "eth0"),
            ],
            routes: Vec::new(),
        };
        mark_probed_macs(&c, &mut setup);
        assert_eq!(
            setup.nics[0].probed_mac.as_deref(),
            Some("02:68:75:73:00:01")
        );
        assert_eq!(
            setup.nics[1].probed_mac.as_deref(),
            Some("02:68:75:73:00:00")
        );
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
