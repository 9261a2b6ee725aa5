//! The VMM's host cgroup: `linux.cgroupsPath` read as runc reads it on a
//! cgroup v2 host, with the container's CPU and memory resources applied to
//! the whole VM (vCPU threads, device threads, guest RAM), so the engine's
//! limits hold on the host too and its accounting (`podman stats`, the
//! shims' OOM watch on `memory.events`) sees the VM.
//!
//! * cgroupfs paths: absolute ones are under the cgroup2 mount; relative
//!   ones under husk's own cgroup; none at all is `/<id>` (runc's default).
//! * with `--systemd-cgroup`, `slice:prefix:name` is the scope
//!   `prefix-name.scope` under the slice (`a-b.slice` nests in `a.slice`);
//!   the directory is made directly (no systemd unit through D-Bus).
//! * each ancestor gets enabled in its `cgroup.subtree_control` (as far as
//!   its `cgroup.controllers` offers them) the controllers the settings
//!   need, and cpu, memory and pids for the statistics engines read.
//! * written: `memory.max` (guest RAM plus [`VMM_OVERHEAD_MIB`], only with a
//!   memory limit: the guest itself is sized to the limit), `cpu.max` from
//!   quota/period, `cpu.weight` from shares (runc's conversion),
//!   `cpuset.cpus`/`cpuset.mems`. Left to the guest: pids, devices,
//!   hugetlb, block I/O (its devices are the VMM's files).
//!
//! Not a cgroup2 mount at `/sys/fs/cgroup` (a v1 host: with a warning), or
//! not root (quietly, as rootless runc without cgroup access): the VMM
//! stays where it was started.

use std::path::{Path, PathBuf};

/// Where cgroup2 is mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Host memory allowed beyond guest RAM: the VMM's own memory (a few MiB
/// measured, docs/benchmarks.md), its page cache of the root image and the
/// sockets' buffers.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// Controllers enabled for every container cgroup, for its statistics
/// (`memory.current`, `pids.current`; `cpu.stat` needs none).
const ACCOUNTED: &[&str] = &["cpu", "memory", "pids"];
/// The slice a systemd-style path with an empty slice goes to (runc's).
const DEFAULT_SLICE: &str = "system.slice";

/// Errors placing the VMM in its cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path}: writing {value:?} to {file}: {source}")]
    Write {
        path: PathBuf,
        file: String,
        value: String,
        source: std::io::Error,
    },
    #[error(
        "cgroup {dir}: removing: {source}{}",
        if procs.is_empty() { String::new() } else { format!(" (processes still in it: {})", procs.join(" ")) }
    )]
    Remove {
        dir: PathBuf,
        procs: Vec<String>,
        source: std::io::Error,
    },
    #[error(
        "cgroup {dir}: the kernel thread {comm} ({pid}) in it cannot be frozen (KVM's huge page \
         recovery thread of the VM, which Linux before 6.13 places in its VM's cgroup), and \
         moving it to the root cgroup failed: {source}"
    )]
    KernelThread {
        dir: PathBuf,
        pid: u32,
        comm: String,
        source: std::io::Error,
    },
    #[error(
        "cgroup {dir}: not {} after {waited_ms} ms (cgroup.events: {events:?})",
        if *frozen { "frozen" } else { "thawed" }
    )]
    FreezeTimeout {
        dir: PathBuf,
        frozen: bool,
        waited_ms: u128,
        events: String,
    },
}

/// The container's resources as cgroup2 files and values.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings(pub Vec<(String, String)>);

impl Settings {
    /// The settings for `spec` whose VM has `guest_mem_mib` of RAM.
    pub fn for_spec(spec: &oci_spec::runtime::Spec, guest_mem_mib: u32) -> Settings {
        let mut out = Vec::new();
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let limited = resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .is_some_and(|l| l > 0);
        if limited {
            let bytes = (u64::from(guest_mem_mib) + VMM_OVERHEAD_MIB) << 20;
            out.push(("memory.max".into(), bytes.to_string()));
        }
        if let Some(cpu) = resources.and_then(|r| r.cpu().as_ref()) {
            let quota = cpu.quota().filter(|q| *q > 0);
            let period = cpu.period().filter(|p| *p > 0);
            if quota.is_some() || period.is_some() {
                let quota = quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
                let period = period.unwrap_or(100_000);
                out.push(("cpu.max".into(), format!("{quota} {period}")));
            }
            if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
                out.push(("cpu.weight".into(), weight_for_shares(shares).to_string()));
            }
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                out.push(("cpuset.cpus".into(), cpus.to_owned()));
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                out.push(("cpuset.mems".into(), mems.to_owned()));
            }
        }
        Settings(out)
    }

    /// The controllers these settings need (`memory`, `cpu`, `cpuset`).
    fn controllers(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self
            .0
            .iter()
            .filter_map(|(file, _)| file.split_once('.').map(|(c, _)| c))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// The controllers to enable: those the settings need, plus the ones
    /// whose statistics engines read ([`ACCOUNTED`]).
    fn controllers_to_enable(&self) -> Vec<&str> {
        let mut c = self.controllers();
        c.extend_from_slice(ACCOUNTED);
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// cgroup v1 CPU shares (2..262144) to a v2 weight (1..10000), as runc
/// converts them.
fn weight_for_shares(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The cgroup directory, relative to the cgroup2 mount, for `cgroups_path`
/// of container `id`. `own` is husk's own cgroup (`/proc/self/cgroup`),
/// for relative paths.
pub fn relative_path(
    cgroups_path: Option<&str>,
    systemd: bool,
    id: &str,
    own: &str,
) -> Result<PathBuf, CgroupError> {
    let given = cgroups_path.unwrap_or("").trim();
    let rel = if systemd || looks_systemd(given) {
        let given = if given.is_empty() {
            format!(":husk:{id}")
        } else {
            given.to_owned()
        };
        let parts: Vec<&str> = given.split(':').collect();
        let [slice, prefix, name] = parts.as_slice() else {
            return Err(CgroupError::BadPath {
                path: given,
                reason: "with --systemd-cgroup it must be slice:prefix:name",
            });
        };
        if name.is_empty() {
            return Err(CgroupError::BadPath {
                path: given.clone(),
                reason: "the name (after the second ':') is empty",
            });
        }
        let mut rel = slice_path(if slice.is_empty() {
            DEFAULT_SLICE
        } else {
            slice
        })
        .ok_or_else(|| CgroupError::BadPath {
            path: given.clone(),
            reason: "the slice must be a name ending in .slice",
        })?;
        let unit = if name.ends_with(".slice") {
            (*name).to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        rel.push(unit);
        rel
    } else if given.is_empty() {
        PathBuf::from(id)
    } else if let Some(abs) = given.strip_prefix('/') {
        PathBuf::from(abs)
    } else {
        Path::new(own.trim_start_matches('/')).join(given)
    };
    let clean = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !clean || rel.as_os_str().is_empty() {
        return Err(CgroupError::BadPath {
            path: given.to_owned(),
            reason: "it must name a cgroup below the root, without '.' or '..'",
        });
    }
    Ok(rel)
}

/// Whether a path is in the systemd form even without `--systemd-cgroup`
/// (a shim that does not pass the flag: `slice:prefix:name`, the slice
/// empty or ending in `.slice`).
fn looks_systemd(path: &str) -> bool {
    let parts: Vec<&str> = path.split(':').collect();
    parts.len() == 3 && (parts[0].is_empty() || parts[0].ends_with(".slice"))
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice` (systemd's nesting);
/// `-.slice` is the root.
fn slice_path(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::new());
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// husk's own cgroup, from `/proc/self/cgroup` (the `0::` line).
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        })
        .unwrap_or_else(|| "/".to_owned())
}

/// Whether `root` is a cgroup2 mount.
pub fn is_cgroup2(root: &Path) -> bool {
    nix::sys::statfs::statfs(root)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(dir.join(file), value).map_err(|source| CgroupError::Write {
        path: dir.to_path_buf(),
        file: file.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Creates the cgroup `rel` under `root` with `settings` applied (the
/// controllers they need enabled along the way) and moves `pid` into it.
/// Returns the cgroup's directory.
pub fn place(
    root: &Path,
    rel: &Path,
    settings: &Settings,
    pid: u32,
) -> Result<PathBuf, CgroupError> {
    let wanted = settings.controllers_to_enable();
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        enable_controllers(&dir, &wanted);
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Io {
                    path: dir.clone(),
                    source,
                })
            }
        }
    }
    let applied = settings
        .0
        .iter()
        .try_for_each(|(file, value)| write_file(&dir, file, value))
        .and_then(|()| write_file(&dir, "cgroup.procs", &pid.to_string()));
    if let Err(e) = applied {
        if let Err(re) = remove(&dir) {
            log::warn!("{re}");
        }
        return Err(e);
    }
    Ok(dir)
}

/// Enables in `dir`'s subtree those of `wanted` it offers and has not
/// enabled yet. A controller that cannot be enabled (a cgroup with
/// processes of its own refuses) is left out: writing its settings below
/// then fails with the file's name.
fn enable_controllers(dir: &Path, wanted: &[&str]) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let offered = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    for c in wanted {
        let has = |list: &str| list.split_whitespace().any(|x| x == *c);
        if has(&offered) && !has(&enabled) {
            if let Err(e) = write_file(dir, "cgroup.subtree_control", &format!("+{c}")) {
                log::debug!("{e}");
            }
        }
    }
}

/// How long [`remove`] waits for a cgroup to empty (the VMM's exit is
/// seen by the kernel a moment after its parent's wait returns).
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes the cgroup at `dir` (once its processes are gone, waiting up to
/// [`REMOVE_WAIT`] while it is busy); one that cannot go is an error naming
/// the processes still in it.
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    let start = std::time::Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < REMOVE_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    dir: dir.to_path_buf(),
                    procs: std::fs::read_to_string(dir.join("cgroup.procs"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    source,
                })
            }
        }
    }
}

/// How long [`freeze`] waits for the kernel to freeze or thaw every task
/// of a cgroup (runc waits about as long; a task in an uninterruptible
/// sleep, such as a vCPU in a long MMIO exit, holds it up).
const FREEZE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `cgroup.events` text says the cgroup is frozen.
fn events_frozen(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.split_once(' ') {
        Some(("frozen", v)) => Some(v.trim() == "1"),
        _ => None,
    })
}

/// `PF_KTHREAD` (`linux/sched.h`): the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Field of `flags` in `/proc/PID/stat` (proc(5)).
const STAT_FLAGS_FIELD: usize = 9;

/// The `flags` field of a `/proc/PID/stat` line.
fn stat_flags(stat: &str) -> Option<u64> {
    crate::runtime::state::stat_field(stat, STAT_FLAGS_FIELD)?
        .parse()
        .ok()
}

/// Moves the kernel threads in the cgroup at `dir` to the root cgroup. A
/// kernel thread is never frozen, so the cgroup would never report
/// `frozen 1`: KVM (Linux before 6.13) starts a huge page recovery thread
/// per VM and attaches it to the cgroup of the process that made the VM.
/// It uses next to no CPU; the root cgroup is the one cgroup every
/// process may be moved into whatever its controllers.
fn release_kernel_threads(dir: &Path) -> Result<(), CgroupError> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat_flags(&stat).is_none_or(|f| f & PF_KTHREAD == 0) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        std::fs::write(Path::new(CGROUP_ROOT).join("cgroup.procs"), pid.to_string()).map_err(
            |source| CgroupError::KernelThread {
                dir: dir.to_path_buf(),
                pid,
                comm: comm.clone(),
                source,
            },
        )?;
        log::info!(
            "cgroup {}: kernel thread {comm} ({pid}) moved to the root cgroup so it can freeze",
            dir.display()
        );
    }
    Ok(())
}

/// Freezes (`frozen`) or thaws the cgroup v2 at `dir` (`cgroup.freeze`)
/// and waits until the kernel says every task in it is
/// (`cgroup.events`). A freeze that does not complete in [`FREEZE_WAIT`]
/// is undone and is an error.
pub fn freeze(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    freeze_within(dir, frozen, FREEZE_WAIT)
}

fn freeze_within(dir: &Path, frozen: bool, wait: std::time::Duration) -> Result<(), CgroupError> {
    if frozen {
        release_kernel_threads(dir)?;
    }
    write_file(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
    let start = std::time::Instant::now();
    loop {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).map_err(|source| {
            CgroupError::Io {
                path: dir.join("cgroup.events"),
                source,
            }
        })?;
        if events_frozen(&events) == Some(frozen) {
            return Ok(());
        }
        if start.elapsed() >= wait {
            if frozen {
                let _ = write_file(dir, "cgroup.freeze", "0");
            }
            return Err(CgroupError::FreezeTimeout {
                dir: dir.to_path_buf(),
                frozen,
                waited_ms: start.elapsed().as_millis(),
                events: events.trim().replace('\n', ", "),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// What a cgroup has used, from its interface files (cgroup v2 names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// `pids.current` and `pids.max` (`u64::MAX` for `max`).
    pub pids_current: u64,
    pub pids_limit: u64,
    /// `cpu.stat`, by key (`usage_usec`, `user_usec`, `nr_throttled`, ...).
    pub cpu: std::collections::BTreeMap<String, u64>,
    /// `memory.current`, `memory.max` (`u64::MAX` for `max`) and
    /// `memory.peak` where the kernel has it (0 otherwise).
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_peak: u64,
    /// `memory.stat`, by key (`anon`, `file`, `pgfault`, ...).
    pub memory: std::collections::BTreeMap<String, u64>,
    /// `memory.events`, by key (`oom`, `oom_kill`, ...).
    pub memory_events: std::collections::BTreeMap<String, u64>,
}

/// A `max`-or-number interface value (`max` is `u64::MAX`).
fn limit_value(text: &str) -> u64 {
    match text.trim() {
        "max" => u64::MAX,
        n => n.parse().unwrap_or(0),
    }
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`).
fn flat_keyed(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the statistics of the cgroup at `dir`. A file a controller that is
/// not enabled would have is read as empty (zeros); the cgroup itself must
/// exist.
pub fn read_stats(dir: &Path) -> Result<Stats, CgroupError> {
    if !dir.is_dir() {
        return Err(CgroupError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    Ok(stats_from(|f| {
        std::fs::read_to_string(dir.join(f)).unwrap_or_default()
    }))
}

/// The statistics from the text of each cgroup file (`read(name)`; empty
/// for a file there is not).
pub fn stats_from(read: impl Fn(&str) -> String) -> Stats {
    Stats {
        pids_current: read("pids.current").trim().parse().unwrap_or(0),
        pids_limit: limit_value(&read("pids.max")),
        cpu: flat_keyed(&read("cpu.stat")),
        memory_usage: read("memory.current").trim().parse().unwrap_or(0),
        memory_limit: limit_value(&read("memory.max")),
        memory_peak: read("memory.peak").trim().parse().unwrap_or(0),
        memory: flat_keyed(&read("memory.stat")),
        memory_events: flat_keyed(&read("memory.events")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"resources": resources}
        }))
        .unwrap()
    }

    #[test]
    fn cgroupfs_paths_are_absolute_relative_or_the_id() {
        let rel = |p: Option<&str>| relative_path(p, false, "c1", "/user.slice/x.scope");
        assert_eq!(
            rel(Some("/libpod_parent/libpod-c1")).unwrap(),
            Path::new("libpod_parent/libpod-c1")
        );
        assert_eq!(rel(None).unwrap(), Path::new("c1"));
        assert_eq!(rel(Some("")).unwrap(), Path::new("c1"));
        assert_eq!(
            rel(Some("sub/c1")).unwrap(),
            Path::new("user.slice/x.scope/sub/c1")
        );
        // The systemd form is recognized without the flag.
        assert_eq!(
            rel(Some("system.slice:cri-containerd:c1")).unwrap(),
            Path::new("system.slice/cri-containerd-c1.scope")
        );
        for bad in ["/a/../b", "/", "../x"] {
            let err = rel(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(".."), "{err}");
        }
    }

    #[test]
    fn systemd_paths_nest_slices_and_name_a_scope() {
        let rel = |p: Option<&str>| relative_path(p, true, "c1", "/");
        assert_eq!(
            rel(Some("machine.slice:libpod:abc")).unwrap(),
            Path::new("machine.slice/libpod-abc.scope")
        );
        assert_eq!(
            rel(Some("system-kube-pods.slice:cri:abc")).unwrap(),
            Path::new("system.slice/system-kube.slice/system-kube-pods.slice/cri-abc.scope")
        );
        assert_eq!(rel(None).unwrap(), Path::new("system.slice/husk-c1.scope"));
        assert_eq!(rel(Some("-.slice::x")).unwrap(), Path::new("x.scope"));
        for bad in [
            "machine.slice:libpod",
            "machine:libpod:abc",
            "a--b.slice:p:n",
            "machine.slice:p:",
        ] {
            let err = rel(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn resources_become_cgroup2_files() {
        let s = Settings::for_spec(
            &spec(serde_json::json!({
                "memory": {"limit": 268435456},
                "cpu": {"quota": 50000, "period": 100000, "shares": 1024, "cpus": "0-1", "mems": "0"}
            })),
            320,
        );
        let get = |f: &str| s.0.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
        assert_eq!(
            get("memory.max"),
            Some(((320 + VMM_OVERHEAD_MIB) << 20).to_string())
        );
        assert_eq!(get("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(get("cpu.weight").as_deref(), Some("39"));
        assert_eq!(get("cpuset.cpus").as_deref(), Some("0-1"));
        assert_eq!(get("cpuset.mems").as_deref(), Some("0"));
        assert_eq!(s.controllers(), ["cpu", "cpuset", "memory"]);
        let none = Settings::for_spec(&spec(serde_json::json!({})), 128);
        assert!(none.0.is_empty() && none.controllers().is_empty());
        let period_only =
            Settings::for_spec(&spec(serde_json::json!({"cpu": {"period": 50000}})), 128);
        assert_eq!(
            period_only.0,
            [("cpu.max".to_owned(), "max 50000".to_owned())]
        );
    }

    #[test]
    fn shares_convert_as_runc_does() {
        assert_eq!(weight_for_shares(2), 1);
        assert_eq!(weight_for_shares(262_144), 10_000);
        assert_eq!(weight_for_shares(1024), 39);
        assert_eq!(weight_for_shares(1), 1);
    }

    /// A directory tree standing for a cgroup2 mount: every directory made
    /// by `place` gets the interface files a kernel would show.
    #[test]
    fn placing_enables_controllers_writes_settings_and_the_pid() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        // An existing parent offering only some controllers.
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::write(root.path().join("a/cgroup.controllers"), "cpu memory").unwrap();
        let settings = Settings(vec![
            ("memory.max".into(), "1000".into()),
            ("cpu.max".into(), "max 100000".into()),
        ]);
        let dir = place(root.path(), Path::new("a/c1"), &settings, 42).unwrap();
        assert_eq!(dir, root.path().join("a/c1"));
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        // Each controller is written on its own, in name order (cpu,
        // memory, pids); the fake file keeps the last.
        assert_eq!(read("cgroup.subtree_control"), "+pids");
        assert_eq!(read("a/cgroup.subtree_control"), "+memory");
        assert_eq!(read("a/c1/memory.max"), "1000");
        assert_eq!(read("a/c1/cpu.max"), "max 100000");
        assert_eq!(read("a/c1/cgroup.procs"), "42");
    }

    #[test]
    fn removing_takes_an_empty_cgroup_and_a_gone_one_is_fine() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        remove(&dir).unwrap();
    }

    #[test]
    fn a_cgroup_that_cannot_go_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        // A plain directory with a file in it stands in for a busy cgroup.
        std::fs::write(dir.join("cgroup.procs"), "42\n43\n").unwrap();
        let err = remove(&dir).unwrap_err().to_string();
        assert!(err.contains("c1") && err.contains("42 43"), "{err}");
        assert!(dir.exists());
    }

    #[test]
    fn a_failed_setting_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        let settings = Settings(vec![("memory.max".into(), "1".into())]);
        // A directory where the file should be: the write fails.
        std::fs::create_dir_all(root.path().join("c1/memory.max")).unwrap();
        let err = place(root.path(), Path::new("c1"), &settings, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory.max") && err.contains("c1"), "{err}");
    }

    #[test]
    fn statistics_come_from_the_interface_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, v: &str| std::fs::write(dir.path().join(f), v).unwrap();
        write("pids.current", "5\n");
        write("pids.max", "max\n");
        write(
            "cpu.stat",
            "usage_usec 1200\nuser_usec 1000\nsystem_usec 200\nnr_throttled 3\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "268435456\n");
        write("memory.stat", "anon 1024\nfile 2048\npgfault 7\n");
        write("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        let s = read_stats(dir.path()).unwrap();
        assert_eq!((s.pids_current, s.pids_limit), (5, u64::MAX));
        assert_eq!(s.cpu["usage_usec"], 1200);
        assert_eq!(s.cpu["nr_throttled"], 3);
        assert_eq!(
            (s.memory_usage, s.memory_limit, s.memory_peak),
            (4096, 268_435_456, 0)
        );
        assert_eq!(s.memory["file"], 2048);
        assert_eq!(s.memory_events["oom_kill"], 1);
        let gone = read_stats(&dir.path().join("gone"))
            .unwrap_err()
            .to_string();
        assert!(gone.contains("gone"), "{gone}");
    }

    #[test]
    fn freezing_waits_for_the_kernel_and_undoes_a_freeze_that_does_not_complete() {
        assert_eq!(events_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(events_frozen("populated 1\nfrozen 0\n"), Some(false));
        assert_eq!(events_frozen("populated 1\n"), None);
        assert_eq!(events_frozen("frozen1\nfrozen x"), Some(false));

        // A directory standing in for a cgroup whose kernel side says frozen.
        let dir = tempfile::tempdir().unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        freeze(dir.path(), true).unwrap();
        assert_eq!(read("cgroup.freeze"), "1");

        // It never thaws: the error says so, after the wait.
        let wait = std::time::Duration::from_millis(30);
        let err = freeze_within(dir.path(), false, wait).unwrap_err();
        assert!(
            matches!(err, CgroupError::FreezeTimeout { frozen: false, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not thawed"), "{err}");

        // It never freezes: the freeze is taken back.
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let err = freeze_within(dir.path(), true, wait).unwrap_err();
        assert!(err.to_string().contains("not frozen after"), "{err}");
        assert_eq!(read("cgroup.freeze"), "0");

        // No cgroup there at all.
        let gone = dir.path().join("gone");
        let err = freeze(&gone, true).unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
    }

    #[test]
    fn kernel_threads_are_told_by_their_stat_flags() {
        let kthread = "164 (kvm-nx-lpage-recovery-163) S 2 0 0 0 -1 2129984 0 0 0 0";
        assert_eq!(stat_flags(kthread), Some(2_129_984));
        assert_ne!(stat_flags(kthread).unwrap() & PF_KTHREAD, 0);
        let odd_name = "7 (a) b (c)) R 1 7 7 0 -1 4194560 12 0";
        assert_eq!(stat_flags(odd_name), Some(4_194_560));
        assert_eq!(stat_flags(odd_name).unwrap() & PF_KTHREAD, 0);
        assert_eq!(stat_flags("garbage"), None);
        assert_eq!(stat_flags("1 (x) S 0"), None);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(stat_flags(&me).unwrap() & PF_KTHREAD, 0, "{me}");
        if let Ok(kthreadd) = std::fs::read_to_string("/proc/2/stat") {
            if kthreadd.contains("(kthreadd)") {
                assert_ne!(stat_flags(&kthreadd).unwrap() & PF_KTHREAD, 0);
            }
        }
    }

    #[test]
    fn husk_runs_in_some_cgroup() {
        assert!(own_cgroup().starts_with('/'));
    }
}
