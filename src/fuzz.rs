//! Fuzz targets: everything a guest, a bundle or a snapshot file can hand
//! husk, driven from arbitrary bytes. Each function takes the fuzzer's
//! input and must return without panicking whatever it is; `fuzz/` wraps
//! them for libFuzzer (`make fuzz`), and the unit tests below run every
//! seed of `fuzz/corpus/` and pseudo-random inputs through them, so a crash
//! the fuzzer finds becomes a regression test by adding its input there.
//!
//! Built with `cargo test` and with the `fuzzing` feature (which also
//! compiles the device test harnesses this module drives).

use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::devices::virtio::test_utils::{memory, GuestQueue, TestInterrupt};
use crate::vmm::devices::virtio::VirtioDevice;

/// `VIRTQ_DESC_F_*` (virtio 1.2, section 2.7.5).
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The fuzzer's bytes, read front to back; zeros once they run out.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// How many bytes are left.
    pub fn rest_len(&self) -> usize {
        self.0.len()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.0.len())
    }
}

/// Writes up to four chains of up to six descriptors each into `q`'s table,
/// as a hostile driver would (addresses in `data..data + span`, at its end,
/// or anywhere; any length; any flags, indirect included; `next` that may
/// loop or leave the table), makes their heads available, and fills the
/// data area with the rest of the input (indirect tables and request
/// bodies come from there).
pub fn hostile_chains(q: &mut GuestQueue, input: &mut Input, data: u64, span: u64) {
    let size = q.size;
    let chains = 1 + input.u8() % 4;
    for _ in 0..chains {
        let n = 1 + u16::from(input.u8() % 6);
        let head = input.u16() % size;
        for i in 0..n {
            let index = (head + i) % size;
            let sel = input.u8();
            let addr = match sel % 8 {
                0 => input.u64(),
                1 => (data + span).wrapping_sub(u64::from(input.u8())),
                _ => data + u64::from(input.u16()) % span,
            };
            let len = if sel & 0x40 != 0 {
                input.u32()
            } else {
                u32::from(input.u16())
            };
            let mut flags = u16::from(input.u8()) & (F_NEXT | F_WRITE | F_INDIRECT);
            if i + 1 < n && sel & 0x20 == 0 {
                flags |= F_NEXT;
            }
            let next = if sel & 0x80 != 0 {
                u16::from(input.u8())
            } else {
                (index + 1) % size
            };
            q.write_desc(index, addr, len, flags, next);
        }
        q.publish(head);
    }
    let body = input.rest();
    let body = &body[..body.len().min(usize::try_from(span).unwrap_or(usize::MAX))];
    // In bounds: `data + span` is inside every harness's memory.
    let _ = q.mem.write_slice(body, GuestAddress(data));
}

/// virtio-blk: hostile request chains against an image file.
pub fn virtio_blk(data: &[u8]) {
    use crate::vmm::devices::virtio::block::Block;
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 == 1;
    let image = tempfile::NamedTempFile::new().expect("a temporary image");
    image
        .as_file()
        .set_len(64 * 1024)
        .expect("sizing the image");
    let mem = memory();
    let mut q = GuestQueue::new(&mem, 16, 0x1000);
    let mut block = Block::new(image.path(), read_only, "fuzz").expect("the image opens");
    block
        .activate(
            mem,
            Arc::new(TestInterrupt::default()),
            vec![q.create_queue()],
        )
        .expect("activation");
    hostile_chains(&mut q, &mut input, 0x1_0000, 0x1_0000);
    let _ = block.process_queue();
    let _ = block.process_queue();
}

/// virtio-net: hostile tx chains (frames to the tap) and rx buffers
/// (frames from it), offloads on or off.
pub fn virtio_net(data: &[u8]) {
    use crate::vmm::devices::virtio::net::test_utils::{Harness, BIG_DATA, MEM_SIZE};
    use crate::vmm::devices::virtio::net::{RX_QUEUE, TX_QUEUE};
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut h = match mode % 3 {
        0 => Harness::new(mode & 4 != 0),
        1 => Harness::with_event_idx(mode & 4 != 0),
        _ => Harness::mergeable(mode & 8 != 0),
    };
    let span = MEM_SIZE as u64 - BIG_DATA;
    if mode & 0x10 != 0 {
        let frames = input.u8() % 4;
        for i in 0..frames {
            let len = usize::from(input.u16() % 9000);
            h.backend.push(vec![i; len]);
        }
        hostile_chains(&mut h.rxq, &mut input, BIG_DATA, span);
        h.notify_and_run(RX_QUEUE);
    } else {
        hostile_chains(&mut h.txq, &mut input, BIG_DATA, span);
        h.notify_and_run(TX_QUEUE);
    }
}

/// virtio-vsock: hostile tx packets (connects, data, credit updates,
/// resets to any port) and rx buffers.
pub fn virtio_vsock(data: &[u8]) {
    use crate::vmm::devices::virtio::test_utils::MEM_SIZE;
    use crate::vmm::devices::virtio::vsock::test_utils::{Harness, RX_DATA, TX_DATA};
    let mut input = Input::new(data);
    let mut h = Harness::new();
    let rx = input.u8() & 1 == 1;
    if rx {
        let mut sub = Input::new(input.bytes(64));
        hostile_chains(&mut h.rxq, &mut sub, RX_DATA, TX_DATA - RX_DATA);
    } else {
        h.add_rx_buffers(8);
    }
    hostile_chains(&mut h.txq, &mut input, TX_DATA, MEM_SIZE as u64 - TX_DATA);
    h.notify(1);
    h.drain();
    h.notify(0);
    h.drain();
}

/// virtio-fs: a mounted share gets hostile chains on its request and
/// high-priority queues: FUSE requests with well-formed headers and any
/// opcode, node id and body, or raw bytes, served in the device's thread
/// or by a remote server behind a channel. Nothing may appear outside the
/// share.
pub fn virtio_fs(data: &[u8]) {
    use crate::vmm::devices::virtio::fs::test_utils::{fuse_message, init_body, FUSE_INIT};
    use crate::vmm::devices::virtio::fs::Fs;
    let mut input = Input::new(data);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).expect("the share");
    std::fs::write(share.join("file"), b"inside").expect("a file in the share");
    std::os::unix::fs::symlink("/", share.join("to-root")).expect("a symlink out");
    let mode = input.u8();
    let read_only = mode & 1 == 1;
    let mem = memory();
    let mut hiprio = GuestQueue::new(&mem, 16, 0x1000);
    let mut req = GuestQueue::new(&mem, 16, 0x5000);
    let mut dev = Fs::new("fuzz", &share, read_only).expect("the device");
    // Bit 1: the server is remote (a thread behind a channel, as the fs
    // server process), so chains are copied straight into the channel and
    // answers straight back.
    let mut server = None;
    if mode & 2 != 0 {
        let (client, serving) = crate::vmm::devices::virtio::fs::backend::serve_on_a_thread(
            "fuzz",
            &share,
            read_only,
            std::time::Duration::ZERO,
        )
        .expect("the server");
        dev = dev.with_remote(client, None);
        server = Some(serving);
    }
    dev.activate(
        mem.clone(),
        Arc::new(TestInterrupt::default()),
        vec![hiprio.create_queue(), req.create_queue()],
    )
    .expect("activation");
    // Mount first (FUSE_INIT 7.31), so most requests reach the file system.
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    let _ = mem.write_slice(&init, GuestAddress(0x1_0000));
    req.add_chain(&[
        (0x1_0000, u32::try_from(init.len()).unwrap_or(0), 0),
        (0x2_0000, 4096, F_WRITE),
    ]);
    let _ = dev.process_queue(1);
    // Then up to eight requests, each in its own round.
    for round in 0..8u64 {
        if input.0.is_empty() {
            break;
        }
        let kind = input.u8();
        let queue = usize::from(kind & 1);
        let q = if queue == 0 { &mut hiprio } else { &mut req };
        if kind & 2 != 0 {
            // A well-formed header, a fuzzed opcode, node and body.
            let opcode = u32::from(input.u8() % 64);
            let node = match input.u8() % 4 {
                0 => input.u64(),
                _ => 1,
            };
            let len = usize::from(input.u16() % 512);
            let msg = fuse_message(opcode, node, round + 2, (0, 0), input.bytes(len));
            let _ = mem.write_slice(&msg, GuestAddress(0x1_0000));
            q.add_chain(&[
                (0x1_0000, u32::try_from(msg.len()).unwrap_or(0), 0),
                (0x2_0000, u32::from(input.u16()), F_WRITE),
            ]);
        } else {
            let len = usize::from(input.u16() % 1024);
            let mut sub = Input::new(input.bytes(len));
            hostile_chains(q, &mut sub, 0x1_0000, 0x2_0000);
        }
        let _ = dev.process_queue(queue);
    }
    drop(dev);
    if let Some(serving) = server {
        let _ = serving.join();
    }
    // Everything the guest made is inside the share.
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the temporary directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "share")
        .collect();
    assert!(outside.is_empty(), "files outside the share: {outside:?}");
}

/// A block device on a 4 KiB image behind its virtio-mmio transport (keep
/// the image while the transport is used).
fn block_transport() -> (
    tempfile::NamedTempFile,
    crate::vmm::devices::virtio::mmio::MmioTransport,
) {
    use crate::vmm::devices::virtio::block::Block;
    use crate::vmm::devices::virtio::mmio::MmioTransport;
    let image = tempfile::NamedTempFile::new().expect("a temporary image");
    image.as_file().set_len(4096).expect("sizing the image");
    let block = Block::new(image.path(), false, "fuzz").expect("the image opens");
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    (image, MmioTransport::new(memory(), device, irq))
}

/// The virtio-mmio transport: any sequence of reads and writes of any
/// width at any offset of a device's window (feature negotiation, queue
/// setup with wild addresses, status changes, resets, config space).
pub fn virtio_mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let (_image, mut transport) = block_transport();
    for _ in 0..256 {
        if input.0.is_empty() {
            break;
        }
        let op = input.u8();
        let offset = u64::from(input.u16() % 0x200);
        let width = [1usize, 2, 4, 8][usize::from(op >> 1 & 3)];
        if op & 1 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        } else {
            let value = input.u64().to_le_bytes();
            transport.write(offset, &value[..width]);
        }
    }
}

/// The agent protocol as both sides decode it: frames from a byte stream,
/// then each frame's JSON as a request (the guest's reading), a response
/// and an event (the host's).
pub fn agent_frames(data: &[u8]) {
    use crate::agent_proto::{Event, Frame, Request, Response};
    let mut reader = data;
    for _ in 0..64 {
        match Frame::read_from(&mut reader) {
            Ok(Some(frame)) => {
                let _ = frame.parse::<Request>("request");
                // A pod container's statistics, as the host reads the
                // guest's cgroup files.
                if let Ok(Response::Stats { files }) = frame.parse::<Response>("response") {
                    let _ = crate::runtime::cgroup::stats_from(|name| {
                        files
                            .iter()
                            .find(|(f, _)| f == name)
                            .map(|(_, t)| t.clone())
                            .unwrap_or_default()
                    });
                }
                let _ = frame.parse::<Event>("event");
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// The snapshot state file: parsed as `VmSnapshot::read` does, then each
/// transport's state restored onto a live transport (device type, features,
/// queue count and sizes checked).
pub fn snapshot_state(data: &[u8]) {
    use crate::vmm::snapshot::{TransportSnapshot, VmSnapshot};
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join(crate::vmm::snapshot::STATE_FILE), data)
        .expect("the state file");
    let transports: Vec<TransportSnapshot> = match VmSnapshot::read(dir.path()) {
        Ok(snap) => snap.transports,
        // A transport list on its own reaches the checked restore more often.
        Err(_) => match serde_json::from_slice(data) {
            Ok(t) => t,
            Err(_) => return,
        },
    };
    for t in transports.iter().take(8) {
        let (_image, mut transport) = block_transport();
        let _ = transport.restore(t);
    }
}

/// `config.json` as `create` reads it: the spec, then every translation
/// of it (rootfs mode, snapshot and network plans, id maps and the VMM's
/// user in a user namespace of them, the guest's container spec, its
/// seccomp profile). The same bytes as text are also a `/proc/PID/uid_map`
/// (a joined user namespace's, [`crate::jail::ns::read_maps`]): a map that
/// parses writes back as itself.
pub fn oci_config(data: &[u8]) {
    use crate::jail::user::{in_namespace, Choice};
    use crate::runtime::guest_spec::{container_spec, BindSource};
    use crate::runtime::vm_plan;
    use crate::vmm::devices::virtio::fs::idmap::IdMap;
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(map) = IdMap::parse_proc("uid_map", text) {
            assert_eq!(
                IdMap::parse_proc("uid_map", &map.proc_text()),
                Ok(map.clone())
            );
            if let Ok(Some(user)) = in_namespace(Choice::Auto, &map, &map) {
                assert!(user.uid != 0 && user.gid != 0, "{user:?}");
            }
        }
    }
    let Ok(spec) = serde_json::from_slice::<oci_spec::runtime::Spec>(data) else {
        return;
    };
    let _ = vm_plan::rootfs_mode(&spec);
    let _ = vm_plan::snapshot_allowed(&spec);
    let _ = vm_plan::network_plan(&spec);
    if let Ok(ids) = vm_plan::id_maps(&spec) {
        if let Ok(Some(user)) = in_namespace(Choice::Auto, &ids.uid, &ids.gid) {
            assert!(user.uid != 0 && user.gid != 0, "{user:?}");
            let ns = user.thread_ids();
            assert_eq!(ids.uid.to_host(ns.uid), Some(user.uid));
            assert_eq!(ids.gid.to_host(ns.gid), Some(user.gid));
        }
    }
    let read = |p: &Path| -> Result<BindSource, String> {
        match p.as_os_str().len() % 4 {
            0 => Ok(BindSource::Directory),
            1 => Ok(BindSource::File),
            2 => Ok(BindSource::Socket),
            _ => Err("missing".into()),
        }
    };
    let _ = container_spec("fuzz", &spec, Path::new("/nonexistent-bundle"), &read);
}

/// A seccomp profile: compiled, its program no longer than the kernel
/// takes, and every run of it (any call number, architecture, arguments)
/// ending in a verdict.
pub fn seccomp_profile(data: &[u8]) {
    use crate::seccomp::bpf::{run, SeccompData};
    let split = data.len().min(64);
    let (raw_calls, json) = data.split_at(split);
    let Ok(profile) = serde_json::from_slice::<oci_spec::runtime::LinuxSeccomp>(json) else {
        return;
    };
    let Ok((program, _)) = crate::seccomp::compile(&profile) else {
        return;
    };
    assert!(!program.filter.is_empty());
    assert!(program.filter.len() <= crate::agent_proto::BPF_MAXINSNS);
    let mut input = Input::new(raw_calls);
    for _ in 0..4 {
        let call = SeccompData {
            nr: i32::from(input.u16() % 512),
            arch: if input.u8() & 7 == 0 {
                input.u32()
            } else {
                crate::seccomp::AUDIT_ARCH_X86_64
            },
            instruction_pointer: 0,
            args: [input.u64(), input.u64(), 0, 0, 0, input.u64()],
        };
        if let Err(e) = run(&program.filter, &call) {
            panic!("compiled program failed to run: {e}");
        }
    }
}

/// The fs server's side of its channel from the VMM (what a VMM taken
/// over by its guest could post): a well-formed `FUSE_INIT`, then the input
/// as raw requests, each `kind u32, len u32, cap u32, n u16` and `n` bytes
/// put at the start of the request buffer (so `len` may claim more or
/// fewer than were put there). The server answers, resets or stops at a
/// request it refuses; nothing may appear outside the share.
pub fn fs_server_channel(data: &[u8]) {
    use crate::vmm::devices::virtio::fs::backend::{serve_on_a_thread, BackendError};
    use crate::vmm::devices::virtio::fs::test_utils::{fuse_message, init_body, FUSE_INIT};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).expect("the share");
    std::fs::write(share.join("file"), b"inside").expect("a file in the share");
    std::os::unix::fs::symlink("/", share.join("to-root")).expect("a symlink out");
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let (mut client, server) =
        serve_on_a_thread("fuzz", &share, read_only, std::time::Duration::ZERO)
            .expect("the server");
    let mut reply = Vec::new();
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    client.call(&init, 4096, &mut reply).expect("FUSE_INIT");
    let mut input = Input::new(data.get(1..).unwrap_or_default());
    while !input.0.is_empty() {
        let (kind, len, cap) = (input.u32(), input.u32(), input.u32());
        let n = usize::from(input.u16());
        let bytes = input.bytes(n);
        if client.load(bytes).is_err() {
            break;
        }
        match client.exchange(kind, len, cap) {
            Ok(_) => {}
            Err(BackendError::Gone) => break,
            Err(e) => panic!("the device's end failed: {e}"),
        }
    }
    drop(client);
    let _ = server.join().expect("the server thread");
    assert!(!Path::new("/planted").exists());
}

/// The boot timer port: any run of guest reads and writes (any offset,
/// length and bytes): reads give zeros, unknown events and odd writes are
/// ignored, and the timeline holds at most [`MAX_BOOT_EVENTS`] of the
/// guest's events however many it sends.
///
/// [`MAX_BOOT_EVENTS`]: crate::vmm::devices::boot_timer::MAX_BOOT_EVENTS
pub fn boot_timer(data: &[u8]) {
    use crate::vmm::bus::BusDevice as _;
    use crate::vmm::devices::boot_timer::{BootTimer, MAX_BOOT_EVENTS};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut timer = BootTimer::new(Some(dir.path().to_path_buf()));
    let mut input = Input::new(data);
    // Each access takes at least one byte: the loop ends.
    for _ in 0..1024 {
        let op = input.u8();
        if input.rest_len() == 0 && op == 0 {
            break;
        }
        let offset = u64::from(op >> 4);
        let len = usize::from((op >> 1) & 3) + usize::from(op & 0x80 != 0) * 5;
        if op & 1 == 0 {
            let bytes = input.bytes(len).to_vec();
            timer.write(offset, &bytes);
        } else {
            let mut buf = vec![0xa5; len];
            timer.read(offset, &mut buf);
            assert!(buf.iter().all(|b| *b == 0), "a read gave {buf:?}");
        }
    }
    let events = crate::timeline::read(dir.path());
    assert!(events.len() <= MAX_BOOT_EVENTS, "{} events", events.len());
    assert!(events.iter().all(|(name, _)| name.starts_with("guest.")));
}

/// A fuzz target: takes any bytes, returns without panicking.
pub type Target = fn(&[u8]);

/// Every target by name (the `fuzz/` binaries and the corpus directories
/// are named the same).
pub const TARGETS: &[(&str, Target)] = &[
    ("virtio_blk", virtio_blk),
    ("virtio_net", virtio_net),
    ("virtio_vsock", virtio_vsock),
    ("virtio_fs", virtio_fs),
    ("fs_server_channel", fs_server_channel),
    ("virtio_mmio", virtio_mmio),
    ("agent_frames", agent_frames),
    ("snapshot_state", snapshot_state),
    ("oci_config", oci_config),
    ("seccomp_profile", seccomp_profile),
    ("boot_timer", boot_timer),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift64).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every seed of `fuzz/corpus/TARGET/` (crashes found by the fuzzer
    /// are kept there), then a few hundred random inputs.
    #[test]
    fn every_target_survives_its_corpus_and_noise() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = corpus.join(name);
            let seeds: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!seeds.is_empty(), "no seeds for {name}");
            for seed in seeds {
                target(&std::fs::read(&seed).unwrap());
            }
            for i in 0..200u64 {
                target(&noise(i, (i as usize * 37) % 2048));
            }
        }
    }

    #[test]
    fn input_reads_zeros_past_its_end() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert_eq!(i.u64(), 0);
        assert!(i.rest().is_empty());
    }
}
