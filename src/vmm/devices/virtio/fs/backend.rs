//! The FUSE server behind a virtio-fs device, and the two ways a device
//! reaches it.
//!
//! The device ([`super::Fs`]) never hands guest memory to the server: it
//! copies each request out of the guest's descriptor chain (at most
//! [`MAX_REQUEST`] bytes), has the server answer it into at most as many
//! bytes as the guest offered (at most [`MAX_REPLY`]), and copies the
//! answer back. So the server can live in another process, the container's
//! **fs server** ([`crate::runtime::fs_server`]): the one part of a VMM
//! that needs the privileges of a file server (any owner, any mode), kept
//! apart from the VMM proper, which holds guest memory and runs with no
//! capability at all. What crosses between them is what the guest could
//! send anyway: FUSE messages.
//!
//! - [`FsServer`]: fuse-backend-rs's `Server` over husk's [`Share`], fed
//!   through a private two-descriptor virtqueue (the *loopback*) whose
//!   buffers lie in a [`channel`], so the crate's virtio-fs transport
//!   parses each request exactly as it would parse a guest's.
//! - [`Backend::Local`]: the server in the device's own thread (template
//!   VMs, `husk boot`, tests, fuzzing), its channel private memory.
//! - [`Backend::Remote`]: a [`Client`] to the fs server process; [`serve`]
//!   is the other end. The request and its answer travel in a channel both
//!   processes map (a sealed memfd), a Unix stream beside it carries the
//!   wake-ups and tells each side when the other is gone
//!   ([`channel`]'s docs). The device writes kind, length and room and
//!   posts a sequence number; the server answers status and length under
//!   the same number. Both ends check every length against its bound.
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::warn;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::DescriptorChain;
use virtio_queue_017::{Queue, QueueT as _};
use vm_memory_017::{Bytes as _, FileOffset, GuestAddress, GuestMemoryMmap};

use super::channel::{self, At, Words as _};
use super::idmap::IdMaps;
use super::share::{Share, ShareState};
use super::{FsError, ENTRY_TIMEOUT};

/// What fuse-backend-rs reads of one request header beyond its payload
/// limit (its `BUFFER_HEADER_SIZE`).
const HEADER_ROOM: usize = 0x1000;
/// Most bytes of a request the server is given: the largest request
/// fuse-backend-rs serves (a 1 MiB write and its headers). A longer chain
/// is cut here; the server answers a header that claims more with
/// `ENOMEM`, as it would from the whole chain.
pub const MAX_REQUEST: usize = MAX_BUFFER_SIZE as usize + HEADER_ROOM;
/// Most bytes of an answer (a 1 MiB read and its header).
pub const MAX_REPLY: usize = MAX_BUFFER_SIZE as usize + HEADER_ROOM;
/// Most bytes of a broken server's reason ([`STATUS_BROKEN`]).
const MAX_REASON: usize = 4096;
/// How long a device waits for its server process to be ready.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Undecodable requests a server logs (the rest are only counted).
const UNDECODABLE_LOGGED: u64 = 16;

/// Request kinds from the device.
const KIND_REQUEST: u32 = 1;
const KIND_RESET: u32 = 2;
/// The server's state for a checkpoint: the request is the offset (a
/// little-endian `u64`) of the part wanted; the answer that part, shorter
/// than its room at the end.
const KIND_SAVE: u32 = 3;
/// A part of a checkpoint's state for the server (appended), or, empty,
/// the end of it: the server's session is made from it.
const KIND_LOAD: u32 = 4;
/// Most bytes of a state a server takes ([`KIND_LOAD`]).
pub const MAX_STATE: usize = 256 << 20;
/// Answer statuses from the server.
const STATUS_REPLY: u32 = 0;
const STATUS_UNDECODABLE: u32 = 1;
const STATUS_RESET: u32 = 2;
const STATUS_BROKEN: u32 = 3;
/// The server's first word on the stream (before any kick): confined,
/// serving from now on.
const STATUS_READY: u32 = 4;
/// A part of the state, or the state taken.
const STATUS_STATE: u32 = 5;

// The loopback's layout in the server's memory: a split virtqueue of two
// descriptors (virtio 1.2 section 2.7: the table 16-byte aligned, the
// rings 2- and 4-byte aligned) in a private page, then the channel whose
// request and answer buffers the descriptors point at.
const LOOP_QUEUE_SIZE: u16 = 2;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
const DESCRIPTOR_SIZE: u64 = 16;
/// `avail.idx` and `avail.ring[]` past `avail.flags`.
const AVAIL_IDX: u64 = AVAIL_RING + 2;
const AVAIL_ENTRIES: u64 = AVAIL_RING + 4;
/// Where the channel is in the loopback's memory.
const CHANNEL_AT: u64 = channel::PAGE as u64;
const REQUEST_AT: u64 = CHANNEL_AT + channel::REQUEST;
const REPLY_AT: u64 = CHANNEL_AT + channel::REPLY;

/// What the server made of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer of this many bytes (0: none, as for `FUSE_FORGET`).
    Reply(usize),
    /// The request could not be decoded: it gets no answer.
    Undecodable,
}

/// Why a request could not be served at all.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the fs server: {0}")]
    Server(#[from] FsError),
    #[error("the fs server's loopback queue: {0}")]
    Loopback(String),
    #[error("talking to the fs server process: {0}")]
    Io(#[from] io::Error),
    #[error("the fs server process ended")]
    Gone,
    #[error("the fs server process broke the protocol: {0}")]
    Protocol(String),
    #[error("the fs server process cannot serve: {0}")]
    Broken(String),
    #[error("{0}")]
    State(String),
}

/// The private virtqueue a [`FsServer`] feeds its requests through.
struct Loopback {
    mem: GuestMemoryMmap,
    queue: Queue,
    next_avail: u16,
}

impl Loopback {
    /// A loopback whose channel is `channel` (shared with a device in
    /// another process), or private memory.
    fn new(channel: Option<File>) -> Result<Loopback, BackendError> {
        let err = |e: String| BackendError::Loopback(e);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[
            (GuestAddress(0), channel::PAGE, None),
            (
                GuestAddress(CHANNEL_AT),
                channel::SIZE,
                channel.map(|f| FileOffset::new(f, 0)),
            ),
        ])
        .map_err(|e| err(e.to_string()))?;
        let mut queue = Queue::new(LOOP_QUEUE_SIZE).map_err(|e| err(e.to_string()))?;
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return Err(err("the queue layout is invalid".into()));
        }
        Ok(Loopback {
            mem,
            queue,
            next_avail: 0,
        })
    }

    /// The channel's control words.
    fn control(&self) -> At<'_, GuestMemoryMmap> {
        At(&self.mem, CHANNEL_AT)
    }

    fn descriptor(&self, index: u64, addr: u64, len: u32, flags: u32, next: u16) -> io::Result<()> {
        let mut d = [0u8; DESCRIPTOR_SIZE as usize];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(DESC_TABLE + index * DESCRIPTOR_SIZE))
            .map_err(io::Error::other)
    }

    /// Serves the `len` request bytes at [`REQUEST_AT`] with `server`,
    /// answering into at most `cap` bytes at [`REPLY_AT`].
    fn serve(
        &mut self,
        server: &Server<Arc<Share>>,
        len: usize,
        cap: usize,
    ) -> Result<Result<usize, fuse_backend_rs::Error>, BackendError> {
        let err = |e: String| BackendError::Loopback(e);
        let len32 = u32::try_from(len.min(MAX_REQUEST)).map_err(|e| err(e.to_string()))?;
        let cap32 = u32::try_from(cap.min(MAX_REPLY)).map_err(|e| err(e.to_string()))?;
        let flags = if cap32 > 0 { VRING_DESC_F_NEXT } else { 0 };
        self.descriptor(0, REQUEST_AT, len32, flags, 1)?;
        self.descriptor(1, REPLY_AT, cap32, VRING_DESC_F_WRITE, 0)?;
        let slot = AVAIL_ENTRIES + 2 * u64::from(self.next_avail % LOOP_QUEUE_SIZE);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(0u16.to_le(), GuestAddress(slot))
            .and_then(|()| {
                self.mem
                    .write_obj(self.next_avail.to_le(), GuestAddress(AVAIL_IDX))
            })
            .map_err(|e| err(e.to_string()))?;
        let chain = self
            .queue
            .pop_descriptor_chain(&self.mem)
            .ok_or_else(|| err("the request did not show in the queue".into()))?;
        let reader = Reader::from_descriptor_chain(&self.mem, chain.clone())
            .map_err(|e| err(e.to_string()))?;
        let writer = VirtioFsWriter::new(&self.mem, chain).map_err(|e| err(e.to_string()))?;
        let done = server.handle_message(reader, Writer::VirtioFs(writer), None, None);
        let used = done.as_ref().map_or(0, |n| u32::try_from(*n).unwrap_or(0));
        self.queue
            .add_used(&self.mem, 0, used)
            .map_err(|e| err(e.to_string()))?;
        Ok(done)
    }
}

/// The FUSE server of one shared directory (see the module docs).
pub struct FsServer {
    tag: String,
    root: PathBuf,
    read_only: bool,
    ids: IdMaps,
    /// The session: made at the first request after the server was made
    /// or reset, so that the share and `/proc/self/fd` are opened where
    /// the server runs (inside its jail), never before.
    server: Option<Session>,
    lo: Loopback,
    undecodable: u64,
    /// The state being saved ([`KIND_SAVE`]), or loaded ([`KIND_LOAD`]).
    saving: Vec<u8>,
    loading: Vec<u8>,
}

/// The FUSE server of one share and the share itself (for its state).
struct Session {
    server: Server<Arc<Share>>,
    share: Arc<Share>,
}

impl std::fmt::Debug for FsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsServer")
            .field("tag", &self.tag)
            .field("root", &self.root)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// fuse-backend-rs's passthrough of `root`.
fn passthrough(root: &Path, tag: &str) -> Result<PassthroughFs, FsError> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| FsError::Path {
            tag: tag.to_owned(),
            path: root.to_path_buf(),
        })?
        .to_owned();
    let cfg = Config {
        root_dir,
        // The host may change files too (an engine's `cp`, a volume shared
        // by two containers): the guest revalidates names and attributes
        // after this long, and page cache on open (close-to-open).
        entry_timeout: ENTRY_TIMEOUT,
        attr_timeout: ENTRY_TIMEOUT,
        cache_policy: CachePolicy::Auto,
        writeback: false,
        xattr: true,
        do_import: true,
        ..Default::default()
    };
    let fs = PassthroughFs::new(cfg).map_err(|source| FsError::Passthrough {
        tag: tag.to_owned(),
        path: root.to_path_buf(),
        source,
    })?;
    Ok(fs)
}

/// The passthrough of `root` behind husk's policy layer: a new session,
/// or the one `state` held (a restored VM's).
fn session(
    root: &Path,
    read_only: bool,
    ids: &IdMaps,
    tag: &str,
    state: Option<&ShareState>,
) -> Result<Session, BackendError> {
    let fs = passthrough(root, tag)?;
    let share = match state {
        None => Share::new(fs, read_only, ids.clone()),
        Some(state) => Share::restored(fs, read_only, ids.clone(), state)
            .map_err(|e| BackendError::State(format!("virtio-fs {tag}: {e}")))?,
    };
    let share = Arc::new(share);
    Ok(Session {
        server: Server::new(share.clone()),
        share,
    })
}

impl FsServer {
    /// The server of `root` for the device `tag`; nothing is opened yet.
    pub fn new(
        tag: &str,
        root: &Path,
        read_only: bool,
        ids: IdMaps,
    ) -> Result<FsServer, BackendError> {
        FsServer::build(tag, root, read_only, ids, None)
    }

    /// A server whose requests come through `channel`, a memfd made by
    /// [`channel::create`] that the device maps too (checked with
    /// [`channel::check`]).
    pub fn with_channel(
        tag: &str,
        root: &Path,
        read_only: bool,
        ids: IdMaps,
        channel: File,
    ) -> Result<FsServer, BackendError> {
        channel::check(&channel).map_err(BackendError::Loopback)?;
        FsServer::build(tag, root, read_only, ids, Some(channel))
    }

    fn build(
        tag: &str,
        root: &Path,
        read_only: bool,
        ids: IdMaps,
        channel: Option<File>,
    ) -> Result<FsServer, BackendError> {
        Ok(FsServer {
            tag: tag.to_owned(),
            root: root.to_path_buf(),
            read_only,
            ids,
            server: None,
            lo: Loopback::new(channel)?,
            undecodable: 0,
            saving: Vec::new(),
            loading: Vec::new(),
        })
    }

    /// Forgets the session (the driver reset the device): every inode and
    /// handle of the old one goes.
    pub fn reset(&mut self) {
        self.server = None;
    }

    /// The request buffer, for [`FsServer::serve`]'s first `len` bytes.
    fn load(&self, bytes: &[u8]) -> Result<(), BackendError> {
        self.lo
            .mem
            .write_slice(bytes, GuestAddress(REQUEST_AT))
            .map_err(|e| BackendError::Loopback(e.to_string()))
    }

    /// Serves the request loaded in the loopback (`len` bytes), answering
    /// into at most `cap` bytes.
    fn serve(&mut self, len: usize, cap: usize) -> Result<Outcome, BackendError> {
        if self.server.is_none() {
            self.server = Some(session(
                &self.root,
                self.read_only,
                &self.ids,
                &self.tag,
                None,
            )?);
        }
        let Some(session) = &self.server else {
            return Err(BackendError::Loopback("no session".into()));
        };
        match self.lo.serve(&session.server, len, cap)? {
            Ok(n) => Ok(Outcome::Reply(n.min(cap))),
            Err(e) => {
                self.undecodable += 1;
                if self.undecodable <= UNDECODABLE_LOGGED {
                    warn!("fs {}: request: {e}", self.tag);
                }
                Ok(Outcome::Undecodable)
            }
        }
    }

    /// What the guest holds of the share, for a checkpoint (nothing when
    /// it never mounted it).
    pub fn save_state(&self) -> Result<ShareState, BackendError> {
        match &self.server {
            None => Ok(ShareState::default()),
            Some(s) => s
                .share
                .save()
                .map_err(|e| BackendError::State(format!("virtio-fs {}: {e}", self.tag))),
        }
    }

    /// Makes the session a checkpoint's: the guest's ids of `state` stand
    /// for the same files again.
    pub fn load_state(&mut self, state: &ShareState) -> Result<(), BackendError> {
        self.server = if state == &ShareState::default() {
            None
        } else {
            Some(session(
                &self.root,
                self.read_only,
                &self.ids,
                &self.tag,
                Some(state),
            )?)
        };
        Ok(())
    }

    /// [`KIND_SAVE`]: the part of the state at the offset in the request,
    /// at most `cap` bytes of it, into the answer area.
    fn save_part(&mut self, len: usize, cap: usize) -> Result<usize, BackendError> {
        let mut offset = [0u8; 8];
        if len != offset.len() {
            return Err(BackendError::Protocol(format!(
                "a save request of {len} bytes"
            )));
        }
        self.lo
            .mem
            .read_slice(&mut offset, GuestAddress(REQUEST_AT))
            .map_err(|e| BackendError::Loopback(e.to_string()))?;
        let offset = usize::try_from(u64::from_le_bytes(offset)).unwrap_or(usize::MAX);
        if offset == 0 {
            self.saving = serde_json::to_vec(&self.save_state()?)
                .map_err(|e| BackendError::State(e.to_string()))?;
        }
        let part = self.saving.get(offset..).unwrap_or_default();
        let part = part.get(..cap.min(MAX_REPLY)).unwrap_or(part);
        self.lo
            .mem
            .write_slice(part, GuestAddress(REPLY_AT))
            .map_err(|e| BackendError::Loopback(e.to_string()))?;
        let n = part.len();
        if offset + n >= self.saving.len() {
            self.saving = Vec::new();
        }
        Ok(n)
    }

    /// [`KIND_LOAD`]: `len` more bytes of a state, or (0) its end.
    fn load_part(&mut self, len: usize) -> Result<(), BackendError> {
        if len == 0 {
            let bytes = std::mem::take(&mut self.loading);
            let state: ShareState = serde_json::from_slice(&bytes)
                .map_err(|e| BackendError::State(format!("a checkpoint's fs state: {e}")))?;
            return self.load_state(&state);
        }
        if self.loading.len() + len > MAX_STATE {
            self.loading = Vec::new();
            return Err(BackendError::State(format!(
                "a checkpoint's fs state of more than {MAX_STATE} bytes"
            )));
        }
        let at = self.loading.len();
        self.loading.resize(at + len, 0);
        self.lo
            .mem
            .read_slice(&mut self.loading[at..], GuestAddress(REQUEST_AT))
            .map_err(|e| BackendError::Loopback(e.to_string()))
    }

    /// Writes `e` as a reason into the answer area; its length.
    fn reason(&self, e: &BackendError) -> Result<usize, BackendError> {
        let reason = e.to_string();
        let reason = reason.as_bytes();
        let reason = reason.get(..MAX_REASON).unwrap_or(reason);
        self.lo
            .mem
            .write_slice(reason, GuestAddress(REPLY_AT))
            .map_err(|e| BackendError::Loopback(e.to_string()))?;
        Ok(reason.len())
    }

    /// Serves `request`; the answer (when there is one) goes into `reply`.
    /// Serves `request` (at most [`MAX_REQUEST`] bytes of it) in the fs
    /// server process; an answer goes into `reply` (at most `cap` bytes,
    /// at most [`MAX_REPLY`]).
    pub fn call(
        &mut self,
        request: &[u8],
        cap: usize,
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, BackendError> {
        let request = request.get(..MAX_REQUEST).unwrap_or(request);
        self.load(request)?;
        let outcome = self.serve(request.len(), cap)?;
        if let Outcome::Reply(n) = outcome {
            reply.resize(n, 0);
            self.lo
                .mem
                .read_slice(reply, GuestAddress(REPLY_AT))
                .map_err(|e| BackendError::Loopback(e.to_string()))?;
        }
        Ok(outcome)
    }
}

/// The device's end of a remote server: the channel and the stream.
pub struct Client {
    stream: UnixStream,
    channel: vm_memory::GuestMemoryMmap,
    /// The last request's sequence number.
    seq: u32,
    /// How long to spin for an answer before sleeping.
    spinner: channel::Spinner,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seq", &self.seq)
            .field("spinner", &self.spinner)
            .finish_non_exhaustive()
    }
}

/// Calls `each` with the offset so far and every piece of guest memory of
/// the device-writable (`writable`) or driver-readable buffers of `chain`,
/// in order, until `limit` bytes; returns how many bytes the pieces held.
fn each_buffer<'m>(
    mem: &'m vm_memory::GuestMemoryMmap,
    chain: DescriptorChain<&'m vm_memory::GuestMemoryMmap>,
    writable: bool,
    limit: usize,
    mut each: impl FnMut(usize, vm_memory::VolatileSlice<'m, ()>) -> io::Result<()>,
) -> io::Result<usize> {
    let mut at = 0usize;
    for desc in chain.filter(|d| d.is_write_only() == writable) {
        if at >= limit {
            break;
        }
        let want = usize::try_from(desc.len())
            .unwrap_or(usize::MAX)
            .min(limit - at);
        for piece in vm_memory::GuestMemoryBackend::get_slices(mem, desc.addr(), want) {
            let piece = piece.map_err(io::Error::other)?;
            let len = piece.len();
            each(at, piece)?;
            at += len;
        }
    }
    Ok(at)
}

/// Reads the server's two ready words from `stream`; `None` at its end.
fn read_ready_words(stream: &mut UnixStream) -> io::Result<Option<[u32; 2]>> {
    let mut buf = [0u8; 8];
    // EOF before the first byte is the peer's orderly end.
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some([
        u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]),
        u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
    ]))
}

fn header(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Client {
    /// The device's end: `stream` to the server and the `channel` memfd
    /// it was given ([`channel::create`]); waits for answers spinning for
    /// at most `spin` ([`channel::spin_budget`]) before it sleeps.
    pub fn new(stream: UnixStream, channel: File, spin: Duration) -> Result<Client, BackendError> {
        Ok(Client {
            stream,
            channel: channel::map(channel)?,
            seq: 0,
            spinner: channel::Spinner::new(spin),
        })
    }

    /// Posts the request already in the channel as `kind` with `len`
    /// bytes and `cap` bytes of room, and waits for the server's status
    /// and length.
    pub fn exchange(&mut self, kind: u32, len: u32, cap: u32) -> Result<(u32, u32), BackendError> {
        let seq = self.seq.wrapping_add(1);
        self.seq = seq;
        let c = At(&self.channel, 0);
        c.set_word(channel::KIND, kind)?;
        c.set_word(channel::REQ_LEN, len)?;
        c.set_word(channel::REQ_CAP, cap)?;
        c.set_word(channel::REQ_SEQ, seq)?;
        if c.word(channel::SERVER_IDLE)? == 1 && !channel::kick(&mut self.stream)? {
            return Err(BackendError::Gone);
        }
        let answered = channel::wait_for(
            &c,
            &mut self.stream,
            channel::VMM_IDLE,
            &mut self.spinner,
            |w| Ok(w.word(channel::REP_SEQ)? == seq),
        )?;
        if !answered {
            return Err(BackendError::Gone);
        }
        Ok((c.word(channel::STATUS)?, c.word(channel::REP_LEN)?))
    }

    /// Puts `bytes` where the server reads the request (at most
    /// [`MAX_REQUEST`] of them).
    pub fn load(&self, bytes: &[u8]) -> Result<(), BackendError> {
        let bytes = bytes.get(..MAX_REQUEST).unwrap_or(bytes);
        vm_memory::Bytes::write_slice(
            &self.channel,
            bytes,
            vm_memory::GuestAddress(channel::REQUEST),
        )
        .map_err(|e| BackendError::Io(io::Error::other(e)))
    }

    fn read_answer(&self, into: &mut [u8]) -> Result<(), BackendError> {
        vm_memory::Bytes::read_slice(&self.channel, into, vm_memory::GuestAddress(channel::REPLY))
            .map_err(|e| BackendError::Io(io::Error::other(e)))
    }

    pub fn call(
        &mut self,
        request: &[u8],
        cap: usize,
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, BackendError> {
        // Both cut the request at MAX_REQUEST.
        self.load(request)?;
        let outcome = self.post(request.len(), cap)?;
        if let Outcome::Reply(n) = outcome {
            reply.resize(n, 0);
            self.read_answer(reply)?;
        }
        Ok(outcome)
    }

    /// Posts the `len` bytes already in the channel as a request with room
    /// for `cap` (both cut to their bounds) and checks the answer's status
    /// and length; the answer of a `Reply(n)` is then at the start of the
    /// channel's answer area ([`Client::answer_into_chain`]).
    pub fn post(&mut self, len: usize, cap: usize) -> Result<Outcome, BackendError> {
        let len = len.min(MAX_REQUEST);
        let cap = cap.min(MAX_REPLY);
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let (status, got) = self.exchange(KIND_REQUEST, as_u32(len), as_u32(cap))?;
        let got = usize::try_from(got).unwrap_or(usize::MAX);
        match status {
            STATUS_REPLY if got <= cap => Ok(Outcome::Reply(got)),
            STATUS_REPLY => Err(BackendError::Protocol(format!(
                "an answer of {got} bytes to a request that had room for {cap}"
            ))),
            STATUS_UNDECODABLE if got == 0 => Ok(Outcome::Undecodable),
            STATUS_BROKEN if got <= MAX_REASON => {
                let mut reason = vec![0u8; got];
                self.read_answer(&mut reason)?;
                Err(BackendError::Broken(
                    String::from_utf8_lossy(&reason).into_owned(),
                ))
            }
            other => Err(BackendError::Protocol(format!(
                "status {other} with {got} bytes"
            ))),
        }
    }

    /// Copies the driver-readable buffers of `chain` (at most
    /// [`MAX_REQUEST`] bytes) from guest memory straight into the
    /// channel's request area; returns how many bytes. An address outside
    /// guest memory is an error (the chain's, not the server's).
    pub fn load_chain(
        &self,
        mem: &vm_memory::GuestMemoryMmap,
        chain: DescriptorChain<&vm_memory::GuestMemoryMmap>,
    ) -> io::Result<usize> {
        let room = self.channel_slice(channel::REQUEST, MAX_REQUEST)?;
        each_buffer(mem, chain, false, MAX_REQUEST, |at, piece| {
            piece.copy_to_volatile_slice(room.offset(at).map_err(io::Error::other)?);
            Ok(())
        })
    }

    /// Copies the first `n` bytes of the channel's answer area straight
    /// into the device-writable buffers of `chain`; returns how many fit
    /// (less than `n` when the chain offers less room than it did when the
    /// request was read: the guest changed it).
    pub fn answer_into_chain(
        &self,
        mem: &vm_memory::GuestMemoryMmap,
        chain: DescriptorChain<&vm_memory::GuestMemoryMmap>,
        n: usize,
    ) -> io::Result<usize> {
        let n = n.min(MAX_REPLY);
        let answer = self.channel_slice(channel::REPLY, n)?;
        each_buffer(mem, chain, true, n, |at, piece| {
            answer
                .offset(at)
                .map_err(io::Error::other)?
                .copy_to_volatile_slice(piece);
            Ok(())
        })
    }

    /// `len` bytes of the channel at `at`.
    fn channel_slice(&self, at: u64, len: usize) -> io::Result<vm_memory::VolatileSlice<'_, ()>> {
        vm_memory::GuestMemoryBackend::get_slice(&self.channel, vm_memory::GuestAddress(at), len)
            .map_err(io::Error::other)
    }

    /// Waits (at most `timeout`) for the server's first words on the
    /// stream, which it sends once it is confined ([`send_ready`]).
    pub fn wait_ready(&mut self, timeout: std::time::Duration) -> Result<(), BackendError> {
        self.stream.set_read_timeout(Some(timeout))?;
        let answer = read_ready_words(&mut self.stream);
        self.stream.set_read_timeout(None)?;
        match answer? {
            Some([STATUS_READY, 0]) => Ok(()),
            Some([status, len]) => Err(BackendError::Protocol(format!(
                "status {status} with {len} bytes before it was ready"
            ))),
            None => Err(BackendError::Gone),
        }
    }

    /// Resets the server's session.
    pub fn reset(&mut self) -> Result<(), BackendError> {
        match self.exchange(KIND_RESET, 0, 0)? {
            (STATUS_RESET, 0) => Ok(()),
            (status, len) => Err(BackendError::Protocol(format!(
                "status {status} with {len} bytes to a reset"
            ))),
        }
    }
}

impl Client {
    /// The server's state, for a checkpoint ([`KIND_SAVE`], part by part).
    pub fn save_state(&mut self) -> Result<ShareState, BackendError> {
        let mut bytes = Vec::new();
        loop {
            self.load(&(bytes.len() as u64).to_le_bytes())?;
            let (status, n) = self.exchange(KIND_SAVE, 8, MAX_REPLY as u32)?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            match status {
                STATUS_STATE if n <= MAX_REPLY && bytes.len() + n <= MAX_STATE => {
                    let at = bytes.len();
                    bytes.resize(at + n, 0);
                    self.read_answer(&mut bytes[at..])?;
                    if n < MAX_REPLY {
                        break;
                    }
                }
                STATUS_BROKEN if n <= MAX_REASON => {
                    let mut reason = vec![0u8; n];
                    self.read_answer(&mut reason)?;
                    return Err(BackendError::State(
                        String::from_utf8_lossy(&reason).into_owned(),
                    ));
                }
                other => {
                    return Err(BackendError::Protocol(format!(
                        "status {other} with {n} bytes to a save"
                    )))
                }
            }
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Protocol(format!("the saved state: {e}")))
    }

    /// Gives the server a checkpoint's state ([`KIND_LOAD`], part by part).
    pub fn load_state(&mut self, state: &ShareState) -> Result<(), BackendError> {
        let bytes = serde_json::to_vec(state).map_err(|e| BackendError::State(e.to_string()))?;
        let mut parts: Vec<&[u8]> = bytes.chunks(MAX_REQUEST).collect();
        parts.push(&[]);
        for part in parts {
            self.load(part)?;
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            match self.exchange(KIND_LOAD, len, 0)? {
                (STATUS_STATE, 0) => {}
                (STATUS_BROKEN, n) if usize::try_from(n).is_ok_and(|n| n <= MAX_REASON) => {
                    let mut reason = vec![0u8; n as usize];
                    self.read_answer(&mut reason)?;
                    return Err(BackendError::State(
                        String::from_utf8_lossy(&reason).into_owned(),
                    ));
                }
                (status, n) => {
                    return Err(BackendError::Protocol(format!(
                        "status {status} with {n} bytes to a load"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Where a device's requests are served.
#[derive(Debug)]
pub enum Backend {
    /// In the device's thread.
    Local(Box<FsServer>),
    /// In the container's fs server process.
    Remote(Client),
}

impl Backend {
    pub fn call(
        &mut self,
        request: &[u8],
        cap: usize,
        reply: &mut Vec<u8>,
    ) -> Result<Outcome, BackendError> {
        match self {
            Backend::Local(s) => s.call(request, cap, reply),
            Backend::Remote(c) => c.call(request, cap, reply),
        }
    }

    pub fn reset(&mut self) -> Result<(), BackendError> {
        match self {
            Backend::Local(s) => {
                s.reset();
                Ok(())
            }
            Backend::Remote(c) => c.reset(),
        }
    }

    /// The server's state, for a checkpoint.
    pub fn save_state(&mut self) -> Result<ShareState, BackendError> {
        match self {
            Backend::Local(s) => s.save_state(),
            Backend::Remote(c) => c.save_state(),
        }
    }

    /// Makes the server's session a checkpoint's.
    pub fn load_state(&mut self, state: &ShareState) -> Result<(), BackendError> {
        match self {
            Backend::Local(s) => s.load_state(state),
            Backend::Remote(c) => c.load_state(state),
        }
    }

    /// The server of a local backend.
    pub fn local_mut(&mut self) -> Option<&mut FsServer> {
        match self {
            Backend::Local(s) => Some(s),
            Backend::Remote(_) => None,
        }
    }
}

/// The server's first frame: it is confined and serves from now on.
pub fn send_ready(stream: &mut UnixStream) -> io::Result<()> {
    stream.write_all(&header(&[STATUS_READY, 0]))
}

/// Why [`serve`] stopped before its device hung up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("talking to the VMM: {0}")]
    Io(#[from] io::Error),
    #[error("the VMM broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The fs server process's loop: answers the device's requests in the
/// server's channel until the device hangs up (`Ok`), or a request breaks
/// the protocol (the VMM is not the one that made this channel: stop
/// serving it). Waits for requests spinning for at most `spin` before it
/// sleeps ([`channel::Spinner`]).
pub fn serve(
    stream: &mut UnixStream,
    server: &mut FsServer,
    spin: Duration,
) -> Result<(), ServeError> {
    // A new channel's numbers start at 0; the device may have posted its
    // first request before this thread got here.
    let mut seen = 0;
    let mut spinner = channel::Spinner::new(spin);
    loop {
        let posted = channel::wait_for(
            &server.lo.control(),
            stream,
            channel::SERVER_IDLE,
            &mut spinner,
            |w| Ok(w.word(channel::REQ_SEQ)? != seen),
        )?;
        if !posted {
            return Ok(());
        }
        let (kind, len, cap) = {
            let c = server.lo.control();
            seen = c.word(channel::REQ_SEQ)?;
            (
                c.word(channel::KIND)?,
                c.word(channel::REQ_LEN)?,
                c.word(channel::REQ_CAP)?,
            )
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let (status, n) = match kind {
            KIND_RESET if len == 0 && cap == 0 => {
                server.reset();
                (STATUS_RESET, 0)
            }
            KIND_SAVE if len <= MAX_REQUEST && cap <= MAX_REPLY => {
                match server.save_part(len, cap) {
                    Ok(n) => (STATUS_STATE, n),
                    Err(e) => (STATUS_BROKEN, server.reason(&e)?),
                }
            }
            KIND_LOAD if len <= MAX_REQUEST && cap == 0 => match server.load_part(len) {
                Ok(()) => (STATUS_STATE, 0),
                Err(e) => (STATUS_BROKEN, server.reason(&e)?),
            },
            KIND_REQUEST if len <= MAX_REQUEST && cap <= MAX_REPLY => {
                match server.serve(len, cap) {
                    Ok(Outcome::Reply(n)) => (STATUS_REPLY, n),
                    Ok(Outcome::Undecodable) => (STATUS_UNDECODABLE, 0),
                    Err(e) => (STATUS_BROKEN, server.reason(&e)?),
                }
            }
            _ => {
                return Err(ServeError::Protocol(format!(
                    "request kind {kind} with {len} bytes and room for {cap}"
                )))
            }
        };
        let c = server.lo.control();
        c.set_word(channel::STATUS, status)?;
        c.set_word(channel::REP_LEN, u32::try_from(n).unwrap_or(0))?;
        c.set_word(channel::REP_SEQ, seen)?;
        if c.word(channel::VMM_IDLE)? == 1 && !channel::kick(stream)? {
            // The device hung up.
            return Ok(());
        }
    }
}

/// A server process stand-in for tests and fuzzing: [`serve`] on a thread,
/// with a channel of its own, and the device's [`Client`] to it.
#[cfg(any(test, feature = "fuzzing"))]
pub fn serve_on_a_thread(
    tag: &str,
    root: &Path,
    read_only: bool,
    spin: Duration,
) -> Result<(Client, std::thread::JoinHandle<Result<(), ServeError>>), BackendError> {
    let (ours, mut theirs) = UnixStream::pair()?;
    let shared = channel::create()?;
    let mut server =
        FsServer::with_channel(tag, root, read_only, IdMaps::default(), shared.try_clone()?)?;
    let client = Client::new(ours, shared, spin)?;
    let serving = std::thread::spawn(move || serve(&mut theirs, &mut server, spin));
    Ok((client, serving))
}

#[cfg(test)]
mod tests;
