use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::time::Duration;

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
    serve_on_a_thread("t", dir.path(), false, Duration::ZERO).unwrap()
}

/// A client whose server is played by the test: the client, the
/// server's view of the channel, and its end of the stream.
fn played() -> (Client, vm_memory::GuestMemoryMmap, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let shared = channel::create().unwrap();
    let view = channel::map(shared.try_clone().unwrap()).unwrap();
    (
        Client::new(ours, shared, Duration::ZERO).unwrap(),
        view,
        theirs,
    )
}

/// Plays the server once: waits for a request, answers `status` and
/// `len` with `bytes` as the answer.
fn answer_once(
    view: vm_memory::GuestMemoryMmap,
    mut stream: UnixStream,
    status: u32,
    len: u32,
    bytes: &'static [u8],
) -> std::thread::JoinHandle<UnixStream> {
    std::thread::spawn(move || {
        let c = At(&view, 0);
        assert!(channel::wait_for(
            &c,
            &mut stream,
            channel::SERVER_IDLE,
            &mut channel::Spinner::new(Duration::ZERO),
            |w| Ok(w.word(channel::REQ_SEQ)? != 0),
        )
        .unwrap());
        vm_memory::Bytes::write_slice(&view, bytes, vm_memory::GuestAddress(channel::REPLY))
            .unwrap();
        c.set_word(channel::STATUS, status).unwrap();
        c.set_word(channel::REP_LEN, len).unwrap();
        c.set_word(channel::REP_SEQ, c.word(channel::REQ_SEQ).unwrap())
            .unwrap();
        assert!(channel::kick(&mut stream).unwrap());
        stream
    })
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
fn a_server_refuses_requests_past_their_bounds() {
    let dir = share();
    let max_request = u32::try_from(MAX_REQUEST).unwrap();
    let max_reply = u32::try_from(MAX_REPLY).unwrap();
    for (kind, len, cap) in [
        (KIND_REQUEST, max_request + 1, 0),
        (KIND_REQUEST, 0, max_reply + 1),
        (KIND_REQUEST, u32::MAX, u32::MAX),
        (KIND_RESET, 1, 0),
        (77, 0, 0),
    ] {
        let (mut c, t) = remote(&dir);
        // The server stops serving: the device hears it is gone.
        assert!(matches!(
            c.exchange(kind, len, cap),
            Err(BackendError::Gone)
        ));
        assert!(matches!(t.join().unwrap(), Err(ServeError::Protocol(_))));
    }
    // A stray kick with nothing posted is looked at and ignored.
    let (mut c, t) = remote(&dir);
    let mut reply = Vec::new();
    {
        let mut kicker = c.stream.try_clone().unwrap();
        kicker.write_all(&[1, 1, 1]).unwrap();
    }
    let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
    assert!(matches!(
        c.call(&init, 4096, &mut reply).unwrap(),
        Outcome::Reply(_)
    ));
    drop(c);
    t.join().unwrap().unwrap();
}

#[test]
fn a_server_refuses_a_channel_that_could_shrink() {
    let dir = share();
    let plain = tempfile::tempfile().unwrap();
    plain.set_len(channel::SIZE as u64).unwrap();
    let err = FsServer::with_channel("t", dir.path(), false, IdMaps::default(), plain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not sealed"), "{err}");
}

#[test]
fn a_client_checks_what_the_server_answers() {
    let mut reply = Vec::new();
    // An answer longer than the room asked for.
    let (mut c, view, theirs) = played();
    let t = answer_once(view, theirs, STATUS_REPLY, 5000, b"");
    assert!(matches!(
        c.call(&[1, 2, 3], 4096, &mut reply),
        Err(BackendError::Protocol(_))
    ));
    t.join().unwrap();
    // An unknown status.
    let (mut c, view, theirs) = played();
    let t = answer_once(view, theirs, 99, 0, b"");
    assert!(matches!(
        c.call(&[], 4096, &mut reply),
        Err(BackendError::Protocol(_))
    ));
    t.join().unwrap();
    // A reason longer than its bound.
    let (mut c, view, theirs) = played();
    let t = answer_once(view, theirs, STATUS_BROKEN, 1 << 20, b"");
    assert!(matches!(
        c.call(&[], 4096, &mut reply),
        Err(BackendError::Protocol(_))
    ));
    t.join().unwrap();
    // A server that is gone.
    let (mut c, _view, theirs) = played();
    drop(theirs);
    assert!(matches!(
        c.call(&[1], 4096, &mut reply),
        Err(BackendError::Gone | BackendError::Io(_))
    ));
    // A broken server's reason comes through.
    let (mut c, view, theirs) = played();
    let t = answer_once(view, theirs, STATUS_BROKEN, 4, b"gone");
    match c.call(&[], 4096, &mut reply) {
        Err(BackendError::Broken(reason)) => assert_eq!(reason, "gone"),
        other => panic!("{other:?}"),
    }
    t.join().unwrap();
    // An answer within the room is read from the channel.
    let (mut c, view, theirs) = played();
    let t = answer_once(view, theirs, STATUS_REPLY, 5, b"hello");
    assert_eq!(c.call(&[1], 4096, &mut reply).unwrap(), Outcome::Reply(5));
    assert_eq!(reply, b"hello");
    t.join().unwrap();
}

#[test]
fn spinning_and_sleeping_servers_answer_alike() {
    let dir = share();
    for spin in [Duration::ZERO, Duration::from_micros(100)] {
        let (mut c, t) = serve_on_a_thread("t", dir.path(), false, spin).unwrap();
        let mut reply = Vec::new();
        let init = fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0));
        c.call(&init, 4096, &mut reply).unwrap();
        for unique in 2..2000 {
            assert!(matches!(
                c.call(&lookup("hello", unique), 4096, &mut reply).unwrap(),
                Outcome::Reply(_)
            ));
            assert_eq!(error_of(&reply), 0);
            // Now and then the server falls asleep between requests.
            if unique % 500 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(c);
        t.join().unwrap().unwrap();
    }
}

#[test]
fn a_client_waits_for_its_server_to_be_ready() {
    let (mut c, _view, mut theirs) = played();
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
    let (mut c, _view, mut theirs) = played();
    theirs.write_all(&header(&[STATUS_REPLY, 0])).unwrap();
    assert!(matches!(
        c.wait_ready(std::time::Duration::from_secs(5)),
        Err(BackendError::Protocol(_))
    ));
}

/// `FUSE_OPEN`, `FUSE_READ`, `FUSE_OPENDIR` (include/uapi/linux/fuse.h).
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_OPENDIR: u32 = 27;

/// Serves `msg` through `c`; the answer, its error checked to be `errno`.
fn ask(c: &mut Client, msg: &[u8], errno: i32) -> Vec<u8> {
    let mut reply = Vec::new();
    assert!(matches!(
        c.call(msg, 1 << 16, &mut reply).unwrap(),
        Outcome::Reply(_)
    ));
    assert_eq!(error_of(&reply), errno, "{reply:?}");
    reply
}

fn lookup_in(c: &mut Client, parent: u64, name: &str, unique: u64) -> u64 {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    let reply = ask(
        c,
        &fuse_message(FUSE_LOOKUP, parent, unique, (0, 0), &body),
        0,
    );
    u64::from_le_bytes(reply[16..24].try_into().unwrap())
}

fn open_on(c: &mut Client, opcode: u32, node: u64, flags: u32, unique: u64) -> u64 {
    let body: Vec<u8> = [flags, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let reply = ask(c, &fuse_message(opcode, node, unique, (0, 0), &body), 0);
    u64::from_le_bytes(reply[16..24].try_into().unwrap())
}

fn read_from(c: &mut Client, node: u64, fh: u64, unique: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&fh.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes()); // offset
    body.extend_from_slice(&64u32.to_le_bytes()); // size
    body.extend_from_slice(&[0u8; 20]); // read flags, lock owner, flags, padding
    let reply = ask(c, &fuse_message(FUSE_READ, node, unique, (0, 0), &body), 0);
    reply[OUT_HEADER..].to_vec()
}

#[test]
fn a_checkpointed_share_gives_a_new_server_the_guests_ids_back() {
    let dir = share();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/f"), b"in sub").unwrap();
    let (mut a, serving_a) = remote(&dir);
    ask(
        &mut a,
        &fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0)),
        0,
    );
    let sub = lookup_in(&mut a, ROOT, "sub", 2);
    let f = lookup_in(&mut a, sub, "f", 3);
    let _again = lookup_in(&mut a, sub, "f", 4);
    let fh = open_on(&mut a, FUSE_OPEN, f, libc::O_RDWR as u32, 5);
    let dh = open_on(&mut a, FUSE_OPENDIR, sub, libc::O_RDONLY as u32, 6);
    assert_eq!(read_from(&mut a, f, fh, 7), b"in sub");
    // Renamed on the host while the guest holds it: saved by its new path.
    std::fs::rename(dir.path().join("sub"), dir.path().join("moved")).unwrap();
    let state = a.save_state().unwrap();
    assert_eq!(state.handles.len(), 2);
    let saved_f = state.nodes.iter().find(|n| n.id == f).unwrap();
    assert_eq!(saved_f.path, b"moved/f");
    assert_eq!(saved_f.lookups, 2);
    assert!(state.init.is_some());
    drop(a);
    serving_a.join().unwrap().unwrap();

    // A new server (a restored VM's) with that state.
    let (mut b, serving_b) = remote(&dir);
    b.load_state(&state).unwrap();
    assert_eq!(
        read_from(&mut b, f, fh, 8),
        b"in sub",
        "old node, old handle"
    );
    let getattr = fuse_message(FUSE_GETATTR, sub, 9, (0, 0), &[0u8; 16]);
    ask(&mut b, &getattr, 0);
    let _ = dh;
    // A file looked up now gets an id no old one had.
    let hello = lookup_in(&mut b, ROOT, "hello", 10);
    assert!(![sub, f].contains(&hello), "{hello}");
    // Ids the guest never got are refused.
    let bogus = fuse_message(FUSE_GETATTR, 999, 11, (0, 0), &[0u8; 16]);
    ask(&mut b, &bogus, -libc::EBADF);
    // And what the restored server holds is saved again the same way.
    let again = b.save_state().unwrap();
    assert!(again
        .nodes
        .iter()
        .any(|n| n.id == f && n.path == b"moved/f"));
    assert!(again
        .nodes
        .iter()
        .any(|n| n.id == hello && n.path == b"hello"));
    drop(b);
    serving_b.join().unwrap().unwrap();
}

#[test]
fn a_checkpoint_refuses_an_open_file_no_path_names_and_a_restore_a_missing_one() {
    let dir = share();
    let (mut a, _serving) = remote(&dir);
    ask(
        &mut a,
        &fuse_message(FUSE_INIT, 0, 1, (0, 0), &init_body(0)),
        0,
    );
    let hello = lookup_in(&mut a, ROOT, "hello", 2);
    let _fh = open_on(&mut a, FUSE_OPEN, hello, libc::O_RDONLY as u32, 3);
    let state = a.save_state().unwrap();
    std::fs::remove_file(dir.path().join("hello")).unwrap();
    let err = a.save_state().unwrap_err().to_string();
    assert!(
        err.contains("deleted or moved") && err.contains("hello"),
        "{err}"
    );

    // The restore of the earlier state: its file is gone.
    let (mut b, _serving_b) = remote(&dir);
    let err = b.load_state(&state).unwrap_err().to_string();
    assert!(
        err.contains("not in the share") && err.contains("hello"),
        "{err}"
    );
    // A file of another kind under the same name.
    std::fs::create_dir(dir.path().join("hello")).unwrap();
    let err = b.load_state(&state).unwrap_err().to_string();
    assert!(err.contains("different kind"), "{err}");
    // A state that is no state.
    let mut c = FsServer::new("t", dir.path(), false, IdMaps::default()).unwrap();
    c.loading = b"{not json".to_vec();
    assert!(c.load_part(0).is_err());
    // The server goes on serving after refusing.
    ask(
        &mut b,
        &fuse_message(FUSE_INIT, 0, 4, (0, 0), &init_body(0)),
        0,
    );
}
