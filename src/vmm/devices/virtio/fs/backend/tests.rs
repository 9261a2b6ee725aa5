use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;

use super::super::test_utils::{fuse_message, init_body, FUSE_INIT};
use super::*;

/// `FUSE_GETATTR` and `FUSE_LOOKUP` (include/uapi/linux/fuse.h).
const FUSE_GETATTR: u32 = 3;
const FUSE_LOOKUP: u32 = 1;
const ROOT: u64 = 1;
const OUT_HEADER: usize = 16;

fn share() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), b"hello").unwrap();
    dir
}

fn server(dir: &tempfile::TempDir) -> FsServer {
    FsServer::new("t", dir.path(), false, IdMaps::default()).unwrap()
}

/// The error field of an answer.
fn error_of(reply: &[u8]) -> i32 {
    i32::from_le_bytes(reply[4..8].try_into().unwrap())
}

fn lookup(name: &str, unique: u64) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    fuse_message(FUSE_LOOKUP, ROOT, unique, (0, 0), &body)
}

/// A server process stand-in: [`serve`] on a thread.
fn remote(dir: &tempfile::TempDir) -> (Client, std::thread::JoinHandle<Result<(), ServeError>>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut s = server(dir);
    let t = std::thread::spawn(move || {
        let mut theirs = theirs;
        serve(&mut theirs, &mut s)
    });
    (Client::new(ours), t)
}

#[test]
fn a_local_server_answers_within_the_room_it_was_given() {
    let dir = share();
    let mut s = server(&dir);
    let mut reply = Vec::new();
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    assert!(
        matches!(s.call(&init, 4096, &mut reply).unwrap(), Outcome::Reply(n) if n >= OUT_HEADER)
    );
    assert_eq!(error_of(&reply), 0);
    match s.call(&lookup("hello", 2), 4096, &mut reply).unwrap() {
        Outcome::Reply(n) => assert_eq!(n, reply.len()),
        other => panic!("{other:?}"),
    }
    assert_eq!(error_of(&reply), 0);
    // No room for the answer: the server cannot write it.
    assert!(matches!(
        s.call(&lookup("hello", 3), 8, &mut reply).unwrap(),
        Outcome::Undecodable | Outcome::Reply(0)
    ));
    // Three bytes are no header.
    assert_eq!(
        s.call(&[1, 2, 3], 4096, &mut reply).unwrap(),
        Outcome::Undecodable
    );
    assert_eq!(s.call(&[], 4096, &mut reply).unwrap(), Outcome::Undecodable);
    // Still serving.
    assert!(matches!(
        s.call(&lookup("hello", 4), 4096, &mut reply).unwrap(),
        Outcome::Reply(_)
    ));
}

#[test]
fn the_loopback_queue_keeps_serving_past_its_index_wrapping() {
    let dir = share();
    let mut s = server(&dir);
    let mut reply = Vec::new();
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    s.call(&init, 4096, &mut reply).unwrap();
    let getattr = fuse_message(FUSE_GETATTR, ROOT, 2, (0, 0), &[0u8; 16]);
    for _ in 0..(u32::from(u16::MAX) + 10) {
        assert!(matches!(
            s.call(&getattr, 4096, &mut reply).unwrap(),
            Outcome::Reply(_)
        ));
    }
    assert_eq!(error_of(&reply), 0);
}

#[test]
fn a_remote_server_serves_resets_and_ends_when_the_device_hangs_up() {
    let dir = share();
    let (mut c, t) = remote(&dir);
    let mut reply = Vec::new();
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    assert!(matches!(
        c.call(&init, 4096, &mut reply).unwrap(),
        Outcome::Reply(_)
    ));
    let Outcome::Reply(n) = c.call(&lookup("hello", 2), 4096, &mut reply).unwrap() else {
        panic!("no answer");
    };
    assert_eq!((n, error_of(&reply)), (reply.len(), 0));
    let node = u64::from_le_bytes(reply[16..24].try_into().unwrap());
    assert_eq!(
        c.call(&[9, 9], 4096, &mut reply).unwrap(),
        Outcome::Undecodable
    );
    // After a reset the old session's node is unknown.
    c.reset().unwrap();
    c.call(&init, 4096, &mut reply).unwrap();
    let getattr = fuse_message(FUSE_GETATTR, node, 3, (0, 0), &[0u8; 16]);
    c.call(&getattr, 4096, &mut reply).unwrap();
    assert_eq!(error_of(&reply), -libc::EBADF);
    // A request longer than the limit is cut, not refused.
    let mut long = lookup("hello", 4);
    long.resize(MAX_REQUEST + 100, 0);
    assert!(matches!(
        c.call(&long, 4096, &mut reply).unwrap(),
        Outcome::Reply(_)
    ));
    assert_eq!(error_of(&reply), 0);
    drop(c);
    t.join().unwrap().unwrap();
}

#[test]
fn a_server_refuses_frames_past_their_bounds_without_reading_them() {
    let dir = share();
    let frame = |kind: u32, len: u32, cap: u32| header(&[kind, len, cap]);
    for bad in [
        frame(KIND_REQUEST, u32::try_from(MAX_REQUEST).unwrap() + 1, 0),
        frame(KIND_REQUEST, 0, u32::try_from(MAX_REPLY).unwrap() + 1),
        frame(KIND_RESET, 1, 0),
        frame(77, 0, 0),
    ] {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        ours.write_all(&bad).unwrap();
        let mut s = server(&dir);
        assert!(matches!(
            serve(&mut theirs, &mut s),
            Err(ServeError::Protocol(_))
        ));
    }
    // A frame cut short is an error, not an orderly end.
    let (mut ours, mut theirs) = UnixStream::pair().unwrap();
    ours.write_all(&[1, 0, 0]).unwrap();
    drop(ours);
    let mut s = server(&dir);
    assert!(matches!(serve(&mut theirs, &mut s), Err(ServeError::Io(_))));
    // So is a request whose bytes never come.
    let (mut ours, mut theirs) = UnixStream::pair().unwrap();
    ours.write_all(&frame(KIND_REQUEST, 100, 0)).unwrap();
    ours.write_all(&[0u8; 10]).unwrap();
    drop(ours);
    assert!(serve(&mut theirs, &mut s).is_err());
}

#[test]
fn a_client_checks_what_the_server_answers() {
    let mut reply = Vec::new();
    // An answer longer than the room asked for.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut c = Client::new(ours);
    let t = std::thread::spawn(move || {
        let mut req = [0u8; 12 + 3];
        theirs.read_exact(&mut req).unwrap();
        theirs.write_all(&header(&[STATUS_REPLY, 5000])).unwrap();
    });
    assert!(matches!(
        c.call(&[1, 2, 3], 4096, &mut reply),
        Err(BackendError::Protocol(_))
    ));
    t.join().unwrap();
    // An unknown status.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut c = Client::new(ours);
    let t = std::thread::spawn(move || {
        let mut req = [0u8; 12];
        theirs.read_exact(&mut req).unwrap();
        theirs.write_all(&header(&[99, 0])).unwrap();
    });
    assert!(matches!(
        c.call(&[], 4096, &mut reply),
        Err(BackendError::Protocol(_))
    ));
    t.join().unwrap();
    // A server that is gone.
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let mut c = Client::new(ours);
    assert!(matches!(
        c.call(&[1], 4096, &mut reply),
        Err(BackendError::Gone | BackendError::Io(_))
    ));
    // A broken server's reason comes through.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut c = Client::new(ours);
    let t = std::thread::spawn(move || {
        let mut req = [0u8; 12];
        theirs.read_exact(&mut req).unwrap();
        theirs.write_all(&header(&[STATUS_BROKEN, 4])).unwrap();
        theirs.write_all(b"gone").unwrap();
    });
    match c.call(&[], 4096, &mut reply) {
        Err(BackendError::Broken(reason)) => assert_eq!(reason, "gone"),
        other => panic!("{other:?}"),
    }
    t.join().unwrap();
}

#[test]
fn a_client_waits_for_its_server_to_be_ready() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut c = Client::new(ours);
    send_ready(&mut theirs).unwrap();
    c.wait_ready(std::time::Duration::from_secs(5)).unwrap();
    // Not ready in time.
    let started = std::time::Instant::now();
    assert!(matches!(
        c.wait_ready(std::time::Duration::from_millis(50)),
        Err(BackendError::Io(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Gone before it was ready.
    drop(theirs);
    assert!(matches!(
        c.wait_ready(std::time::Duration::from_secs(5)),
        Err(BackendError::Gone)
    ));
    // Anything else first breaks the protocol.
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mut c = Client::new(ours);
    theirs.write_all(&header(&[STATUS_REPLY, 0])).unwrap();
    assert!(matches!(
        c.wait_ready(std::time::Duration::from_secs(5)),
        Err(BackendError::Protocol(_))
    ));
}
