//! One connection between a guest socket and a host Unix stream: its
//! state, the shutdown flags of both sides, credit-based flow control both
//! ways (virtio 1.2, section 5.10.6.3) and I/O on the host socket.
//!
//! A connection doesn't queue packets for the guest: it keeps flags for the
//! control packets it owes and reads host data only when a packet is
//! actually being built for an rx buffer ([`Connection::next_packet`]), so
//! host data waits in the host socket, never in the VMM, and never more
//! than the guest's credit is read.
//!
//! Guest data goes straight to the host socket; what the socket doesn't
//! take is buffered (at most [`CONN_BUF_ALLOC`] bytes: the credit the guest
//! was given) until `EPOLLOUT`. `fwd_cnt` counts the bytes written to the
//! host socket.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use log::debug;

use super::packet::Header;
use super::{
    CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, HOST_CID, MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// A connection's address: the host (CID 2) port and the guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host:{} <-> guest:{}", self.local_port, self.peer_port)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: `OP_REQUEST` owed or sent, waiting for the guest's
    /// `OP_RESPONSE` until `deadline`.
    Connecting { deadline: Instant },
    /// Data flows (as far as the shutdown flags allow).
    Established,
}

/// A guest packet that breaks the protocol on this connection (it is then
/// reset).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{len} bytes of data exceed the guest's credit ({free} bytes free)")]
    CreditExceeded { len: usize, free: usize },
    #[error("data after the guest's SHUTDOWN SEND")]
    DataAfterShutdown,
    #[error("op {op} is not valid in state {state:?}")]
    UnexpectedOp { op: u16, state: ConnState },
}

/// One connection (see the module docs).
#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub key: ConnKey,
    pub state: ConnState,
    /// What the socket is registered for in epoll (`None`: not in the set).
    pub registered: Option<EventSet>,
    /// Whether the key is in the muxer's rx work list.
    pub queued: bool,

    // Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    /// A credit request was sent since the guest last told us its credit.
    credit_requested: bool,
    /// Shutdown flags to tell the guest; those already told.
    shutdown_owed: u32,
    shutdown_sent: u32,

    // Host to guest.
    /// The host socket has (or may have) data or EOF to read.
    host_readable: bool,
    /// The host socket reached EOF (or failed reading).
    host_eof: bool,
    /// The guest will receive no more data (its `SHUTDOWN RCV`).
    guest_shut_rcv: bool,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,

    // Guest to host.
    /// Bytes waiting for the host socket: `prefix` bytes of our own (the
    /// `OK <port>\n` line), then guest data.
    to_host: VecDeque<u8>,
    prefix: usize,
    /// Payload bytes received from the guest.
    rx_cnt: Wrapping<u32>,
    /// Of those, bytes written to the host socket (or discarded after it
    /// broke).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest will send no more data (its `SHUTDOWN SEND`).
    guest_shut_send: bool,
    /// We shut down the write side of the host socket.
    host_write_shut: bool,
    /// Writing to the host socket failed (the peer is gone or shut its read
    /// side): guest data is discarded.
    host_write_broken: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, state: ConnState) -> Self {
        Connection {
            stream,
            key,
            state,
            registered: None,
            queued: false,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            credit_requested: false,
            shutdown_owed: 0,
            shutdown_sent: 0,
            host_readable: false,
            host_eof: false,
            guest_shut_rcv: false,
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            to_host: VecDeque::new(),
            prefix: 0,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            guest_shut_send: false,
            host_write_shut: false,
            host_write_broken: false,
        }
    }

    /// A connection the guest asked for (`request`), whose host socket is
    /// connected: owes the guest an `OP_RESPONSE`.
    pub fn guest_initiated(stream: UnixStream, key: ConnKey, request: &Header) -> Self {
        let mut conn = Connection::new(stream, key, ConnState::Established);
        conn.update_peer_credit(request);
        conn.send_response = true;
        conn
    }

    /// A connection a host client asked for: owes the guest an
    /// `OP_REQUEST`. `registered` is the client socket's epoll state.
    pub fn host_initiated(
        stream: UnixStream,
        key: ConnKey,
        deadline: Instant,
        registered: Option<EventSet>,
    ) -> Self {
        let mut conn = Connection::new(stream, key, ConnState::Connecting { deadline });
        conn.registered = registered;
        conn.send_request = true;
        conn
    }

    /// Whether the guest has heard of the connection: not a host-initiated
    /// one whose request is still owed (ending that one owes no reset).
    pub fn guest_knows(&self) -> bool {
        !self.send_request
    }

    /// The deadline of a connection waiting for the guest.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ConnState::Connecting { deadline } => Some(deadline),
            ConnState::Established => None,
        }
    }

    /// Takes `buf_alloc` / `fwd_cnt` from a guest packet (all of them carry
    /// valid values, section 5.10.6.3).
    pub fn update_peer_credit(&mut self, header: &Header) {
        let fwd_cnt = Wrapping(header.fwd_cnt);
        if header.buf_alloc != self.peer_buf_alloc || fwd_cnt != self.peer_fwd_cnt {
            // New numbers: if they still give no credit, ask again.
            self.credit_requested = false;
        }
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// How many more payload bytes the guest can take:
    /// `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, 0 when the guest's
    /// numbers don't add up (a `fwd_cnt` ahead of what we sent, or a
    /// shrunk `buf_alloc`).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted a host-initiated connection: the client gets
    /// `OK <local port>\n` before any data.
    pub fn established(&mut self, response: &Header) -> Result<(), ConnError> {
        if !matches!(self.state, ConnState::Connecting { .. }) {
            return Err(ConnError::UnexpectedOp {
                op: OP_RESPONSE,
                state: self.state,
            });
        }
        self.state = ConnState::Established;
        // The guest evidently knows of the connection.
        self.send_request = false;
        self.update_peer_credit(response);
        let line = format!("OK {}\n", self.key.local_port);
        self.prefix = line.len();
        self.to_host.extend(line.as_bytes());
        self.flush_to_host();
        Ok(())
    }

    /// Guest data (`OP_RW`): written to the host socket, the rest buffered.
    pub fn recv_data(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        if self.state == ConnState::Established && self.guest_shut_send {
            return Err(ConnError::DataAfterShutdown);
        }
        if let ConnState::Connecting { .. } = self.state {
            return Err(ConnError::UnexpectedOp {
                op: OP_RW,
                state: self.state,
            });
        }
        if payload.is_empty() {
            return Ok(());
        }
        // usize is at least 32 bits here (the VMM is x86_64-only).
        let buffered = usize::try_from((self.rx_cnt - self.fwd_cnt).0).unwrap_or(usize::MAX);
        let free = usize::try_from(CONN_BUF_ALLOC)
            .unwrap_or(usize::MAX)
            .saturating_sub(buffered);
        if payload.len() > free {
            return Err(ConnError::CreditExceeded {
                len: payload.len(),
                free,
            });
        }
        // payload.len() <= CONN_BUF_ALLOC, so it fits a u32.
        let len = Wrapping(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        self.rx_cnt += len;
        if self.host_write_broken {
            self.fwd_cnt += len;
        } else {
            self.to_host.extend(payload);
            self.flush_to_host();
        }
        self.check_credit_update();
        Ok(())
    }

    /// `OP_SHUTDOWN` from the guest (the flags are permanent, section
    /// 5.10.6.5).
    pub fn recv_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_RCV != 0 && !self.guest_shut_rcv {
            self.guest_shut_rcv = true;
            // The host peer's further writes fail (EPIPE) instead of
            // filling a socket nobody reads.
            if let Err(err) = self.stream.shutdown(Shutdown::Read) {
                debug!("vsock {}: shutdown(read): {err}", self.key);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_shut_send = true;
            self.flush_to_host();
        }
    }

    /// `OP_CREDIT_REQUEST` from the guest.
    pub fn recv_credit_request(&mut self) {
        self.send_credit_update = true;
    }

    /// An epoll event on the host socket.
    pub fn host_event(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            self.host_readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush_to_host();
        }
    }

    /// Writes buffered bytes to the host socket until it would block; then,
    /// if the guest sent `SHUTDOWN SEND`, shuts down the socket's write
    /// side.
    pub fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() && !self.host_write_broken {
            let (chunk, _) = self.to_host.as_slices();
            match self.stream.write(chunk) {
                Ok(0) => self.host_write_failed("write returned 0"),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let ours = n.min(self.prefix);
                    self.prefix -= ours;
                    // n - ours <= CONN_BUF_ALLOC.
                    self.fwd_cnt += Wrapping(u32::try_from(n - ours).unwrap_or(u32::MAX));
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) => self.host_write_failed(&err.to_string()),
            }
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(err) = self.stream.shutdown(Shutdown::Write) {
                debug!("vsock {}: shutdown(write): {err}", self.key);
            }
        }
        self.check_credit_update();
    }

    /// The host socket can't take data any more: what is buffered and what
    /// the guest still sends is discarded, and the guest is told the host
    /// receives no more.
    fn host_write_failed(&mut self, why: &str) {
        debug!("vsock {}: writing to the host socket: {why}", self.key);
        self.host_write_broken = true;
        let guest_bytes = self.to_host.len() - self.prefix;
        self.fwd_cnt += Wrapping(u32::try_from(guest_bytes).unwrap_or(u32::MAX));
        self.to_host.clear();
        self.prefix = 0;
        self.shutdown_owed |= SHUTDOWN_RCV;
    }

    /// Owes the guest a credit update when the free space it last heard of
    /// is low and more is free now.
    fn check_credit_update(&mut self) {
        if self.guest_shut_send || self.fwd_cnt == self.fwd_cnt_sent {
            return;
        }
        let seen_in_use = (self.rx_cnt - self.fwd_cnt_sent).0;
        if CONN_BUF_ALLOC.saturating_sub(seen_in_use) < CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// Whether host data can be read for the guest now.
    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
    }

    fn wants_credit_request(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() == 0
            && !self.credit_requested
    }

    /// Whether the connection has a packet for the guest (data reads may
    /// still find nothing).
    pub fn has_rx_work(&self) -> bool {
        self.send_request
            || self.send_response
            || (self.state == ConnState::Established
                && (self.can_read_host()
                    || self.send_credit_update
                    || self.wants_credit_request()
                    || self.shutdown_owed & !self.shutdown_sent != 0))
    }

    /// Both directions are closed: the connection ends with an `OP_RST`.
    pub fn is_done(&self) -> bool {
        let guest_to_host_closed =
            self.host_write_broken || (self.guest_shut_send && self.to_host.is_empty());
        let host_to_guest_closed = self.host_eof || self.guest_shut_rcv;
        self.state == ConnState::Established && guest_to_host_closed && host_to_guest_closed
    }

    /// What epoll should watch: `IN` while we want to learn that the host
    /// socket is readable, `OUT` while bytes wait for it.
    pub fn wanted_events(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.state == ConnState::Established
            && !self.host_readable
            && !self.host_eof
            && !self.guest_shut_rcv
        {
            events |= EventSet::IN;
        }
        if !self.to_host.is_empty() && !self.host_write_broken {
            events |= EventSet::OUT;
        }
        events
    }

    /// A header from us to the guest on this connection, with our credit.
    fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its payload (if any) read into the
    /// start of `buf` (`buf.len()` is the room in the rx buffer). Returns
    /// the header and the payload length, or `None` when there is nothing
    /// to send (the caller then checks [`Connection::is_done`]).
    pub fn next_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.send_request {
            self.send_request = false;
            return Some((self.header(guest_cid, OP_REQUEST, 0, 0), 0));
        }
        if self.send_response {
            self.send_response = false;
            return Some((self.header(guest_cid, OP_RESPONSE, 0, 0), 0));
        }
        if self.state != ConnState::Established {
            return None;
        }
        if self.can_read_host() {
            let credit = usize::try_from(self.peer_credit()).unwrap_or(usize::MAX);
            let room = buf.len().min(credit).min(MAX_PKT_PAYLOAD);
            if room == 0 {
                // An rx buffer with no room for payload: use it for a
                // credit update so the guest gives a new one.
                return Some((self.header(guest_cid, OP_CREDIT_UPDATE, 0, 0), 0));
            }
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    self.shutdown_owed |= SHUTDOWN_SEND;
                }
                Ok(n) => {
                    // n <= MAX_PKT_PAYLOAD.
                    let len = u32::try_from(n).unwrap_or(u32::MAX);
                    self.tx_cnt += Wrapping(len);
                    return Some((self.header(guest_cid, OP_RW, len, 0), n));
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("vsock {}: reading the host socket: {err}", self.key);
                    self.host_readable = false;
                    self.host_eof = true;
                    self.shutdown_owed |= SHUTDOWN_SEND;
                    if !self.host_write_broken {
                        self.host_write_failed("read failed");
                    }
                }
            }
        }
        if self.send_credit_update {
            return Some((self.header(guest_cid, OP_CREDIT_UPDATE, 0, 0), 0));
        }
        if self.wants_credit_request() {
            self.credit_requested = true;
            return Some((self.header(guest_cid, OP_CREDIT_REQUEST, 0, 0), 0));
        }
        let owed = self.shutdown_owed & !self.shutdown_sent;
        if owed != 0 && !self.is_done() {
            self.shutdown_sent |= owed;
            let flags = self.shutdown_sent;
            return Some((self.header(guest_cid, OP_SHUTDOWN, 0, flags), 0));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    const GUEST_CID: u64 = 3;
    const KEY: ConnKey = ConnKey {
        local_port: 1024,
        peer_port: 5000,
    };

    fn guest_header(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: KEY.peer_port,
            dst_port: KEY.local_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    fn pair(buf_alloc: u32) -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let conn = Connection::guest_initiated(ours, KEY, &guest_header(OP_REQUEST, buf_alloc, 0));
        (conn, theirs)
    }

    /// Builds packets until the connection has nothing more.
    fn drain(conn: &mut Connection, room: usize) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; room];
        while let Some((h, n)) = conn.next_packet(GUEST_CID, &mut buf) {
            out.push((h, buf[..n].to_vec()));
        }
        out
    }

    fn read_all(stream: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn host_data_respects_peer_credit() {
        let (mut conn, mut host) = pair(1000);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, OP_RESPONSE);
        host.write_all(&[7u8; 5000]).unwrap();
        conn.host_event(EventSet::IN);
        assert!(conn.has_rx_work());
        let packets = drain(&mut conn, 600);
        let data: usize = packets
            .iter()
            .filter(|(h, _)| h.op == OP_RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 1000);
        assert_eq!(packets.last().unwrap().0.op, OP_CREDIT_REQUEST);
        assert_eq!(conn.peer_credit(), 0);
        // Credit requested once, nothing more until the guest answers.
        assert!(!conn.has_rx_work());
        assert!(conn.wanted_events().is_empty());
        conn.update_peer_credit(&guest_header(OP_CREDIT_UPDATE, 1000, 400));
        let more: usize = drain(&mut conn, 4096)
            .iter()
            .filter(|(h, _)| h.op == OP_RW)
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(more, 400);
        // A fwd_cnt ahead of what was sent gives no credit.
        conn.update_peer_credit(&guest_header(OP_CREDIT_UPDATE, 1000, 100_000));
        assert_eq!(conn.peer_credit(), 0);
        // A shrunk buf_alloc neither.
        conn.update_peer_credit(&guest_header(OP_CREDIT_UPDATE, 10, 0));
        assert_eq!(conn.peer_credit(), 0);
    }

    #[test]
    fn guest_data_is_bounded_by_our_credit() {
        let (mut conn, mut host) = pair(65536);
        drain(&mut conn, 4096);
        let chunk = vec![1u8; MAX_PKT_PAYLOAD];
        let mut sent = 0usize;
        let err = loop {
            match conn.recv_data(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(err) => break err,
            }
            assert!(sent <= 2 * 1024 * 1024, "no back-pressure");
        };
        assert!(matches!(err, ConnError::CreditExceeded { .. }), "{err}");
        // At most our buf_alloc is held in the VMM.
        assert!(conn.to_host.len() <= CONN_BUF_ALLOC as usize);
        assert!(conn.wanted_events().contains(EventSet::OUT));
        // Once the host reads, the buffer drains and the guest hears of it.
        let mut got = 0;
        for _ in 0..100 {
            got += read_all(&mut host).len();
            conn.host_event(EventSet::OUT);
            if conn.to_host.is_empty() {
                break;
            }
        }
        got += read_all(&mut host).len();
        assert_eq!(got, sent);
        assert!(conn.to_host.is_empty());
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, OP_CREDIT_UPDATE);
        assert_eq!(packets[0].0.fwd_cnt as usize, sent);
        assert_eq!(packets[0].0.buf_alloc, CONN_BUF_ALLOC);
    }

    #[test]
    fn half_close_both_ways_then_done() {
        let (mut conn, mut host) = pair(65536);
        drain(&mut conn, 4096);
        conn.recv_data(b"request").unwrap();
        conn.recv_shutdown(SHUTDOWN_SEND);
        assert!(conn.host_write_shut);
        assert_eq!(read_all(&mut host), b"request");
        assert!(!conn.is_done());
        // The host still answers, then closes.
        host.write_all(b"answer").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        conn.host_event(EventSet::IN);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1, "{packets:?}");
        assert_eq!(packets[0].1, b"answer");
        // EOF with the other direction closed: no SHUTDOWN, the caller
        // resets.
        assert!(conn.is_done());
        assert!(conn.recv_data(b"late").is_err());
    }

    #[test]
    fn host_eof_sends_shutdown_send() {
        let (mut conn, host) = pair(65536);
        drain(&mut conn, 4096);
        host.shutdown(Shutdown::Write).unwrap();
        conn.host_event(EventSet::IN);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op, OP_SHUTDOWN);
        assert_eq!(packets[0].0.flags, SHUTDOWN_SEND);
        assert!(!conn.is_done());
        // The guest can still send.
        conn.recv_data(b"still").unwrap();
        conn.recv_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND);
        assert!(conn.is_done());
    }

    #[test]
    fn host_peer_gone_discards_guest_data() {
        let (mut conn, host) = pair(65536);
        drain(&mut conn, 4096);
        drop(host);
        conn.recv_data(b"into the void").unwrap();
        assert!(conn.host_write_broken);
        assert!(conn.wanted_events().contains(EventSet::IN));
        conn.host_event(EventSet::IN | EventSet::HANG_UP);
        assert!(drain(&mut conn, 4096).is_empty());
        assert!(conn.is_done());
    }

    #[test]
    fn response_writes_ok_line_before_data() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let key = ConnKey {
            local_port: 1 << 30,
            peer_port: 1234,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut conn = Connection::host_initiated(ours, key, deadline, None);
        assert_eq!(conn.deadline(), Some(deadline));
        assert!(conn.recv_data(b"early").is_err());
        let (h, _) = conn.next_packet(GUEST_CID, &mut []).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_REQUEST, 1 << 30, 1234));
        assert!(conn.next_packet(GUEST_CID, &mut []).is_none());
        let mut response = guest_header(OP_RESPONSE, 4096, 0);
        response.src_port = 1234;
        conn.established(&response).unwrap();
        assert!(conn.established(&response).is_err());
        conn.recv_data(b"hi").unwrap();
        assert_eq!(
            read_all(&mut client),
            format!("OK {}\nhi", 1 << 30).as_bytes()
        );
        // The line doesn't count as forwarded guest data.
        assert_eq!(conn.fwd_cnt.0, 2);
    }
}
