//! One virtio-blk request (virtio 1.2, section 5.2.6): descriptor chain
//! parsing, validation and execution against the image.
//!
//! A request is a device-readable part (the 16-byte header, then the data
//! of a write) followed by a device-writable part (the data of a read or
//! `GET_ID`, then the one-byte status). The chain is treated as these two
//! byte streams, not as a fixed number of descriptors (section 2.7.4: the
//! device must not assume a particular arrangement), so a header split over
//! two descriptors, or a status sharing its descriptor with data, is fine.
//!
//! Every guest-controlled value is checked before any I/O: descriptor order
//! and addresses, header size, data length (whole sectors) and the sector
//! range against the capacity (overflow-checked). A request that fails a
//! check completes with `VIRTIO_BLK_S_IOERR`; one without a usable status
//! byte is skipped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use log::warn;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    REQUEST_HEADER_SIZE, SECTOR_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};

/// Data moves between the image and guest memory through a buffer of this
/// size (bounding host memory use whatever the guest asks for).
const BOUNCE_BUFFER_SIZE: usize = 128 * 1024;

/// Why a request failed (logged; the guest sees a status byte).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("the chain does not end in a device-writable status byte")]
    NoStatus,
    #[error("status byte at {addr:#x} is outside guest memory")]
    StatusOutsideMemory { addr: u64 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutsideMemory { addr: u64, len: u64 },
    #[error("request header is {len} bytes, expected {REQUEST_HEADER_SIZE}")]
    ShortHeader { len: u64 },
    #[error("{kind} request with {len} bytes of {direction} buffers where none belong")]
    WrongDirection {
        kind: &'static str,
        direction: &'static str,
        len: u64,
    },
    #[error("data length {len} is not a multiple of {SECTOR_SIZE}")]
    PartialSector { len: u64 },
    #[error("sector {sector} + {len} bytes is past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("image I/O at byte {offset}: {source}")]
    Io { offset: u64, source: std::io::Error },
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("unsupported request type {kind}")]
    Unsupported { kind: u32 },
}

/// The backing image and what requests need to know about it.
#[derive(Debug)]
pub(crate) struct Disk {
    pub file: File,
    pub path: PathBuf,
    /// Size in sectors (the file size rounded down to whole sectors).
    pub capacity: u64,
    pub read_only: bool,
    /// The `GET_ID` answer: the id, NUL-padded.
    pub id: [u8; VIRTIO_BLK_ID_BYTES],
    bounce: Vec<u8>,
}

impl Disk {
    pub fn new(
        file: File,
        path: PathBuf,
        capacity: u64,
        read_only: bool,
        id: [u8; VIRTIO_BLK_ID_BYTES],
    ) -> Self {
        Disk {
            file,
            path,
            capacity,
            read_only,
            id,
            bounce: vec![0; BOUNCE_BUFFER_SIZE],
        }
    }

    /// Byte offset of a `len`-byte transfer at `sector`, if it lies within
    /// the disk.
    fn byte_offset(&self, sector: u64, len: u64) -> Result<u64, RequestError> {
        // capacity * SECTOR_SIZE is the (rounded down) file size: no overflow.
        let size = self.capacity * SECTOR_SIZE;
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|offset| offset.checked_add(len).is_some_and(|end| end <= size))
            .ok_or(RequestError::OutOfRange {
                sector,
                len,
                capacity: self.capacity,
            })
    }
}

/// A guest buffer: part of one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// Total length of `segments`.
fn total_len(segments: &[Segment]) -> u64 {
    // Chains are at most 2^32 bytes long (virtio-queue stops iterating
    // otherwise), so this sum can't overflow; saturate to be safe anyway.
    segments
        .iter()
        .fold(0u64, |acc, segment| acc.saturating_add(segment.len))
}

/// The segments after the first `skip` bytes.
fn skip_bytes(segments: &[Segment], mut skip: u64) -> Vec<Segment> {
    let mut rest = Vec::with_capacity(segments.len());
    for segment in segments {
        if skip >= segment.len {
            skip -= segment.len;
            continue;
        }
        rest.push(Segment {
            // Within a range checked against guest memory: no overflow.
            addr: segment.addr.unchecked_add(skip),
            len: segment.len - skip,
        });
        skip = 0;
    }
    rest
}

/// Copies guest memory from `segments` into `buf`; returns the bytes copied
/// (less than `buf.len()` when the segments are shorter).
fn gather(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<usize, RequestError> {
    let mut filled = 0;
    for segment in segments {
        let room = buf.len() - filled;
        let n = usize::try_from(segment.len).map_or(room, |len| len.min(room));
        mem.read_slice(&mut buf[filled..filled + n], segment.addr)?;
        filled += n;
        if filled == buf.len() {
            break;
        }
    }
    Ok(filled)
}

/// Copies `data` into guest memory at `segments`; returns the bytes copied
/// (less than `data.len()` when the segments are shorter).
fn scatter(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    data: &[u8],
) -> Result<usize, RequestError> {
    let mut done = 0;
    for segment in segments {
        let left = data.len() - done;
        let n = usize::try_from(segment.len).map_or(left, |len| len.min(left));
        mem.write_slice(&data[done..done + n], segment.addr)?;
        done += n;
        if done == data.len() {
            break;
        }
    }
    Ok(done)
}

/// A chain split into its parts, every address checked.
#[derive(Debug)]
struct Chain {
    /// Device-readable segments (header, then write data).
    readable: Vec<Segment>,
    /// Device-writable segments, without the status byte.
    writable: Vec<Segment>,
}

/// Locates the status byte: the last byte of the last descriptor, which
/// must be device-writable. Without it nothing can be reported.
fn find_status(
    mem: &GuestMemoryMmap,
    descriptors: &[Descriptor],
) -> Result<GuestAddress, RequestError> {
    let last = descriptors.last().ok_or(RequestError::NoStatus)?;
    if !last.is_write_only() || last.len() == 0 {
        return Err(RequestError::NoStatus);
    }
    let addr = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .ok_or(RequestError::StatusOutsideMemory { addr: u64::MAX })?;
    if !mem.check_range(addr, 1) {
        return Err(RequestError::StatusOutsideMemory {
            addr: addr.raw_value(),
        });
    }
    Ok(addr)
}

impl Chain {
    /// Splits `descriptors` (the status byte already located at the end)
    /// into readable and writable segments, checking order and addresses.
    fn parse(mem: &GuestMemoryMmap, descriptors: &[Descriptor]) -> Result<Chain, RequestError> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let last_index = descriptors.len().saturating_sub(1);
        for (index, descriptor) in descriptors.iter().enumerate() {
            // Section 2.7.4.2: device-writable descriptors come last.
            if !descriptor.is_write_only() && !writable.is_empty() {
                return Err(RequestError::ReadableAfterWritable);
            }
            let addr = descriptor.addr();
            let mut len = u64::from(descriptor.len());
            if index == last_index {
                len -= 1; // the status byte (find_status checked len >= 1)
            }
            let in_memory = addr.checked_add(len).is_some()
                && usize::try_from(len).is_ok_and(|n| mem.check_range(addr, n));
            if !in_memory {
                return Err(RequestError::OutsideMemory {
                    addr: addr.raw_value(),
                    len,
                });
            }
            let segment = Segment { addr, len };
            if descriptor.is_write_only() {
                writable.push(segment);
            } else {
                readable.push(segment);
            }
        }
        Ok(Chain { readable, writable })
    }
}

/// A validated request.
#[derive(Debug)]
enum Request {
    /// Read `data.len()` bytes from the image at `offset` into `data`.
    In {
        offset: u64,
        data: Vec<Segment>,
    },
    /// Write `data` to the image at `offset`.
    Out {
        offset: u64,
        data: Vec<Segment>,
    },
    Flush,
    /// Write the id into `data` (up to 20 bytes).
    GetId {
        data: Vec<Segment>,
    },
}

impl Request {
    fn parse(disk: &Disk, mem: &GuestMemoryMmap, chain: Chain) -> Result<Request, RequestError> {
        let readable_len = total_len(&chain.readable);
        let mut header = [0u8; REQUEST_HEADER_SIZE as usize];
        if gather(mem, &chain.readable, &mut header)? < header.len() {
            return Err(RequestError::ShortHeader { len: readable_len });
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);

        match kind {
            VIRTIO_BLK_T_IN => {
                let extra = readable_len - REQUEST_HEADER_SIZE;
                if extra != 0 {
                    return Err(RequestError::WrongDirection {
                        kind: "read",
                        direction: "device-readable",
                        len: extra,
                    });
                }
                let len = total_len(&chain.writable);
                let offset = data_offset(disk, sector, len)?;
                Ok(Request::In {
                    offset,
                    data: chain.writable,
                })
            }
            VIRTIO_BLK_T_OUT => {
                // Section 5.2.6.2: IOERR for writes to a read-only device.
                if disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let extra = total_len(&chain.writable);
                if extra != 0 {
                    return Err(RequestError::WrongDirection {
                        kind: "write",
                        direction: "device-writable",
                        len: extra,
                    });
                }
                let data = skip_bytes(&chain.readable, REQUEST_HEADER_SIZE);
                let offset = data_offset(disk, sector, total_len(&data))?;
                Ok(Request::Out { offset, data })
            }
            VIRTIO_BLK_T_FLUSH => Ok(Request::Flush),
            VIRTIO_BLK_T_GET_ID => Ok(Request::GetId {
                data: chain.writable,
            }),
            _ => Err(RequestError::Unsupported { kind }),
        }
    }

    /// Executes the request; returns the bytes written to guest memory.
    fn execute(self, disk: &mut Disk, mem: &GuestMemoryMmap) -> Result<u64, RequestError> {
        match self {
            Request::In { offset, data } => {
                let mut position = offset;
                for segment in &data {
                    let mut done = 0;
                    while done < segment.len {
                        let n = chunk(segment.len - done, disk.bounce.len());
                        let buf = &mut disk.bounce[..n];
                        disk.file.read_exact_at(buf, position).map_err(|source| {
                            RequestError::Io {
                                offset: position,
                                source,
                            }
                        })?;
                        mem.write_slice(buf, segment.addr.unchecked_add(done))?;
                        done += n as u64;
                        position += n as u64;
                    }
                }
                Ok(position - offset)
            }
            Request::Out { offset, data } => {
                let mut position = offset;
                for segment in &data {
                    let mut done = 0;
                    while done < segment.len {
                        let n = chunk(segment.len - done, disk.bounce.len());
                        let buf = &mut disk.bounce[..n];
                        mem.read_slice(buf, segment.addr.unchecked_add(done))?;
                        disk.file.write_all_at(buf, position).map_err(|source| {
                            RequestError::Io {
                                offset: position,
                                source,
                            }
                        })?;
                        done += n as u64;
                        position += n as u64;
                    }
                }
                Ok(0)
            }
            Request::Flush => {
                disk.file
                    .sync_data()
                    .map_err(|source| RequestError::Io { offset: 0, source })?;
                Ok(0)
            }
            Request::GetId { data } => Ok(scatter(mem, &data, &disk.id)? as u64),
        }
    }
}

/// Validates the data length of a read or write and returns its image
/// offset.
fn data_offset(disk: &Disk, sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector { len });
    }
    disk.byte_offset(sector, len)
}

/// The next transfer size: what is left, at most one bounce buffer.
fn chunk(left: u64, buffer: usize) -> usize {
    usize::try_from(left).map_or(buffer, |left| left.min(buffer))
}

/// Parses and executes the request in `descriptors` (the status byte at the
/// end already located); returns the bytes written to guest memory.
fn execute_chain(
    disk: &mut Disk,
    mem: &GuestMemoryMmap,
    descriptors: &[Descriptor],
) -> Result<u64, RequestError> {
    let chain = Chain::parse(mem, descriptors)?;
    Request::parse(disk, mem, chain)?.execute(disk, mem)
}

/// Handles one descriptor chain end to end: parse, execute, write the
/// status byte. Returns the used length (bytes written to guest memory,
/// status included), or 0 when the chain had no usable status byte and was
/// skipped.
pub(crate) fn handle_chain(
    disk: &mut Disk,
    mem: &GuestMemoryMmap,
    descriptors: impl Iterator<Item = Descriptor>,
) -> u32 {
    let descriptors: Vec<Descriptor> = descriptors.collect();
    let status_addr = match find_status(mem, &descriptors) {
        Ok(addr) => addr,
        Err(err) => {
            warn!(
                "virtio-blk {}: skipping request: {err}",
                disk.path.display()
            );
            return 0;
        }
    };
    let (status, written) = match execute_chain(disk, mem, &descriptors) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(RequestError::Unsupported { kind }) => {
            log::debug!(
                "virtio-blk {}: unsupported request type {kind}",
                disk.path.display()
            );
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
        Err(err) => {
            warn!("virtio-blk {}: request failed: {err}", disk.path.display());
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if let Err(err) = mem.write_obj(status, status_addr) {
        warn!(
            "virtio-blk {}: writing the request status: {err}",
            disk.path.display()
        );
        return 0;
    }
    // The chain is shorter than 2^32 bytes, so this fits; saturate anyway.
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::block::test_utils::{memory, DATA, F_WRITE, MEM_SIZE};

    const HDR: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x800;
    const SECTORS: u64 = 8;

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(SECTORS * SECTOR_SIZE).unwrap();
        let file = image.reopen().unwrap();
        let disk = Disk::new(
            file,
            image.path().to_path_buf(),
            SECTORS,
            read_only,
            [0; 20],
        );
        (image, disk)
    }

    fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    }

    /// Runs a request through `execute_chain` after locating its status.
    fn run(
        read_only: bool,
        kind: u32,
        sector: u64,
        descs: &[Descriptor],
    ) -> Result<u64, RequestError> {
        let mem = memory();
        let (_image, mut disk) = disk(read_only);
        header(&mem, kind, sector);
        find_status(&mem, descs)?;
        execute_chain(&mut disk, &mem, descs)
    }

    fn hdr() -> Descriptor {
        desc(HDR, 16, 0)
    }

    fn status() -> Descriptor {
        desc(STATUS, 1, F_WRITE)
    }

    fn wdata(len: u32) -> Descriptor {
        desc(BUF, len, F_WRITE)
    }

    fn rdata(len: u32) -> Descriptor {
        desc(BUF, len, 0)
    }

    #[test]
    fn valid_requests() {
        let read = run(false, VIRTIO_BLK_T_IN, 0, &[hdr(), wdata(1024), status()]);
        assert_eq!(read.unwrap(), 1024);
        let read_last = run(
            false,
            VIRTIO_BLK_T_IN,
            SECTORS - 1,
            &[hdr(), wdata(512), status()],
        );
        assert_eq!(read_last.unwrap(), 512);
        let write = run(false, VIRTIO_BLK_T_OUT, 1, &[hdr(), rdata(512), status()]);
        assert_eq!(write.unwrap(), 0);
        let flush = run(true, VIRTIO_BLK_T_FLUSH, 0, &[hdr(), status()]);
        assert_eq!(flush.unwrap(), 0);
        let id = run(false, VIRTIO_BLK_T_GET_ID, 0, &[hdr(), wdata(20), status()]);
        assert_eq!(id.unwrap(), 20);
        // A short id buffer gets what fits.
        let id = run(false, VIRTIO_BLK_T_GET_ID, 0, &[hdr(), wdata(8), status()]);
        assert_eq!(id.unwrap(), 8);
        // A zero-length read is a no-op.
        let empty = run(false, VIRTIO_BLK_T_IN, 0, &[hdr(), status()]);
        assert_eq!(empty.unwrap(), 0);
    }

    #[test]
    fn status_location() {
        let mem = memory();
        let end = MEM_SIZE as u64;
        assert!(matches!(
            find_status(&mem, &[]),
            Err(RequestError::NoStatus)
        ));
        assert!(matches!(
            find_status(&mem, &[hdr()]),
            Err(RequestError::NoStatus)
        ));
        assert!(matches!(
            find_status(&mem, &[hdr(), desc(STATUS, 0, F_WRITE)]),
            Err(RequestError::NoStatus)
        ));
        assert!(matches!(
            find_status(&mem, &[hdr(), desc(end, 1, F_WRITE)]),
            Err(RequestError::StatusOutsideMemory { .. })
        ));
        assert!(matches!(
            find_status(&mem, &[hdr(), desc(u64::MAX, 2, F_WRITE)]),
            Err(RequestError::StatusOutsideMemory { .. })
        ));
        // The status is the last byte of the last descriptor.
        let addr = find_status(&mem, &[hdr(), desc(BUF, 513, F_WRITE)]).unwrap();
        assert_eq!(addr, GuestAddress(BUF + 512));
    }

    #[test]
    fn each_check_reports_its_error() {
        use RequestError as E;
        let end = MEM_SIZE as u64;
        let t_in = VIRTIO_BLK_T_IN;
        let t_out = VIRTIO_BLK_T_OUT;
        let check =
            |result: Result<u64, RequestError>, expected: fn(&RequestError) -> bool, name: &str| {
                let err = result.expect_err(name);
                assert!(expected(&err), "{name}: got {err}");
            };
        check(
            run(false, t_in, 0, &[desc(HDR, 15, 0), wdata(512), status()]),
            |e| matches!(e, E::ShortHeader { len: 15 }),
            "short header",
        );
        check(
            run(false, t_in, 0, &[wdata(512), status()]),
            |e| matches!(e, E::ShortHeader { len: 0 }),
            "no header",
        );
        check(
            run(false, t_in, 0, &[hdr(), wdata(511), status()]),
            |e| matches!(e, E::PartialSector { len: 511 }),
            "partial read",
        );
        check(
            run(false, t_out, 0, &[hdr(), rdata(513), status()]),
            |e| matches!(e, E::PartialSector { len: 513 }),
            "partial write",
        );
        check(
            run(false, t_in, SECTORS, &[hdr(), wdata(512), status()]),
            |e| matches!(e, E::OutOfRange { .. }),
            "read at capacity",
        );
        check(
            run(false, t_out, SECTORS - 1, &[hdr(), rdata(1024), status()]),
            |e| matches!(e, E::OutOfRange { .. }),
            "write across the end",
        );
        check(
            run(false, t_in, u64::MAX, &[hdr(), wdata(512), status()]),
            |e| matches!(e, E::OutOfRange { .. }),
            "sector overflow",
        );
        check(
            run(
                false,
                t_in,
                u64::MAX / SECTOR_SIZE,
                &[hdr(), wdata(512), status()],
            ),
            |e| matches!(e, E::OutOfRange { .. }),
            "end overflow",
        );
        check(
            run(false, t_in, 0, &[hdr(), desc(end, 512, F_WRITE), status()]),
            |e| matches!(e, E::OutsideMemory { .. }),
            "data outside memory",
        );
        check(
            run(
                false,
                t_in,
                0,
                &[hdr(), desc(end - 256, 512, F_WRITE), status()],
            ),
            |e| matches!(e, E::OutsideMemory { .. }),
            "data straddling the end",
        );
        check(
            run(
                false,
                t_out,
                0,
                &[hdr(), desc(u64::MAX - 10, 512, 0), status()],
            ),
            |e| matches!(e, E::OutsideMemory { .. }),
            "address overflow",
        );
        check(
            run(false, t_in, 0, &[hdr(), wdata(0xffff_fe00), status()]),
            |e| matches!(e, E::OutsideMemory { .. }),
            "oversized descriptor",
        );
        check(
            run(false, t_in, 0, &[hdr(), rdata(512), status()]),
            |e| matches!(e, E::WrongDirection { len: 512, .. }),
            "read with readable data",
        );
        check(
            run(false, t_out, 0, &[hdr(), wdata(512), status()]),
            |e| matches!(e, E::WrongDirection { len: 512, .. }),
            "write with writable data",
        );
        check(
            run(false, t_out, 0, &[hdr(), wdata(0), rdata(512), status()]),
            |e| matches!(e, E::ReadableAfterWritable),
            "readable after writable",
        );
        check(
            run(true, t_out, 0, &[hdr(), rdata(512), status()]),
            |e| matches!(e, E::ReadOnly),
            "read-only",
        );
        check(
            run(false, 3, 0, &[hdr(), status()]),
            |e| matches!(e, E::Unsupported { kind: 3 }),
            "unknown type",
        );
    }

    #[test]
    fn image_shrunk_underneath_is_an_io_error() {
        let mem = memory();
        let (image, mut disk) = disk(false);
        image.as_file().set_len(SECTOR_SIZE).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 4);
        let descs = [hdr(), wdata(512), status()];
        let err = execute_chain(&mut disk, &mem, &descs).unwrap_err();
        assert!(
            matches!(err, RequestError::Io { offset: 2048, .. }),
            "{err}"
        );
    }

    #[test]
    fn segment_helpers() {
        let segments = [
            Segment {
                addr: GuestAddress(0x100),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x200),
                len: 0,
            },
            Segment {
                addr: GuestAddress(0x300),
                len: 6,
            },
        ];
        assert_eq!(total_len(&segments), 16);
        assert_eq!(
            skip_bytes(&segments, 12),
            vec![Segment {
                addr: GuestAddress(0x302),
                len: 4
            }]
        );
        assert_eq!(skip_bytes(&segments, 10), vec![segments[2]]);
        assert_eq!(skip_bytes(&segments, 99), vec![]);
        let mem = memory();
        let data: Vec<u8> = (1..=16).collect();
        assert_eq!(scatter(&mem, &segments, &data).unwrap(), 16);
        let mut back = [0u8; 20];
        assert_eq!(gather(&mem, &segments, &mut back).unwrap(), 16);
        assert_eq!(&back[..16], &data[..]);
    }
}
