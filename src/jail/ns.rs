//! The VMM's uts and ipc namespaces: what the spec gives the container, as
//! runc gives it to the container's pid.
//!
//! The container's processes live in the guest, which has its own hostname
//! and IPC objects whatever the host does; but the container's pid on the
//! host is the VMM, and what engines and operators see through
//! `/proc/PID/ns/{uts,ipc}` (`nsenter -t PID -u hostname`, a pod whose
//! containers join the sandbox's namespaces by path) should be what runc
//! shows for the same bundle:
//! - no `uts`/`ipc` entry in `linux.namespaces`: the host's (as asked);
//! - an entry without a path: a new namespace for the VMM, the new uts one
//!   named `hostname` (runc sets it there);
//! - an entry with a path: the VMM joins it (checked at create to be a
//!   namespace of that type).
//!
//! Either way the VMM's threads cannot change a hostname or reach an IPC
//! object once their capabilities are dropped and their seccomp filters on
//! ([`super::seccomp`]): the new namespaces are about fidelity, and they
//! keep a VMM out of the host's SysV IPC before then.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `NS_GET_NSTYPE` (`linux/nsfs.h`: `_IO(0xb7, 0x3)`).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// What the VMM does with one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ns {
    /// Stays in the namespace it was started in (the host's).
    #[default]
    Host,
    /// Makes a new one.
    New,
    /// Joins the namespace at this path.
    Join(PathBuf),
}

/// The VMM's uts and ipc namespaces, and the hostname of a new uts one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmNamespaces {
    #[serde(default)]
    pub uts: Ns,
    #[serde(default)]
    pub ipc: Ns,
    /// Set in a new uts namespace (`hostname` of the spec).
    #[serde(default)]
    pub hostname: Option<String>,
}

/// The kinds of namespace this module checks: the VMM enters the uts and
/// ipc ones; the paths of the others are checked at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Uts,
    Ipc,
    Pid,
    Mount,
    Cgroup,
    User,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uts => "uts",
            Kind::Ipc => "ipc",
            Kind::Pid => "pid",
            Kind::Mount => "mnt",
            Kind::Cgroup => "cgroup",
            Kind::User => "user",
        }
    }

    fn clone_flag(self) -> libc::c_int {
        match self {
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::Mount => libc::CLONE_NEWNS,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            Kind::User => libc::CLONE_NEWUSER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(
        "linux.namespaces: the {kind} namespace path {path}: {reason}; give the \
         /proc/PID/ns/{kind} of a running process (or drop the path for a new one)"
    )]
    BadPath {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the VMM's {kind} namespace: {step}: {errno}")]
    Enter {
        kind: &'static str,
        step: &'static str,
        errno: nix::Error,
    },
}

/// Opens `path` and checks that it is a namespace of `kind`.
pub fn open_checked(kind: Kind, path: &Path) -> Result<OwnedFd, NsError> {
    let bad = |reason: String| NsError::BadPath {
        kind: kind.name(),
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    // SAFETY: an ioctl with no argument on a descriptor this function owns.
    let typ = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if typ < 0 {
        return Err(bad("not a namespace file".into()));
    }
    if typ != kind.clone_flag() {
        return Err(bad(format!("not a {} namespace", kind.name())));
    }
    Ok(file.into())
}

/// Puts the calling thread (the VMM's main thread, before it starts any
/// other) in the namespaces `ns` asks for. Needs `CAP_SYS_ADMIN`.
pub fn enter(ns: &VmmNamespaces) -> Result<(), NsError> {
    for (kind, what) in [(Kind::Uts, &ns.uts), (Kind::Ipc, &ns.ipc)] {
        let err = |step| {
            move |errno| NsError::Enter {
                kind: kind.name(),
                step,
                errno,
            }
        };
        let flag = nix::sched::CloneFlags::from_bits_truncate(kind.clone_flag());
        match what {
            Ns::Host => {}
            Ns::New => nix::sched::unshare(flag).map_err(err("unshare"))?,
            Ns::Join(path) => {
                let fd = open_checked(kind, path)?;
                nix::sched::setns(fd, flag).map_err(err("setns"))?;
            }
        }
    }
    if ns.uts == Ns::New {
        if let Some(name) = &ns.hostname {
            nix::unistd::sethostname(name).map_err(|errno| NsError::Enter {
                kind: "uts",
                step: "sethostname",
                errno,
            })?;
        }
    }
    Ok(())
}

/// What a spec asks of the VMM's uts and ipc namespaces; a path is checked
/// now, so that a bad one fails `create` before any VM exists.
pub fn plan(spec: &oci_spec::runtime::Spec) -> Result<VmmNamespaces, NsError> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let entries = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let of = |kind: Kind, typ: T| -> Result<Ns, NsError> {
        match entries.iter().find(|n| n.typ() == typ) {
            None => Ok(Ns::Host),
            Some(n) => match n.path() {
                None => Ok(Ns::New),
                Some(p) => {
                    open_checked(kind, p)?;
                    Ok(Ns::Join(p.clone()))
                }
            },
        }
    };
    let uts = of(Kind::Uts, T::Uts)?;
    let ipc = of(Kind::Ipc, T::Ipc)?;
    // Not entered by the VMM (docs/oci.md), but a path of the wrong type
    // is a mistake in the bundle: create fails naming it, as runc's does.
    for (kind, typ) in [
        (Kind::Pid, T::Pid),
        (Kind::Mount, T::Mount),
        (Kind::Cgroup, T::Cgroup),
        (Kind::User, T::User),
    ] {
        of(kind, typ)?;
    }
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    Ok(VmmNamespaces { uts, ipc, hostname })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hostname": "web",
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    #[test]
    fn entries_map_to_host_new_and_join() {
        let p = plan(&spec(serde_json::json!([{"type": "pid"}]))).unwrap();
        assert_eq!((p.uts, p.ipc), (Ns::Host, Ns::Host));
        let p = plan(&spec(serde_json::json!([{"type": "uts"}, {"type": "ipc"}]))).unwrap();
        assert_eq!((p.uts, p.ipc), (Ns::New, Ns::New));
        assert_eq!(p.hostname.as_deref(), Some("web"));
        let p = plan(&spec(serde_json::json!([
            {"type": "uts", "path": "/proc/self/ns/uts"},
            {"type": "ipc", "path": "/proc/self/ns/ipc"}
        ])))
        .unwrap();
        assert_eq!(p.uts, Ns::Join("/proc/self/ns/uts".into()));
        assert_eq!(p.ipc, Ns::Join("/proc/self/ns/ipc".into()));
    }

    #[test]
    fn bad_paths_name_the_namespace_and_the_fix() {
        for (path, why) in [
            ("/nonexistent/ns", "No such file"),
            ("/proc/self/status", "not a namespace file"),
            ("/proc/self/ns/net", "not a uts namespace"),
        ] {
            let e = plan(&spec(serde_json::json!([{"type": "uts", "path": path}])))
                .unwrap_err()
                .to_string();
            assert!(e.contains("uts namespace path") && e.contains(path), "{e}");
            assert!(e.contains(why) && e.contains("/proc/PID/ns/uts"), "{e}");
        }
    }

    #[test]
    fn a_path_of_the_wrong_type_fails_for_every_kind() {
        for (typ, right, wrong) in [
            ("pid", "/proc/self/ns/pid", "/proc/self/ns/ipc"),
            ("mount", "/proc/self/ns/mnt", "/proc/self/ns/uts"),
            ("cgroup", "/proc/self/ns/cgroup", "/proc/self/ns/ipc"),
            ("user", "/proc/self/ns/user", "/proc/self/ns/mnt"),
            ("ipc", "/proc/self/ns/ipc", "/proc/self/ns/pid"),
        ] {
            plan(&spec(serde_json::json!([{"type": typ, "path": right}])))
                .unwrap_or_else(|e| panic!("{typ} {right}: {e}"));
            let e = plan(&spec(serde_json::json!([{"type": typ, "path": wrong}])))
                .unwrap_err()
                .to_string();
            assert!(e.contains(wrong) && e.contains("namespace path"), "{e}");
        }
    }

    #[test]
    fn plans_round_trip_and_old_plans_read_as_host() {
        let p = VmmNamespaces {
            uts: Ns::New,
            ipc: Ns::Join("/proc/1/ns/ipc".into()),
            hostname: Some("h".into()),
        };
        let back: VmmNamespaces =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let old: VmmNamespaces = serde_json::from_str("{}").unwrap();
        assert_eq!(old, VmmNamespaces::default());
    }

    /// In a forked child (root): a new uts namespace with the hostname,
    /// then joining the parent's again by path.
    #[test]
    fn a_new_uts_namespace_gets_the_hostname_and_a_path_is_joined() {
        crate::test_support::need_root("unshare, setns");
        let host = nix::unistd::gethostname().unwrap();
        let parent_uts = format!("/proc/{}/ns/uts", std::process::id());
        let parent_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
        assert!(crate::test_support::in_child(|| {
            enter(&VmmNamespaces {
                uts: Ns::New,
                ipc: Ns::New,
                hostname: Some("husk-ns-test".into()),
            })
            .unwrap();
            let named = nix::unistd::gethostname().unwrap() == "husk-ns-test";
            let own_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap() != parent_ipc;
            enter(&VmmNamespaces {
                uts: Ns::Join(parent_uts.into()),
                ..Default::default()
            })
            .unwrap();
            named && own_ipc && nix::unistd::gethostname().unwrap() == host
        }));
        assert_eq!(nix::unistd::gethostname().unwrap(), host);
    }
}
