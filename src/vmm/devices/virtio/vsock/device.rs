//! The virtio-vsock device on the shared core: features, config space
//! and the rx / tx queue processing.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use log::{debug, error, warn};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::packet::{read_tx, RxBuffer};
use super::{
    VsockError, CONFIG_SPACE_SIZE, EVENT_QUEUE, MAX_GUEST_CID, MAX_PKT_PAYLOAD, MIN_GUEST_CID,
    NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::vmm::devices::virtio::{VirtioCore, VirtioDevice, TYPE_VSOCK, VIRTIO_F_VERSION_1};

/// `struct virtio_vsock_event` (section 5.10.6.6): one `le32` id.
const EVENT_SIZE: u32 = 4;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Malformed guest packets logged at `warn` before only every power of two
/// is (a hostile guest can't flood the log).
const BAD_PACKET_LOG_BURST: u64 = 16;

/// Rounds of tx / rx processing per event when the tx queue waits for rx
/// buffers to free reply space (bounds the time spent on one event).
const MAX_QUEUE_ROUNDS: usize = 64;

/// A virtio-vsock device whose host side is a Unix socket (see the module
/// docs of [`super`]).
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// Device and inode of the socket file we bound: removed on drop if
    /// the path still names it.
    socket_id: Option<(u64, u64)>,
    /// Features, the rx / tx / event queues, activation; its activate
    /// event is also written by `reset` to wake the event-manager thread
    /// (see the module docs).
    pub(super) core: VirtioCore,
    config_space: [u8; CONFIG_SPACE_SIZE],
    pub(super) muxer: Muxer,
    /// Payload of the packet being moved (either way).
    scratch: Vec<u8>,
    /// Malformed guest packets so far.
    bad_packets: u64,
    /// A transport reset was sent and the driver has not yet given its
    /// event buffer back (which it does once it has reset its sockets):
    /// nothing goes to the guest meanwhile, so no new connection can
    /// reach it before the reset and be reset with the old ones.
    pub(super) awaiting_reset: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("acked_features", &self.core.acked_features())
            .field("activated", &self.core.is_activated())
            .field("connections", &self.muxer.connections.len())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device giving the guest CID `guest_cid`, listening for host
    /// clients on the Unix socket `uds_path` (a stale socket file there is
    /// replaced; any other file is an error).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        Vsock::with_listener(guest_cid, uds_path, None)
    }

    /// Binds the Unix socket host clients connect to at `uds_path` (a
    /// stale socket file there is replaced; any other file is an error),
    /// for [`Vsock::with_listener`]: a VMM that gives up its privileges
    /// before it builds its devices binds it first.
    pub fn bind_listener(uds_path: &Path) -> Result<UnixListener, VsockError> {
        let path = || uds_path.to_path_buf();
        match fs::symlink_metadata(uds_path) {
            Ok(meta) if meta.file_type().is_socket() => {
                debug!("vsock: replacing stale socket {}", uds_path.display());
                fs::remove_file(uds_path).map_err(|source| VsockError::RemoveStale {
                    path: path(),
                    source,
                })?;
            }
            Ok(_) => return Err(VsockError::NotASocket { path: path() }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(VsockError::Stat {
                    path: path(),
                    source,
                })
            }
        }
        UnixListener::bind(uds_path).map_err(|source| VsockError::Bind {
            path: path(),
            source,
        })
    }

    /// [`Vsock::new`] on `listener` when given (bound at `uds_path` by
    /// [`Vsock::bind_listener`]).
    pub fn with_listener(
        guest_cid: u64,
        uds_path: &Path,
        listener: Option<UnixListener>,
    ) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid { cid: guest_cid });
        }
        let path = || uds_path.to_path_buf();
        let core = VirtioCore::new(
            TYPE_VSOCK,
            format!("vsock {}", uds_path.display()),
            1u64 << VIRTIO_F_VERSION_1,
            &[QUEUE_SIZE; NUM_QUEUES],
        )?;
        let timer = TimerFd::new().map_err(|errno| VsockError::Timer {
            path: path(),
            source: std::io::Error::from_raw_os_error(errno.errno()),
        })?;
        let listener = match listener {
            Some(l) => l,
            None => Vsock::bind_listener(uds_path)?,
        };
        let socket_id = fs::symlink_metadata(uds_path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        // From here on, dropping the device removes the socket file.
        let vsock = Vsock {
            guest_cid,
            uds_path: path(),
            socket_id,
            core,
            config_space: guest_cid.to_le_bytes(),
            muxer: Muxer::new(guest_cid, uds_path, listener, timer),
            scratch: vec![0; MAX_PKT_PAYLOAD],
            bad_packets: 0,
            awaiting_reset: false,
        };
        vsock
            .muxer
            .listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: path(),
                source,
            })?;
        debug!("vsock {}: guest CID {guest_cid}", uds_path.display());
        Ok(vsock)
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// `evt` is written when a host client asks for a checkpoint (its
    /// `CHECKPOINT` line, [`super::muxer::CHECKPOINT_LINE`]).
    pub fn on_checkpoint_request(&mut self, evt: vmm_sys_util::eventfd::EventFd) {
        self.muxer.checkpoint = Some(evt);
    }

    /// Whether the checkpoint a host client asked for leaves the VM
    /// running.
    pub fn checkpoint_leaves_running(&self) -> bool {
        self.muxer.checkpoint_leaves_running()
    }

    /// Answers the host client that asked for the checkpoint.
    pub fn checkpoint_done(&mut self, answer: &str) {
        self.muxer.checkpoint_done(answer);
    }

    /// The socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Processes the tx queue, then fills rx buffers, and again while the
    /// tx queue was held back for reply space that rx made; interrupts the
    /// driver once if any buffer was used.
    pub fn process_queues(&mut self) -> Result<(), VsockError> {
        let mut tx_used = false;
        let mut rx_used = false;
        for _ in 0..MAX_QUEUE_ROUNDS {
            let (used, throttled) = self.process_tx()?;
            tx_used |= used;
            let used = self.process_rx()?;
            rx_used |= used;
            if !(throttled && used) {
                break;
            }
        }
        self.signal_used(tx_used, rx_used)
    }

    /// Hands every available tx packet to the muxer (while it has room for
    /// replies). Returns whether any chain was used, and whether packets
    /// were left for want of reply space.
    pub(super) fn process_tx(&mut self) -> Result<(bool, bool), VsockError> {
        let Vsock {
            core,
            muxer,
            scratch,
            bad_packets,
            uds_path,
            ..
        } = self;
        let mut active = core.active_mut()?;
        let mem = active.mem;
        let mut used = false;
        loop {
            if !muxer.can_take_tx() {
                return Ok((used, true));
            }
            let Some(chain) = active.queue(TX_QUEUE)?.pop_descriptor_chain(mem) else {
                return Ok((used, false));
            };
            let head = chain.head_index();
            match read_tx(mem, chain, scratch) {
                Ok(header) => {
                    // read_tx checked len <= MAX_PKT_PAYLOAD == scratch.len().
                    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
                    let payload = scratch.get(..len).unwrap_or_default();
                    if let Err(err) = muxer.guest_packet(&header, payload) {
                        log_bad_packet(bad_packets, uds_path, &err);
                    }
                }
                Err(err) => log_bad_packet(bad_packets, uds_path, &err),
            }
            used |= active.add_used(TX_QUEUE, head, 0)?;
        }
    }

    /// Fills rx buffers with what the muxer owes the guest, until either
    /// runs out. Returns whether any buffer was used.
    pub(super) fn process_rx(&mut self) -> Result<bool, VsockError> {
        let Vsock {
            core,
            muxer,
            scratch,
            bad_packets,
            uds_path,
            ..
        } = self;
        if self.awaiting_reset {
            return Ok(false);
        }
        let mut active = core.active_mut()?;
        let mem = active.mem;
        let mut used = false;
        while muxer.has_rx_work() {
            let Some(chain) = active.queue(RX_QUEUE)?.pop_descriptor_chain(mem) else {
                // Continued when the guest adds buffers.
                break;
            };
            let head = chain.head_index();
            let buffer = match RxBuffer::new(mem, chain) {
                Ok(buffer) => buffer,
                Err(err) => {
                    log_bad_packet(bad_packets, uds_path, &err);
                    used |= active.add_used(RX_QUEUE, head, 0)?;
                    continue;
                }
            };
            let room = buffer.payload_room();
            let Some((header, len)) = muxer.next_rx_packet(&mut scratch[..room]) else {
                // Nothing after all: the buffer stays the guest's.
                active.queue(RX_QUEUE)?.go_to_previous_position();
                break;
            };
            let used_len = match buffer.write(&header, &scratch[..len]) {
                Ok(used_len) => used_len,
                Err(err) => {
                    // RxBuffer::new checked the memory: not expected.
                    error!(
                        "vsock {}: writing an rx packet (op {}): {err}",
                        uds_path.display(),
                        header.op
                    );
                    0
                }
            };
            used |= active.add_used(RX_QUEUE, head, used_len)?;
        }
        Ok(used)
    }

    /// Tells the driver its transport was reset
    /// (`VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, section 5.10.6.6): a VM
    /// restored from a checkpoint has none of the connections its guest
    /// had, and the guest closes them all (its listening sockets stay).
    /// Takes one buffer of the event queue; false when the driver offered
    /// none (or one too small, which is returned unwritten).
    pub fn send_transport_reset(&mut self) -> Result<bool, VsockError> {
        let mut active = self.core.active_mut()?;
        let mem = active.mem;
        let Some(chain) = active.queue(EVENT_QUEUE)?.pop_descriptor_chain(mem) else {
            return Ok(false);
        };
        let head = chain.head_index();
        let room = chain
            .clone()
            .find(|d| d.is_write_only() && d.len() >= EVENT_SIZE)
            .map(|d| d.addr());
        let written = room.is_some_and(|addr| {
            vm_memory::Bytes::write_obj(mem, EVENT_TRANSPORT_RESET.to_le(), addr).is_ok()
        });
        let len = if written { EVENT_SIZE } else { 0 };
        active.add_used(EVENT_QUEUE, head, len)?;
        self.awaiting_reset = written;
        self.core.signal_used(&[EVENT_QUEUE])?;
        Ok(written)
    }

    /// Interrupts the driver once if a queue with used buffers asks for
    /// it.
    fn signal_used(&mut self, tx_used: bool, rx_used: bool) -> Result<(), VsockError> {
        let used: &[usize] = match (rx_used, tx_used) {
            (true, true) => &[RX_QUEUE, TX_QUEUE],
            (true, false) => &[RX_QUEUE],
            (false, true) => &[TX_QUEUE],
            (false, false) => &[],
        };
        if !used.is_empty() && self.core.is_activated() {
            self.core.signal_used(used)?;
        }
        Ok(())
    }
}

/// Logs a malformed guest packet: the first few at `warn`, then only every
/// power of two.
fn log_bad_packet(count: &mut u64, uds_path: &Path, err: &dyn std::fmt::Display) {
    *count = count.saturating_add(1);
    if *count <= BAD_PACKET_LOG_BURST || count.is_power_of_two() {
        warn!(
            "vsock {}: guest packet: {err} ({count} malformed so far)",
            uds_path.display()
        );
    } else {
        debug!("vsock {}: guest packet: {err}", uds_path.display());
    }
}

impl VirtioDevice for Vsock {
    fn core(&self) -> &VirtioCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut VirtioCore {
        &mut self.core
    }

    /// `guest_cid` is read-only (section 5.10.4): writes take the default
    /// (ignored).
    fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    fn on_reset(&mut self) -> bool {
        // The guest forgot its connections: close their host sockets (on
        // the event thread, which takes them out of epoll first).
        self.muxer.reset_connections();
        self.core.wake_event_thread();
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let Some(id) = self.socket_id else {
            return;
        };
        match fs::symlink_metadata(&self.uds_path) {
            Ok(meta) if (meta.dev(), meta.ino()) == id => {
                match fs::remove_file(&self.uds_path) {
                    Ok(()) => {}
                    // A VMM running as its own user in a directory that
                    // is root's: the directory goes with the container.
                    Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                        log::debug!(
                            "vsock: {} is left to delete: {err}",
                            self.uds_path.display()
                        );
                    }
                    Err(err) => warn!("vsock: removing {}: {err}", self.uds_path.display()),
                }
            }
            // Replaced by someone else, or gone: not ours to remove.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Write};
    use std::net::Shutdown;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::super::packet::Header;
    use super::super::test_utils::{
        guest_hdr, memory, read_now, Desc, GuestQueue, Harness, EVENT_BASE, F_WRITE, GUEST_CID,
        RX_BASE, RX_DATA, RX_SLOTS, RX_SLOT_SIZE, TX_BASE,
    };
    use super::super::{
        CONN_BUF_ALLOC, EPHEMERAL_PORT_FIRST, EVENT_QUEUE, HDR_SIZE, HOST_CID, MAX_PENDING_CLIENTS,
        MAX_PENDING_REPLIES, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_INVALID, OP_REQUEST,
        OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
    };
    use super::*;
    use crate::vmm::devices::virtio::block::test_utils::MEM_SIZE;
    use crate::vmm::devices::virtio::{ActivateError, DeviceError};

    const GUEST_PORT: u32 = 5000;
    const SERVICE_PORT: u32 = 1024;

    fn service(h: &Harness, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", h.uds.display())).unwrap()
    }

    /// A guest-initiated connection to a service: (the service's end of
    /// it). The guest advertises `buf_alloc`.
    fn guest_connect(h: &mut Harness, listener: &UnixListener, buf_alloc: u32) -> UnixStream {
        let mut request = guest_hdr(OP_REQUEST, GUEST_PORT, SERVICE_PORT);
        request.buf_alloc = buf_alloc;
        h.send(request, &[]);
        let response = h.recv_one();
        assert_eq!(
            (
                response.op,
                response.src_cid,
                response.dst_cid,
                response.src_port,
                response.dst_port,
                response.type_,
                response.len,
                response.buf_alloc,
                response.fwd_cnt
            ),
            (
                OP_RESPONSE,
                HOST_CID,
                GUEST_CID,
                SERVICE_PORT,
                GUEST_PORT,
                TYPE_STREAM,
                0,
                CONN_BUF_ALLOC,
                0
            )
        );
        let (host, _) = listener.accept().unwrap();
        host
    }

    /// A host client that sent `CONNECT <port>`; returns it and the
    /// request the guest got.
    fn host_connect(h: &mut Harness, port: u32) -> (UnixStream, Header) {
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        h.drain();
        let request = h.recv_one();
        assert_eq!(
            (
                request.op,
                request.src_cid,
                request.dst_cid,
                request.dst_port,
                request.type_,
                request.buf_alloc
            ),
            (
                OP_REQUEST,
                HOST_CID,
                GUEST_CID,
                port,
                TYPE_STREAM,
                CONN_BUF_ALLOC
            )
        );
        assert!(request.src_port >= EPHEMERAL_PORT_FIRST);
        (client, request)
    }

    /// The guest's answer to `request`.
    fn reply(request: &Header, op: u16) -> Header {
        guest_hdr(op, request.dst_port, request.src_port)
    }

    fn rw_payloads(packets: &[(Header, Vec<u8>)]) -> Vec<u8> {
        packets
            .iter()
            .filter(|(h, _)| h.op == OP_RW)
            .flat_map(|(_, p)| p.clone())
            .collect()
    }

    #[test]
    fn new_reports_type_features_and_config() {
        let h = Harness::inactive();
        let mut v = h.vsock.lock().unwrap();
        assert_eq!(v.device_type(), TYPE_VSOCK);
        assert_eq!(v.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(v.queue_events().len(), 3);
        assert_eq!(v.avail_features(), 1 << VIRTIO_F_VERSION_1);
        v.set_acked_features(u64::MAX);
        assert_eq!(v.acked_features(), 1 << VIRTIO_F_VERSION_1);
        assert_eq!(v.guest_cid(), GUEST_CID);
        assert_eq!(v.uds_path(), h.uds);
        let mut cid = [0u8; 8];
        v.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
        let mut half = [0xffu8; 4];
        v.read_config(4, &mut half);
        assert_eq!(half, [0; 4]);
        v.read_config(0, &mut half);
        assert_eq!(u32::from_le_bytes(half), 3);
        v.read_config(8, &mut half);
        assert_eq!(half, [0; 4]);
        v.read_config(u64::MAX, &mut half);
        assert_eq!(half, [0; 4]);
        v.write_config(0, &[9; 8]);
        v.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    }

    #[test]
    fn new_checks_cid_and_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        for cid in [0, 1, 2, 0xffff_ffff, 1 << 32, u64::MAX] {
            let err = Vsock::new(cid, &path).unwrap_err();
            assert!(matches!(err, VsockError::InvalidCid { .. }), "{err}");
        }
        assert!(!path.exists());

        let file = dir.path().join("file");
        fs::write(&file, b"not a socket").unwrap();
        let err = Vsock::new(3, &file).unwrap_err();
        assert!(matches!(err, VsockError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains(&file.display().to_string()));
        assert_eq!(fs::read(&file).unwrap(), b"not a socket");

        let err = Vsock::new(3, Path::new("/nonexistent/husk/v.sock")).unwrap_err();
        assert!(matches!(err, VsockError::Bind { .. }), "{err}");

        // A stale socket (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let vsock = Vsock::new(3, &path).unwrap();
        UnixStream::connect(&path).unwrap();
        // Removed on drop.
        drop(vsock);
        assert!(!path.exists());

        // A socket file someone else put there since is left alone.
        let vsock = Vsock::new(3, &path).unwrap();
        fs::remove_file(&path).unwrap();
        let _other = UnixListener::bind(&path).unwrap();
        drop(vsock);
        assert!(path.exists());
    }

    #[test]
    fn activation_checks_queues() {
        let mut h = Harness::inactive();
        let mem = h.mem.clone();
        let interrupt = h.interrupt.clone();
        let mut v = h.vsock.lock().unwrap();
        let err = v
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![h.rxq.create_queue(), h.txq.create_queue()],
            )
            .unwrap_err();
        assert!(matches!(
            err,
            ActivateError::QueueCount {
                expected: 3,
                got: 2
            }
        ));
        let mut bad = h.evq.create_queue();
        bad.set_ready(false);
        let err = v
            .activate(
                mem.clone(),
                interrupt.clone(),
                vec![h.rxq.create_queue(), h.txq.create_queue(), bad],
            )
            .unwrap_err();
        assert!(matches!(err, ActivateError::BadQueue { index: 2 }));
        assert!(!v.is_activated());
        assert!(matches!(
            v.process_rx(),
            Err(VsockError::Device(DeviceError::NotActivated { .. }))
        ));
        assert!(matches!(
            v.process_tx(),
            Err(VsockError::Device(DeviceError::NotActivated { .. }))
        ));
        drop(v);
        h.activate();
        assert!(h.vsock.lock().unwrap().is_activated());
        assert!(h.vsock.lock().unwrap().core.queue_events_registered());
        // The event queue is accepted and left alone.
        h.evq.add_chain(&[(0x1_0000, 4, F_WRITE)]);
        h.notify(EVENT_QUEUE);
        h.drain();
        assert_eq!(h.evq.used_idx(), 0);
    }

    #[test]
    fn a_transport_reset_takes_one_event_buffer_and_interrupts() {
        let mut h = Harness::new();
        // None offered yet: nothing is sent.
        assert!(!h.vsock.lock().unwrap().send_transport_reset().unwrap());
        h.mem
            .write_obj(0xffff_ffffu32, vm_memory::GuestAddress(0x1_0000))
            .unwrap();
        h.evq.add_chain(&[(0x1_0000, 4, F_WRITE)]);
        // One too small is given back unwritten.
        h.evq.add_chain(&[(0x1_1000, 2, F_WRITE)]);
        let before = h.interrupt.count();
        assert!(h.vsock.lock().unwrap().send_transport_reset().unwrap());
        assert_eq!(h.evq.used_idx(), 1);
        let id: u32 = h.mem.read_obj(vm_memory::GuestAddress(0x1_0000)).unwrap();
        assert_eq!(id, EVENT_TRANSPORT_RESET);
        assert!(h.interrupt.count() > before);
        assert!(!h.vsock.lock().unwrap().send_transport_reset().unwrap());
        assert_eq!(h.evq.used_idx(), 2);
    }

    #[test]
    fn after_a_transport_reset_nothing_reaches_the_guest_until_it_gives_its_buffer_back() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        h.evq.add_chain(&[(0x1_0000, 4, F_WRITE)]);
        assert!(h.vsock.lock().unwrap().send_transport_reset().unwrap());
        // A host client connects meanwhile: its request waits.
        let mut client = std::os::unix::net::UnixStream::connect(&h.uds).unwrap();
        std::io::Write::write_all(&mut client, b"CONNECT 1024\n").unwrap();
        h.drain();
        let before = h.rxq.used_idx();
        assert_eq!(
            before, 0,
            "a packet went to the guest before it reset its sockets"
        );
        // The driver handled the event and posts the buffer again.
        h.evq.add_chain(&[(0x1_0000, 4, F_WRITE)]);
        h.notify(EVENT_QUEUE);
        h.drain();
        assert!(h.rxq.used_idx() > before, "the connection request went out");
    }

    #[test]
    fn guest_connects_to_host_service_and_half_closes() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        let listener = service(&h, SERVICE_PORT);
        let mut host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
        assert_eq!(h.connections(), 1);
        assert!(h.interrupt.count() >= 1);

        // Guest to host.
        h.send(guest_hdr(OP_RW, GUEST_PORT, SERVICE_PORT), b"hello host");
        assert_eq!(read_now(&mut host), (b"hello host".to_vec(), false));
        // Host to guest.
        host.write_all(b"hello guest").unwrap();
        h.drain();
        let packets = h.recv();
        assert_eq!(packets.len(), 1);
        let (rw, payload) = &packets[0];
        assert_eq!(
            (rw.op, rw.src_port, rw.dst_port, rw.len, rw.fwd_cnt),
            (OP_RW, SERVICE_PORT, GUEST_PORT, 11, 10)
        );
        assert_eq!(payload, b"hello guest");

        // The guest is done sending: the service sees EOF but can answer.
        let mut shutdown = guest_hdr(OP_SHUTDOWN, GUEST_PORT, SERVICE_PORT);
        shutdown.flags = SHUTDOWN_SEND;
        h.send(shutdown, &[]);
        assert_eq!(read_now(&mut host), (vec![], true));
        host.write_all(b"bye").unwrap();
        h.drain();
        assert_eq!(rw_payloads(&h.recv()), b"bye");
        assert_eq!(h.connections(), 1);
        // Both directions closed: the guest gets a reset.
        drop(host);
        h.drain();
        let rst = h.recv_one();
        assert_eq!(
            (rst.op, rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
            (OP_RST, HOST_CID, GUEST_CID, SERVICE_PORT, GUEST_PORT)
        );
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn host_closes_first_then_guest() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        let listener = service(&h, SERVICE_PORT);
        let mut host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
        host.write_all(b"last words").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        h.drain();
        let packets = h.recv();
        assert_eq!(rw_payloads(&packets), b"last words");
        let shutdown = packets.last().unwrap().0;
        assert_eq!((shutdown.op, shutdown.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        // The guest may still send.
        h.send(guest_hdr(OP_RW, GUEST_PORT, SERVICE_PORT), b"ack");
        assert_eq!(read_now(&mut host), (b"ack".to_vec(), false));
        // Guest close(): SHUTDOWN both ways, answered with a reset.
        let mut shutdown = guest_hdr(OP_SHUTDOWN, GUEST_PORT, SERVICE_PORT);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        h.send(shutdown, &[]);
        assert_eq!(h.recv_one().op, OP_RST);
        assert_eq!(read_now(&mut host), (vec![], true));
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn guest_connect_without_service_is_reset() {
        let mut h = Harness::new();
        h.add_rx_buffers(4);
        h.send(guest_hdr(OP_REQUEST, GUEST_PORT, 9), &[]);
        let rst = h.recv_one();
        assert_eq!(
            (rst.op, rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
            (OP_RST, HOST_CID, GUEST_CID, 9, GUEST_PORT)
        );
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn host_connects_to_guest() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        let mut client = UnixStream::connect(&h.uds).unwrap();
        // Bytes right after the line wait for the connection.
        client.write_all(b"CONNECT 1234\nearly").unwrap();
        h.drain();
        let request = h.recv_one();
        assert_eq!((request.op, request.dst_port), (OP_REQUEST, 1234));
        assert_eq!(read_now(&mut client), (vec![], false));

        h.send(reply(&request, OP_RESPONSE), &[]);
        let ok = format!("OK {}\n", request.src_port);
        assert_eq!(read_now(&mut client), (ok.into_bytes(), false));
        let packets = h.recv();
        assert_eq!(rw_payloads(&packets), b"early");
        assert_eq!(packets[0].0.dst_port, 1234);

        client.write_all(b"ping").unwrap();
        h.drain();
        assert_eq!(rw_payloads(&h.recv()), b"ping");
        h.send(guest_hdr(OP_RW, 1234, request.src_port), b"pong");
        assert_eq!(read_now(&mut client), (b"pong".to_vec(), false));

        // Another client to the same guest port gets another local port.
        let (_client2, request2) = host_connect(&mut h, 1234);
        assert_ne!(request2.src_port, request.src_port);
        assert_eq!(h.connections(), 2);
    }

    #[test]
    fn guest_refusal_closes_the_client() {
        let mut h = Harness::new();
        h.add_rx_buffers(4);
        let (mut client, request) = host_connect(&mut h, 1234);
        h.send(reply(&request, OP_RST), &[]);
        assert_eq!(read_now(&mut client), (vec![], true));
        assert_eq!(h.connections(), 0);
        // No reset in reply to a reset.
        assert!(h.recv().is_empty());
    }

    #[test]
    fn guest_reset_closes_an_established_client() {
        let mut h = Harness::new();
        h.add_rx_buffers(4);
        let (mut client, request) = host_connect(&mut h, 1234);
        h.send(reply(&request, OP_RESPONSE), &[]);
        let (line, eof) = read_now(&mut client);
        assert!(line.starts_with(b"OK ") && !eof);
        h.send(reply(&request, OP_RW), b"partial");
        h.send(reply(&request, OP_RST), &[]);
        assert_eq!(read_now(&mut client), (b"partial".to_vec(), true));
        assert_eq!(h.connections(), 0);
        assert!(h.recv().is_empty());
    }

    #[test]
    fn unanswered_connects_time_out() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        h.vsock.lock().unwrap().muxer.connect_timeout = Duration::from_millis(50);
        let (mut client, request) = host_connect(&mut h, 1234);
        let mut idle = UnixStream::connect(&h.uds).unwrap();
        h.drain();
        assert_eq!(h.vsock.lock().unwrap().muxer.pending_clients(), 1);
        h.run_until(Duration::from_secs(5), |h| {
            h.connections() == 0 && h.vsock.lock().unwrap().muxer.pending_clients() == 0
        });
        assert_eq!(read_now(&mut client), (vec![], true));
        assert_eq!(read_now(&mut idle), (vec![], true));
        // The guest is told to forget the request.
        let rst = h.recv_one();
        assert_eq!(
            (rst.op, rst.src_port, rst.dst_port),
            (OP_RST, request.src_port, 1234)
        );
        // A late answer is reset.
        h.send(reply(&request, OP_RESPONSE), &[]);
        assert_eq!(h.recv_one().op, OP_RST);
        // The timer is quiet again.
        assert_eq!(h.drain(), 0);
    }

    #[test]
    fn requests_never_delivered_need_no_reset() {
        // No rx buffers: the request can't go out before the deadline.
        let mut h = Harness::new();
        h.vsock.lock().unwrap().muxer.connect_timeout = Duration::from_millis(20);
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(b"CONNECT 1234\n").unwrap();
        h.drain();
        assert_eq!(h.connections(), 1);
        h.run_until(Duration::from_secs(5), |h| h.connections() == 0);
        assert_eq!(read_now(&mut client), (vec![], true));
        h.add_rx_buffers(4);
        assert!(h.recv().is_empty());
    }

    #[test]
    fn malformed_connect_lines_close_the_client() {
        let mut h = Harness::new();
        h.add_rx_buffers(4);
        let long = "9".repeat(100);
        for line in [
            "HELLO\n",
            "CONNECT\n",
            "CONNECT \n",
            "CONNECT abc\n",
            "CONNECT 99999999999\n",
            "CONNECT +5\n",
            "CONNECT 1 2\n",
            "connect 5\n",
            "CONNECT 5\r\n",
            long.as_str(),
        ] {
            let mut client = UnixStream::connect(&h.uds).unwrap();
            client.write_all(line.as_bytes()).unwrap();
            h.drain();
            assert_eq!(read_now(&mut client), (vec![], true), "{line:?}");
        }
        // Closing before the line.
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(b"CONN").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        h.drain();
        assert_eq!(read_now(&mut client), (vec![], true));
        assert_eq!(h.vsock.lock().unwrap().muxer.pending_clients(), 0);
        assert_eq!(h.connections(), 0);
        assert!(h.recv().is_empty());
    }

    #[test]
    fn pending_clients_are_bounded() {
        let mut h = Harness::new();
        let mut clients: Vec<UnixStream> = (0..MAX_PENDING_CLIENTS + 1)
            .map(|_| UnixStream::connect(&h.uds).unwrap())
            .collect();
        h.drain();
        assert_eq!(
            h.vsock.lock().unwrap().muxer.pending_clients(),
            MAX_PENDING_CLIENTS
        );
        let closed = clients
            .iter_mut()
            .map(|client| read_now(client).1)
            .filter(|&eof| eof)
            .count();
        assert_eq!(closed, 1);
    }

    #[test]
    fn device_respects_guest_credit() {
        let mut h = Harness::new();
        h.add_rx_buffers(32);
        let listener = service(&h, SERVICE_PORT);
        let mut host = guest_connect(&mut h, &listener, 1000);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        host.write_all(&data).unwrap();

        let mut guest = guest_hdr(OP_CREDIT_UPDATE, GUEST_PORT, SERVICE_PORT);
        guest.buf_alloc = 1000;
        let mut received = Vec::new();
        let mut credit_requests = 0;
        // The guest consumes what it gets, then tells the device.
        for (round, next_buf_alloc) in [(0, 1000), (1, 4096), (2, 4096)] {
            h.drain();
            for (header, payload) in h.recv() {
                match header.op {
                    OP_RW => {
                        received.extend_from_slice(&payload);
                        let in_flight = received.len() as u32 - guest.fwd_cnt;
                        assert!(
                            in_flight <= guest.buf_alloc,
                            "round {round}: {in_flight} bytes in flight, credit {}",
                            guest.buf_alloc
                        );
                    }
                    OP_CREDIT_REQUEST => credit_requests += 1,
                    op => panic!("unexpected op {op}"),
                }
            }
            assert_eq!(received.len(), [1000, 2000, 5000][round]);
            h.add_rx_buffers(16);
            guest.buf_alloc = next_buf_alloc;
            guest.fwd_cnt = received.len() as u32;
            h.send(guest, &[]);
        }
        h.drain();
        assert!(h.recv().is_empty());
        assert_eq!(received, data);
        assert!(credit_requests >= 1);
        // A credit request is answered with our credit.
        h.send(guest_hdr(OP_CREDIT_REQUEST, GUEST_PORT, SERVICE_PORT), &[]);
        let update = h.recv_one();
        assert_eq!(
            (update.op, update.buf_alloc, update.fwd_cnt),
            (OP_CREDIT_UPDATE, CONN_BUF_ALLOC, 0)
        );
    }

    #[test]
    fn bulk_transfer_both_ways() {
        const TOTAL: usize = 1 << 20;
        const GUEST_BUF: u32 = 64 * 1024;
        const CHUNK: usize = 16 * 1024 - HDR_SIZE;
        let mut h = Harness::new();
        h.add_rx_buffers(32);
        let listener = service(&h, SERVICE_PORT);
        let mut host = guest_connect(&mut h, &listener, GUEST_BUF);
        host.set_nonblocking(true).unwrap();
        let to_guest: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
        let to_host: Vec<u8> = (0..TOTAL).map(|i| (i * 13 % 241) as u8).collect();
        let (mut host_written, mut guest_sent) = (0, 0);
        let (mut at_guest, mut at_host) = (Vec::new(), Vec::new());
        // The device's credit as the guest last heard it.
        let (mut dev_buf_alloc, mut dev_fwd_cnt) = (CONN_BUF_ALLOC, 0u32);
        // What the guest last told the device it consumed.
        let mut guest_fwd_cnt = 0u32;
        for _ in 0..10_000 {
            if at_guest.len() == TOTAL && at_host.len() == TOTAL {
                break;
            }
            if host_written < TOTAL {
                match host.write(&to_guest[host_written..]) {
                    Ok(n) => host_written += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) => panic!("{err}"),
                }
            }
            let credit = dev_buf_alloc - (guest_sent as u32 - dev_fwd_cnt);
            let n = (credit as usize).min(CHUNK).min(TOTAL - guest_sent);
            if n > 0 {
                let mut rw = guest_hdr(OP_RW, GUEST_PORT, SERVICE_PORT);
                rw.buf_alloc = GUEST_BUF;
                rw.fwd_cnt = guest_fwd_cnt;
                h.send(rw, &to_host[guest_sent..guest_sent + n]);
                guest_sent += n;
            }
            h.drain();
            at_host.extend(read_now(&mut host).0);
            h.drain();
            let packets = h.recv();
            for (header, payload) in &packets {
                dev_buf_alloc = header.buf_alloc;
                dev_fwd_cnt = header.fwd_cnt;
                if header.op == OP_RW {
                    at_guest.extend_from_slice(payload);
                    assert!(at_guest.len() as u32 - guest_fwd_cnt <= GUEST_BUF);
                }
            }
            if !packets.is_empty() {
                h.add_rx_buffers(packets.len());
                guest_fwd_cnt = at_guest.len() as u32;
                let mut update = guest_hdr(OP_CREDIT_UPDATE, GUEST_PORT, SERVICE_PORT);
                update.buf_alloc = GUEST_BUF;
                update.fwd_cnt = guest_fwd_cnt;
                h.send(update, &[]);
            }
        }
        assert!(at_guest == to_guest, "host to guest data differs");
        assert!(at_host == to_host, "guest to host data differs");
    }

    #[test]
    fn protocol_violations_reset_the_connection() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        let listener = service(&h, SERVICE_PORT);

        // Data beyond the credit the device gave.
        let mut host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
        let chunk = vec![0u8; 16 * 1024 - HDR_SIZE];
        let mut sent = 0;
        while h.connections() == 1 {
            h.send(guest_hdr(OP_RW, GUEST_PORT, SERVICE_PORT), &chunk);
            sent += chunk.len();
            assert!(sent < 4 * 1024 * 1024, "never reset");
        }
        assert!(sent > CONN_BUF_ALLOC as usize);
        let packets = h.recv();
        assert_eq!(packets.last().unwrap().0.op, OP_RST, "{packets:?}");
        let mut got = 0;
        loop {
            let (data, eof) = read_now(&mut host);
            got += data.len();
            if eof {
                break;
            }
        }
        assert!(got < sent);

        // Data after SHUTDOWN SEND, and a RESPONSE on an open connection.
        for (flags, op) in [(SHUTDOWN_SEND, OP_RW), (0, OP_RESPONSE)] {
            h.add_rx_buffers(4);
            let _host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
            if flags != 0 {
                let mut shutdown = guest_hdr(OP_SHUTDOWN, GUEST_PORT, SERVICE_PORT);
                shutdown.flags = flags;
                h.send(shutdown, &[]);
            }
            h.send(guest_hdr(op, GUEST_PORT, SERVICE_PORT), b"x");
            assert_eq!(h.recv_one().op, OP_RST);
            assert_eq!(h.connections(), 0);
        }

        // A second REQUEST for an open connection.
        h.add_rx_buffers(4);
        let _host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
        h.send(guest_hdr(OP_REQUEST, GUEST_PORT, SERVICE_PORT), &[]);
        assert_eq!(h.recv_one().op, OP_RST);
        assert_eq!(h.connections(), 0);
    }

    #[test]
    fn malformed_tx_packets_are_dropped_or_reset() {
        let mut h = Harness::new();
        h.add_rx_buffers(32);
        let end = MEM_SIZE as u64;
        let addr = h.next_tx_slot();
        // Name, header, chain, the op of the expected answer.
        type Case = (&'static str, Header, Vec<Desc>, Option<u16>);
        let mut cases: Vec<Case> = Vec::new();
        let unknown_rw = guest_hdr(OP_RW, GUEST_PORT, 77);
        let mut long = unknown_rw;
        long.len = 100;
        let mut huge = unknown_rw;
        huge.len = 70_000;
        let mut wrong_src = unknown_rw;
        wrong_src.src_cid = 4;
        let mut wrong_dst = unknown_rw;
        wrong_dst.dst_cid = 5;
        let mut seqpacket = unknown_rw;
        seqpacket.type_ = 2;
        let hdr_len = HDR_SIZE as u32;
        cases.push(("short header", unknown_rw, vec![(addr, 20, 0)], None));
        cases.push((
            "len past the chain",
            long,
            vec![(addr, hdr_len + 10, 0)],
            None,
        ));
        cases.push((
            "len past the maximum",
            huge,
            vec![(addr, hdr_len, 0), (0x8_0000, 70_000, 0)],
            None,
        ));
        cases.push(("wrong src_cid", wrong_src, vec![(addr, hdr_len, 0)], None));
        cases.push(("wrong dst_cid", wrong_dst, vec![(addr, hdr_len, 0)], None));
        cases.push((
            "outside memory",
            unknown_rw,
            vec![(end - 8, hdr_len, 0)],
            None,
        ));
        cases.push((
            "address overflow",
            unknown_rw,
            vec![(u64::MAX - 10, hdr_len, 0)],
            None,
        ));
        cases.push((
            "writable only",
            unknown_rw,
            vec![(addr, hdr_len, F_WRITE)],
            None,
        ));
        cases.push((
            "unknown connection",
            unknown_rw,
            vec![(addr, hdr_len, 0)],
            Some(OP_RST),
        ));
        cases.push((
            "unknown type",
            seqpacket,
            vec![(addr, hdr_len, 0)],
            Some(OP_RST),
        ));
        for op in [OP_INVALID, 8, 0xffff] {
            cases.push((
                "unknown op",
                guest_hdr(op, GUEST_PORT, 77),
                vec![(addr, hdr_len, 0)],
                Some(OP_RST),
            ));
        }
        cases.push((
            "reset of nothing",
            guest_hdr(OP_RST, GUEST_PORT, 77),
            vec![(addr, hdr_len, 0)],
            None,
        ));
        for (name, header, descs, answer) in cases {
            h.mem
                .write_slice(&header.to_bytes(), GuestAddress(addr))
                .unwrap();
            let used = h.txq.used_idx();
            h.txq.add_chain(&descs);
            h.notify(TX_QUEUE);
            h.drain();
            assert_eq!(h.txq.used_idx(), used.wrapping_add(1), "{name}");
            let packets = h.recv();
            match answer {
                None => assert!(packets.is_empty(), "{name}: {packets:?}"),
                Some(op) => {
                    assert_eq!(packets.len(), 1, "{name}");
                    let rst = packets[0].0;
                    assert_eq!(
                        (rst.op, rst.src_port, rst.dst_port),
                        (op, 77, GUEST_PORT),
                        "{name}"
                    );
                }
            }
        }
        assert!(h.vsock.lock().unwrap().bad_packets >= 12);

        // A descriptor that links to itself: the chain ends at the queue
        // size; the packet is read once.
        h.mem
            .write_slice(&unknown_rw.to_bytes(), GuestAddress(addr))
            .unwrap();
        h.txq.write_desc(200, addr, hdr_len, 1, 200);
        h.txq.publish(200);
        h.notify(TX_QUEUE);
        h.drain();
        assert_eq!(h.recv_one().op, OP_RST);

        // The device still works.
        let listener = service(&h, SERVICE_PORT);
        let _host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);

        // A head index past the table doesn't panic either.
        h.txq.publish(300);
        h.notify(TX_QUEUE);
        h.drain();
    }

    #[test]
    fn rx_waits_for_buffers() {
        let mut h = Harness::new();
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(b"CONNECT 1234\n").unwrap();
        h.drain();
        assert_eq!(h.rxq.used_idx(), 0);
        assert_eq!(h.interrupt.count(), 0);

        // Buffers the device can't use are returned empty.
        h.rxq.add_chain(&[(MEM_SIZE as u64 - 8, 4096, F_WRITE)]);
        h.rxq.add_chain(&[(0x1_0000, 20, F_WRITE)]);
        h.rxq.add_chain(&[(0x1_0000, 4096, 0)]);
        h.notify(RX_QUEUE);
        h.drain();
        for _ in 0..3 {
            assert_eq!(h.rxq.pop_used().map(|(_, len)| len), Some(0));
        }
        assert_eq!(h.interrupt.count(), 1);

        // A header-sized buffer is enough for the request.
        h.add_rx_buffers_sized(1, HDR_SIZE as u32);
        let request = h.recv_one();
        assert_eq!((request.op, request.dst_port), (OP_REQUEST, 1234));
        assert_eq!(h.interrupt.count(), 2);
        // Nothing more to send: no interrupt for new buffers.
        h.add_rx_buffers(4);
        assert_eq!(h.interrupt.count(), 2);
        assert!(h.recv().is_empty());
    }

    #[test]
    fn tx_waits_while_replies_back_up() {
        let mut h = Harness::new();
        let addr = h.next_tx_slot();
        let unknown = guest_hdr(OP_RW, GUEST_PORT, 77);
        h.mem
            .write_slice(&unknown.to_bytes(), GuestAddress(addr))
            .unwrap();
        let send = |h: &mut Harness, n: usize| {
            for _ in 0..n {
                h.txq.add_chain(&[(addr, HDR_SIZE as u32, 0)]);
            }
            h.notify(TX_QUEUE);
            h.drain();
        };
        send(&mut h, 200);
        assert_eq!(h.txq.used_idx(), 200);
        send(&mut h, 100);
        assert_eq!(usize::from(h.txq.used_idx()), MAX_PENDING_REPLIES);
        // Each rx buffer frees room for one more tx packet.
        h.add_rx_buffers(64);
        assert_eq!(h.txq.used_idx(), 300);
        let packets = h.recv();
        assert_eq!(packets.len(), 64);
        assert!(packets.iter().all(|(p, _)| p.op == OP_RST));
    }

    #[test]
    fn reset_closes_every_connection() {
        let mut h = Harness::new();
        h.add_rx_buffers(8);
        let listener = service(&h, SERVICE_PORT);
        let mut host = guest_connect(&mut h, &listener, CONN_BUF_ALLOC);
        let (mut client, request) = host_connect(&mut h, 1234);
        h.send(reply(&request, OP_RESPONSE), &[]);
        read_now(&mut client);
        let (mut waiting, _) = host_connect(&mut h, 1235);
        let mut idle = UnixStream::connect(&h.uds).unwrap();
        assert_eq!(h.connections(), 3);

        assert!(h.vsock.lock().unwrap().reset());
        h.drain();
        assert!(!h.vsock.lock().unwrap().is_activated());
        assert_eq!(h.connections(), 0);
        for stream in [&mut host, &mut client, &mut waiting] {
            assert_eq!(read_now(stream), (vec![], true));
        }
        // A client still sending its line stays.
        assert_eq!(read_now(&mut idle), (vec![], false));
        // Queue events while inactive are drained and ignored.
        h.notify(TX_QUEUE);
        assert_eq!(h.drain(), 1);

        // Activation with new queues works again.
        h.mem = memory();
        h.rxq = GuestQueue::new(&h.mem, QUEUE_SIZE, RX_BASE);
        h.txq = GuestQueue::new(&h.mem, QUEUE_SIZE, TX_BASE);
        h.evq = GuestQueue::new(&h.mem, QUEUE_SIZE, EVENT_BASE);
        h.activate();
        h.add_rx_buffers(4);
        idle.write_all(b"CONNECT 7\n").unwrap();
        h.drain();
        assert_eq!(h.recv_one().dst_port, 7);
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// Keeps 48 rx buffers available and throws away what the device put
    /// in used ones; returns the headers of the packets among them.
    fn pump_rx(h: &mut Harness) -> Vec<Header> {
        let mut headers = Vec::new();
        while let Some((id, len)) = h.rxq.pop_used() {
            if len as usize >= HDR_SIZE {
                let addr = RX_DATA + (u64::from(id) % RX_SLOTS) * RX_SLOT_SIZE;
                let mut raw = [0u8; HDR_SIZE];
                h.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                headers.push(Header::from_bytes(&raw));
            }
        }
        let missing = 48usize.saturating_sub(usize::from(h.rxq.outstanding()));
        if missing > 0 {
            h.add_rx_buffers(missing);
        }
        headers
    }

    #[test]
    fn random_guest_and_host_traffic_does_not_panic() {
        let mut h = Harness::new();
        let listener = service(&h, SERVICE_PORT);
        listener.set_nonblocking(true).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut hosts: Vec<UnixStream> = Vec::new();
        let mut clients: Vec<UnixStream> = Vec::new();
        let ports = [GUEST_PORT, GUEST_PORT + 1, GUEST_PORT + 2];
        let ops = [
            OP_INVALID,
            OP_REQUEST,
            OP_RESPONSE,
            OP_RST,
            OP_SHUTDOWN,
            OP_RW,
            OP_RW,
            OP_RW,
            OP_CREDIT_UPDATE,
            OP_CREDIT_REQUEST,
            9,
        ];
        let payload = vec![0x5au8; 8192];
        for _ in 0..3000 {
            // Like a driver, never more chains out than the queue holds.
            if h.txq.outstanding() > 100 {
                pump_rx(&mut h);
                continue;
            }
            match rng.below(10) {
                // The guest sends a packet, mostly well-formed.
                0..=4 => {
                    let mut header = guest_hdr(rng.pick(&ops), rng.pick(&ports), SERVICE_PORT);
                    if rng.below(4) == 0 {
                        // Toward a host-initiated connection.
                        header.dst_port = EPHEMERAL_PORT_FIRST + rng.below(4) as u32;
                        header.src_port = 1234;
                    }
                    header.flags = rng.below(8) as u32;
                    header.buf_alloc = rng.pick(&[0, 1, 4096, CONN_BUF_ALLOC, u32::MAX]);
                    header.fwd_cnt = rng.next() as u32 % 4;
                    if rng.below(20) == 0 {
                        header.type_ = rng.below(4) as u16;
                    }
                    let len = rng.pick(&[0usize, 1, 100, 4096, 8192]);
                    h.send(header, &payload[..len]);
                }
                // ... or something malformed.
                5 => {
                    let addr = h.next_tx_slot();
                    let mut header = guest_hdr(OP_RW, rng.pick(&ports), SERVICE_PORT);
                    header.len = rng.next() as u32;
                    h.mem
                        .write_slice(&header.to_bytes(), GuestAddress(addr))
                        .unwrap();
                    let len = rng.below(200) as u32;
                    h.txq.add_chain(&[(addr, len, 0)]);
                    h.notify(TX_QUEUE);
                    h.drain();
                }
                // The guest gives rx buffers (some of odd sizes) and reads
                // them.
                6 => {
                    if h.rxq.outstanding() < 48 {
                        let size = rng.pick(&[0u32, 10, 44, 45, 100, 4096, 4096]);
                        h.add_rx_buffers_sized(1 + rng.below(4) as usize, size);
                    }
                    pump_rx(&mut h);
                }
                // The host side talks, closes, connects.
                7 => {
                    while let Ok((stream, _)) = listener.accept() {
                        stream.set_nonblocking(true).unwrap();
                        hosts.push(stream);
                    }
                    for stream in hosts.iter_mut().chain(clients.iter_mut()) {
                        let _ = stream.write(&payload[..rng.below(8192) as usize]);
                        read_now(stream);
                    }
                    h.drain();
                }
                8 => {
                    if !hosts.is_empty() && rng.below(2) == 0 {
                        let i = rng.below(hosts.len() as u64) as usize;
                        let stream = hosts.swap_remove(i);
                        if rng.below(2) == 0 {
                            stream.shutdown(Shutdown::Write).unwrap();
                            hosts.push(stream);
                        }
                    } else if !clients.is_empty() {
                        let i = rng.below(clients.len() as u64) as usize;
                        drop(clients.swap_remove(i));
                    }
                    h.drain();
                }
                _ => {
                    if clients.len() < 8 {
                        let mut client = UnixStream::connect(&h.uds).unwrap();
                        let _ = client.write_all(b"CONNECT 1234\n");
                        clients.push(client);
                        h.drain();
                    }
                }
            }
        }
        // Whatever the guest left on the tx queue gets processed once it
        // takes what the device owes it...
        for _ in 0..100 {
            if h.txq.outstanding() == 0 {
                break;
            }
            pump_rx(&mut h);
        }
        assert_eq!(h.txq.outstanding(), 0);
        pump_rx(&mut h);
        // The guest resets whatever it left open (it may well have filled
        // the connection table: it often gives no credit, so host data
        // and EOFs stay unread)...
        let keys: Vec<_> = h
            .vsock
            .lock()
            .unwrap()
            .muxer
            .connections
            .keys()
            .copied()
            .collect();
        for key in keys {
            h.send(guest_hdr(OP_RST, key.peer_port, key.local_port), &[]);
        }
        assert_eq!(h.connections(), 0);
        // ... and the device still works.
        let listener = service(&h, SERVICE_PORT + 1);
        h.send(guest_hdr(OP_REQUEST, 9999, SERVICE_PORT + 1), &[]);
        let mut headers = Vec::new();
        for _ in 0..10 {
            headers.extend(pump_rx(&mut h));
        }
        assert!(
            headers
                .iter()
                .any(|p| p.op == OP_RESPONSE && p.dst_port == 9999),
            "{headers:?}"
        );
        listener.accept().unwrap();
    }
}
