//! The packet header (virtio 1.2, section 5.10.6) and moving packets
//! between descriptor chains and host buffers.
//!
//! A packet is the 44-byte header followed by `len` payload bytes (section
//! 5.10.6.4). Chains are treated as byte streams (section 2.7.4: no
//! particular descriptor layout may be assumed): Linux puts the header and
//! the payload of a tx packet in two descriptors, and its rx buffers are
//! one or two descriptors depending on the version.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{HDR_SIZE, MAX_PKT_PAYLOAD};

/// `struct virtio_vsock_hdr` (section 5.10.6), all fields little-endian on
/// the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Byte offsets of the header fields.
const SRC_CID: usize = 0;
const DST_CID: usize = 8;
const SRC_PORT: usize = 16;
const DST_PORT: usize = 20;
const LEN: usize = 24;
const TYPE: usize = 28;
const OP: usize = 30;
const FLAGS: usize = 32;
const BUF_ALLOC: usize = 36;
const FWD_CNT: usize = 40;

fn le64(bytes: &[u8; HDR_SIZE], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn le32(bytes: &[u8; HDR_SIZE], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le16(bytes: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

impl Header {
    pub fn from_bytes(bytes: &[u8; HDR_SIZE]) -> Header {
        Header {
            src_cid: le64(bytes, SRC_CID),
            dst_cid: le64(bytes, DST_CID),
            src_port: le32(bytes, SRC_PORT),
            dst_port: le32(bytes, DST_PORT),
            len: le32(bytes, LEN),
            type_: le16(bytes, TYPE),
            op: le16(bytes, OP),
            flags: le32(bytes, FLAGS),
            buf_alloc: le32(bytes, BUF_ALLOC),
            fwd_cnt: le32(bytes, FWD_CNT),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut bytes = [0u8; HDR_SIZE];
        bytes[SRC_CID..SRC_CID + 8].copy_from_slice(&self.src_cid.to_le_bytes());
        bytes[DST_CID..DST_CID + 8].copy_from_slice(&self.dst_cid.to_le_bytes());
        bytes[SRC_PORT..SRC_PORT + 4].copy_from_slice(&self.src_port.to_le_bytes());
        bytes[DST_PORT..DST_PORT + 4].copy_from_slice(&self.dst_port.to_le_bytes());
        bytes[LEN..LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        bytes[TYPE..TYPE + 2].copy_from_slice(&self.type_.to_le_bytes());
        bytes[OP..OP + 2].copy_from_slice(&self.op.to_le_bytes());
        bytes[FLAGS..FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        bytes[BUF_ALLOC..BUF_ALLOC + 4].copy_from_slice(&self.buf_alloc.to_le_bytes());
        bytes[FWD_CNT..FWD_CNT + 4].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        bytes
    }
}

/// Why a tx chain was dropped (logged).
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain: {0}")]
    Chain(#[from] virtio_queue::Error),
    #[error(
        "the chain's device-readable part is {len} bytes, shorter than the {HDR_SIZE}-byte header"
    )]
    ShortHeader { len: usize },
    #[error("payload length {len} is larger than the {MAX_PKT_PAYLOAD}-byte maximum")]
    PayloadTooLong { len: u32 },
    #[error("payload length {len} is larger than the {available} bytes after the header")]
    Truncated { len: u32, available: usize },
    #[error("reading guest memory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the rx buffer is {len} bytes, shorter than the {HDR_SIZE}-byte header")]
    ShortBuffer { len: usize },
}

/// Reads a tx packet: returns its header and copies its payload (`len`
/// bytes; bytes past `len` are ignored) to the start of `payload`, which
/// must hold [`MAX_PKT_PAYLOAD`] bytes.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    payload: &mut [u8],
) -> Result<Header, PacketError> {
    let mut reader: Reader = chain.reader(mem)?;
    let available = reader.available_bytes();
    if available < HDR_SIZE {
        return Err(PacketError::ShortHeader { len: available });
    }
    let mut raw = [0u8; HDR_SIZE];
    reader.read_exact(&mut raw)?;
    let header = Header::from_bytes(&raw);
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if len > MAX_PKT_PAYLOAD || len > payload.len() {
        return Err(PacketError::PayloadTooLong { len: header.len });
    }
    let available = reader.available_bytes();
    if len > available {
        return Err(PacketError::Truncated {
            len: header.len,
            available,
        });
    }
    reader.read_exact(&mut payload[..len])?;
    Ok(header)
}

/// The device-writable part of an rx chain, checked to lie in guest memory
/// and to hold at least a header.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&'a GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let writer: Writer = chain.writer(mem)?;
        let len = writer.available_bytes();
        if len < HDR_SIZE {
            return Err(PacketError::ShortBuffer { len });
        }
        Ok(RxBuffer { writer })
    }

    /// Room for payload after the header (capped at [`MAX_PKT_PAYLOAD`]).
    pub fn payload_room(&self) -> usize {
        (self.writer.available_bytes() - HDR_SIZE).min(MAX_PKT_PAYLOAD)
    }

    /// Writes the packet; returns its length (the used length). `payload`
    /// must fit in [`RxBuffer::payload_room`].
    pub fn write(mut self, header: &Header, payload: &[u8]) -> Result<u32, PacketError> {
        self.writer.write_all(&header.to_bytes())?;
        self.writer.write_all(payload)?;
        // At most HDR_SIZE + MAX_PKT_PAYLOAD bytes.
        Ok(u32::try_from(self.writer.bytes_written()).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::super::test_utils::{GuestQueue, TX_BASE};
    use super::super::{OP_RW, TYPE_STREAM};
    use super::*;
    use crate::vmm::devices::virtio::block::test_utils::{memory, F_WRITE, MEM_SIZE};
    use virtio_queue::QueueT;

    fn sample() -> Header {
        Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0xdead_beef,
            buf_alloc: 0x4_0000,
            fwd_cnt: 77,
        }
    }

    #[test]
    fn header_layout_is_little_endian_and_round_trips() {
        let h = sample();
        let bytes = h.to_bytes();
        assert_eq!(&bytes[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &2u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &0x1122_3344u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &1024u32.to_le_bytes());
        assert_eq!(&bytes[24..28], &5u32.to_le_bytes());
        assert_eq!(&bytes[28..30], &1u16.to_le_bytes());
        assert_eq!(&bytes[30..32], &5u16.to_le_bytes());
        assert_eq!(&bytes[32..36], &0xdead_beefu32.to_le_bytes());
        assert_eq!(&bytes[36..40], &0x4_0000u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &77u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), h);
    }

    /// Pops the one chain `descs` make and reads it as a tx packet.
    fn read(descs: &[(u64, u32, u16)]) -> Result<(Header, Vec<u8>), PacketError> {
        let mem = memory();
        let mut vq = GuestQueue::new(&mem, 16, TX_BASE);
        let mut queue = vq.create_queue();
        let h = sample();
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1_0000 + 44))
            .unwrap();
        mem.write_slice(b"HELLO", GuestAddress(0x2_0000)).unwrap();
        vq.add_chain(descs);
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        let mut payload = vec![0u8; MAX_PKT_PAYLOAD];
        let header = read_tx(&mem, chain, &mut payload)?;
        let len = header.len as usize;
        Ok((header, payload[..len].to_vec()))
    }

    #[test]
    fn reads_header_and_payload_however_split() {
        let (h, p) = read(&[(0x1_0000, 49, 0)]).unwrap();
        assert_eq!((h, p.as_slice()), (sample(), &b"hello"[..]));
        let (h, p) = read(&[(0x1_0000, 44, 0), (0x2_0000, 5, 0)]).unwrap();
        assert_eq!((h, p.as_slice()), (sample(), &b"HELLO"[..]));
        let (_, p) = read(&[(0x1_0000, 10, 0), (0x1_000a, 34, 0), (0x2_0000, 4096, 0)]).unwrap();
        assert_eq!(p, b"HELLO");
    }

    #[test]
    fn rejects_malformed_chains() {
        let end = MEM_SIZE as u64;
        let short = read(&[(0x1_0000, 20, 0)]).unwrap_err();
        assert!(
            matches!(short, PacketError::ShortHeader { len: 20 }),
            "{short}"
        );
        let truncated = read(&[(0x1_0000, 47, 0)]).unwrap_err();
        assert!(
            matches!(
                truncated,
                PacketError::Truncated {
                    len: 5,
                    available: 3
                }
            ),
            "{truncated}"
        );
        // The writable part doesn't count as payload.
        let writable = read(&[(0x1_0000, 44, 0), (0x2_0000, 5, F_WRITE)]).unwrap_err();
        assert!(
            matches!(writable, PacketError::Truncated { .. }),
            "{writable}"
        );
        let outside = read(&[(end - 8, 44, 0)]).unwrap_err();
        assert!(matches!(outside, PacketError::Chain(_)), "{outside}");
        let overflow = read(&[(u64::MAX - 4, 44, 0)]).unwrap_err();
        assert!(matches!(overflow, PacketError::Chain(_)), "{overflow}");
        let only_writable = read(&[(0x1_0000, 49, F_WRITE)]).unwrap_err();
        assert!(matches!(only_writable, PacketError::ShortHeader { len: 0 }));
    }

    #[test]
    fn rx_buffer_checks_room() {
        let mem = memory();
        let mut vq = GuestQueue::new(&mem, 16, TX_BASE);
        let mut queue = vq.create_queue();
        vq.add_chain(&[(0x1_0000, 43, F_WRITE)]);
        vq.add_chain(&[(0x1_0000, 20, F_WRITE), (0x2_0000, 100, F_WRITE)]);
        vq.add_chain(&[(MEM_SIZE as u64 - 10, 100, F_WRITE)]);
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            RxBuffer::new(&mem, chain),
            Err(PacketError::ShortBuffer { len: 43 })
        ));
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        let buffer = RxBuffer::new(&mem, chain).unwrap();
        assert_eq!(buffer.payload_room(), 76);
        assert_eq!(buffer.write(&sample(), b"hello").unwrap(), 49);
        let mut first = [0u8; 20];
        mem.read_slice(&mut first, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(&first, &sample().to_bytes()[..20]);
        let mut rest = [0u8; 29];
        mem.read_slice(&mut rest, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(&rest[..24], &sample().to_bytes()[20..]);
        assert_eq!(&rest[24..], b"hello");
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            RxBuffer::new(&mem, chain),
            Err(PacketError::Chain(_))
        ));
    }
}
