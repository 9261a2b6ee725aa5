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
//!   through a private two-descriptor virtqueue in its own memory (the
//!   *loopback*), so the crate's virtio-fs transport parses each request
//!   exactly as it would parse a guest's.
//! - [`Backend::Local`]: the server in the device's own thread (template
//!   VMs, `husk boot`, tests, fuzzing).
//! - [`Backend::Remote`]: a [`Client`] on a Unix stream to the fs server
//!   process; [`serve`] is the other end. Frames (little endian):
//!   request `kind u32, len u32, cap u32` then `len` bytes; answer
//!   `status u32, len u32` then `len` bytes. Both ends check every length
//!   against its bound before reading what follows.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use log::warn;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue_017::{Queue, QueueT as _};
use vm_memory_017::{Bytes as _, GuestAddress, GuestMemoryMmap};

use super::idmap::IdMaps;
use super::share::Share;
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

/// Frame kinds from the device.
const KIND_REQUEST: u32 = 1;
const KIND_RESET: u32 = 2;
/// Answer statuses from the server.
const STATUS_REPLY: u32 = 0;
const STATUS_UNDECODABLE: u32 = 1;
const STATUS_RESET: u32 = 2;
const STATUS_BROKEN: u32 = 3;
/// The server's first frame: confined, serving from now on.
const STATUS_READY: u32 = 4;

// The loopback's layout in the server's memory: a split virtqueue of two
// descriptors (virtio 1.2 section 2.7: the table 16-byte aligned, the
// rings 2- and 4-byte aligned), then the request and the answer buffers.
const LOOP_QUEUE_SIZE: u16 = 2;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
const DESCRIPTOR_SIZE: u64 = 16;
/// `avail.idx` and `avail.ring[]` past `avail.flags`.
const AVAIL_IDX: u64 = AVAIL_RING + 2;
const AVAIL_ENTRIES: u64 = AVAIL_RING + 4;
const PAGE: usize = 0x1000;
const REQUEST_AT: u64 = PAGE as u64;
const REPLY_AT: u64 = REQUEST_AT + round_up(MAX_REQUEST) as u64;
const LOOP_MEMORY: usize = REPLY_AT as usize + round_up(MAX_REPLY);

const fn round_up(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

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
}

/// The private virtqueue a [`FsServer`] feeds its requests through.
struct Loopback {
    mem: GuestMemoryMmap,
    queue: Queue,
    next_avail: u16,
}

impl Loopback {
    fn new() -> Result<Loopback, BackendError> {
        let err = |e: String| BackendError::Loopback(e);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LOOP_MEMORY)])
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
        server: &Server<Share>,
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
    server: Option<Server<Share>>,
    lo: Loopback,
    undecodable: u64,
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

/// fuse-backend-rs's passthrough of `root` behind husk's policy layer.
fn session(
    root: &Path,
    read_only: bool,
    ids: &IdMaps,
    tag: &str,
) -> Result<Server<Share>, FsError> {
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
    Ok(Server::new(Share::new(fs, read_only, ids.clone())))
}

impl FsServer {
    /// The server of `root` for the device `tag`; nothing is opened yet.
    pub fn new(
        tag: &str,
        root: &Path,
        read_only: bool,
        ids: IdMaps,
    ) -> Result<FsServer, BackendError> {
        Ok(FsServer {
            tag: tag.to_owned(),
            root: root.to_path_buf(),
            read_only,
            ids,
            server: None,
            lo: Loopback::new()?,
            undecodable: 0,
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
            self.server = Some(session(&self.root, self.read_only, &self.ids, &self.tag)?);
        }
        let Some(server) = &self.server else {
            return Err(BackendError::Loopback("no session".into()));
        };
        match self.lo.serve(server, len, cap)? {
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

    /// Serves `request`; the answer (when there is one) goes into `reply`.
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

/// The device's end of the stream to its fs server process.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

fn read_u32s<const N: usize>(stream: &mut UnixStream) -> io::Result<Option<[u32; N]>> {
    let mut buf = [0u8; 12];
    let buf = &mut buf[..4 * N];
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
    let mut out = [0u32; N];
    for (i, v) in out.iter_mut().enumerate() {
        let at = 4 * i;
        *v = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    }
    Ok(Some(out))
}

fn header(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Client {
    pub fn new(stream: UnixStream) -> Client {
        Client { stream }
    }

    fn answer(&mut self) -> Result<(u32, u32), BackendError> {
        match read_u32s::<2>(&mut self.stream)? {
            Some([status, len]) => Ok((status, len)),
            None => Err(BackendError::Gone),
        }
    }

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
        let cap = cap.min(MAX_REPLY);
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.stream
            .write_all(&header(&[KIND_REQUEST, as_u32(request.len()), as_u32(cap)]))?;
        self.stream.write_all(request)?;
        let (status, len) = self.answer()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        match status {
            STATUS_REPLY if len <= cap => {
                reply.resize(len, 0);
                self.stream.read_exact(reply)?;
                Ok(Outcome::Reply(len))
            }
            STATUS_REPLY => Err(BackendError::Protocol(format!(
                "an answer of {len} bytes to a request that had room for {cap}"
            ))),
            STATUS_UNDECODABLE if len == 0 => Ok(Outcome::Undecodable),
            STATUS_BROKEN if len <= MAX_REASON => {
                let mut reason = vec![0u8; len];
                self.stream.read_exact(&mut reason)?;
                Err(BackendError::Broken(
                    String::from_utf8_lossy(&reason).into_owned(),
                ))
            }
            other => Err(BackendError::Protocol(format!(
                "status {other} with {len} bytes"
            ))),
        }
    }

    /// Waits (at most `timeout`) for the server's first frame, which it
    /// sends once it is confined ([`send_ready`]).
    pub fn wait_ready(&mut self, timeout: std::time::Duration) -> Result<(), BackendError> {
        self.stream.set_read_timeout(Some(timeout))?;
        let answer = self.answer();
        self.stream.set_read_timeout(None)?;
        match answer? {
            (STATUS_READY, 0) => Ok(()),
            (status, len) => Err(BackendError::Protocol(format!(
                "status {status} with {len} bytes before it was ready"
            ))),
        }
    }

    /// Resets the server's session.
    pub fn reset(&mut self) -> Result<(), BackendError> {
        self.stream.write_all(&header(&[KIND_RESET, 0, 0]))?;
        match self.answer()? {
            (STATUS_RESET, 0) => Ok(()),
            (status, len) => Err(BackendError::Protocol(format!(
                "status {status} with {len} bytes to a reset"
            ))),
        }
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
    #[error("reading from the VMM: {0}")]
    Io(#[from] io::Error),
    #[error("the VMM broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

fn memory_error(e: vm_memory_017::GuestMemoryError) -> ServeError {
    match e {
        vm_memory_017::GuestMemoryError::IOError(io) => ServeError::Io(io),
        other => ServeError::Backend(BackendError::Loopback(other.to_string())),
    }
}

/// Moves `len` bytes between `stream` and `mem` at `at`, one `step` (a
/// volatile read from or write to the stream at an address, for at most so
/// many bytes) at a time until done; a step that moves nothing is `end`.
fn transfer(
    mem: &GuestMemoryMmap,
    at: u64,
    len: usize,
    end: io::ErrorKind,
    mut step: impl FnMut(
        &GuestMemoryMmap,
        GuestAddress,
        usize,
    ) -> Result<usize, vm_memory_017::GuestMemoryError>,
) -> Result<(), ServeError> {
    let mut done = 0;
    while done < len {
        let n = step(mem, GuestAddress(at + done as u64), len - done).map_err(memory_error)?;
        if n == 0 {
            return Err(ServeError::Io(end.into()));
        }
        done += n;
    }
    Ok(())
}

/// Reads exactly `len` bytes from `stream` into `mem` at `at`.
fn fill(
    mem: &GuestMemoryMmap,
    at: u64,
    stream: &mut UnixStream,
    len: usize,
) -> Result<(), ServeError> {
    transfer(mem, at, len, io::ErrorKind::UnexpectedEof, |m, a, n| {
        m.read_volatile_from(a, stream, n)
    })
}

/// Writes `len` bytes of `mem` at `at` to `stream`.
fn drain(
    mem: &GuestMemoryMmap,
    at: u64,
    stream: &mut UnixStream,
    len: usize,
) -> Result<(), ServeError> {
    transfer(mem, at, len, io::ErrorKind::WriteZero, |m, a, n| {
        m.write_volatile_to(a, stream, n)
    })
}

/// The fs server process's loop: answers the device's frames on `stream`
/// until the device hangs up (`Ok`), or a frame breaks the protocol (the
/// VMM is not the one that made this stream: stop serving it).
pub fn serve(stream: &mut UnixStream, server: &mut FsServer) -> Result<(), ServeError> {
    loop {
        let Some([kind, len, cap]) = read_u32s::<3>(stream)? else {
            return Ok(());
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        match kind {
            KIND_RESET if len == 0 && cap == 0 => {
                server.reset();
                stream.write_all(&header(&[STATUS_RESET, 0]))?;
            }
            KIND_REQUEST if len <= MAX_REQUEST && cap <= MAX_REPLY => {
                fill(&server.lo.mem, REQUEST_AT, stream, len)?;
                match server.serve(len, cap) {
                    Ok(Outcome::Reply(n)) => {
                        stream
                            .write_all(&header(&[STATUS_REPLY, u32::try_from(n).unwrap_or(0)]))?;
                        drain(&server.lo.mem, REPLY_AT, stream, n)?;
                    }
                    Ok(Outcome::Undecodable) => {
                        stream.write_all(&header(&[STATUS_UNDECODABLE, 0]))?;
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let reason = reason.as_bytes();
                        let reason = reason.get(..MAX_REASON).unwrap_or(reason);
                        stream.write_all(&header(&[
                            STATUS_BROKEN,
                            u32::try_from(reason.len()).unwrap_or(0),
                        ]))?;
                        stream.write_all(reason)?;
                    }
                }
            }
            _ => {
                return Err(ServeError::Protocol(format!(
                    "frame kind {kind} with {len} bytes and room for {cap}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests;
