//! The container's network. Engines (podman with netavark or CNI,
//! containerd with CNI) put a veth with addresses and routes in a network
//! namespace and name it in `linux.namespaces`. husk keeps that namespace
//! as the container's view of the network:
//!
//! 1. [`attach`] enters the namespace (in a helper thread, so nothing else
//!    in the VMM process moves), reads its interfaces, addresses and routes
//!    ([`inspect`]), creates one tap per interface beside it and connects
//!    the two with tc redirects ([`tc`]);
//! 2. the VMM gives the guest one virtio-net NIC per tap with the
//!    interface's MAC and MTU, and husk-init replays the addresses and
//!    routes on it ([`crate::agent_proto::NetSetup`]), so the container has
//!    the engine's IP and port mappings work unchanged;
//! 3. [`cleanup`] (at the VMM's end, `delete`, or a failed `create`)
//!    removes the redirects; the taps go with the VMM's file descriptors.
//!
//! iproute2's `ip -j` and `tc` do the namespace work: they are the
//! reference netlink clients, print JSON, and need no async runtime (the
//! `rtnetlink` crate needs tokio, and tc filter/action messages would be
//! hand-encoded with `netlink-packet-route`). Each call costs a process
//! spawn (a few ms) on the create path.

pub mod inspect;
pub mod tc;

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::agent_proto::NetSetup;
use crate::vmm::devices::virtio::net::Tap;

pub use inspect::NicPlan;

/// The record of what [`attach`] changed, in the container's state
/// directory, so any later process can undo it.
pub const RECORD_FILE: &str = "net.json";

/// `NS_GET_NSTYPE` (linux/nsfs.h): `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Where iproute2 lives when the engine's `PATH` lacks the sbin directories.
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Errors setting up or removing a container's network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("`{tool}` not found in PATH or {dirs:?}: install iproute2", dirs = TOOL_DIRS)]
    ToolMissing { tool: &'static str },
    #[error("running `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("parsing the output of `{what}`: {source}")]
    IpJson {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("interface {ifname} has no MAC address")]
    NoMac { ifname: String },
    #[error("interface {ifname}: MTU {mtu} does not fit a virtio-net device")]
    Mtu { ifname: String, mtu: u32 },
    #[error("tap {tap} for {ifname}: {reason}")]
    Tap {
        tap: String,
        ifname: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the network namespace thread panicked")]
    Thread,
}

/// What [`attach`] changed: the namespace and the interfaces given
/// redirects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub netns: PathBuf,
    pub interfaces: Vec<String>,
    /// The namespace is the VMM process's own (it goes when the VMM does):
    /// only the VMM itself cleans up in it.
    #[serde(default)]
    pub vmm_owned: bool,
}

/// Our own network namespace, by a path other processes can open while we
/// live (what the VMM records for a namespace of its own).
pub fn own_netns_path() -> PathBuf {
    PathBuf::from(format!(
        "/proc/{}/ns/net",
        crate::runtime::process::own_pid()
    ))
}

/// The container's network, attached.
pub struct Attached {
    /// One open tap per NIC, in NIC order.
    pub taps: Vec<Tap>,
    pub nics: Vec<NicPlan>,
    /// What husk-init configures.
    pub setup: NetSetup,
    /// Things of the namespace the VM does not get.
    pub warnings: Vec<String>,
}

/// Opens `path` and checks it is a network namespace.
pub fn open_netns(path: &Path) -> Result<File, NetError> {
    let file = File::open(path).map_err(|source| NetError::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value;
    // the fd is valid for the call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Runs `f` in a thread that has joined the network namespace `ns` (a
/// thread's network namespace is its own; the caller's stays as it is).
fn in_netns<T: Send>(
    path: &Path,
    ns: &File,
    f: impl FnOnce() -> Result<T, NetError> + Send,
) -> Result<T, NetError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetError::Netns {
                    path: path.to_path_buf(),
                    source: e.into(),
                }
            })?;
            f()
        })
        .join()
        .map_err(|_| NetError::Thread)?
    })
}

/// Finds an iproute2 tool.
fn tool_path(tool: &'static str) -> Result<PathBuf, NetError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(TOOL_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(NetError::ToolMissing { tool })
}

/// Runs `tool args...`, returning its standard output.
pub(crate) fn run_tool(tool: &'static str, args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("{tool} {}", args.join(" "));
    let out = Command::new(tool_path(tool)?)
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads the namespace's interfaces and routes, creates the taps and
/// connects them. `record_dir` gets [`RECORD_FILE`] before anything is
/// changed, so a crash at any point can be cleaned up.
pub fn attach(netns: &Path, record_dir: &Path, vmm_owned: bool) -> Result<Attached, NetError> {
    let ns = open_netns(netns)?;
    in_netns(netns, &ns, || {
        let links = inspect::parse_links(&run_tool("ip", &["-j", "addr", "show"])?)?;
        let r4 = inspect::parse_routes(&run_tool(
            "ip",
            &["-j", "-4", "route", "show", "table", "main"],
        )?)?;
        let r6 = inspect::parse_routes(&run_tool(
            "ip",
            &["-j", "-6", "route", "show", "table", "main"],
        )?)?;
        let (nics, setup, warnings) = inspect::plan(&links, &r4, &r6)?;
        save_record(
            record_dir,
            &NetRecord {
                netns: netns.to_path_buf(),
                interfaces: nics.iter().map(|n| n.ifname.clone()).collect(),
                vmm_owned,
            },
        )?;
        let mut taps = Vec::with_capacity(nics.len());
        for nic in &nics {
            if u16::try_from(nic.mtu).is_err() {
                return Err(NetError::Mtu {
                    ifname: nic.ifname.clone(),
                    mtu: nic.mtu,
                });
            }
            let tap_err = |reason: String| NetError::Tap {
                tap: nic.tap.clone(),
                ifname: nic.ifname.clone(),
                reason,
            };
            let tap = Tap::open(&nic.tap).map_err(|e| tap_err(e.to_string()))?;
            tap.set_mtu(nic.mtu).map_err(|e| tap_err(e.to_string()))?;
            tap.set_up().map_err(|e| tap_err(e.to_string()))?;
            tc::connect(&nic.ifname, &nic.tap)?;
            taps.push(tap);
        }
        Ok(Attached {
            taps,
            nics,
            setup,
            warnings,
        })
    })
}

fn save_record(dir: &Path, record: &NetRecord) -> Result<(), NetError> {
    let path = dir.join(RECORD_FILE);
    let data = serde_json::to_vec(record).unwrap_or_default();
    std::fs::write(&path, data).map_err(|source| NetError::Record { path, source })
}

/// Undoes [`attach`] for the container whose state directory is `dir`:
/// removes the redirects from the namespace interfaces (the taps vanish
/// with the VMM's descriptors; any left, say after a crash mid-attach, are
/// deleted) and the record. Nothing to do without a record, or when the
/// namespace is already gone.
pub fn cleanup(dir: &Path) -> Result<(), NetError> {
    let path = dir.join(RECORD_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(NetError::Record { path, source }),
    };
    let Ok(record) = serde_json::from_slice::<NetRecord>(&data) else {
        log::warn!("{}: unreadable, removed", path.display());
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    // A VMM's own namespace dies with it; once the VMM is gone its pid (in
    // the recorded path) may belong to another process.
    let elsewhere = record.vmm_owned && record.netns != own_netns_path();
    match (!elsewhere).then(|| open_netns(&record.netns)) {
        None => {}
        Some(Ok(ns)) => in_netns(&record.netns, &ns, || {
            for ifname in &record.interfaces {
                tc::disconnect(ifname)?;
            }
            for i in 0..record.interfaces.len() {
                let tap = format!("{}{i}", inspect::TAP_PREFIX);
                // Present only if the VMM still holds it or it was made
                // persistent by someone else: deleting is harmless then.
                // Usually gone, so look before spawning `ip`.
                if nix::net::if_::if_nametoindex(tap.as_str()).is_ok() {
                    let _ = run_tool("ip", &["link", "del", "dev", &tap]);
                }
            }
            Ok(())
        })?,
        // The engine removed the namespace: its interfaces went with it.
        Some(Err(NetError::Netns { .. }) | Err(NetError::NotNetns { .. })) => {}
        Some(Err(e)) => return Err(e),
    }
    // The VMM and `delete` may both be cleaning up.
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Record { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let err = open_netns(Path::new("/var/run/netns/no-such-ns")).unwrap_err();
        assert!(
            err.to_string().contains("/var/run/netns/no-such-ns"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let err = open_netns(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(err, NetError::NotNetns { .. }), "{err}");
        // Another kind of namespace is refused too.
        let err = open_netns(Path::new("/proc/self/ns/uts")).unwrap_err();
        assert!(matches!(err, NetError::NotNetns { .. }), "{err}");
        assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
    }

    #[test]
    fn cleanup_without_a_record_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        cleanup(dir.path()).unwrap();
    }

    #[test]
    fn cleanup_of_a_vanished_namespace_removes_the_record() {
        let dir = tempfile::tempdir().unwrap();
        save_record(
            dir.path(),
            &NetRecord {
                netns: "/var/run/netns/gone-long-ago".into(),
                interfaces: vec!["eth0".into()],
                vmm_owned: false,
            },
        )
        .unwrap();
        cleanup(dir.path()).unwrap();
        assert!(!dir.path().join(RECORD_FILE).exists());
    }

    #[test]
    fn another_vmms_own_namespace_is_left_alone() {
        // pid 1's namespace exists; were it entered, `tc` would run there
        // (and fail on an interface that does not exist).
        let dir = tempfile::tempdir().unwrap();
        save_record(
            dir.path(),
            &NetRecord {
                netns: "/proc/1/ns/net".into(),
                interfaces: vec!["husk-no-such-if".into()],
                vmm_owned: true,
            },
        )
        .unwrap();
        cleanup(dir.path()).unwrap();
        assert!(!dir.path().join(RECORD_FILE).exists());
        assert_eq!(
            own_netns_path(),
            PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
        );
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = tool_path("husk-no-such-tool").unwrap_err();
        assert!(err.to_string().contains("husk-no-such-tool"), "{err}");
    }
}
