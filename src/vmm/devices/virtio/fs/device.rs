//! The virtio-fs device: state, config space and request processing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT as _};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, BackendError, Client, FsServer, Outcome, MAX_REQUEST};
use super::idmap::IdMaps;
use super::{
    FsError, CONFIG_NUM_QUEUES_OFFSET, CONFIG_SPACE_SIZE, CONFIG_TAG_OFFSET, NUM_QUEUES,
    NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_MAX,
};
use crate::vmm::devices::virtio::core::VirtioCore;
use crate::vmm::devices::virtio::{
    ActivateError, Interrupt, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1,
};

/// A virtio-fs device serving one host directory.
pub struct Fs {
    pub(super) core: VirtioCore,
    tag: String,
    root: PathBuf,
    read_only: bool,
    /// Where requests are served ([`super::backend`]).
    backend: Backend,
    /// Written when the backend can no longer serve (its process ended):
    /// the VM stops rather than leave the guest waiting on its files.
    on_broken: Option<Arc<EventFd>>,
    /// Set once the backend failed; requests are no longer served.
    broken: bool,
    /// The driver reset the device: the server's session goes before the
    /// next request (on the device thread, not the vCPU that wrote the
    /// reset).
    reset_pending: bool,
    config_space: [u8; CONFIG_SPACE_SIZE],
    /// One request's bytes, and one answer's.
    request: Vec<u8>,
    reply: Vec<u8>,
    /// Requests that got no reply because they could not be parsed.
    pub(super) bad_requests: u64,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("tag", &self.tag)
            .field("root", &self.root)
            .field("read_only", &self.read_only)
            .field("activated", &self.is_activated())
            .finish_non_exhaustive()
    }
}

/// How one request went.
enum Served {
    /// The answer, this many bytes, is in the guest's buffers.
    Answered(usize),
    /// The chain could not be read or the answer not written.
    Bad(ChainError),
    /// The server could not decode the request.
    Undecodable,
    /// The server failed.
    Failed(BackendError),
}

/// Why a chain was returned unanswered.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("bad descriptor chain: {0}")]
    Chain(virtio_queue::Error),
    #[error("reading the request: {0}")]
    Read(std::io::Error),
    #[error("writing the answer: {0}")]
    Write(std::io::Error),
}

impl Fs {
    /// A device named `tag` (what the guest mounts: `mount -t virtiofs
    /// TAG DIR`) serving the directory `root`, refusing every change when
    /// `read_only`; its server runs in the device's thread until
    /// [`Fs::with_remote`] moves it.
    pub fn new(tag: &str, root: &Path, read_only: bool) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_MAX {
            return Err(FsError::Tag {
                tag: tag.to_owned(),
            });
        }
        let meta = std::fs::metadata(root).map_err(|source| FsError::Root {
            tag: tag.to_owned(),
            path: root.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FsError::Root {
                tag: tag.to_owned(),
                path: root.to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        let core = VirtioCore::new(
            TYPE_FS,
            format!("fs {tag}"),
            1u64 << VIRTIO_F_VERSION_1,
            &[QUEUE_SIZE; NUM_QUEUES],
        )?;
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[CONFIG_TAG_OFFSET..CONFIG_TAG_OFFSET + tag.len()]
            .copy_from_slice(tag.as_bytes());
        config_space[CONFIG_NUM_QUEUES_OFFSET..CONFIG_NUM_QUEUES_OFFSET + 4]
            .copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let server = FsServer::new(tag, root, read_only, IdMaps::default()).map_err(|e| {
            FsError::Backend {
                tag: tag.to_owned(),
                reason: e.to_string(),
            }
        })?;

        debug!(
            "fs {tag}: {}{}",
            root.display(),
            if read_only { " (read-only)" } else { "" }
        );
        Ok(Fs {
            core,
            tag: tag.to_owned(),
            root: root.to_path_buf(),
            read_only,
            backend: Backend::Local(Box::new(server)),
            on_broken: None,
            broken: false,
            reset_pending: false,
            config_space,
            request: Vec::new(),
            reply: Vec::new(),
            bad_requests: 0,
        })
    }

    /// Maps the ids of the files it serves ([`IdMaps`]: a user-namespaced
    /// container's `linux.uidMappings` / `gidMappings`); before the guest
    /// uses the device.
    pub fn with_ids(mut self, ids: IdMaps) -> Result<Fs, FsError> {
        if self.backend.local_mut().is_some() {
            let server =
                FsServer::new(&self.tag, &self.root, self.read_only, ids).map_err(|e| {
                    FsError::Backend {
                        tag: self.tag.clone(),
                        reason: e.to_string(),
                    }
                })?;
            self.backend = Backend::Local(Box::new(server));
        }
        Ok(self)
    }

    /// Serves requests in the fs server process at the other end of
    /// `client` (which was made for this share, its ids and mode); when it
    /// can no longer serve, `on_broken` is written.
    pub fn with_remote(mut self, client: Client, on_broken: Option<Arc<EventFd>>) -> Fs {
        self.backend = Backend::Remote(client);
        self.on_broken = on_broken;
        self
    }

    /// Waits until a remote backend's server is confined and serving
    /// ([`super::backend::Client::wait_ready`]); a local one is at once.
    pub fn wait_backend_ready(&mut self) -> Result<(), FsError> {
        match &mut self.backend {
            Backend::Remote(client) => {
                client
                    .wait_ready(super::backend::READY_TIMEOUT)
                    .map_err(|e| FsError::Backend {
                        tag: self.tag.clone(),
                        reason: match e {
                            BackendError::Gone => {
                                "the fs server process ended before it was ready (the VMM's log \
                                 says why)"
                                    .into()
                            }
                            other => format!("the fs server process did not start: {other}"),
                        },
                    })
            }
            Backend::Local(_) => Ok(()),
        }
    }

    /// The tag the guest mounts.
    /// What the guest holds of the share, for a checkpoint (the VM is
    /// stopped).
    pub fn save_state(&mut self) -> Result<super::share::ShareState, BackendError> {
        self.backend.save_state()
    }

    /// Makes the server's session a checkpoint's, before the restored
    /// guest sends its first request.
    pub fn load_state(&mut self, state: &super::share::ShareState) -> Result<(), BackendError> {
        self.backend.load_state(state)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Counts (and logs the first few of) requests that get no answer.
    fn bad_request(&mut self, index: usize, what: &dyn std::fmt::Display) {
        self.bad_requests += 1;
        if self.bad_requests <= super::BAD_REQUESTS_LOGGED {
            warn!("fs {}: request on queue {index}: {what}", self.tag);
        }
    }

    /// The backend failed: no request is served from now on, and the VM
    /// is asked to stop.
    fn break_down(&mut self, err: BackendError) -> FsError {
        if !self.broken {
            self.broken = true;
            error!(
                "fs {}: {err}; the container's files are out of reach, the VM stops",
                self.tag
            );
            if let Some(stop) = &self.on_broken {
                let _ = stop.write(1);
            }
        }
        FsError::Backend {
            tag: self.tag.clone(),
            reason: err.to_string(),
        }
    }

    /// Serves every available request of queue `index`, returns them in
    /// the used ring and interrupts the driver if any were returned.
    /// Returns whether any request was processed.
    pub fn process_queue(&mut self, index: usize) -> Result<bool, FsError> {
        if self.broken {
            return Ok(false);
        }
        if std::mem::take(&mut self.reset_pending) {
            if let Err(e) = self.backend.reset() {
                return Err(self.break_down(e));
            }
        }
        let mut used_any = false;
        loop {
            let mut active = self.core.active_mut()?;
            let mem = active.mem;
            let Some(chain) = active.queue(index)?.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            // A chain the device cannot even describe (a descriptor
            // outside guest memory, lengths that overflow) and a request
            // the server cannot decode get no reply: returned with a used
            // length of 0, counted and logged. The server answers every
            // request it could decode, errors included.
            let reader = chain.clone().reader(mem).map_err(ChainError::Chain);
            let writer = chain.clone().writer(mem).map_err(ChainError::Chain);
            let (mut reader, mut writer) = match (reader, writer) {
                (Ok(r), Ok(w)) => (r, w),
                (Err(e), _) | (_, Err(e)) => {
                    used_any |= active.add_used(index, head, 0)?;
                    self.bad_request(index, &e);
                    continue;
                }
            };
            let cap = writer.available_bytes();
            // A remote server's channel is filled from guest memory and
            // emptied into it directly; a local server gets a copy.
            let served = match &mut self.backend {
                Backend::Remote(client) => match client.load_chain(mem, chain.clone()) {
                    Err(e) => Served::Bad(ChainError::Read(e)),
                    Ok(len) => match client.post(len, cap) {
                        Ok(Outcome::Reply(n)) => match client.answer_into_chain(mem, chain, n) {
                            Ok(put) if put == n => Served::Answered(n),
                            Ok(_) => {
                                Served::Bad(ChainError::Write(std::io::ErrorKind::WriteZero.into()))
                            }
                            Err(e) => Served::Bad(ChainError::Write(e)),
                        },
                        Ok(Outcome::Undecodable) => Served::Undecodable,
                        Err(e) => Served::Failed(e),
                    },
                },
                Backend::Local(server) => {
                    let len = reader.available_bytes().min(MAX_REQUEST);
                    self.request.resize(len, 0);
                    match std::io::Read::read_exact(&mut reader, &mut self.request) {
                        Err(e) => Served::Bad(ChainError::Read(e)),
                        Ok(()) => match server.call(&self.request, cap, &mut self.reply) {
                            Ok(Outcome::Reply(n)) => {
                                let answer = self.reply.get(..n).unwrap_or_default();
                                match std::io::Write::write_all(&mut writer, answer) {
                                    Ok(()) => Served::Answered(n),
                                    Err(e) => Served::Bad(ChainError::Write(e)),
                                }
                            }
                            Ok(Outcome::Undecodable) => Served::Undecodable,
                            Err(e) => Served::Failed(e),
                        },
                    }
                }
            };
            let used = match served {
                Served::Answered(n) => u32::try_from(n).unwrap_or(0),
                Served::Bad(e) => {
                    self.bad_request(index, &e);
                    0
                }
                Served::Undecodable => {
                    self.bad_requests += 1;
                    0
                }
                Served::Failed(BackendError::Server(e)) => return Err(e),
                Served::Failed(e) => return Err(self.break_down(e)),
            };
            let mut active = self.core.active_mut()?;
            used_any |= active.add_used(index, head, used)?;
        }
        if used_any {
            self.core.active_mut()?.signal_used(&[index])?;
        }
        Ok(used_any)
    }
}

impl VirtioDevice for Fs {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.core.check_queues(&mem, &queues)?;
        self.core.activate(mem, interrupt, queues)
    }

    fn on_reset(&mut self) -> bool {
        // The driver forgot its FUSE session: the server forgets every
        // inode and handle of the old one before the next request
        // (requests are served synchronously, so none is in flight).
        self.reset_pending = true;
        debug!("fs {}: reset", self.tag);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, MetadataExt as _, PermissionsExt as _};

    use vm_memory::{Bytes as _, GuestAddress};

    use super::super::test_utils::{fuse_message, init_body, FUSE_INIT, IN_HEADER};
    use super::*;
    use crate::vmm::devices::virtio::core::DeviceError;
    use crate::vmm::devices::virtio::test_utils::{memory, GuestQueue, TestInterrupt, F_WRITE};

    // FUSE opcodes and structures (include/uapi/linux/fuse.h).
    const FUSE_LOOKUP: u32 = 1;
    const FUSE_GETATTR: u32 = 3;
    const FUSE_SETATTR: u32 = 4;
    const FUSE_READLINK: u32 = 5;
    const FUSE_MKDIR: u32 = 9;
    const FUSE_OPEN: u32 = 14;
    const FUSE_READ: u32 = 15;
    const FUSE_WRITE: u32 = 16;
    const FUSE_CREATE: u32 = 35;
    const FUSE_LINK: u32 = 13;
    const FUSE_RENAME: u32 = 12;
    const ROOT: u64 = 1;
    const OUT_HEADER: usize = 16;
    /// `fuse_entry_out`: nodeid, generation, valid times, then `fuse_attr`.
    const ENTRY_ATTR: usize = 40;
    const ATTR_INO: usize = 0;
    const ATTR_SIZE: usize = 8;
    const ATTR_MODE: usize = 60;
    const ATTR_UID: usize = 68;
    const ATTR_GID: usize = 72;
    /// `fuse_setattr_in.valid` bits (include/uapi/linux/fuse.h).
    const FATTR_UID: u32 = 1 << 1;
    const FATTR_GID: u32 = 1 << 2;

    const REQ: u64 = 0x1_0000;
    const REPLY: u64 = 0x3_0000;
    const REPLY_LEN: u32 = 0x2_0000;

    struct Guest {
        dev: Fs,
        hiprio: GuestQueue,
        req: GuestQueue,
        irq: Arc<TestInterrupt>,
        unique: u64,
        /// The uid and gid of the requests' caller.
        caller: (u32, u32),
    }

    impl Guest {
        fn new(root: &Path, read_only: bool) -> Guest {
            Self::with_ids(root, read_only, IdMaps::default())
        }

        fn with_ids(root: &Path, read_only: bool, ids: IdMaps) -> Guest {
            let dev = Fs::new("vol", root, read_only)
                .unwrap()
                .with_ids(ids)
                .unwrap();
            Self::with_device(dev)
        }

        /// A guest that activated `dev` and mounted it (`FUSE_INIT`).
        fn with_device(mut dev: Fs) -> Guest {
            let mem = memory();
            let hiprio = GuestQueue::new(&mem, 16, 0x1000);
            let req = GuestQueue::new(&mem, 16, 0x5000);
            let irq = Arc::new(TestInterrupt::default());
            dev.activate(
                mem,
                irq.clone(),
                vec![hiprio.create_queue(), req.create_queue()],
            )
            .unwrap();
            let mut g = Guest {
                dev,
                hiprio,
                req,
                irq,
                unique: 0,
                caller: (0, 0),
            };
            let (err, _) = g.call(FUSE_INIT, 0, &init_body(0));
            assert_eq!(err, 0, "FUSE_INIT");
            g
        }

        /// After a reset: the driver sets up fresh queues (ring positions
        /// from 0), activates and mounts again.
        fn reactivate(&mut self) {
            let mem = self.req.mem.clone();
            self.req = GuestQueue::new(&mem, 16, 0x5000);
            self.hiprio = GuestQueue::new(&mem, 16, 0x1000);
            self.dev
                .activate(
                    mem,
                    self.irq.clone(),
                    vec![self.hiprio.create_queue(), self.req.create_queue()],
                )
                .unwrap();
            assert_eq!(self.call(FUSE_INIT, 0, &init_body(0)).0, 0);
        }

        /// Sends one raw chain (bytes at REQ, a writable reply buffer) on
        /// the request queue; returns the used length and the reply.
        fn raw(&mut self, bytes: &[u8], reply_len: u32) -> (u32, Vec<u8>) {
            let mem = self.req.mem.clone();
            mem.write_slice(bytes, GuestAddress(REQ)).unwrap();
            mem.write_slice(&vec![0xeeu8; reply_len as usize], GuestAddress(REPLY))
                .unwrap();
            self.req.add_chain(&[
                (REQ, u32::try_from(bytes.len()).unwrap(), 0),
                (REPLY, reply_len, F_WRITE),
            ]);
            self.dev.process_queue(1).unwrap();
            let (_, used) = self.req.pop_used().expect("a used buffer");
            let mut out = vec![0u8; used as usize];
            mem.read_slice(&mut out, GuestAddress(REPLY)).unwrap();
            (used, out)
        }

        /// A FUSE request; returns the error field (negative errno, or 0)
        /// and the reply body.
        fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
            let msg = self.message(opcode, nodeid, body);
            let (used, out) = self.raw(&msg, REPLY_LEN);
            assert!(used as usize >= OUT_HEADER, "reply of {used} bytes");
            assert_eq!(
                u64::from_le_bytes(out[8..16].try_into().unwrap()),
                self.unique
            );
            let err = i32::from_le_bytes(out[4..8].try_into().unwrap());
            (err, out[OUT_HEADER..].to_vec())
        }

        /// A request that may get no reply (garbage): `None`, or the error.
        fn call_garbage(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Option<i32> {
            let msg = self.message(opcode, nodeid, body);
            let (used, out) = self.raw(&msg, REPLY_LEN);
            (used as usize >= OUT_HEADER).then(|| i32::from_le_bytes(out[4..8].try_into().unwrap()))
        }

        fn message(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
            self.unique += 1;
            fuse_message(opcode, nodeid, self.unique, self.caller, body)
        }

        fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Vec<u8>), i32> {
            let mut body = name.as_bytes().to_vec();
            body.push(0);
            match self.call(FUSE_LOOKUP, parent, &body) {
                (0, out) => Ok((u64::from_le_bytes(out[0..8].try_into().unwrap()), out)),
                (err, _) => Err(-err),
            }
        }

        fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
            let mut body = Vec::new();
            body.extend_from_slice(&u32::try_from(flags).unwrap().to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            match self.call(FUSE_OPEN, node, &body) {
                (0, out) => Ok(u64::from_le_bytes(out[0..8].try_into().unwrap())),
                (err, _) => Err(-err),
            }
        }

        fn read(&mut self, node: u64, fh: u64, size: u32) -> Result<Vec<u8>, i32> {
            match self.call(FUSE_READ, node, &io_body(fh, size)) {
                (0, out) => Ok(out),
                (err, _) => Err(-err),
            }
        }

        fn create(&mut self, parent: u64, name: &str) -> Result<(u64, u64), i32> {
            let mut body = Vec::new();
            for v in [libc::O_RDWR as u32, 0o100644, 0o022, 0] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            match self.call(FUSE_CREATE, parent, &body) {
                (0, out) => Ok((
                    u64::from_le_bytes(out[0..8].try_into().unwrap()),
                    u64::from_le_bytes(out[128..136].try_into().unwrap()),
                )),
                (err, _) => Err(-err),
            }
        }

        fn write(&mut self, node: u64, fh: u64, data: &[u8]) -> Result<(), i32> {
            let mut body = io_body(fh, u32::try_from(data.len()).unwrap());
            body.extend_from_slice(data);
            match self.call(FUSE_WRITE, node, &body) {
                (0, _) => Ok(()),
                (err, _) => Err(-err),
            }
        }

        fn mkdir(&mut self, parent: u64, name: &str) -> i32 {
            let mut body = Vec::new();
            body.extend_from_slice(&0o755u32.to_le_bytes());
            body.extend_from_slice(&0o022u32.to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            -self.call(FUSE_MKDIR, parent, &body).0
        }
    }

    /// `fuse_read_in` / `fuse_write_in` at offset 0: fh, offset, size,
    /// then flags, lock owner, flags and padding as zeros.
    fn io_body(fh: u64, size: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        body
    }

    /// A guest mounted on a device whose server runs on a thread, as the
    /// fs server process serves it; `stop` is what the device writes when
    /// the server goes.
    fn remote_guest(
        root: &Path,
        stop: Option<Arc<EventFd>>,
    ) -> (
        Guest,
        std::thread::JoinHandle<Result<(), super::super::backend::ServeError>>,
    ) {
        let (client, server) =
            super::super::backend::serve_on_a_thread("vol", root, false, std::time::Duration::ZERO)
                .unwrap();
        let dev = Fs::new("vol", root, false)
            .unwrap()
            .with_remote(client, stop);
        (Guest::with_device(dev), server)
    }

    fn attr_u64(entry: &[u8], field: usize) -> u64 {
        let at = ENTRY_ATTR + field;
        u64::from_le_bytes(entry[at..at + 8].try_into().unwrap())
    }

    fn attr_u32(entry: &[u8], field: usize) -> u32 {
        let at = ENTRY_ATTR + field;
        u32::from_le_bytes(entry[at..at + 4].try_into().unwrap())
    }

    fn share() -> tempfile::TempDir {
        let outer = tempfile::tempdir().unwrap();
        std::fs::create_dir(outer.path().join("share")).unwrap();
        std::fs::write(outer.path().join("secret"), b"host secret").unwrap();
        std::fs::write(outer.path().join("share/hello"), b"hello from the host").unwrap();
        outer
    }

    #[test]
    fn init_offers_large_writes() {
        let dir = share();
        let mut g = Guest::new(&dir.path().join("share"), false);
        // A second session start, as a driver that asks for big writes and
        // max_pages (FUSE_BIG_WRITES = 1 << 5, FUSE_MAX_PAGES = 1 << 22).
        let (err, out) = g.call(FUSE_INIT, 0, &init_body((1 << 5) | (1 << 22)));
        assert_eq!(err, 0);
        let max_write = u32::from_le_bytes(out[20..24].try_into().unwrap());
        let max_pages = u16::from_le_bytes(out[28..30].try_into().unwrap());
        assert_eq!((max_write, max_pages), (1 << 20, 256));
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let dir = share();
        let dev = Fs::new("vol0", &dir.path().join("share"), false).unwrap();
        let mut tag = [0u8; TAG_MAX];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag[..4], b"vol0");
        assert!(tag[4..].iter().all(|b| *b == 0));
        let mut n = [0u8; 4];
        dev.read_config(36, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        assert_eq!(dev.device_type(), 26);
        assert_eq!(dev.queue_max_sizes().len(), 2);
    }

    #[test]
    fn bad_tags_and_roots_are_refused_by_name() {
        let dir = share();
        let root = dir.path().join("share");
        assert!(matches!(
            Fs::new("", &root, false),
            Err(FsError::Tag { .. })
        ));
        assert!(matches!(
            Fs::new(&"x".repeat(37), &root, false),
            Err(FsError::Tag { .. })
        ));
        let err = Fs::new("t", &dir.path().join("missing"), false).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = Fs::new("t", &dir.path().join("secret"), false).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn a_guest_reads_writes_and_creates_files_that_land_on_the_host() {
        let dir = share();
        let root = dir.path().join("share");
        let mut g = Guest::new(&root, false);
        let (hello, entry) = g.lookup(ROOT, "hello").unwrap();
        assert_eq!(attr_u64(&entry, ATTR_SIZE), 19);
        let fh = g.open(hello, libc::O_RDONLY).unwrap();
        assert_eq!(g.read(hello, fh, 4096).unwrap(), b"hello from the host");

        let (node, fh) = g.create(ROOT, "new").unwrap();
        g.write(node, fh, b"written in the guest").unwrap();
        assert_eq!(
            std::fs::read(root.join("new")).unwrap(),
            b"written in the guest"
        );
        assert_eq!(g.mkdir(ROOT, "d"), 0);
        assert!(root.join("d").is_dir());
        // Interrupts were raised for the replies.
        assert!(g.irq.count() > 0);
        // getattr of the root is the share's directory.
        let (err, attr) = g.call(FUSE_GETATTR, ROOT, &[0u8; 16]);
        assert_eq!(err, 0);
        let ino = u64::from_le_bytes(attr[16..24].try_into().unwrap());
        assert_eq!(ino, std::fs::metadata(&root).unwrap().ino());
    }

    /// `linux.uidMappings`: host files show with container ids (`nobody`
    /// outside the map), what the container creates or chowns gets host
    /// ids, and unmapped ids are refused.
    #[test]
    fn ids_are_mapped_between_the_container_and_the_host() {
        use super::super::idmap::{IdMap, IdRange};
        let dir = share();
        let root = dir.path().join("share");
        let mapped = root.join("mapped");
        std::fs::write(&mapped, b"x").unwrap();
        std::os::unix::fs::chown(&mapped, Some(100_005), Some(200_005)).unwrap();
        // The engine hands a user-namespaced container a root it owns
        // (its range's first ids); what else the host put there keeps
        // the host's owner.
        std::os::unix::fs::chown(&root, Some(100_000), Some(200_000)).unwrap();
        let range = |host| {
            vec![IdRange {
                container: 0,
                host,
                size: 65536,
            }]
        };
        let ids = IdMaps {
            uid: IdMap::new("u", range(100_000)).unwrap(),
            gid: IdMap::new("g", range(200_000)).unwrap(),
        };
        let mut g = Guest::with_ids(&root, false, ids);
        let owner = |entry: &[u8]| (attr_u32(entry, ATTR_UID), attr_u32(entry, ATTR_GID));
        let (_, host_root_file) = g.lookup(ROOT, "hello").unwrap();
        assert_eq!(owner(&host_root_file), (65534, 65534));
        let (node, entry) = g.lookup(ROOT, "mapped").unwrap();
        assert_eq!(owner(&entry), (5, 5));
        // Created by the container's root: the range's first host ids.
        g.create(ROOT, "new").unwrap();
        let meta = std::fs::metadata(root.join("new")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (100_000, 200_000));
        let (_, entry) = g.lookup(ROOT, "new").unwrap();
        assert_eq!(owner(&entry), (0, 0));
        assert_eq!(g.mkdir(ROOT, "dir"), 0);
        assert_eq!(std::fs::metadata(root.join("dir")).unwrap().uid(), 100_000);
        // A chown inside maps; to an id outside the map, EINVAL.
        let setattr = |uid: u32, gid: u32| {
            let mut body = Vec::new();
            body.extend_from_slice(&(FATTR_UID | FATTR_GID).to_le_bytes());
            body.extend_from_slice(&[0u8; 4 + 8 * 6 + 4 * 5]);
            body.extend_from_slice(&uid.to_le_bytes());
            body.extend_from_slice(&gid.to_le_bytes());
            body.extend_from_slice(&[0u8; 4]);
            body
        };
        let (err, attr) = g.call(FUSE_SETATTR, node, &setattr(7, 8));
        assert_eq!(err, 0);
        let meta = std::fs::metadata(&mapped).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (100_007, 200_008));
        // fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then the attr.
        let at = 16;
        assert_eq!(
            u32::from_le_bytes(attr[at + ATTR_UID..at + ATTR_UID + 4].try_into().unwrap()),
            7
        );
        let (err, _) = g.call(FUSE_SETATTR, node, &setattr(70_000, 8));
        assert_eq!(-err, libc::EINVAL);
        assert_eq!(std::fs::metadata(&mapped).unwrap().uid(), 100_007);
        // A host root's file is not the container root's: its mode decides
        // (hello is 0644: readable, not writable); the container's own is
        // writable whatever its mode.
        // (The passthrough clears the process umask: set the mode.)
        std::fs::set_permissions(root.join("hello"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let (hello, _) = g.lookup(ROOT, "hello").unwrap();
        assert!(g.open(hello, libc::O_RDONLY).is_ok());
        assert_eq!(g.open(hello, libc::O_WRONLY), Err(libc::EACCES));
        assert_eq!(
            g.open(hello, libc::O_RDONLY | libc::O_TRUNC),
            Err(libc::EACCES)
        );
        std::fs::write(root.join("secret"), b"s").unwrap();
        std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let (secret, _) = g.lookup(ROOT, "secret").unwrap();
        assert_eq!(g.open(secret, libc::O_RDONLY), Err(libc::EACCES));
        std::fs::set_permissions(&mapped, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(g.open(node, libc::O_RDWR).is_ok());
        // A caller whose id is outside the map cannot create.
        g.caller = (70_000, 0);
        assert_eq!(g.create(ROOT, "unmapped"), Err(libc::EOVERFLOW));
        assert!(!root.join("unmapped").exists());
    }

    #[test]
    fn a_read_only_share_refuses_every_change_on_the_host_side() {
        let dir = share();
        let root = dir.path().join("share");
        let mut g = Guest::new(&root, true);
        let (hello, _) = g.lookup(ROOT, "hello").unwrap();
        let fh = g.open(hello, libc::O_RDONLY).unwrap();
        assert_eq!(g.read(hello, fh, 5).unwrap(), b"hello");
        assert_eq!(g.open(hello, libc::O_RDWR), Err(libc::EROFS));
        assert_eq!(
            g.open(hello, libc::O_WRONLY | libc::O_TRUNC),
            Err(libc::EROFS)
        );
        assert_eq!(g.create(ROOT, "new"), Err(libc::EROFS));
        assert_eq!(g.mkdir(ROOT, "d"), libc::EROFS);
        // A handle opened read-only cannot be written through either.
        assert_eq!(g.write(hello, fh, b"x"), Err(libc::EROFS));
        let mut rename = Vec::new();
        rename.extend_from_slice(&ROOT.to_le_bytes());
        rename.extend_from_slice(b"hello\0bye\0");
        assert_eq!(g.call(FUSE_RENAME, ROOT, &rename).0, -libc::EROFS);
        assert_eq!(
            std::fs::read(root.join("hello")).unwrap(),
            b"hello from the host"
        );
        assert!(
            !root.join("new").exists() && !root.join("d").exists() && !root.join("bye").exists()
        );
    }

    #[test]
    fn lookups_cannot_leave_the_share() {
        let dir = share();
        let root = dir.path().join("share");
        symlink("/", root.join("to-root")).unwrap();
        symlink("../secret", root.join("to-secret")).unwrap();
        let mut g = Guest::new(&root, false);
        // `..` of the root is the root.
        let (_, entry) = g.lookup(ROOT, "..").unwrap();
        assert_eq!(
            attr_u64(&entry, ATTR_INO),
            std::fs::metadata(&root).unwrap().ino()
        );
        // A name with a slash is not a name.
        assert_eq!(g.lookup(ROOT, "../secret").err(), Some(libc::EINVAL));
        assert_eq!(g.lookup(ROOT, "to-root/etc").err(), Some(libc::EINVAL));
        // A symlink is itself, never its target: its target is text the
        // guest resolves in its own tree...
        let (link, entry) = g.lookup(ROOT, "to-secret").unwrap();
        assert_eq!(attr_u32(&entry, ATTR_MODE) & libc::S_IFMT, libc::S_IFLNK);
        let (err, target) = g.call(FUSE_READLINK, link, &[]);
        assert_eq!(err, 0);
        assert_eq!(target, b"../secret");
        // ... and opening the link's inode does not open the target.
        match g.open(link, libc::O_RDONLY) {
            Err(_) => {}
            Ok(fh) => assert_ne!(
                g.read(link, fh, 100).ok().as_deref(),
                Some(&b"host secret"[..])
            ),
        }
        // Lookups under the symlink to `/` find nothing of the host's root.
        let (to_root, _) = g.lookup(ROOT, "to-root").unwrap();
        assert!(g.lookup(to_root, "etc").is_err());
        // A hard link to the symlink stays inside too, and a mkdir through
        // it makes nothing on the host.
        let mut body = to_root.to_le_bytes().to_vec();
        body.extend_from_slice(b"again\0");
        let _ = g.call(FUSE_LINK, ROOT, &body);
        assert_ne!(g.mkdir(to_root, "planted"), 0);
        assert!(!Path::new("/planted").exists());
    }

    #[test]
    fn garbage_gets_an_error_or_no_reply_never_a_panic() {
        let dir = share();
        let root = dir.path().join("share");
        let mut g = Guest::new(&root, false);
        // An unknown opcode: ENOSYS.
        assert_eq!(g.call(9999, ROOT, &[]).0, -libc::ENOSYS);
        // A header shorter than a header: no reply.
        assert_eq!(g.raw(&[1, 2, 3], 4096).0, 0);
        // A header whose length is far past what was sent.
        let mut msg = vec![0u8; IN_HEADER];
        msg[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        msg[4..8].copy_from_slice(&FUSE_LOOKUP.to_le_bytes());
        let (used, _) = g.raw(&msg, 4096);
        assert!(used == 0 || used as usize >= OUT_HEADER);
        // A lookup of a node the guest never got.
        assert_eq!(g.lookup(0xdead_beef, "x").err(), Some(libc::EBADF));
        // A read with a handle the guest never got.
        assert!(g.read(ROOT, 0x4242, 100).is_err());
        // A name without its NUL, a read of 4 GiB with a 16-byte buffer.
        assert!(!matches!(
            g.call_garbage(FUSE_LOOKUP, ROOT, b"hello"),
            Some(0)
        ));
        // A write whose size is past the data sent.
        let mut body = vec![0u8; 40];
        body[16..20].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert!(!matches!(g.call_garbage(FUSE_WRITE, ROOT, &body), Some(0)));
        let (hello, _) = g.lookup(ROOT, "hello").unwrap();
        let fh = g.open(hello, libc::O_RDONLY).unwrap();
        assert!(g.read(hello, fh, u32::MAX).is_err());
        // A descriptor outside guest memory.
        g.req
            .add_chain(&[(0xffff_ffff_0000, 64, 0), (REPLY, 4096, F_WRITE)]);
        g.dev.process_queue(1).unwrap();
        assert_eq!(g.req.pop_used().unwrap().1, 0);
        assert!(g.dev.bad_requests >= 2);
        // The device still works.
        assert!(g.lookup(ROOT, "hello").is_ok());
        // The high-priority queue takes FORGET without a reply.
        let mem = g.hiprio.mem.clone();
        let mut forget = Vec::new();
        forget.extend_from_slice(&48u32.to_le_bytes());
        forget.extend_from_slice(&2u32.to_le_bytes()); // FUSE_FORGET
        forget.extend_from_slice(&[0u8; 32]);
        forget.extend_from_slice(&1u64.to_le_bytes());
        mem.write_slice(&forget, GuestAddress(0x2_0000)).unwrap();
        g.hiprio.add_chain(&[(0x2_0000, 48, 0)]);
        g.dev.process_queue(0).unwrap();
        assert_eq!(g.hiprio.pop_used().unwrap().1, 0);
    }

    #[test]
    fn reset_forgets_the_session() {
        let dir = share();
        let root = dir.path().join("share");
        let mut g = Guest::new(&root, false);
        let (hello, _) = g.lookup(ROOT, "hello").unwrap();
        assert!(g.dev.reset());
        assert!(!g.dev.is_activated());
        assert!(matches!(
            g.dev.process_queue(1),
            Err(FsError::Device(DeviceError::NotActivated { .. }))
        ));
        // The driver sets up fresh queues (ring positions from 0) and a
        // new session.
        g.reactivate();
        // The old session's node is unknown to the new one.
        assert_eq!(g.lookup(hello, "x").err(), Some(libc::EBADF));
        assert!(g.lookup(ROOT, "hello").is_ok());
    }

    /// The same guest against a server in another thread (as the fs server
    /// process serves it); when that server goes, the VM is asked to stop
    /// and the device serves nothing more.
    #[test]
    fn a_remote_server_serves_the_guest_and_its_end_stops_the_vm() {
        use super::super::backend::{Client, FsServer};
        let dir = share();
        let root = dir.path().join("share");
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (mut g, server) = remote_guest(&root, Some(stop.clone()));
        let (hello, _) = g.lookup(ROOT, "hello").unwrap();
        let fh = g.open(hello, libc::O_RDONLY).unwrap();
        assert_eq!(g.read(hello, fh, 4096).unwrap(), b"hello from the host");
        let (node, fh) = g.create(ROOT, "new").unwrap();
        g.write(node, fh, b"through the server").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("share/new")).unwrap(),
            b"through the server"
        );
        // A reset reaches the server before the next request.
        assert!(g.dev.reset());
        assert!(stop.read().is_err(), "no stop yet");
        // The server goes (its process ended).
        g.reactivate();
        assert_eq!(g.lookup(hello, "x").err(), Some(libc::EBADF));
        let Backend::Remote(client) = std::mem::replace(
            &mut g.dev.backend,
            Backend::Local(Box::new(
                FsServer::new("x", dir.path(), true, IdMaps::default()).unwrap(),
            )),
        ) else {
            panic!("not remote");
        };
        drop(client);
        server.join().unwrap().unwrap();
        // A server whose process has ended: its end of the stream is closed.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(theirs);
        let shared = super::super::channel::create().unwrap();
        g.dev.backend =
            Backend::Remote(Client::new(ours, shared, std::time::Duration::ZERO).unwrap());
        let msg = g.message(FUSE_LOOKUP, ROOT, b"hello\0");
        g.req.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
        g.req.add_chain(&[
            (REQ, u32::try_from(msg.len()).unwrap(), 0),
            (REPLY, REPLY_LEN, F_WRITE),
        ]);
        assert!(matches!(
            g.dev.process_queue(1),
            Err(FsError::Backend { .. })
        ));
        assert_eq!(stop.read().unwrap(), 1);
        // Broken: nothing more is served, and no second stop is asked.
        assert!(!g.dev.process_queue(1).unwrap());
        assert!(stop.read().is_err());
    }

    /// A remote server's requests are copied from every readable buffer of
    /// a chain and its answers into every writable one, however the guest
    /// splits them, and a chain that offers too little room for the
    /// answer gets none.
    #[test]
    fn a_remote_server_reads_and_answers_split_chains() {
        let dir = share();
        let root = dir.path().join("share");
        let (mut g, server) = remote_guest(&root, None);
        let (node, fh) = g.create(ROOT, "split").unwrap();
        // A write whose message is cut into three readable buffers, with
        // gaps between them; the answer in a 10-byte and a larger buffer.
        let data = b"across three buffers";
        let mut body = io_body(fh, u32::try_from(data.len()).unwrap());
        body.extend_from_slice(data);
        let msg = g.message(FUSE_WRITE, node, &body);
        let cuts = [
            (REQ, 0..20),
            (REQ + 0x100, 20..60),
            (REQ + 0x400, 60..msg.len()),
        ];
        for (at, range) in &cuts {
            g.req
                .mem
                .write_slice(&msg[range.clone()], GuestAddress(*at))
                .unwrap();
        }
        let len = |r: &std::ops::Range<usize>| u32::try_from(r.len()).unwrap();
        g.req.add_chain(&[
            (cuts[0].0, len(&cuts[0].1), 0),
            (cuts[1].0, len(&cuts[1].1), 0),
            (cuts[2].0, len(&cuts[2].1), 0),
            (REPLY, 10, F_WRITE),
            (REPLY + 0x100, 0x1000, F_WRITE),
        ]);
        g.dev.process_queue(1).unwrap();
        let (_, used) = g.req.pop_used().unwrap();
        // fuse_out_header + fuse_write_out.
        assert_eq!(used, 24);
        let mut head = [0u8; 10];
        g.req
            .mem
            .read_slice(&mut head, GuestAddress(REPLY))
            .unwrap();
        let mut rest = [0u8; 14];
        g.req
            .mem
            .read_slice(&mut rest, GuestAddress(REPLY + 0x100))
            .unwrap();
        let answer: Vec<u8> = head.iter().chain(rest.iter()).copied().collect();
        assert_eq!(i32::from_le_bytes(answer[4..8].try_into().unwrap()), 0);
        let written = u32::from_le_bytes(answer[16..20].try_into().unwrap());
        assert_eq!(written as usize, data.len());
        assert_eq!(std::fs::read(root.join("split")).unwrap(), data);
        // A read answered into two writable buffers.
        let msg = g.message(FUSE_READ, node, &io_body(fh, 4096));
        g.req.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
        g.req.add_chain(&[
            (REQ, u32::try_from(msg.len()).unwrap(), 0),
            (REPLY, 20, F_WRITE),
            (REPLY + 0x100, 0x1000, F_WRITE),
        ]);
        g.dev.process_queue(1).unwrap();
        let (_, used) = g.req.pop_used().unwrap();
        assert_eq!(used as usize, OUT_HEADER + data.len());
        let mut first = [0u8; 20];
        g.req
            .mem
            .read_slice(&mut first, GuestAddress(REPLY))
            .unwrap();
        let mut second = vec![0u8; data.len() - 4];
        g.req
            .mem
            .read_slice(&mut second, GuestAddress(REPLY + 0x100))
            .unwrap();
        let mut got = first[OUT_HEADER..].to_vec();
        got.extend_from_slice(&second);
        assert_eq!(got, data);
        // Room for the header only: no answer, counted as a bad request.
        let bad = g.dev.bad_requests;
        g.req.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
        g.req.add_chain(&[
            (REQ, u32::try_from(msg.len()).unwrap(), 0),
            (REPLY, 8, F_WRITE),
        ]);
        g.dev.process_queue(1).unwrap();
        let (_, used) = g.req.pop_used().unwrap();
        assert_eq!(used, 0);
        assert!(g.dev.bad_requests > bad);
        // Still serving.
        assert!(g.lookup(ROOT, "split").is_ok());
        drop(g);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn activation_checks_the_queues() {
        let dir = share();
        let mem = memory();
        let q = GuestQueue::new(&mem, 16, 0x1000);
        let mut dev = Fs::new("t", &dir.path().join("share"), false).unwrap();
        let irq = Arc::new(TestInterrupt::default());
        assert!(matches!(
            dev.activate(mem.clone(), irq.clone(), vec![q.create_queue()]),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        let mut bad = q.create_queue();
        virtio_queue::QueueT::set_ready(&mut bad, false);
        assert!(matches!(
            dev.activate(mem, irq, vec![q.create_queue(), bad]),
            Err(ActivateError::BadQueue { index: 1 })
        ));
        assert!(!dev.is_activated());
    }
}
