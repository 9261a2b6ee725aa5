//! A pod's later containers, in the VM its sandbox booted.
//!
//! Under containerd's CRI a pod is a sandbox ("pause") container and the
//! containers created in it. The shim boots one VM for the sandbox (a
//! container like any other, whose VM also serves the pod directory of
//! [`crate::storage::pod`]); each later container is *added* to that VM:
//! its rootfs and directory mounts are bound into the pod directory, and
//! the agent sets it up as a second container ([`Request::Create`] with
//! another id) with a mount, pid and cgroup namespace of its own, sharing
//! the guest's network (the pod's) and the sandbox container's ipc and uts
//! namespaces, and its pid namespace too when the pod shares one
//! (`shareProcessNamespace`). Its process runs at [`start`], its stdio is
//! the session opened at [`create`], and [`remove`] frees what it had.

use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::container::{self, ContainerError};
use super::guest_spec::{self, SharedDir, SHARE_TAG};
use crate::agent_proto::{
    ContainerSpec, GuestResources, ProcessSpec, Request, Response, POD_SHM_FSTYPE, SHARE_FSTYPE,
};
use crate::control::AgentConn;
use crate::storage::pod::{self as pod_dir, POD_SHARE, ROOTFS};

/// The CRI annotation that says what a bundle is in its pod.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming the pod's sandbox.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// What a bundle is in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not a CRI bundle: a VM of its own.
    Alone,
    /// A pod's sandbox: it boots the pod's VM.
    Sandbox,
    /// A container of the pod whose sandbox is `sandbox`.
    Member { sandbox: String },
}

/// The role the CRI annotations of `spec` give it.
pub fn role(spec: &Spec) -> Role {
    let Some(a) = spec.annotations().as_ref() else {
        return Role::Alone;
    };
    match (
        a.get(CONTAINER_TYPE_ANNOTATION).map(String::as_str),
        a.get(SANDBOX_ID_ANNOTATION),
    ) {
        (Some("sandbox"), _) => Role::Sandbox,
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => Role::Member {
            sandbox: sandbox.clone(),
        },
        _ => Role::Alone,
    }
}

/// Makes the container's own `/dev/shm` tmpfs (what a bound host `/dev/shm`
/// becomes, [`guest_spec`]) the pod's: one tmpfs of the guest that the
/// sandbox and every container of the pod bind, as the CRI binds one host
/// tmpfs into each.
pub fn share_shm(spec: &mut ContainerSpec) {
    for m in &mut spec.mounts {
        if m.destination == guest_spec::SHM && m.fstype == "tmpfs" {
            m.fstype = POD_SHM_FSTYPE.into();
        }
    }
}

/// A container's `linux.resources` as its cgroup in the pod's guest gets
/// them (cgroup v2, as runc writes them on the host).
pub fn resources(spec: &Spec) -> GuestResources {
    let r = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let positive = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok()).filter(|&v| v > 0);
    let memory = r.and_then(|r| r.memory().as_ref());
    let cpu = r.and_then(|r| r.cpu().as_ref());
    let memory_max = positive(memory.and_then(|m| m.limit()));
    GuestResources {
        memory_max,
        // runc: swap is memory+swap in the spec, swap alone in cgroup v2.
        memory_swap_max: positive(memory.and_then(|m| m.swap()))
            .zip(memory_max)
            .map(|(total, mem)| total.saturating_sub(mem)),
        pids_max: positive(r.and_then(|r| r.pids().as_ref()).map(|p| p.limit())),
        cpu_max: positive(cpu.and_then(|c| c.quota())).map(|quota| {
            let period = cpu
                .and_then(|c| c.period())
                .filter(|&p| p > 0)
                .unwrap_or(super::vm_spec::DEFAULT_CFS_PERIOD_US);
            (quota, period)
        }),
        // runc's conversion of cgroup v1 shares (2..=262144) to a weight.
        cpu_weight: cpu
            .and_then(|c| c.shares())
            .filter(|&s| s > 0)
            .map(|s| 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142),
    }
}

/// The name of container `id`'s entry `name` in the VM's share.
fn share_name(id: &str, name: &str) -> String {
    format!("{POD_SHARE}/{id}/{name}")
}

/// The guest spec of container `id` of a pod (from its bundle's `spec`)
/// and the directories to bind for it: its rootfs and mounts named in the
/// pod directory, the pod-level namespaces (a namespace with a path in the
/// spec: the sandbox's) joined.
pub fn member_spec(
    id: &str,
    spec: &Spec,
    bundle: &Path,
    read_source: &dyn Fn(&Path) -> Result<guest_spec::BindSource, String>,
) -> Result<(ContainerSpec, Vec<SharedDir>), ContainerError> {
    let (mut guest, shares) = guest_spec::container_spec(id, spec, bundle, read_source)?;
    if spec
        .linux()
        .as_ref()
        .and_then(|l| l.uid_mappings().as_ref())
        .is_some_and(|m| !m.is_empty())
    {
        return Err(ContainerError::Io(format!(
            "container {id}: user namespaces in a pod's containers are not supported yet \
             (run the pod without hostUsers: false, or with the runc handler)"
        )));
    }
    let joined: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .filter(|n| n.path().is_some())
        .filter_map(|n| match n.typ() {
            LinuxNamespaceType::Pid => Some("pid"),
            LinuxNamespaceType::Ipc => Some("ipc"),
            LinuxNamespaceType::Uts => Some("uts"),
            _ => None,
        })
        .map(str::to_owned)
        .collect();
    guest.namespaces.retain(|n| !joined.contains(n));
    if joined.iter().any(|n| n == "uts") {
        // The pod's hostname is the sandbox's.
        guest.hostname = None;
    }
    guest.join_namespaces = joined;
    guest.resources = Some(resources(spec));
    share_shm(&mut guest);
    guest.share_tag = Some(SHARE_TAG.to_owned());
    guest.root_share = Some(share_name(id, ROOTFS));
    for m in &mut guest.mounts {
        if m.fstype == SHARE_FSTYPE {
            m.source = share_name(id, &m.source);
        }
    }
    Ok((guest, shares))
}

/// Adds container `id` (bundle `bundle`) to the VM of sandbox `sandbox`
/// and prepares its process: returns the session its stdio and end come
/// on. On error nothing of it is left.
pub fn create(
    root: &Path,
    sandbox: &str,
    id: &str,
    bundle: &Path,
) -> Result<AgentConn, ContainerError> {
    super::bundle::validate_id(id)?;
    let b = super::bundle::load(bundle)?;
    let (spec, shares) = member_spec(id, &b.spec, &b.path, &guest_spec::read_bind_source)?;
    let st = container::exec_target(root, sandbox)?;
    let dir = pod_dir::dir(root, sandbox);
    pod_dir::add(&dir, id, &b.rootfs, &shares)
        .map_err(|e| ContainerError::Io(format!("container {id}: {e}")))?;
    let created = (|| {
        let mut conn = container::connect(&st)?;
        match conn.request(&Request::Create {
            spec: Box::new(spec),
        })? {
            Response::Created => Ok(conn),
            other => Err(ContainerError::Io(format!(
                "unexpected answer to create: {other:?}"
            ))),
        }
    })();
    if created.is_err() {
        pod_dir::remove(&dir, id);
    }
    created
}

/// One request about container `id` to the VM of `sandbox`.
fn request(root: &Path, sandbox: &str, request: &Request) -> Result<Response, ContainerError> {
    let st = container::load_fresh(root, sandbox)?;
    let mut conn = container::connect(&st)?;
    Ok(conn.request(request)?)
}

/// Runs container `id`'s process; its pid in the guest.
pub fn start(root: &Path, sandbox: &str, id: &str) -> Result<i32, ContainerError> {
    match request(
        root,
        sandbox,
        &Request::Start {
            container: Some(id.to_owned()),
        },
    )? {
        Response::Started { pid } => Ok(pid),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to start: {other:?}"
        ))),
    }
}

/// Signals container `id`'s process (`all`: every process of it).
pub fn signal(
    root: &Path,
    sandbox: &str,
    id: &str,
    signal: i32,
    all: bool,
) -> Result<(), ContainerError> {
    request(
        root,
        sandbox,
        &Request::Signal {
            signal,
            all,
            container: Some(id.to_owned()),
        },
    )
    .map(drop)
}

/// Opens an exec session in container `id`: the process runs when this
/// returns, with its pid in the guest.
pub fn exec(
    root: &Path,
    sandbox: &str,
    id: &str,
    process: ProcessSpec,
) -> Result<(AgentConn, i32), ContainerError> {
    let st = container::exec_target(root, sandbox)?;
    let mut conn = container::connect(&st)?;
    match conn.request(&Request::Exec {
        process: Box::new(process),
        container: Some(id.to_owned()),
    })? {
        Response::Started { pid } => Ok((conn, pid)),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to exec: {other:?}"
        ))),
    }
}

/// The processes of container `id` of the pod (the sandbox's own, for the
/// sandbox).
pub fn ps(
    root: &Path,
    sandbox: &str,
    id: &str,
) -> Result<Vec<crate::agent_proto::ProcessInfo>, ContainerError> {
    match request(
        root,
        sandbox,
        &Request::Ps {
            container: Some(id.to_owned()),
        },
    )? {
        Response::Ps { processes } => Ok(processes),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to ps: {other:?}"
        ))),
    }
}

/// The statistics of container `id`'s own cgroup in the pod's VM.
pub fn stats(
    root: &Path,
    sandbox: &str,
    id: &str,
) -> Result<crate::runtime::cgroup::Stats, ContainerError> {
    match request(
        root,
        sandbox,
        &Request::Stats {
            container: id.to_owned(),
        },
    )? {
        Response::Stats { files } => Ok(crate::runtime::cgroup::stats_from(|name| {
            files
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, t)| t.clone())
                .unwrap_or_default()
        })),
        other => Err(ContainerError::Io(format!(
            "unexpected answer to stats: {other:?}"
        ))),
    }
}

/// Frees container `id`: the guest forgets it (when its VM still runs),
/// its binds leave the pod directory.
pub fn remove(root: &Path, sandbox: &str, id: &str) -> Result<(), ContainerError> {
    let asked = request(
        root,
        sandbox,
        &Request::Remove {
            container: id.to_owned(),
        },
    );
    match asked {
        Ok(_) => {}
        // The VM is gone (the pod stopped): nothing in it to free.
        Err(ContainerError::State(_)) | Err(ContainerError::Control(_)) => {}
        Err(e) => return Err(e),
    }
    pod_dir::remove(&pod_dir::dir(root, sandbox), id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn cri_container(extra_ns: serde_json::Value) -> Spec {
        let mut namespaces = vec![
            serde_json::json!({"type": "mount"}),
            serde_json::json!({"type": "network", "path": "/var/run/netns/cni-1"}),
            serde_json::json!({"type": "ipc", "path": "/proc/42/ns/ipc"}),
            serde_json::json!({"type": "uts", "path": "/proc/42/ns/uts"}),
            serde_json::json!({"type": "cgroup"}),
        ];
        namespaces.push(extra_ns);
        spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "pod-a",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/data", "type": "bind", "source": "/srv/data",
                 "options": ["rbind", "rw"]},
                {"destination": "/dev/shm", "type": "bind", "source": "/run/sb1/shm",
                 "options": ["rbind", "ro"]}
            ],
            "annotations": {
                CONTAINER_TYPE_ANNOTATION: "container",
                SANDBOX_ID_ANNOTATION: "sb1"
            },
            "linux": {"namespaces": namespaces}
        }))
    }

    #[test]
    fn roles_follow_the_cri_annotations() {
        let member = cri_container(serde_json::json!({"type": "pid"}));
        assert_eq!(
            role(&member),
            Role::Member {
                sandbox: "sb1".into()
            }
        );
        let mut sandbox = member.clone();
        let mut a = sandbox.annotations().clone().unwrap();
        a.insert(CONTAINER_TYPE_ANNOTATION.into(), "sandbox".into());
        sandbox.set_annotations(Some(a));
        assert_eq!(role(&sandbox), Role::Sandbox);
        let mut plain = member.clone();
        plain.set_annotations(None);
        assert_eq!(role(&plain), Role::Alone);
        let mut no_sandbox = member;
        let mut a = no_sandbox.annotations().clone().unwrap();
        a.remove(SANDBOX_ID_ANNOTATION);
        no_sandbox.set_annotations(Some(a));
        assert_eq!(role(&no_sandbox), Role::Alone);
    }

    #[test]
    fn a_member_joins_the_pods_namespaces_and_names_its_files_in_the_pod_share() {
        let dir = |_: &Path| Ok(guest_spec::BindSource::Directory);
        let own_pid = cri_container(serde_json::json!({"type": "pid"}));
        let (g, shares) = member_spec("c1", &own_pid, Path::new("/b"), &dir).unwrap();
        assert_eq!(g.join_namespaces, vec!["ipc", "uts"]);
        assert!(
            g.namespaces.contains(&"pid".to_string()),
            "{:?}",
            g.namespaces
        );
        assert!(!g.namespaces.contains(&"ipc".to_string()));
        assert_eq!(g.hostname, None, "the pod's hostname is the sandbox's");
        assert_eq!(g.root_share.as_deref(), Some("pod/c1/rootfs"));
        assert_eq!(g.share_tag.as_deref(), Some(SHARE_TAG));
        let data = g.mounts.iter().find(|m| m.destination == "/data").unwrap();
        assert_eq!(data.source, "pod/c1/m0");
        assert_eq!(shares[0].name, "m0");
        assert!(g
            .mounts
            .iter()
            .any(|m| m.destination == "/dev/shm" && m.fstype == POD_SHM_FSTYPE));
        // shareProcessNamespace: the pod's pid namespace too.
        let shared_pid =
            cri_container(serde_json::json!({"type": "pid", "path": "/proc/42/ns/pid"}));
        let (g, _) = member_spec("c1", &shared_pid, Path::new("/b"), &dir).unwrap();
        assert_eq!(g.join_namespaces, vec!["ipc", "uts", "pid"]);
        assert!(!g.namespaces.contains(&"pid".to_string()));
    }

    #[test]
    fn a_members_limits_become_its_guest_cgroups() {
        let mut s = cri_container(serde_json::json!({"type": "pid"}));
        let mut linux = s.linux().clone().unwrap();
        linux.set_resources(Some(
            serde_json::from_value(serde_json::json!({
                "memory": {"limit": 33554432, "swap": 33554432},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
                "pids": {"limit": 100}
            }))
            .unwrap(),
        ));
        s.set_linux(Some(linux));
        let r = resources(&s);
        assert_eq!(
            r,
            GuestResources {
                memory_max: Some(32 << 20),
                memory_swap_max: Some(0),
                pids_max: Some(100),
                cpu_max: Some((50_000, 100_000)),
                cpu_weight: Some(39),
            }
        );
        // No limits: a cgroup of its own all the same (for its OOM events).
        let bare = resources(&cri_container(serde_json::json!({"type": "pid"})));
        assert_eq!(bare, GuestResources::default());
        let dir = |_: &Path| Ok(guest_spec::BindSource::Directory);
        let (g, _) = member_spec("c1", &s, Path::new("/b"), &dir).unwrap();
        assert_eq!(g.resources, Some(r));
    }

    #[test]
    fn a_member_with_a_user_namespace_is_refused_by_name() {
        let dir = |_: &Path| Ok(guest_spec::BindSource::Directory);
        let mut s = cri_container(serde_json::json!({"type": "user"}));
        let mut linux = s.linux().clone().unwrap();
        linux.set_uid_mappings(Some(vec![serde_json::from_value(
            serde_json::json!({"containerID": 0, "hostID": 100000, "size": 65536}),
        )
        .unwrap()]));
        s.set_linux(Some(linux));
        let err = member_spec("c1", &s, Path::new("/b"), &dir).unwrap_err();
        assert!(err.to_string().contains("user namespaces"), "{err}");
    }
}
