//! `husk spec`: a starter `config.json`, the same as runc's (`sh` on a
//! terminal, read-only `rootfs`, the usual mounts, namespaces and masked
//! paths) except for the hostname and the spec version.
//!
//! The document is built from private structs whose field order is the
//! runtime-spec Go structs' order, so the file reads like runc's (oci-spec's
//! types keep capabilities in hash sets, which would shuffle them). It is
//! written with tab indentation and no trailing newline, as runc does, and
//! never over an existing file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::bundle::CONFIG_FILE;

/// Hostname in the starter config.
pub const DEFAULT_HOSTNAME: &str = "husk";
/// `PATH` in the starter config.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Soft and hard `RLIMIT_NOFILE` in the starter config.
const NOFILE_LIMIT: u64 = 1024;
/// Capabilities the starter process keeps.
const DEFAULT_CAPS: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// Errors writing the starter config.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// runc's wording.
    #[error("File {} exists. Remove it first", CONFIG_FILE)]
    Exists { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Host ids a rootless config maps to root in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootlessIds {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    oci_version: &'static str,
    process: Process,
    root: Root,
    hostname: &'static str,
    mounts: Vec<Mount>,
    linux: Linux,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    terminal: bool,
    user: User,
    args: Vec<&'static str>,
    env: Vec<&'static str>,
    cwd: &'static str,
    capabilities: Capabilities,
    rlimits: Vec<Rlimit>,
    no_new_privileges: bool,
}

#[derive(Serialize)]
struct User {
    uid: u32,
    gid: u32,
}

#[derive(Serialize)]
struct Capabilities {
    bounding: Vec<&'static str>,
    effective: Vec<&'static str>,
    permitted: Vec<&'static str>,
    ambient: Vec<&'static str>,
}

#[derive(Serialize)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: &'static str,
    hard: u64,
    soft: u64,
}

#[derive(Serialize)]
struct Root {
    path: &'static str,
    readonly: bool,
}

#[derive(Serialize)]
struct Mount {
    destination: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    source: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    options: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid_mappings: Option<Vec<IdMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid_mappings: Option<Vec<IdMapping>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<Resources>,
    namespaces: Vec<Namespace>,
    masked_paths: Vec<&'static str>,
    readonly_paths: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdMapping {
    #[serde(rename = "containerID")]
    container_id: u32,
    #[serde(rename = "hostID")]
    host_id: u32,
    size: u32,
}

#[derive(Serialize)]
struct Resources {
    devices: Vec<DeviceRule>,
}

#[derive(Serialize)]
struct DeviceRule {
    allow: bool,
    access: &'static str,
}

#[derive(Serialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: &'static str,
}

fn mount(
    destination: &'static str,
    kind: &'static str,
    source: &'static str,
    options: &[&'static str],
) -> Mount {
    Mount {
        destination,
        kind,
        source,
        options: options.to_vec(),
    }
}

fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &[]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn config(rootless: Option<RootlessIds>) -> Config {
    let caps = || DEFAULT_CAPS.to_vec();
    let mut namespaces = vec!["pid", "network", "ipc", "uts", "mount"];
    let mut mounts = default_mounts();
    let mut linux_ids = (None, None);
    let mut resources = Some(Resources {
        devices: vec![DeviceRule {
            allow: false,
            access: "rwm",
        }],
    });
    if let Some(ids) = rootless {
        // As runc's rootless starter: no network namespace, a user
        // namespace mapping the caller to root, /sys bind-mounted, no
        // gid=/uid= mount options, no cgroup resources.
        namespaces.retain(|&ns| ns != "network" && ns != "user");
        namespaces.push("user");
        let map = |host_id| {
            Some(vec![IdMapping {
                container_id: 0,
                host_id,
                size: 1,
            }])
        };
        linux_ids = (map(ids.uid), map(ids.gid));
        for m in &mut mounts {
            if m.destination == "/sys" {
                *m = mount(
                    "/sys",
                    "none",
                    "/sys",
                    &["rbind", "nosuid", "noexec", "nodev", "ro"],
                );
            } else {
                m.options
                    .retain(|o| !o.starts_with("gid=") && !o.starts_with("uid="));
            }
        }
        resources = None;
    }
    Config {
        oci_version: oci_spec::runtime::VERSION,
        process: Process {
            terminal: true,
            user: User { uid: 0, gid: 0 },
            args: vec!["sh"],
            env: vec![DEFAULT_PATH_ENV, "TERM=xterm"],
            cwd: "/",
            capabilities: Capabilities {
                bounding: caps(),
                effective: caps(),
                permitted: caps(),
                ambient: caps(),
            },
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: NOFILE_LIMIT,
                soft: NOFILE_LIMIT,
            }],
            no_new_privileges: true,
        },
        root: Root {
            path: "rootfs",
            readonly: true,
        },
        hostname: DEFAULT_HOSTNAME,
        mounts,
        linux: Linux {
            uid_mappings: linux_ids.0,
            gid_mappings: linux_ids.1,
            resources,
            namespaces: namespaces
                .into_iter()
                .map(|kind| Namespace { kind })
                .collect(),
            masked_paths: vec![
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            readonly_paths: vec![
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
}

/// The starter config.json text (tab-indented, no trailing newline).
pub fn render_default_config(rootless: Option<RootlessIds>) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    config(rootless)
        .serialize(&mut ser)
        .expect("serializing plain structs to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes `<dir>/config.json`, refusing to replace an existing one (the
/// check and the create are one `O_EXCL` open). Returns the path written.
pub fn write_default_config(
    dir: &Path,
    rootless: Option<RootlessIds>,
) -> Result<PathBuf, SpecError> {
    let path = dir.join(CONFIG_FILE);
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SpecError::Exists { path })
        }
        Err(source) => return Err(SpecError::Write { path, source }),
    };
    let text = render_default_config(rootless);
    if let Err(source) = file.write_all(text.as_bytes()) {
        // Do not leave a truncated config behind.
        let _ = fs::remove_file(&path);
        return Err(SpecError::Write { path, source });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceType, Spec};

    #[test]
    fn starter_config_parses_and_matches_runcs_essentials() {
        let text = render_default_config(None);
        let spec: Spec = serde_json::from_str(&text).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.args().as_ref().unwrap(), &["sh"]);
        assert_eq!(process.cwd(), Path::new("/"));
        assert_eq!(process.no_new_privileges(), Some(true));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some(DEFAULT_HOSTNAME));
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 7);
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert_eq!(
            ns,
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount
            ]
        );
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), 10);
        assert_eq!(linux.readonly_paths().as_ref().unwrap().len(), 5);
        assert!(linux.uid_mappings().is_none());
    }

    #[test]
    fn layout_is_runcs() {
        let text = render_default_config(None);
        assert!(text.starts_with("{\n\t\"ociVersion\": \""), "{text}");
        assert!(text.contains(
            "\n\t\"process\": {\n\t\t\"terminal\": true,\n\t\t\"user\": {\n\t\t\t\"uid\": 0,"
        ));
        assert!(text.contains(
            "\"capabilities\": {\n\t\t\t\"bounding\": [\n\t\t\t\t\"CAP_AUDIT_WRITE\",\n\t\t\t\t\"CAP_KILL\",\n\t\t\t\t\"CAP_NET_BIND_SERVICE\"\n\t\t\t],"
        ));
        assert!(text.contains("{\n\t\t\t\"destination\": \"/proc\",\n\t\t\t\"type\": \"proc\",\n\t\t\t\"source\": \"proc\"\n\t\t},"));
        assert!(text.ends_with("\n\t}\n}"), "no trailing newline, like runc");
        let order = [
            "\"ociVersion\"",
            "\"process\"",
            "\"root\"",
            "\"hostname\"",
            "\"mounts\"",
            "\"linux\"",
        ];
        let pos: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
        let linux_order = [
            "\"resources\"",
            "\"namespaces\"",
            "\"maskedPaths\"",
            "\"readonlyPaths\"",
        ];
        let pos: Vec<usize> = linux_order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rootless_variant() {
        let text = render_default_config(Some(RootlessIds {
            uid: 1000,
            gid: 100,
        }));
        let spec: Spec = serde_json::from_str(&text).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert_eq!(ns.last(), Some(&LinuxNamespaceType::User));
        let uid = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid.container_id(), uid.host_id(), uid.size()),
            (0, 1000, 1)
        );
        let gid = &linux.gid_mappings().as_ref().unwrap()[0];
        assert_eq!(gid.host_id(), 100);
        assert!(linux.resources().is_none());
        let mounts = spec.mounts().as_ref().unwrap();
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("none"));
        assert_eq!(sys.options().as_ref().unwrap()[0], "rbind");
        assert!(mounts
            .iter()
            .flat_map(|m| m.options().iter().flatten())
            .all(|o| !o.starts_with("gid=")));
        assert!(text.contains(
            "\"uidMappings\": [\n\t\t\t{\n\t\t\t\t\"containerID\": 0,\n\t\t\t\t\"hostID\": 1000,"
        ));
    }

    #[test]
    fn writes_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_default_config(dir.path(), None).unwrap();
        assert_eq!(path, dir.path().join(CONFIG_FILE));
        let first = fs::read_to_string(&path).unwrap();
        assert_eq!(first, render_default_config(None));
        let err = write_default_config(dir.path(), None).unwrap_err();
        assert!(matches!(err, SpecError::Exists { .. }));
        assert_eq!(err.to_string(), "File config.json exists. Remove it first");
        assert_eq!(fs::read_to_string(&path).unwrap(), first, "left untouched");
    }

    #[test]
    fn missing_directory_is_a_write_error() {
        let err = write_default_config(Path::new("/nonexistent/dir"), None).unwrap_err();
        assert!(matches!(err, SpecError::Write { .. }), "{err}");
    }

    #[test]
    fn starter_bundle_loads_with_the_bundle_checks() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        write_default_config(dir.path(), None).unwrap();
        let b = super::super::bundle::load(dir.path()).unwrap();
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
    }
}
