//! The host↔guest agent protocol, spoken over virtio-vsock streams.
//!
//! husk-init, started with [`crate::proto::PARAM_AGENT`]`=1`, listens on vsock
//! port [`AGENT_PORT`]. The host reaches it through the VMM's vsock Unix
//! socket (`CONNECT 1024\n`, answered `OK <port>\n`). Every connection carries
//! [`Frame`]s: a little-endian `u32` length (of kind + payload), a kind byte,
//! then the payload. Control frames carry JSON ([`Request`], [`Response`],
//! [`Event`]); stream frames carry raw bytes.
//!
//! Sessions (one per connection):
//! - **main**: the VMM sends [`Request::Create`] right after boot; init
//!   prepares the container (hostname, mounts, files, sysctls) and answers
//!   [`Response::Created`]. The container's process does not run yet. From
//!   [`Request::Start`] (sent on another connection by `husk start`) on, its
//!   stdout/stderr arrive on this connection as [`FrameKind::Stdout`] /
//!   [`FrameKind::Stderr`] frames, stdin goes the other way, and its end
//!   comes as [`Event::Exited`], after all its output.
//! - **exec**: [`Request::Exec`] starts an extra process in the container;
//!   the connection then carries its stdio the same way and ends with
//!   [`Event::Exited`].
//! - **one-shot**: [`Request::Start`], [`Request::Signal`], [`Request::Ps`]
//!   each get one [`Response`] and the connection closes.
//!
//! With a terminal, the process's pty output comes as Stdout frames and
//! Stdin frames are typed into it; [`Request::Resize`] on the same
//! connection resizes it.

use serde::{Deserialize, Serialize};

/// The cgroup v2 files [`Request::Stats`] reads.
pub const STAT_FILES: [&str; 8] = [
    "pids.current",
    "pids.max",
    "cpu.stat",
    "memory.current",
    "memory.max",
    "memory.peak",
    "memory.stat",
    "memory.events",
];

/// Vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Largest frame accepted (kind + payload), to bound memory.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest stream payload a sender puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON [`Request`], host to guest.
    Request = 1,
    /// JSON [`Response`], guest to host.
    Response = 2,
    /// JSON [`Event`], guest to host.
    Event = 3,
    /// Bytes for the process's stdin (or terminal), host to guest.
    Stdin = 0x10,
    /// The host's stdin ended: close the process's stdin.
    StdinEof = 0x11,
    /// Bytes from the process's stdout (or terminal), guest to host.
    Stdout = 0x20,
    /// Bytes from the process's stderr, guest to host.
    Stderr = 0x21,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::Event,
            0x10 => FrameKind::Stdin,
            0x11 => FrameKind::StdinEof,
            0x20 => FrameKind::Stdout,
            0x21 => FrameKind::Stderr,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge { len: u32 },
    #[error("agent frame of length 0")]
    Empty,
    #[error("unknown agent frame kind {kind:#x}")]
    UnknownKind { kind: u8 },
    #[error("agent message is not valid JSON for {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl Frame {
    pub fn new(kind: FrameKind, payload: Vec<u8>) -> Self {
        Frame { kind, payload }
    }

    /// A JSON control frame.
    pub fn json<T: Serialize>(kind: FrameKind, msg: &T) -> Self {
        // Serializing these plain types cannot fail.
        Frame::new(kind, serde_json::to_vec(msg).unwrap_or_default())
    }

    /// Decodes the JSON payload of a control frame.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self, what: &'static str) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|source| FrameError::Json { what, source })
    }

    /// The frame as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = u32::try_from(self.payload.len() + 1).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(self.payload.len() + 5);
        out.extend_from_slice(&len.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Writes the frame.
    pub fn write_to(&self, w: &mut impl std::io::Write) -> Result<(), FrameError> {
        w.write_all(&self.encode())?;
        Ok(())
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream between frames.
    pub fn read_from(r: &mut impl std::io::Read) -> Result<Option<Frame>, FrameError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match r.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(len);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len });
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        let kind = FrameKind::from_u8(body[0]).ok_or(FrameError::UnknownKind { kind: body[0] })?;
        body.remove(0);
        Ok(Some(Frame {
            kind,
            payload: body,
        }))
    }
}

/// A resource limit (`setrlimit`), by its OCI name (`RLIMIT_NOFILE`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// Capability sets, by name (`CAP_CHOWN`, ...). `None` leaves a set as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub bounding: Option<Vec<String>>,
    pub effective: Option<Vec<String>>,
    pub inheritable: Option<Vec<String>>,
    pub permitted: Option<Vec<String>>,
    pub ambient: Option<Vec<String>>,
}

/// A process to run in the container (from the OCI `process` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    #[serde(default)]
    pub terminal: bool,
    /// Initial terminal size (rows, columns).
    pub console_size: Option<(u16, u16)>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// OCI `process.oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
}

/// A mount inside the container (OCI `mounts`), after the host filtered out
/// what the guest cannot do (directory bind mounts) and turned file bind
/// mounts into [`ContainerFile`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub destination: String,
    pub fstype: String,
    pub source: String,
    /// OCI options (`nosuid`, `ro`, `mode=755`, `size=65536k`, ...).
    pub options: Vec<String>,
}

/// A file the host copies into the container at create (what engines
/// bind-mount: `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFile {
    pub path: String,
    pub mode: u32,
    #[serde(default)]
    pub read_only: bool,
    pub contents: Vec<u8>,
}

/// An OCI hook that runs in the container (`createContainer`,
/// `startContainer`), with the container's state JSON on stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHook {
    pub path: String,
    /// argv (`args[0]` is replaced by `path` when the process runs).
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; `None` waits as long as it takes.
    pub timeout: Option<u32>,
}

/// Everything init needs to set the container up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    pub hostname: Option<String>,
    pub process: ProcessSpec,
    /// Mount the root filesystem read-only (OCI `root.readonly`).
    #[serde(default)]
    pub readonly_root: bool,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    #[serde(default)]
    pub files: Vec<ContainerFile>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// OCI `linux.sysctl`.
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// Run after the container's mounts are set up, before `Created`.
    #[serde(default)]
    pub create_container_hooks: Vec<GuestHook>,
    /// Run at `Start`, before the process is executed.
    #[serde(default)]
    pub start_container_hooks: Vec<GuestHook>,
    /// The OCI state JSON the hooks get on stdin.
    #[serde(default)]
    pub hook_state: String,
    /// The network of the engine's namespace, replayed on the VM's NICs
    /// (empty: loopback only).
    #[serde(default)]
    pub network: NetSetup,
    /// The host's clock and fresh entropy, applied first.
    #[serde(default)]
    pub host_sync: HostSync,
    /// The virtio-fs tag of the host directories the container shares
    /// (its directory bind mounts), when it has any: mounts of type
    /// [`SHARE_FSTYPE`] name a directory in it.
    #[serde(default)]
    pub share_tag: Option<String>,
    /// The directory of that share that is the container's root file
    /// system (the bundle's `root.path` on the host): the agent makes it
    /// the guest's root before the mounts. `None`: the root is the one the
    /// guest booted with (a block image under an overlay).
    #[serde(default)]
    pub root_share: Option<String>,
    /// The container's OCI `linux.seccomp`, compiled on the host: the
    /// agent loads it into the main process and every exec, as runc does.
    #[serde(default)]
    pub seccomp: Option<SeccompProgram>,
    /// The OCI `linux.namespaces` types the container gets new ones of in
    /// the guest (`pid`, `uts`, `ipc`, `cgroup`; its mount namespace is
    /// always its own, its network the guest's).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Device nodes made in the container after its mounts (OCI
    /// `linux.devices`, and the device bind mounts of the config).
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// OCI `linux.rootfsPropagation` (`shared`, `rslave`, `private`,
    /// `unbindable`, ...): applied to the container's `/`.
    #[serde(default)]
    pub rootfs_propagation: Option<String>,
    /// OCI `linux.uidMappings` / `gidMappings` of a new user namespace
    /// (empty: none): the container's process gets one with these maps,
    /// the guest's ids being the host's.
    #[serde(default)]
    pub uid_map: Vec<IdMapping>,
    #[serde(default)]
    pub gid_map: Vec<IdMapping>,
    /// The namespace types (`pid`, `ipc`, `uts`) a later container of a pod
    /// shares with the VM's first container (the pod's sandbox) instead of
    /// getting its own: the CRI's pod-level namespaces.
    #[serde(default)]
    pub join_namespaces: Vec<String>,
    /// A pod's later container's own limits, applied to a cgroup of its own
    /// in the guest (`None`: no cgroup of its own; a container alone in its
    /// VM is limited by the VM's size).
    #[serde(default)]
    pub resources: Option<GuestResources>,
}

/// A container's limits inside the guest (cgroup v2 files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestResources {
    /// `memory.max`, bytes.
    pub memory_max: Option<u64>,
    /// `memory.swap.max`, bytes.
    pub memory_swap_max: Option<u64>,
    /// `pids.max`.
    pub pids_max: Option<u64>,
    /// `cpu.max`: quota and period, µs.
    pub cpu_max: Option<(u64, u64)>,
    /// `cpu.weight` (1..=10000).
    pub cpu_weight: Option<u64>,
}

/// One range of a user namespace's map: container ids
/// `container..container+size` are `host..host+size` outside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// The text of `/proc/PID/uid_map` (or `gid_map`) for `ranges`.
pub fn map_text(ranges: &[IdMapping]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// A device node of the container (OCI `linux.devices` entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    pub path: String,
    /// `c` (or `u`), `b` or `p`.
    pub kind: String,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (`fileMode`, default 0666).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One classic BPF instruction (`struct sock_filter`, `linux/filter.h`),
/// sent as `[code, jt, jf, k]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockFilter(pub u16, pub u8, pub u8, pub u32);

/// A seccomp filter ready for `seccomp(SECCOMP_SET_MODE_FILTER, flags, ...)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProgram {
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub flags: u32,
    pub filter: Vec<SockFilter>,
}

/// The kernel's limit on one filter's length (`BPF_MAXINSNS`).
pub const BPF_MAXINSNS: usize = 4096;

/// `MountSpec::fstype` of a directory the host shares: `source` is its name
/// in the share ([`ContainerSpec::share_tag`]), bound on `destination` with
/// the mount's options (`ro`, `rbind`, `nosuid`, propagation, ...).
pub const SHARE_FSTYPE: &str = "husk.share";

/// `MountSpec::fstype` of a pod's shared memory: one tmpfs of the guest
/// ([`POD_SHM_DIR`], made by the first container that asks, with that
/// mount's options) that every container of the pod binds on
/// `destination` (`/dev/shm`), as the CRI shares one host tmpfs between a
/// pod's containers.
pub const POD_SHM_FSTYPE: &str = "husk.pod-shm";

/// Where the guest keeps a pod's shared memory (in its devtmpfs, never on
/// a container's root file system).
pub const POD_SHM_DIR: &str = "/dev/.husk-pod-shm";

/// What the guest takes from the host at create. A VM restored from a
/// template snapshot wakes with the template's wall clock and random pool;
/// the agent sets the one and mixes the other with these bytes, then
/// reseeds the kernel's generator, so no two containers share random state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSync {
    /// `CLOCK_REALTIME` of the host, in ns since the epoch (0: leave the
    /// guest clock alone).
    #[serde(default)]
    pub realtime_ns: u64,
    /// Random bytes from the host's generator.
    #[serde(default)]
    pub entropy: Vec<u8>,
}

/// An address with its prefix length (`10.88.0.2/16`, `fd00::2/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPrefix {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

/// One guest NIC: a virtio-net device standing for one interface of the
/// engine's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNic {
    /// The device's MAC (`aa:bb:cc:dd:ee:ff`, lowercase), the same as the
    /// namespace interface's; the guest finds its interface by it.
    pub mac: String,
    /// The name the interface gets in the guest (the namespace's name, e.g. `eth0`).
    pub name: String,
    pub mtu: u32,
    /// Addresses with their prefixes, IPv4 and IPv6.
    #[serde(default)]
    pub addrs: Vec<IpPrefix>,
    /// The MAC the guest's device had when the guest probed it, where that
    /// is not `mac`: a VM restored from a template VM probed its NICs with
    /// the template's placeholder MACs. The guest finds the interface by
    /// this one and gives it `mac` before anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_mac: Option<String>,
}

/// One route of the namespace's main table (routes the kernel derives from
/// an address, the on-link subnet ones, are not listed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// Destination; a prefix length of 0 is the default route.
    pub dst: IpPrefix,
    /// Next hop, if any (none: on-link through `dev`).
    #[serde(default)]
    pub gateway: Option<std::net::IpAddr>,
    /// Guest interface name (one of the [`GuestNic::name`]s).
    pub dev: String,
    /// Route metric (0: none).
    #[serde(default)]
    pub metric: u32,
}

/// The guest's network: its NICs and routes. Loopback is always brought up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSetup {
    #[serde(default)]
    pub nics: Vec<GuestNic>,
    #[serde(default)]
    pub routes: Vec<GuestRoute>,
}

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Prepare the container; this connection becomes the main session.
    /// The VM's first `Create` also sets the guest up (network, clock); a
    /// later one, with another id, adds a container of the same pod.
    Create { spec: Box<ContainerSpec> },
    /// Run the prepared container process. `container` names a container
    /// of the VM (`None`: the first), here and below.
    Start {
        #[serde(default)]
        container: Option<String>,
    },
    /// Run an extra process; this connection becomes its session.
    Exec {
        process: Box<ProcessSpec>,
        #[serde(default)]
        container: Option<String>,
    },
    /// Send a signal to the container process, or (`all`) to every process
    /// in the container.
    Signal {
        signal: i32,
        all: bool,
        #[serde(default)]
        container: Option<String>,
    },
    /// Forget a later container of a pod whose process has ended (or never
    /// started): what is left of it in the guest goes (one-shot).
    Remove { container: String },
    /// The cgroup statistics of a later container of a pod: its cgroup's
    /// [`STAT_FILES`], as they read (one-shot).
    Stats { container: String },
    /// Resize the terminal of this connection's process.
    Resize { rows: u16, cols: u16 },
    /// List the VM's processes (`container`: those of that container of a
    /// pod).
    Ps {
        #[serde(default)]
        container: Option<String>,
    },
    /// Get ready for a checkpoint (one-shot): the main session's output
    /// stops after an [`Event::Detached`] on its connection (the process
    /// blocks once its pipes fill), the guest's file data is written out
    /// and its caches dropped. Refused while exec sessions run.
    Checkpoint,
    /// The checkpoint was given up (one-shot): output flows again.
    CheckpointAbort,
    /// The VM was restored from a checkpoint: this connection becomes the
    /// main session (answered [`Response::Reattached`], then the output
    /// held since the checkpoint); the guest's clock and random pool are
    /// set from the host's first.
    Reattach { host_sync: HostSync },
}

/// A process as `ps` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// `/proc/PID/stat` state letter.
    pub state: String,
    pub cmdline: Vec<String>,
}

/// Guest to host: the answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Created,
    /// The process runs; `pid` is its pid inside the guest.
    Started {
        pid: i32,
    },
    Ok,
    Ps {
        processes: Vec<ProcessInfo>,
    },
    /// The main session is this connection again; `pid` is the container
    /// process's pid inside the guest.
    Reattached {
        pid: i32,
    },
    /// [`Request::Stats`]: (file name, its text) of each of
    /// [`STAT_FILES`] the cgroup has.
    Stats {
        files: Vec<(String, String)>,
    },
    /// The request failed; `message` says why, for the user.
    Error {
        message: String,
    },
}

/// Guest to host, unprompted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The main session's process started (sent on the main connection when
    /// `Start` arrives on another one); stdin frames are read from then on.
    Started { pid: i32 },
    /// The main session stops here for a checkpoint: no frame follows on
    /// this connection (the restored VM's host gets the rest).
    Detached,
    /// The container's cgroup killed a process for want of memory (sent on
    /// the main session of a pod's container, before its `Exited`).
    OomKilled,
    /// The session's process ended (after all its output was sent).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let frames = vec![
            Frame::json(
                FrameKind::Request,
                &Request::Signal {
                    signal: 9,
                    all: true,
                    container: None,
                },
            ),
            Frame::new(FrameKind::Stdout, b"hello".to_vec()),
            Frame::new(FrameKind::StdinEof, vec![]),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(Frame::read_from(&mut r).unwrap().as_ref(), Some(f));
        }
        assert!(Frame::read_from(&mut r).unwrap().is_none());
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(Frame::read_from(&mut r), Err(FrameError::Empty)));
        let mut r: &[u8] = &(MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(
            Frame::read_from(&mut r),
            Err(FrameError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[1, 0, 0, 0, 0x7f];
        assert!(matches!(
            Frame::read_from(&mut r),
            Err(FrameError::UnknownKind { kind: 0x7f })
        ));
        let mut r: &[u8] = &[5, 0, 0, 0, 1, b'{'];
        assert!(matches!(Frame::read_from(&mut r), Err(FrameError::Io(_))));
        let f = Frame::new(FrameKind::Request, b"{nope".to_vec());
        assert!(matches!(
            f.parse::<Request>("request"),
            Err(FrameError::Json { .. })
        ));
    }

    #[test]
    fn messages_are_tagged_json() {
        let text = String::from_utf8(
            Frame::json(FrameKind::Response, &Response::Started { pid: 7 }).payload,
        )
        .unwrap();
        assert_eq!(text, r#"{"result":"started","pid":7}"#);
        let e: Event =
            serde_json::from_str(r#"{"event":"exited","code":3,"signal":null}"#).unwrap();
        assert_eq!(
            e,
            Event::Exited {
                code: Some(3),
                signal: None
            }
        );
    }
}
