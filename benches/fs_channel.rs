//! `make bench-fs-channel`: what a FUSE request costs between a VMM's fs
//! device and its fs server, on this machine's own CPUs (no VM): the server
//! in the device's thread (in-process, as before the fs server process),
//! the fs server behind its channel waking by the stream every time (spin
//! 0), and the channel as husk runs it (spinning first, 50 us).
//!
//! Requests as a guest's FUSE driver sends them against a temporary
//! directory: `GETATTR` of the root (metadata), `READ` of 4 KiB and of 128
//! KiB at random offsets of a 16 MiB file, and `WRITE` of 128 KiB. Prints a
//! table of microseconds per request (median of `--rounds` rounds) and
//! writes JSON with `--json PATH`.
//!
//! `cargo bench --features fuzzing --bench fs_channel -- [--rounds N]
//! [--json PATH]`

use std::path::Path;
use std::time::{Duration, Instant};

use husk::vmm::devices::virtio::fs::backend::{serve_on_a_thread, Backend, FsServer, Outcome};
use husk::vmm::devices::virtio::fs::idmap::IdMaps;

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_INIT: u32 = 26;
const ROOT: u64 = 1;
const FILE_SIZE: u64 = 16 << 20;

/// One request: `fuse_in_header` then `body`.
fn message(opcode: u32, node: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(40 + body.len()).expect("a short message");
    let mut m = Vec::with_capacity(40 + body.len());
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&1u64.to_le_bytes()); // unique
    m.extend_from_slice(&node.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
    m.extend_from_slice(body);
    m
}

fn words(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Sends `request` with room for `cap` bytes; the answer's error must be 0.
fn call(b: &mut Backend, request: &[u8], cap: usize, reply: &mut Vec<u8>) -> Vec<u8> {
    match b.call(request, cap, reply) {
        Ok(Outcome::Reply(n)) if n >= 16 => {
            let error = i32::from_le_bytes(reply[4..8].try_into().expect("a header"));
            assert_eq!(error, 0, "FUSE error {error}");
            reply[..n].to_vec()
        }
        other => panic!("no answer: {other:?}"),
    }
}

/// `fuse_read_in` / `fuse_write_in`: fh, offset, size, flags, lock owner,
/// flags, padding.
fn io_body(fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = words(&[fh, offset]);
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0u8; 4 + 8 + 8]);
    b
}

struct Case {
    name: &'static str,
    requests: usize,
    run: fn(&mut Backend, u64, u64, usize, &mut Vec<u8>),
}

fn getattr(b: &mut Backend, _: u64, _: u64, n: usize, reply: &mut Vec<u8>) {
    let m = message(FUSE_GETATTR, ROOT, &[0u8; 16]);
    for _ in 0..n {
        call(b, &m, 4096, reply);
    }
}

fn read(b: &mut Backend, node: u64, fh: u64, n: usize, size: u32, reply: &mut Vec<u8>) {
    let mut at = 0x9e37_79b9_u64;
    for _ in 0..n {
        at = at.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let offset = (at >> 20) % (FILE_SIZE / u64::from(size)) * u64::from(size);
        let m = message(FUSE_READ, node, &io_body(fh, offset, size));
        call(b, &m, 16 + size as usize, reply);
    }
}

fn read_4k(b: &mut Backend, node: u64, fh: u64, n: usize, reply: &mut Vec<u8>) {
    read(b, node, fh, n, 4096, reply);
}

fn read_128k(b: &mut Backend, node: u64, fh: u64, n: usize, reply: &mut Vec<u8>) {
    read(b, node, fh, n, 128 << 10, reply);
}

fn write_128k(b: &mut Backend, node: u64, fh: u64, n: usize, reply: &mut Vec<u8>) {
    let data = vec![0x5au8; 128 << 10];
    for i in 0..n {
        let offset = (i as u64 * (128 << 10)) % FILE_SIZE;
        let mut body = io_body(fh, offset, 128 << 10);
        body.extend_from_slice(&data);
        call(b, &message(FUSE_WRITE, node, &body), 4096, reply);
    }
}

const CASES: &[Case] = &[
    Case {
        name: "getattr",
        requests: 20_000,
        run: getattr,
    },
    Case {
        name: "read 4 KiB",
        requests: 10_000,
        run: read_4k,
    },
    Case {
        name: "read 128 KiB",
        requests: 2_000,
        run: read_128k,
    },
    Case {
        name: "write 128 KiB",
        requests: 2_000,
        run: write_128k,
    },
];

/// Mounts, looks up and opens the test file read-write: (node, fh).
fn open(b: &mut Backend, reply: &mut Vec<u8>) -> (u64, u64) {
    let mut init = words(&[]);
    for v in [7u32, 31, 0x2_0000, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    call(b, &message(FUSE_INIT, 0, &init), 4096, reply);
    let entry = call(b, &message(FUSE_LOOKUP, ROOT, b"data\0"), 4096, reply);
    let node = u64::from_le_bytes(entry[16..24].try_into().expect("an entry"));
    let opened = call(
        b,
        &message(FUSE_OPEN, node, &words(&[libc::O_RDWR as u64])),
        4096,
        reply,
    );
    let fh = u64::from_le_bytes(opened[16..24].try_into().expect("a handle"));
    (node, fh)
}

fn backend(kind: &str, dir: &Path) -> Backend {
    match kind {
        "in-process" => Backend::Local(Box::new(
            FsServer::new("bench", dir, false, IdMaps::default()).expect("a server"),
        )),
        "fs server, spin 0" => Backend::Remote(
            serve_on_a_thread("bench", dir, false, Duration::ZERO)
                .expect("a server")
                .0,
        ),
        _ => Backend::Remote(
            serve_on_a_thread(
                "bench",
                dir,
                false,
                husk::vmm::devices::virtio::fs::channel::DEFAULT_SPIN,
            )
            .expect("a server")
            .0,
        ),
    }
}

fn main() {
    let mut rounds = 5usize;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--json" => json = args.next(),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("data"), vec![7u8; FILE_SIZE as usize]).expect("the file");
    let kinds = ["in-process", "fs server, spin 0", "fs server, spin 50 us"];
    let mut rows = Vec::new();
    println!("| request | {} |", kinds.join(" | "));
    println!("|---|{}", "---:|".repeat(kinds.len()));
    for case in CASES {
        let mut cells = Vec::new();
        for kind in kinds {
            let mut b = backend(kind, dir.path());
            let mut reply = Vec::new();
            let (node, fh) = open(&mut b, &mut reply);
            let mut times: Vec<f64> = (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    (case.run)(&mut b, node, fh, case.requests, &mut reply);
                    t.elapsed().as_secs_f64() * 1e6 / case.requests as f64
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            cells.push(format!("{median:.2}"));
            rows.push(format!(
                "{{\"request\": \"{}\", \"backend\": \"{kind}\", \"us_per_request\": {median:.3}}}",
                case.name
            ));
        }
        println!("| {} | {} |", case.name, cells.join(" | "));
    }
    if let Some(path) = json {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let text = format!(
            "{{\"bench\": \"fs_channel\", \"cpus\": {cpus}, \"rounds\": {rounds}, \"results\": [\n  {}\n]}}\n",
            rows.join(",\n  ")
        );
        std::fs::write(&path, text).expect("the JSON file");
    }
}
