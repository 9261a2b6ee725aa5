//! The leak census: every end-to-end test ends by checking that nothing it
//! made is left on the host: processes (husk, VMMs, shims, conmon, QEMU,
//! helpers), husk state directories and lock files, short socket
//! directories, mounts, cgroups, network namespaces, links and tc filters,
//! and the work files of husk's caches (`*.building.*`, `*.lock`).
//!
//! A [`Census`] is taken when a test starts ([`super::require_kvm`] hands it
//! out) and compared when it is dropped: whatever appeared since and is still
//! there after a grace period (engines finish some removals in the
//! background) fails the test with the list, and leaked processes are
//! killed so later tests start clean. The tests of one binary take turns
//! (the census holds a lock for the test's whole run), so what appeared is
//! what this test made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long leftovers may take to go before they count as leaks.
const GRACE: Duration = Duration::from_secs(30);
/// Pause between looks during the grace period.
const LOOK_AGAIN: Duration = Duration::from_millis(500);
/// The test host's hostname (tests/testhost/run): there, every new process
/// is this test's.
const TESTHOST_HOSTNAME: &str = "husk-testhost";
/// Where husk and the engines keep runtime state by default, with the depth
/// of the containers' entries in each: 1 for a plain state root, 2 where an
/// engine keeps one root per namespace (made once and kept, as runc's are:
/// only what is inside counts).
const STATE_ROOTS: [(&str, usize); 6] = [
    ("/run/husk", 1),
    ("/run/husk-sock", 1),
    // A claimed VMM user per container (src/jail/user.rs).
    (husk::jail::user::CLAIMS_DIR, 1),
    ("/run/runc", 1),
    ("/run/containerd/runc", 2),
    ("/run/containerd/husk", 2),
];
/// Cgroup directories engines make once and keep (parents of their
/// containers' cgroups reused by the next container, left by runc too, and
/// podman's conmon and probe groups), relative to `/sys/fs/cgroup`: not
/// per-test leaks. `husk-e2e` is the containerd namespace of
/// tests/e2e_containerd.rs (containers go to `/NAMESPACE/ID`).
const ENGINE_CGROUPS: [&str; 6] = [
    "libpod_parent",
    "libpod_parent/conmon",
    "podman_probe",
    "machine.slice",
    "docker",
    "husk-e2e",
];
/// Mounts made once by a tool and kept: `ip netns add` bind-mounts
/// `/run/netns` on itself the first time (each namespace's own mount under
/// it still counts).
const KEPT_MOUNTS: [&str; 1] = ["/run/netns"];

/// Where cgroup2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

static TURN: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds the turn (a second census in one test
    /// would wait for itself forever).
    static HOLDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// What the census looks at, at one moment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Snapshot {
    /// (pid, start time) -> command line.
    processes: BTreeMap<(i32, u64), String>,
    /// Everything else, as "kind: name" lines.
    things: BTreeSet<String>,
}

/// A census of one test (see the module docs).
#[must_use = "the census checks for leaks when dropped at the end of the test"]
pub struct Census {
    before: Snapshot,
    roots: Vec<PathBuf>,
    _turn: MutexGuard<'static, ()>,
}

impl Census {
    /// Waits for this test's turn and takes the first look.
    pub fn begin() -> Census {
        assert!(
            !HOLDING.with(|h| h.replace(true)),
            "a test took a second census while its first is open (one Env, \
             engine or boot() census per test at a time)"
        );
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        Census {
            before: Snapshot::take(&[]),
            roots: Vec::new(),
            _turn: turn,
        }
    }

    /// Also watches the husk state root `root` (a test's own `--root`):
    /// container directories and lock files in it count.
    pub fn watch_root(&mut self, root: &Path) {
        self.roots.push(root.to_path_buf());
        let extra = Snapshot::take(&self.roots);
        self.before.things.extend(extra.things);
    }

    /// What appeared since the first look and is still there.
    fn leaks(&self) -> (Vec<(i32, String)>, Vec<String>) {
        let now = Snapshot::take(&self.roots);
        let in_testhost = hostname() == TESTHOST_HOSTNAME;
        let me = std::process::id();
        let processes = now
            .processes
            .iter()
            .filter(|(k, _)| !self.before.processes.contains_key(k))
            .filter(|((pid, _), cmd)| {
                in_testhost || is_descendant(*pid, me) || looks_like_ours(cmd)
            })
            .map(|((pid, _), cmd)| (*pid, cmd.clone()))
            .collect();
        let things = now
            .things
            .difference(&self.before.things)
            .cloned()
            .collect();
        (processes, things)
    }
}

impl Drop for Census {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
        let start = Instant::now();
        let (processes, things) = loop {
            let (p, t) = self.leaks();
            if (p.is_empty() && t.is_empty()) || start.elapsed() > GRACE {
                break (p, t);
            }
            std::thread::sleep(LOOK_AGAIN);
        };
        if processes.is_empty() && things.is_empty() {
            return;
        }
        let mut report = String::from("leak census: the test left behind:\n");
        for (pid, cmd) in &processes {
            report.push_str(&format!("  process {pid}: {cmd}\n"));
        }
        for t in &things {
            report.push_str(&format!("  {t}\n"));
        }
        // Clean up for the tests that follow.
        for (pid, _) in &processes {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

impl Snapshot {
    fn take(roots: &[PathBuf]) -> Snapshot {
        let mut s = Snapshot {
            processes: processes(),
            ..Default::default()
        };
        let t = &mut s.things;
        for (root, depth) in STATE_ROOTS {
            list_tree(Path::new(root), depth, "state", t);
        }
        for root in roots {
            list_tree(root, 1, "state", t);
        }
        let cache = husk::paths::cache_dir();
        for dir in ["rootfs", "templates"] {
            if let Ok(entries) = std::fs::read_dir(cache.join(dir)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.contains(".building.") || name.ends_with(".lock") {
                        t.insert(format!("cache work file: {}", e.path().display()));
                    }
                }
            }
        }
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in m.lines() {
                // Fields 5 (mount point) and, after " - ", type and source.
                let f: Vec<&str> = line.split(' ').collect();
                let tail = line.split(" - ").nth(1).unwrap_or("");
                match f.get(4) {
                    Some(point) if !KEPT_MOUNTS.contains(point) => {
                        t.insert(format!("mount: {point} ({tail})"));
                    }
                    _ => {}
                }
            }
        }
        cgroups(Path::new(CGROUP_ROOT), t);
        let mut namespaces = vec![None];
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                t.insert(format!("network namespace: {name}"));
                namespaces.push(Some(name));
            }
        }
        for ns in namespaces {
            network(ns.as_deref(), t);
        }
        s
    }
}

/// Live processes with a command line (kernel threads and zombies have none).
fn processes() -> BTreeMap<(i32, u64), String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(start) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| husk::runtime::state::parse_stat_start_time(&s))
        else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.is_empty() {
            continue;
        }
        let cmd: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.insert((pid, start), cmd.join(" "));
    }
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn is_descendant(mut pid: i32, ancestor: u32) -> bool {
    let ancestor = i32::try_from(ancestor).unwrap_or(-1);
    for _ in 0..64 {
        match parent_of(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

/// Outside the test host: the programs a husk test starts.
fn looks_like_ours(cmd: &str) -> bool {
    ["husk", "containerd-shim", "conmon", "qemu-system"]
        .iter()
        .any(|n| cmd.contains(n))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries `depth` levels below `dir` (the levels above are only gone
/// through). A lock directory (`@locks`) holds lock files: they are listed,
/// the directory itself is part of the state root.
fn list_tree(dir: &Path, depth: usize, kind: &str, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name() == husk::runtime::state::LOCKS_DIR {
            list_tree(&p, 1, "state lock", out);
        } else if depth <= 1 {
            out.insert(format!("{kind}: {}", p.display()));
        } else if p.is_dir() {
            list_tree(&p, depth - 1, kind, out);
        }
    }
}

/// Every cgroup directory but the engines' kept ones.
fn cgroups(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        let rel = p.strip_prefix(CGROUP_ROOT).unwrap_or(&p);
        if !ENGINE_CGROUPS.iter().any(|c| rel == Path::new(c)) {
            out.insert(format!("cgroup: {}", p.display()));
        }
        cgroups(&p, out);
    }
}

/// Links of a network namespace (`None`: ours) and the tc filters of those
/// with an ingress qdisc (husk's redirects).
fn network(ns: Option<&str>, out: &mut BTreeSet<String>) {
    let run = |args: &[&str]| -> String {
        let mut cmd = Command::new(args[0]);
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        cmd.args(&args[1..]);
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let at = ns.unwrap_or("host");
    for line in run(&["ip", "-o", "link", "show"]).lines() {
        // "2: eth0@if3: <...> ..." -> "eth0"
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            out.insert(format!("link in {at}: {name}"));
        }
    }
    for line in run(&["tc", "qdisc", "show"]).lines() {
        if !line.starts_with("qdisc ingress") {
            continue;
        }
        let Some(dev) = line.split(" dev ").nth(1).and_then(|r| r.split(' ').next()) else {
            continue;
        };
        for f in run(&["tc", "filter", "show", "dev", dev, "ingress"]).lines() {
            if f.contains("action") || f.contains("mirred") {
                out.insert(format!("tc filter in {at} on {dev}: {}", f.trim()));
            }
        }
        out.insert(format!("tc ingress qdisc in {at} on {dev}"));
    }
}
