//! The host side of the vsock device: the listening Unix socket, host
//! clients that have not yet sent their `CONNECT` line, the connection
//! table, and the packets owed to the guest.
//!
//! Nothing here touches the virtqueues: the device hands in the guest's
//! packets ([`Muxer::guest_packet`]) and asks for packets to put in rx
//! buffers ([`Muxer::next_rx_packet`]). What is owed to the guest is either
//! a connection-less reply (a reset, kept in a bounded list) or a
//! connection in the rx work list (its packets are built when an rx buffer
//! is there for them, see [`Connection::next_packet`]).
//!
//! Sockets are never closed where a connection ends: they move to a list
//! that [`Muxer::sync_events`] (on the event-manager thread, after every
//! event) takes out of epoll before closing them; the same call brings
//! every socket's epoll registration in line with what its connection
//! wants and arms the timer for the next connect deadline.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use log::{debug, info, warn};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnError, ConnKey, ConnState, Connection};
use super::packet::Header;
use super::{
    CONNECT_TIMEOUT, EPHEMERAL_PORT_FIRST, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE,
    MAX_PENDING_CLIENTS, MAX_PENDING_REPLIES, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
};

/// Replies kept at most: the tx queue stops at [`MAX_PENDING_REPLIES`], so
/// only resets of connections the host side ends (timeouts, closed
/// sockets) go beyond, and those are dropped past this while the guest
/// takes no rx buffers (a packet on such a connection gets a reset later).
const MAX_QUEUED_REPLIES: usize = 2 * MAX_PENDING_REPLIES;

/// Why a guest packet was dropped, or reset its connection (logged by the
/// device).
#[derive(Debug, thiserror::Error)]
pub enum GuestPacketError {
    #[error("packet from CID {cid}, not the guest's CID {guest_cid}: dropped")]
    WrongSrcCid { cid: u64, guest_cid: u64 },
    #[error("packet to CID {cid}, not the host (CID {HOST_CID}): dropped")]
    WrongDstCid { cid: u64 },
    #[error("packet of unknown type {type_} ({key}): reset")]
    UnknownType { type_: u16, key: ConnKey },
    #[error("packet with unknown op {op} ({key}): reset")]
    UnknownOp { op: u16, key: ConnKey },
    #[error("{key}: {source}: reset")]
    Protocol { key: ConnKey, source: ConnError },
}

/// A host process connected to the listening socket that hasn't yet said
/// which guest port it wants.
#[derive(Debug)]
struct HostClient {
    stream: UnixStream,
    /// The line so far (without the newline).
    line: Vec<u8>,
    deadline: Instant,
    registered: bool,
}

/// What reading a client's line gave.
enum LineStatus {
    Pending,
    Connect(u32),
    /// `CHECKPOINT` (then the VM ends) or `CHECKPOINT leave-running`.
    Checkpoint {
        leave_running: bool,
    },
    Close(&'static str),
}

impl HostClient {
    /// Reads up to the newline, one byte at a time so that what the client
    /// sends after the line stays in the socket for the guest.
    fn read_line(&mut self) -> LineStatus {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return LineStatus::Close("closed before sending a CONNECT line"),
                Ok(_) if byte[0] == b'\n' => {
                    if let Some(rest) = self.line.strip_prefix(CHECKPOINT_LINE) {
                        match rest {
                            b"" => {
                                return LineStatus::Checkpoint {
                                    leave_running: false,
                                }
                            }
                            LEAVE_RUNNING => {
                                return LineStatus::Checkpoint {
                                    leave_running: true,
                                }
                            }
                            _ => return LineStatus::Close("malformed CHECKPOINT line"),
                        }
                    }
                    return match parse_connect(&self.line) {
                        Some(port) => LineStatus::Connect(port),
                        None => LineStatus::Close("malformed CONNECT line"),
                    };
                }
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() >= MAX_CONNECT_LINE {
                        return LineStatus::Close("CONNECT line too long");
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return LineStatus::Pending,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => return LineStatus::Close("reading the CONNECT line failed"),
            }
        }
    }
}

/// The line a host client sends instead of `CONNECT` to have the VM
/// checkpointed (`husk checkpoint`, which may reach the socket as anyone
/// who may talk to the guest's agent).
pub const CHECKPOINT_LINE: &[u8] = b"CHECKPOINT";
/// What follows [`CHECKPOINT_LINE`] (after a space) for a checkpoint after
/// which the VM runs on.
pub const LEAVE_RUNNING: &[u8] = b" leave-running";
/// The answer line to a checkpoint that was written (else `ERR <why>`).
pub const CHECKPOINT_OK: &str = "OK";
/// How long a host client that asked for a checkpoint is kept for its
/// answer.
const CHECKPOINT_ANSWER_LIMIT: Duration = Duration::from_secs(600);

/// Parses `CONNECT <port>` (decimal, no sign, nothing else).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The host side (see the module docs).
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    pub listener: UnixListener,
    /// Fires at the earliest connect deadline.
    pub timer: TimerFd,
    /// What the timer is armed for.
    timer_deadline: Option<Instant>,
    /// [`CONNECT_TIMEOUT`]; shorter in tests.
    pub connect_timeout: Duration,
    clients: HashMap<RawFd, HostClient>,
    pub connections: HashMap<ConnKey, Connection>,
    conn_fds: HashMap<RawFd, ConnKey>,
    /// Connections with packets for the guest.
    rx_work: VecDeque<ConnKey>,
    /// Connection-less packets for the guest (resets).
    replies: VecDeque<Header>,
    /// Sockets to take out of epoll (if registered) and close.
    closed: Vec<(UnixStream, bool)>,
    next_local_port: u32,
    /// Written when a host client asks for a checkpoint (a VM that can be
    /// checkpointed has one).
    pub checkpoint: Option<vmm_sys_util::eventfd::EventFd>,
    /// The client that asked (it gets the answer line), and whether the VM
    /// runs on after.
    checkpoint_asked: Option<(RawFd, bool)>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener, timer: TimerFd) -> Self {
        Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            timer,
            timer_deadline: None,
            connect_timeout: CONNECT_TIMEOUT,
            clients: HashMap::new(),
            connections: HashMap::new(),
            conn_fds: HashMap::new(),
            rx_work: VecDeque::new(),
            replies: VecDeque::new(),
            closed: Vec::new(),
            next_local_port: EPHEMERAL_PORT_FIRST,
            checkpoint: None,
            checkpoint_asked: None,
        }
    }

    /// The Unix socket a guest connection to host port `port` goes to.
    pub fn service_path(&self, port: u32) -> PathBuf {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{port}"));
        PathBuf::from(path)
    }

    /// Whether `fd` is one of the host sockets.
    pub fn owns(&self, fd: RawFd) -> bool {
        self.clients.contains_key(&fd) || self.conn_fds.contains_key(&fd)
    }

    /// Whether packets wait for rx buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.replies.is_empty() || !self.rx_work.is_empty()
    }

    /// Whether guest packets may be taken from the tx queue: not while
    /// too many replies wait for rx buffers (section 5.10.6.1).
    pub fn can_take_tx(&self) -> bool {
        self.replies.len() < MAX_PENDING_REPLIES
    }

    /// Number of host clients still sending their line.
    #[cfg(test)]
    pub fn pending_clients(&self) -> usize {
        self.clients.len()
    }

    /// Accepts host clients on the listening socket.
    pub fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_PENDING_CLIENTS {
                        warn!(
                            "vsock {}: {MAX_PENDING_CLIENTS} clients are already connecting; \
                             closing a new one",
                            self.uds_path.display()
                        );
                        continue;
                    }
                    if let Err(err) = stream.set_nonblocking(true) {
                        warn!(
                            "vsock {}: making a client socket non-blocking: {err}",
                            self.uds_path.display()
                        );
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.clients.insert(
                        fd,
                        HostClient {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + self.connect_timeout,
                            registered: false,
                        },
                    );
                    // The line may be there already.
                    self.client_readable(fd);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => {
                    warn!(
                        "vsock {}: accepting a client: {err}",
                        self.uds_path.display()
                    );
                    break;
                }
            }
        }
    }

    /// An epoll event on host socket `fd` (see [`Muxer::owns`]).
    pub fn host_event(&mut self, fd: RawFd, events: EventSet) {
        if self.clients.contains_key(&fd) {
            self.client_readable(fd);
        } else if let Some(&key) = self.conn_fds.get(&fd) {
            if let Some(conn) = self.connections.get_mut(&key) {
                conn.host_event(events);
            }
            self.after_change(key);
        }
    }

    fn client_readable(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        match client.read_line() {
            LineStatus::Pending => {}
            LineStatus::Close(why) => {
                info!(
                    "vsock {}: closing host client: {why}",
                    self.uds_path.display()
                );
                self.close_client(fd);
            }
            LineStatus::Connect(port) => {
                if let Some(client) = self.clients.remove(&fd) {
                    self.host_connect(client, port);
                }
            }
            LineStatus::Checkpoint { leave_running } => {
                let refused = match (&self.checkpoint, self.checkpoint_asked) {
                    (None, _) => Some("this VM cannot be checkpointed"),
                    (Some(_), Some(_)) => Some("a checkpoint is under way"),
                    (Some(evt), None) => {
                        info!(
                            "vsock {}: checkpoint asked for (leave running: {leave_running})",
                            self.uds_path.display()
                        );
                        let _ = evt.write(1);
                        None
                    }
                };
                match refused {
                    Some(why) => {
                        self.answer_client(fd, &format!("ERR {why}"));
                    }
                    None => {
                        // Kept (not read from any more) for its answer.
                        if let Some(client) = self.clients.get_mut(&fd) {
                            client.deadline = Instant::now() + CHECKPOINT_ANSWER_LIMIT;
                        }
                        self.checkpoint_asked = Some((fd, leave_running));
                    }
                }
            }
        }
    }

    /// The checkpoint asked for: whether the VM runs on after it.
    pub fn checkpoint_leaves_running(&self) -> bool {
        self.checkpoint_asked.is_some_and(|(_, leave)| leave)
    }

    /// Answers the client that asked for the checkpoint ([`CHECKPOINT_OK`]
    /// or `ERR <why>`) and closes it.
    pub fn checkpoint_done(&mut self, answer: &str) {
        if let Some((fd, _)) = self.checkpoint_asked.take() {
            self.answer_client(fd, answer);
        }
    }

    /// Writes `line` to a host client (a short line fits its socket
    /// buffer) and closes it.
    fn answer_client(&mut self, fd: RawFd, line: &str) {
        if let Some(client) = self.clients.get_mut(&fd) {
            let _ = std::io::Write::write_all(&mut client.stream, format!("{line}\n").as_bytes());
        }
        self.close_client(fd);
    }

    fn close_client(&mut self, fd: RawFd) {
        if self.checkpoint_asked.is_some_and(|(asked, _)| asked == fd) {
            // Its answer has nowhere to go; the checkpoint still happens.
            self.checkpoint_asked = self.checkpoint_asked.map(|(_, leave)| (-1, leave));
        }
        if let Some(client) = self.clients.remove(&fd) {
            self.closed.push((client.stream, client.registered));
        }
    }

    /// A host client asked for guest port `port`: a connection owing the
    /// guest an `OP_REQUEST`.
    fn host_connect(&mut self, client: HostClient, port: u32) {
        let local_port = if self.connections.len() >= MAX_CONNECTIONS {
            None
        } else {
            self.alloc_local_port(port)
        };
        let Some(local_port) = local_port else {
            warn!(
                "vsock {}: {} connections are open; refusing CONNECT {port}",
                self.uds_path.display(),
                self.connections.len()
            );
            self.closed.push((client.stream, client.registered));
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        debug!("vsock {}: {key}: host connecting", self.uds_path.display());
        let registered = client.registered.then_some(EventSet::IN);
        let deadline = Instant::now() + self.connect_timeout;
        let conn = Connection::host_initiated(client.stream, key, deadline, registered);
        self.insert(conn);
    }

    /// A local port not in use with `peer_port`.
    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS keys are taken, so this many tries find
        // a free one.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(EPHEMERAL_PORT_FIRST);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.connections.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key;
        self.conn_fds.insert(conn.stream.as_raw_fd(), key);
        self.connections.insert(key, conn);
        self.after_change(key);
    }

    /// Ends a connection: its socket is closed (after leaving epoll), and
    /// with `reset` the guest gets an `OP_RST` (if it heard of the
    /// connection at all).
    fn close_conn(&mut self, key: ConnKey, reset: bool) {
        let Some(conn) = self.connections.remove(&key) else {
            return;
        };
        let reset = reset && conn.guest_knows();
        debug!(
            "vsock {}: {key}: closed{}",
            self.uds_path.display(),
            if reset {
                ", resetting the guest side"
            } else {
                ""
            }
        );
        self.conn_fds.remove(&conn.stream.as_raw_fd());
        self.closed.push((conn.stream, conn.registered.is_some()));
        if reset {
            self.push_reply(self.rst(key.local_port, key.peer_port));
        }
    }

    fn push_reply(&mut self, reply: Header) {
        if self.replies.len() >= MAX_QUEUED_REPLIES {
            debug!(
                "vsock {}: {MAX_QUEUED_REPLIES} replies wait for rx buffers; \
                 dropping op {} to guest port {}",
                self.uds_path.display(),
                reply.op,
                reply.dst_port
            );
            return;
        }
        self.replies.push_back(reply);
    }

    /// After anything happened to a connection: end it if both directions
    /// are closed, else put it in the rx work list if it owes the guest a
    /// packet.
    fn after_change(&mut self, key: ConnKey) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if conn.is_done() {
            self.close_conn(key, true);
        } else if !conn.queued && conn.has_rx_work() {
            conn.queued = true;
            self.rx_work.push_back(key);
        }
    }

    /// An `OP_RST` from host port `local_port` to guest port `peer_port`.
    fn rst(&self, local_port: u32, peer_port: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }

    /// Answers a guest packet (of op `op`) on `key` with an `OP_RST`
    /// (never answering an `OP_RST`), ending the connection if there is
    /// one.
    fn reset_or_reply(&mut self, key: ConnKey, op: u16) {
        self.close_conn(key, false);
        if op != OP_RST {
            self.push_reply(self.rst(key.local_port, key.peer_port));
        }
    }

    /// A packet from the guest; `payload` is its `len` bytes.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) -> Result<(), GuestPacketError> {
        if hdr.src_cid != self.guest_cid {
            return Err(GuestPacketError::WrongSrcCid {
                cid: hdr.src_cid,
                guest_cid: self.guest_cid,
            });
        }
        if hdr.dst_cid != HOST_CID {
            return Err(GuestPacketError::WrongDstCid { cid: hdr.dst_cid });
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            // Section 5.10.6.4: an unknown type gets an OP_RST.
            self.reset_or_reply(key, hdr.op);
            return Err(GuestPacketError::UnknownType {
                type_: hdr.type_,
                key,
            });
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr, key),
            OP_RST => {
                if let Some(conn) = self.connections.get_mut(&key) {
                    // Best effort for what the host hasn't taken yet.
                    conn.flush_to_host();
                    self.close_conn(key, false);
                }
                Ok(())
            }
            OP_RESPONSE | OP_RW | OP_CREDIT_UPDATE | OP_CREDIT_REQUEST | OP_SHUTDOWN => {
                let Some(conn) = self.connections.get_mut(&key) else {
                    debug!(
                        "vsock {}: op {} for unknown connection {key}: reset",
                        self.uds_path.display(),
                        hdr.op
                    );
                    self.reset_or_reply(key, hdr.op);
                    return Ok(());
                };
                conn.update_peer_credit(hdr);
                let result = match hdr.op {
                    OP_RESPONSE => conn.established(hdr),
                    OP_RW => conn.recv_data(payload),
                    OP_CREDIT_REQUEST => {
                        conn.recv_credit_request();
                        Ok(())
                    }
                    OP_SHUTDOWN if conn.state == ConnState::Established => {
                        conn.recv_shutdown(hdr.flags);
                        Ok(())
                    }
                    OP_SHUTDOWN => Err(ConnError::UnexpectedOp {
                        op: hdr.op,
                        state: conn.state,
                    }),
                    // OP_CREDIT_UPDATE: the credit is all it carries.
                    _ => Ok(()),
                };
                match result {
                    Ok(()) => {
                        self.after_change(key);
                        Ok(())
                    }
                    Err(source) => {
                        self.reset_or_reply(key, hdr.op);
                        Err(GuestPacketError::Protocol { key, source })
                    }
                }
            }
            op => {
                self.reset_or_reply(key, op);
                Err(GuestPacketError::UnknownOp { op, key })
            }
        }
    }

    /// The guest connects to host port `key.local_port`: connect to its
    /// service socket; `OP_RESPONSE` or `OP_RST`.
    ///
    /// The connect is a blocking call (as in Firecracker); on a Unix socket
    /// it only waits when the service's accept backlog is full, which takes
    /// more pending connections than [`MAX_CONNECTIONS`] for a service
    /// listening with Rust's or Go's default backlog (`SOMAXCONN`).
    fn guest_connect(&mut self, hdr: &Header, key: ConnKey) -> Result<(), GuestPacketError> {
        if let Some(conn) = self.connections.get(&key) {
            let state = conn.state;
            self.reset_or_reply(key, OP_REQUEST);
            return Err(GuestPacketError::Protocol {
                key,
                source: ConnError::UnexpectedOp {
                    op: OP_REQUEST,
                    state,
                },
            });
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            warn!(
                "vsock {}: {key}: {MAX_CONNECTIONS} connections are open; refusing",
                self.uds_path.display()
            );
            self.reset_or_reply(key, OP_REQUEST);
            return Ok(());
        }
        let path = self.service_path(key.local_port);
        let stream = UnixStream::connect(&path).and_then(|stream| {
            stream.set_nonblocking(true)?;
            Ok(stream)
        });
        match stream {
            Ok(stream) => {
                debug!(
                    "vsock {}: {key}: guest connected to {}",
                    self.uds_path.display(),
                    path.display()
                );
                self.insert(Connection::guest_initiated(stream, key, hdr));
            }
            Err(err) => {
                debug!(
                    "vsock {}: {key}: guest connection refused ({}: {err})",
                    self.uds_path.display(),
                    path.display()
                );
                self.reset_or_reply(key, OP_REQUEST);
            }
        }
        Ok(())
    }

    /// The next packet for the guest, its payload read into the start of
    /// `buf` (whose length is the room in the rx buffer): replies first,
    /// then the connections in turn, one packet each.
    pub fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(reply) = self.replies.pop_front() {
            return Some((reply, 0));
        }
        // Each connection at most once per call.
        for _ in 0..self.rx_work.len() {
            let key = self.rx_work.pop_front()?;
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let packet = conn.next_packet(self.guest_cid, buf);
            self.after_change(key);
            if packet.is_some() {
                return packet;
            }
            if let Some(reply) = self.replies.pop_front() {
                return Some((reply, 0));
            }
        }
        None
    }

    /// The timer fired: close what is past its deadline.
    pub fn timer_fired(&mut self) {
        // Disarming also clears the expiration count (the fd stops being
        // readable); `sync_events` re-arms it.
        if let Err(err) = self.timer.clear() {
            warn!(
                "vsock {}: clearing the timer: {err}",
                self.uds_path.display()
            );
        }
        self.timer_deadline = None;
        self.expire(Instant::now());
    }

    /// Closes clients and connections whose deadline is at or before
    /// `now`.
    pub fn expire(&mut self, now: Instant) {
        let late_clients: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, client)| client.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late_clients {
            info!(
                "vsock {}: host client sent no CONNECT line in time; closing it",
                self.uds_path.display()
            );
            self.close_client(fd);
        }
        let late: Vec<ConnKey> = self
            .connections
            .values()
            .filter(|conn| conn.deadline().is_some_and(|deadline| deadline <= now))
            .map(|conn| conn.key)
            .collect();
        for key in late {
            info!(
                "vsock {}: {key}: the guest did not answer the connection request in time",
                self.uds_path.display()
            );
            self.close_conn(key, true);
        }
    }

    /// The driver reset the device: every connection is gone (the guest
    /// forgot them; their host sockets are closed), as is everything owed
    /// to the guest. Clients still sending their line stay.
    pub fn reset_connections(&mut self) {
        let keys: Vec<ConnKey> = self.connections.keys().copied().collect();
        for key in keys {
            self.close_conn(key, false);
        }
        self.rx_work.clear();
        self.replies.clear();
    }

    /// Brings epoll in line with the host sockets (closing those that
    /// ended) and arms the timer for the next deadline.
    pub fn sync_events(&mut self, ops: &mut EventOps) {
        let mut failed_clients = Vec::new();
        for (&fd, client) in &mut self.clients {
            if !client.registered {
                match ops.add(Events::new(&client.stream, EventSet::IN)) {
                    Ok(()) => client.registered = true,
                    Err(err) => {
                        warn!(
                            "vsock {}: registering a host client: {err:?}",
                            self.uds_path.display()
                        );
                        failed_clients.push(fd);
                    }
                }
            }
        }
        let mut failed = Vec::new();
        for (&key, conn) in &mut self.connections {
            let wanted = conn.wanted_events();
            let result = match conn.registered {
                None if wanted.is_empty() => Ok(()),
                None => ops
                    .add(Events::new(&conn.stream, wanted))
                    .map(|()| conn.registered = Some(wanted)),
                Some(_) if wanted.is_empty() => ops
                    .remove(Events::empty(&conn.stream))
                    .map(|()| conn.registered = None),
                Some(current) if current != wanted => ops
                    .modify(Events::new(&conn.stream, wanted))
                    .map(|()| conn.registered = Some(wanted)),
                Some(_) => Ok(()),
            };
            if let Err(err) = result {
                warn!(
                    "vsock {}: {key}: updating the epoll registration: {err:?}",
                    self.uds_path.display()
                );
                failed.push(key);
            }
        }
        for fd in failed_clients {
            self.close_client(fd);
        }
        for key in failed {
            self.close_conn(key, true);
        }
        for (stream, registered) in self.closed.drain(..) {
            if registered {
                if let Err(err) = ops.remove(Events::empty(&stream)) {
                    warn!(
                        "vsock {}: unregistering a closed socket: {err:?}",
                        self.uds_path.display()
                    );
                }
            }
        }
        self.arm_timer();
    }

    fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().map(|client| client.deadline);
        let conns = self.connections.values().filter_map(Connection::deadline);
        clients.chain(conns).min()
    }

    fn arm_timer(&mut self) {
        let next = self.next_deadline();
        if next == self.timer_deadline {
            return;
        }
        let result = match next {
            Some(deadline) => {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(wait, None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_deadline = next,
            Err(err) => warn!("vsock {}: arming the timer: {err}", self.uds_path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_utils::{guest_hdr, GUEST_CID};
    use super::*;

    #[test]
    fn replies_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut muxer = Muxer::new(GUEST_CID, &path, listener, TimerFd::new().unwrap());
        for port in 0..3 * MAX_QUEUED_REPLIES {
            let port = u32::try_from(port).unwrap();
            muxer.guest_packet(&guest_hdr(OP_RW, port, 7), b"").unwrap();
            // No reset for a reset.
            muxer
                .guest_packet(&guest_hdr(OP_RST, port, 7), b"")
                .unwrap();
        }
        assert_eq!(muxer.replies.len(), MAX_QUEUED_REPLIES);
        assert!(!muxer.can_take_tx());
        let mut buf = [0u8; 16];
        let (first, len) = muxer.next_rx_packet(&mut buf).unwrap();
        assert_eq!(
            (first.op, first.src_port, first.dst_port, first.dst_cid, len),
            (OP_RST, 7, 0, GUEST_CID, 0)
        );
    }

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect(b"CONNECT 0"), Some(0));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT +5",
            b"CONNECT -5",
            b"CONNECT 5 ",
            b"CONNECT  5",
            b"CONNECT 5\r",
            b"connect 5",
            b"HELLO",
            b"",
        ] {
            assert_eq!(parse_connect(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
