//! Test harness: FUSE requests as a guest's driver writes them
//! (`include/uapi/linux/fuse.h`), for the fs device's tests and the
//! `virtio_fs` fuzz target.

/// `FUSE_INIT`'s opcode.
pub const FUSE_INIT: u32 = 26;
/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, padding.
pub const IN_HEADER: usize = 40;

/// A `FUSE_INIT` body: protocol 7.31, 128 KiB readahead, `flags`.
pub fn init_body(flags: u32) -> Vec<u8> {
    [7u32, 31, 0x2_0000, flags]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// One request: the header for `opcode` on `node` from `caller` (uid,
/// gid), then `body`.
pub fn fuse_message(
    opcode: u32,
    node: u64,
    unique: u64,
    caller: (u32, u32),
    body: &[u8],
) -> Vec<u8> {
    let len = u32::try_from(IN_HEADER + body.len()).unwrap_or(u32::MAX);
    let mut msg = Vec::with_capacity(IN_HEADER + body.len());
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&opcode.to_le_bytes());
    msg.extend_from_slice(&unique.to_le_bytes());
    msg.extend_from_slice(&node.to_le_bytes());
    msg.extend_from_slice(&caller.0.to_le_bytes());
    msg.extend_from_slice(&caller.1.to_le_bytes());
    msg.extend_from_slice(&[0u8; 8]); // pid, padding
    msg.extend_from_slice(body);
    msg
}
