//! Session tests: the connection handler over Unix socket pairs, spawning
//! real processes on the host (no container setup; uid/gid are the test's).

use super::*;
use crate::agent_proto::Event;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One reaper per test process (it waits for every child).
fn reaper() -> Arc<Reaper> {
    static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
    Arc::clone(REAPER.get_or_init(|| Reaper::start().expect("reaper thread")))
}

/// Records what the agent asks of the system instead of doing it.
#[derive(Default, Clone)]
struct TestPlatform {
    setups: Arc<Mutex<Vec<String>>>,
    signals: Arc<Mutex<Vec<i32>>>,
    marks: Arc<Mutex<Vec<crate::proto::BootEvent>>>,
}

impl Platform for TestPlatform {
    fn setup(&self, spec: &ContainerSpec) -> Result<(), SetupError> {
        self.setups.lock().unwrap().push(spec.id.clone());
        Ok(())
    }
    fn signal_all(&self, signal: i32) -> Result<(), Errno> {
        self.signals.lock().unwrap().push(signal);
        Ok(())
    }
    fn main_exited(&self) {}
    fn log(&self, _line: &str) {}
    fn boot_mark(&self, event: crate::proto::BootEvent) {
        self.marks.lock().unwrap().push(event);
    }
}

type TestAgent = Arc<Agent<TestPlatform>>;

fn agent() -> (TestAgent, TestPlatform) {
    let platform = TestPlatform::default();
    (Arc::new(Agent::new(platform.clone(), reaper())), platform)
}

const TIMEOUT: Duration = Duration::from_secs(20);

struct Client(UnixStream);

impl Client {
    fn connect(agent: &TestAgent) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(TIMEOUT)).unwrap();
        let agent = Arc::clone(agent);
        std::thread::spawn(move || handle_connection(&*agent, theirs));
        Client(ours)
    }

    fn send(&mut self, frame: Frame) {
        frame.write_to(&mut self.0).unwrap();
    }

    fn request(&mut self, request: &Request) {
        self.send(Frame::json(FrameKind::Request, request));
    }

    fn recv(&mut self) -> Option<Frame> {
        Frame::read_from(&mut self.0).expect("a frame or EOF in time")
    }

    fn response(&mut self) -> Response {
        let frame = self.recv().expect("a response");
        assert_eq!(frame.kind, FrameKind::Response, "{frame:?}");
        frame.parse("response").unwrap()
    }

    /// One-shot request on a fresh connection; the connection then closes.
    fn one_shot(agent: &TestAgent, request: &Request) -> Response {
        let mut c = Client::connect(agent);
        c.request(request);
        let response = c.response();
        assert!(c.recv().is_none(), "one-shot connections close");
        response
    }

    /// Reads stream frames until `Exited`, which must be the last frame.
    /// `Event::Started` may come first (the main session), before output.
    fn until_exit(&mut self) -> (Vec<u8>, Vec<u8>, Event) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let frame = self.recv().expect("Exited before EOF");
            match frame.kind {
                FrameKind::Stdout => out.extend(&frame.payload),
                FrameKind::Stderr => err.extend(&frame.payload),
                FrameKind::Event => {
                    let event: Event = frame.parse("event").unwrap();
                    if let Event::Started { .. } = event {
                        assert!(out.is_empty() && err.is_empty(), "Started before output");
                        continue;
                    }
                    assert!(self.recv().is_none(), "Exited is the last frame");
                    return (out, err, event);
                }
                other => panic!("unexpected {other:?} frame: {frame:?}"),
            }
        }
    }
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![format!("PATH={}", crate::proto::DEFAULT_PATH)],
        cwd: "/".into(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        ..Default::default()
    }
}

fn exited(code: i32) -> Event {
    Event::Exited {
        code: Some(code),
        signal: None,
    }
}

fn signaled(signal: i32) -> Event {
    Event::Exited {
        code: None,
        signal: Some(signal),
    }
}

/// An agent with a created container whose main process is `main`.
fn created(main: &[&str]) -> (TestAgent, Client) {
    let (agent, platform) = agent();
    let mut c = Client::connect(&agent);
    c.request(&Request::Create {
        spec: Box::new(ContainerSpec {
            id: "t1".into(),
            process: process(main),
            ..Default::default()
        }),
    });
    assert_eq!(c.response(), Response::Created);
    assert_eq!(*platform.setups.lock().unwrap(), ["t1"]);
    (agent, c)
}

fn exec(agent: &TestAgent, p: ProcessSpec) -> (Client, i32) {
    let mut c = Client::connect(agent);
    c.request(&Request::Exec {
        container: None,
        process: Box::new(p),
    });
    match c.response() {
        Response::Started { pid } => (c, pid),
        other => panic!("expected Started, got {other:?}"),
    }
}

#[test]
fn exec_streams_stdout_stderr_then_exit_code() {
    let (agent, _main) = created(&["true"]);
    let (mut c, pid) = exec(
        &agent,
        process(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
    );
    assert!(pid > 0);
    let (out, err, event) = c.until_exit();
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(event, exited(3));
}

#[test]
fn exec_pipes_stdin_until_eof() {
    let (agent, _main) = created(&["true"]);
    let (mut c, _) = exec(&agent, process(&["cat"]));
    c.send(Frame::new(FrameKind::Stdin, b"hello ".to_vec()));
    c.send(Frame::new(FrameKind::Stdin, b"world".to_vec()));
    c.send(Frame::new(FrameKind::StdinEof, vec![]));
    let (out, err, event) = c.until_exit();
    assert_eq!(out, b"hello world");
    assert!(err.is_empty());
    assert_eq!(event, exited(0));
}

#[test]
fn closing_the_connection_ends_stdin() {
    let (agent, _main) = created(&["true"]);
    let (c, _) = exec(&agent, process(&["cat"]));
    // Half-close: the host sends nothing more but still reads.
    c.0.shutdown(std::net::Shutdown::Write).unwrap();
    let mut c = c;
    let (_, _, event) = c.until_exit();
    assert_eq!(event, exited(0));
}

#[test]
fn exec_of_a_missing_program_is_an_error_naming_it() {
    let (agent, _main) = created(&["true"]);
    let r = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(process(&["no-such-program-xyz"])),
        },
    );
    assert_eq!(
        r,
        Response::Error {
            message: "exec: \"no-such-program-xyz\": executable file not found in $PATH".into()
        }
    );
    let r = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(process(&["/bin/no-such-program"])),
        },
    );
    assert_eq!(
        r,
        Response::Error {
            message: "exec: \"/bin/no-such-program\": stat /bin/no-such-program: no such file or directory".into()
        }
    );
    // There, but not executable: execve itself fails, in the child.
    let r = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(process(&["/etc/passwd"])),
        },
    );
    assert_eq!(
        r,
        Response::Error {
            message: "exec /etc/passwd: permission denied".into()
        }
    );
    let mut bad_cwd = process(&["true"]);
    bad_cwd.cwd = "/no/such/dir".into();
    let Response::Error { message } = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(bad_cwd),
        },
    ) else {
        panic!("a bad cwd is an error");
    };
    assert!(
        message.contains("chdir to cwd \"/no/such/dir\""),
        "{message}"
    );
}

#[test]
fn large_output_all_arrives_before_exited() {
    let (agent, _main) = created(&["true"]);
    let (mut c, _) = exec(&agent, process(&["head", "-c", "1000000", "/dev/zero"]));
    let (out, _, event) = c.until_exit();
    assert_eq!(out.len(), 1_000_000);
    assert_eq!(event, exited(0));
}

#[test]
fn output_held_open_by_a_leftover_does_not_hold_exited() {
    let (agent, _main) = created(&["true"]);
    let started = Instant::now();
    let (mut c, _) = exec(&agent, process(&["sh", "-c", "sleep 10 & echo done"]));
    let (out, _, event) = c.until_exit();
    assert_eq!(out, b"done\n");
    assert_eq!(event, exited(0));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn ps_lists_an_exec_child_and_init_reaps_it_on_kill() {
    let (agent, _main) = created(&["true"]);
    let (mut c, pid) = exec(&agent, process(&["sleep", "30"]));
    let Response::Ps { processes } = Client::one_shot(&agent, &Request::Ps { container: None })
    else {
        panic!("expected Ps");
    };
    let child = processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("the child is listed");
    assert_eq!(child.cmdline, ["sleep", "30"]);
    assert_eq!(child.uid, nix::unistd::getuid().as_raw());
    assert!(!processes.iter().any(|p| p.pid == 1));
    // SAFETY: kill has no memory effects; pid is our (unreaped) child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(c.until_exit().2, signaled(9));
}

#[test]
fn main_process_runs_at_start_and_streams_on_the_create_connection() {
    let (agent, mut main) = created(&["sh", "-c", "cat; echo bye >&2; exit 4"]);
    // Stdin sent before Start waits for the process.
    main.send(Frame::new(FrameKind::Stdin, b"early ".to_vec()));
    let Response::Started { pid } = Client::one_shot(&agent, &Request::Start { container: None })
    else {
        panic!("expected Started");
    };
    assert!(pid > 0);
    let started = main.recv().unwrap();
    assert_eq!(
        started.parse::<Event>("event").unwrap(),
        Event::Started { pid }
    );
    main.send(Frame::new(FrameKind::Stdin, b"late".to_vec()));
    main.send(Frame::new(FrameKind::StdinEof, vec![]));
    let (out, err, event) = main.until_exit();
    assert_eq!(out, b"early late");
    assert_eq!(err, b"bye\n");
    assert_eq!(event, exited(4));
    let again = Client::one_shot(&agent, &Request::Start { container: None });
    assert_eq!(
        again,
        Response::Error {
            message: "container t1 already started".into()
        }
    );
    let r = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(process(&["true"])),
        },
    );
    assert_eq!(
        r,
        Response::Error {
            message: "cannot exec in a stopped container".into()
        }
    );
}

#[test]
fn starting_the_main_process_marks_the_boot_timer() {
    let (agent, platform) = agent();
    let mut c = Client::connect(&agent);
    c.request(&Request::Create {
        spec: Box::new(ContainerSpec {
            id: "t1".into(),
            process: process(&["true"]),
            ..Default::default()
        }),
    });
    assert_eq!(c.response(), Response::Created);
    assert!(platform.marks.lock().unwrap().is_empty());
    let Response::Started { .. } = Client::one_shot(&agent, &Request::Start { container: None })
    else {
        panic!("expected Started");
    };
    assert_eq!(
        *platform.marks.lock().unwrap(),
        [crate::proto::BootEvent::ProcessExecuted]
    );
}

#[test]
fn signal_reaches_the_main_process() {
    let (agent, mut main) = created(&["sleep", "30"]);
    let not_yet = Client::one_shot(
        &agent,
        &Request::Signal {
            container: None,
            signal: 15,
            all: false,
        },
    );
    assert_eq!(
        not_yet,
        Response::Error {
            message: "container not running".into()
        }
    );
    let Response::Started { .. } = Client::one_shot(&agent, &Request::Start { container: None })
    else {
        panic!("expected Started");
    };
    let r = Client::one_shot(
        &agent,
        &Request::Signal {
            container: None,
            signal: 15,
            all: false,
        },
    );
    assert_eq!(r, Response::Ok);
    assert_eq!(main.until_exit().2, signaled(15));
    let after = Client::one_shot(
        &agent,
        &Request::Signal {
            container: None,
            signal: 9,
            all: false,
        },
    );
    assert_eq!(
        after,
        Response::Error {
            message: "container not running".into()
        }
    );
}

#[test]
fn a_signal_on_an_exec_session_reaches_only_that_process() {
    let (agent, _main) = created(&["true"]);
    let (mut c, pid) = exec(&agent, process(&["sleep", "30"]));
    c.request(&Request::Signal {
        container: None,
        signal: 99,
        all: false,
    });
    assert_eq!(
        c.response(),
        Response::Error {
            message: "invalid signal 99".into()
        }
    );
    c.request(&Request::Signal {
        container: None,
        signal: 15,
        all: false,
    });
    assert_eq!(c.response(), Response::Ok);
    assert_eq!(c.until_exit().2, signaled(15));
    assert!(pid > 0);
}

#[test]
fn signal_all_goes_through_the_platform_and_bad_signals_are_refused() {
    let (agent, platform) = agent();
    let mut main = Client::connect(&agent);
    main.request(&Request::Create {
        spec: Box::new(ContainerSpec {
            id: "t2".into(),
            process: process(&["sleep", "30"]),
            ..Default::default()
        }),
    });
    assert_eq!(main.response(), Response::Created);
    let Response::Started { pid } = Client::one_shot(&agent, &Request::Start { container: None })
    else {
        panic!("expected Started");
    };
    let r = Client::one_shot(
        &agent,
        &Request::Signal {
            container: None,
            signal: 1000,
            all: false,
        },
    );
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    let r = Client::one_shot(
        &agent,
        &Request::Signal {
            container: None,
            signal: 10,
            all: true,
        },
    );
    assert_eq!(r, Response::Ok);
    assert_eq!(*platform.signals.lock().unwrap(), [10]);
    // SAFETY: kill has no memory effects; pid is our (unreaped) child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(main.until_exit().2, signaled(9));
}

#[test]
fn a_main_process_that_cannot_execute_fails_start_and_ends_the_session() {
    let (agent, mut main) = created(&["/etc/passwd"]);
    let r = Client::one_shot(&agent, &Request::Start { container: None });
    assert_eq!(
        r,
        Response::Error {
            message: "exec /etc/passwd: permission denied".into()
        }
    );
    assert_eq!(main.until_exit().2, exited(126));
}

#[test]
fn requests_out_of_order_are_errors() {
    let (agent, _) = agent();
    let start = Client::one_shot(&agent, &Request::Start { container: None });
    assert_eq!(
        start,
        Response::Error {
            message: "container not created".into()
        }
    );
    let exec = Client::one_shot(
        &agent,
        &Request::Exec {
            container: None,
            process: Box::new(process(&["true"])),
        },
    );
    assert_eq!(
        exec,
        Response::Error {
            message: "container not created".into()
        }
    );
    let (agent, _main) = created(&["true"]);
    let create = Client::one_shot(
        &agent,
        &Request::Create {
            spec: Box::default(),
        },
    );
    assert_eq!(
        create,
        Response::Error {
            message: "container t1 already created".into()
        }
    );
    let resize = Client::one_shot(&agent, &Request::Resize { rows: 1, cols: 1 });
    assert!(matches!(resize, Response::Error { .. }));
}

#[test]
fn terminal_sessions_get_a_pty_and_resize() {
    let (agent, _main) = created(&["true"]);
    let mut p = process(&["tty"]);
    p.terminal = true;
    let (mut c, _) = exec(&agent, p);
    let (out, err, event) = c.until_exit();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert!(err.is_empty());
    assert_eq!(event, exited(0));

    let mut p = process(&["sh", "-c", "stty size; read line; stty size"]);
    p.terminal = true;
    p.console_size = Some((24, 80));
    let (mut c, _) = exec(&agent, p);
    // Wait for the first size so the resize comes after it.
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("24 80") {
        let frame = c.recv().expect("output");
        assert_eq!(frame.kind, FrameKind::Stdout);
        out.extend(frame.payload);
    }
    c.request(&Request::Resize {
        rows: 30,
        cols: 100,
    });
    c.send(Frame::new(FrameKind::Stdin, b"\n".to_vec()));
    let (rest, _, event) = c.until_exit();
    out.extend(rest);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("30 100"), "{text:?}");
    assert_eq!(event, exited(0));
}

/// Writes raw bytes on a fresh connection and returns what came back.
fn raw_exchange(agent: &TestAgent, bytes: &[u8]) -> Vec<Frame> {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(TIMEOUT)).unwrap();
    let handler = {
        let agent = Arc::clone(agent);
        std::thread::spawn(move || handle_connection(&*agent, theirs))
    };
    ours.write_all(bytes).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    let mut frames = Vec::new();
    while let Ok(Some(f)) = Frame::read_from(&mut ours) {
        frames.push(f);
    }
    handler.join().expect("the handler does not panic");
    frames
}

fn is_error(frames: &[Frame]) -> bool {
    matches!(
        frames,
        [f] if f.kind == FrameKind::Response
            && matches!(f.parse::<Response>("response"), Ok(Response::Error { .. }))
    )
}

#[test]
fn malformed_frames_get_an_error_and_the_connection_closes() {
    let (agent, _main) = created(&["true"]);
    let frame = |kind: u8, payload: &[u8]| {
        let mut b = u32::try_from(payload.len() + 1)
            .unwrap()
            .to_le_bytes()
            .to_vec();
        b.push(kind);
        b.extend_from_slice(payload);
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad json", frame(1, b"{nope")),
        ("wrong shape", frame(1, br#"{"op":"exec","process":7}"#)),
        ("unknown op", frame(1, br#"{"op":"reboot"}"#)),
        ("unknown kind", frame(0x7f, b"")),
        ("empty frame", vec![0, 0, 0, 0]),
        (
            "too large",
            (crate::agent_proto::MAX_FRAME + 1).to_le_bytes().to_vec(),
        ),
        ("stdin first", frame(0x10, b"hi")),
        ("response from host", frame(2, br#"{"result":"ok"}"#)),
    ];
    for (what, bytes) in cases {
        let frames = raw_exchange(&agent, &bytes);
        assert!(is_error(&frames), "{what}: {frames:?}");
    }
    // Truncated frames just end the connection.
    assert!(raw_exchange(&agent, &[9, 0, 0, 0, 1, b'{']).is_empty());
    assert!(raw_exchange(&agent, &[9, 0]).is_empty());
}

#[test]
fn garbage_never_crashes_the_agent() {
    let (agent, _main) = created(&["true"]);
    // A small deterministic generator: no external randomness needed.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..200 {
        let len = usize::try_from(next() % 64).unwrap();
        let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if round % 2 == 0 && bytes.len() >= 5 {
            // Plausible header: a small length and a known kind.
            let body = u32::try_from(bytes.len() - 4).unwrap();
            bytes[..4].copy_from_slice(&body.to_le_bytes());
            bytes[4] = [1, 2, 3, 0x10, 0x11, 0x20, 0x21][usize::try_from(next() % 7).unwrap()];
        }
        raw_exchange(&agent, &bytes);
    }
    assert!(matches!(
        Client::one_shot(&agent, &Request::Ps { container: None }),
        Response::Ps { .. }
    ));
}

#[test]
fn a_session_survives_bad_frames() {
    let (agent, _main) = created(&["true"]);
    let (mut c, _) = exec(&agent, process(&["cat"]));
    c.send(Frame::new(FrameKind::Request, b"{nope".to_vec()));
    assert!(matches!(c.response(), Response::Error { .. }));
    c.request(&Request::Ps { container: None });
    assert_eq!(
        c.response(),
        Response::Error {
            message: "ps is not accepted on a session connection".into()
        }
    );
    c.send(Frame::new(FrameKind::Stdin, b"still here".to_vec()));
    c.send(Frame::new(FrameKind::StdinEof, vec![]));
    let (out, _, event) = c.until_exit();
    assert_eq!(out, b"still here");
    assert_eq!(event, exited(0));
}

#[test]
fn create_fails_for_a_missing_program_like_runc() {
    let (agent, _) = agent();
    let r = Client::one_shot(
        &agent,
        &Request::Create {
            spec: Box::new(ContainerSpec {
                id: "t3".into(),
                process: process(&["no-such-program-xyz"]),
                ..Default::default()
            }),
        },
    );
    assert_eq!(
        r,
        Response::Error {
            message: "exec: \"no-such-program-xyz\": executable file not found in $PATH".into()
        }
    );
}

#[test]
fn the_process_spec_is_applied_in_the_child() {
    let (agent, _main) = created(&["true"]);
    let mut p = process(&[
        "sh",
        "-c",
        "pwd; umask; ulimit -n; cat /proc/self/oom_score_adj; echo $FOO; echo $HOME",
    ]);
    p.cwd = "/tmp".into();
    p.umask = Some(0o027);
    p.env.push("FOO=bar baz".into());
    p.env.push("HOME=/nowhere".into());
    p.rlimits.push(crate::agent_proto::Rlimit {
        kind: "RLIMIT_NOFILE".into(),
        soft: 100,
        hard: 200,
    });
    p.oom_score_adj = Some(500);
    let (mut c, _) = exec(&agent, p);
    let (out, err, event) = c.until_exit();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "/tmp\n0027\n100\n500\nbar baz\n/nowhere\n",
        "stderr: {}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(event, exited(0));
}

#[test]
fn capabilities_and_no_new_privileges_are_applied_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return; // Dropping capabilities needs them.
    }
    let (agent, _main) = created(&["true"]);
    let mut p = process(&[
        "sh",
        "-c",
        "grep -E '^(CapBnd|CapEff|CapPrm|NoNewPrivs)' /proc/self/status",
    ]);
    let kill_chown = vec!["CAP_KILL".to_owned(), "CAP_CHOWN".to_owned()];
    p.capabilities = Some(crate::agent_proto::Capabilities {
        bounding: Some(kill_chown.clone()),
        effective: Some(kill_chown.clone()),
        permitted: Some(kill_chown),
        inheritable: Some(vec![]),
        ambient: Some(vec![]),
    });
    p.no_new_privileges = true;
    let (mut c, _) = exec(&agent, p);
    let (out, _, event) = c.until_exit();
    let text = String::from_utf8_lossy(&out);
    for line in [
        "CapPrm:\t0000000000000021",
        "CapEff:\t0000000000000021",
        "CapBnd:\t0000000000000021",
        "NoNewPrivs:\t1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    assert_eq!(event, exited(0));

    // Kept across setuid to an unprivileged user (PR_SET_KEEPCAPS), and
    // across its exec as ambient capabilities (as with runc, only those).
    let mut p = process(&[
        "sh",
        "-c",
        "id -u; id -G; grep -E '^Cap(Eff|Amb)' /proc/self/status",
    ]);
    p.uid = 65534;
    p.gid = 65534;
    p.additional_gids = vec![65533];
    let kill = vec!["CAP_KILL".to_owned()];
    p.capabilities = Some(crate::agent_proto::Capabilities {
        bounding: Some(kill.clone()),
        effective: Some(kill.clone()),
        permitted: Some(kill.clone()),
        inheritable: Some(kill.clone()),
        ambient: Some(kill),
    });
    let (mut c, _) = exec(&agent, p);
    let (out, err, event) = c.until_exit();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "65534\n65534 65533\nCapEff:\t0000000000000020\nCapAmb:\t0000000000000020\n",
        "stderr: {}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(event, exited(0));
}

/// `uname` refused with `EPERM`, everything else allowed.
fn deny_uname() -> crate::agent_proto::SeccompProgram {
    use crate::agent_proto::SockFilter;
    const LD_NR: u16 = 0x20;
    const JEQ: u16 = 0x15;
    const RET: u16 = 0x06;
    crate::agent_proto::SeccompProgram {
        flags: 0,
        filter: vec![
            SockFilter(LD_NR, 0, 0, 0),
            SockFilter(JEQ, 0, 1, libc::SYS_uname as u32),
            SockFilter(RET, 0, 0, 0x0005_0000 | libc::EPERM as u32),
            SockFilter(RET, 0, 0, 0x7fff_0000),
        ],
    }
}

#[test]
fn the_containers_seccomp_filter_reaches_its_process_and_execs() {
    let (agent, platform) = agent();
    let mut c = Client::connect(&agent);
    let probe = "grep '^Seccomp:' /proc/self/status; uname || echo refused";
    c.request(&Request::Create {
        spec: Box::new(ContainerSpec {
            id: "t1".into(),
            process: {
                let mut p = process(&["sh", "-c", probe]);
                p.no_new_privileges = true;
                p
            },
            seccomp: Some(deny_uname()),
            ..Default::default()
        }),
    });
    assert_eq!(c.response(), Response::Created);
    assert_eq!(*platform.setups.lock().unwrap(), ["t1"]);

    // An exec gets the container's filter too; without no_new_privileges
    // it is loaded while the process still has CAP_SYS_ADMIN (as root).
    if nix::unistd::geteuid().is_root() {
        let (mut e, _) = exec(&agent, process(&["sh", "-c", probe]));
        let (out, _, event) = e.until_exit();
        assert_eq!(String::from_utf8_lossy(&out), "Seccomp:\t2\nrefused\n");
        assert_eq!(event, exited(0));
    }

    let Response::Started { .. } = Client::one_shot(&agent, &Request::Start { container: None })
    else {
        panic!("expected Started");
    };
    let (out, err, event) = c.until_exit();
    assert_eq!(String::from_utf8_lossy(&out), "Seccomp:\t2\nrefused\n");
    assert!(
        String::from_utf8_lossy(&err).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(event, exited(0));
}

#[test]
fn a_filter_the_kernel_refuses_fails_the_process_naming_seccomp() {
    let (agent, _main) = created(&["true"]);
    // Set through a created container with a bad program: a jump past the end.
    let bad = crate::agent_proto::SeccompProgram {
        flags: 0,
        filter: vec![crate::agent_proto::SockFilter(0x05, 0, 0, 9)],
    };
    *agent.first().unwrap().seccomp.lock().unwrap() = Some(bad);
    let mut p = process(&["true"]);
    p.no_new_privileges = true;
    let mut c = Client::connect(&agent);
    c.request(&Request::Exec {
        container: None,
        process: Box::new(p),
    });
    match c.response() {
        Response::Error { message } => {
            assert!(message.contains("seccomp"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // An empty program is refused before any fork.
    let empty = crate::agent_proto::SeccompProgram::default();
    *agent.first().unwrap().seccomp.lock().unwrap() = Some(empty);
    let mut c = Client::connect(&agent);
    c.request(&Request::Exec {
        container: None,
        process: Box::new(process(&["true"])),
    });
    assert!(matches!(c.response(), Response::Error { .. }));
}

/// Reads frames until the `Detached` marker; the output before it.
fn until_detached(c: &mut Client) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let frame = c.recv().expect("Detached before EOF");
        match frame.kind {
            FrameKind::Stdout => out.extend(&frame.payload),
            FrameKind::Event => match frame.parse::<Event>("event").unwrap() {
                Event::Started { .. } => {}
                Event::Detached => return out,
                other => panic!("{other:?} before Detached"),
            },
            other => panic!("unexpected {other:?} frame"),
        }
    }
}

#[test]
fn a_checkpoint_holds_the_main_output_until_a_new_connection_reattaches() {
    // `cat` echoes stdin: what is typed after the restore comes back on the
    // new connection, and the old connection's end did not close its stdin.
    let (agent, mut main) = created(&["cat"]);
    assert_eq!(
        Client::one_shot(&agent, &Request::Checkpoint),
        Response::Error {
            message: "the container is not running".into()
        }
    );
    assert!(matches!(
        Client::one_shot(&agent, &Request::Start { container: None }),
        Response::Started { .. }
    ));
    main.send(Frame::new(FrameKind::Stdin, b"one\n".to_vec()));
    // An exec session holds the checkpoint off until it ends.
    let (mut e, _) = exec(&agent, process(&["cat"]));
    let refused = Client::one_shot(&agent, &Request::Checkpoint);
    assert!(
        matches!(&refused, Response::Error { message } if message.contains("exec session")),
        "{refused:?}"
    );
    e.send(Frame::new(FrameKind::StdinEof, vec![]));
    assert_eq!(e.until_exit().2, exited(0));
    // The output so far, then the marker.
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while !seen.ends_with(b"one\n") {
        assert!(Instant::now() < deadline);
        let f = main.recv().unwrap();
        if f.kind == FrameKind::Stdout {
            seen.extend(&f.payload);
        }
    }
    assert_eq!(Client::one_shot(&agent, &Request::Checkpoint), Response::Ok);
    assert!(matches!(
        Client::one_shot(&agent, &Request::Checkpoint),
        Response::Error { .. }
    ));
    assert!(until_detached(&mut main).is_empty());
    // The old VM's host is gone: its connection ends, not the process's
    // stdin.
    drop(main);
    std::thread::sleep(Duration::from_millis(100));
    // A reattach before a checkpoint would be refused; now it is the main
    // session.
    let mut again = Client::connect(&agent);
    again.request(&Request::Reattach {
        host_sync: Default::default(),
    });
    let Response::Reattached { pid } = again.response() else {
        panic!("expected Reattached");
    };
    assert!(pid > 0);
    assert!(matches!(
        Client::one_shot(
            &agent,
            &Request::Reattach {
                host_sync: Default::default()
            }
        ),
        Response::Error { .. }
    ));
    again.send(Frame::new(FrameKind::Stdin, b"two\n".to_vec()));
    again.send(Frame::new(FrameKind::StdinEof, vec![]));
    let (out, _, event) = again.until_exit();
    assert_eq!(out, b"two\n");
    assert_eq!(event, exited(0));
}

#[test]
fn a_checkpoint_given_up_lets_the_output_flow_on_the_same_connection() {
    let (agent, mut main) = created(&["cat"]);
    assert!(matches!(
        Client::one_shot(&agent, &Request::Start { container: None }),
        Response::Started { .. }
    ));
    assert!(matches!(
        Client::one_shot(&agent, &Request::CheckpointAbort),
        Response::Error { .. }
    ));
    assert_eq!(Client::one_shot(&agent, &Request::Checkpoint), Response::Ok);
    assert!(until_detached(&mut main).is_empty());
    main.send(Frame::new(FrameKind::Stdin, b"held\n".to_vec()));
    assert_eq!(
        Client::one_shot(&agent, &Request::CheckpointAbort),
        Response::Ok
    );
    main.send(Frame::new(FrameKind::StdinEof, vec![]));
    let (out, _, event) = main.until_exit();
    assert_eq!(out, b"held\n");
    assert_eq!(event, exited(0));
}

#[test]
fn a_pods_later_container_runs_beside_the_first_and_goes_when_removed() {
    let (agent, platform) = agent();
    let create = |id: &str, main: &[&str]| {
        let mut c = Client::connect(&agent);
        c.request(&Request::Create {
            spec: Box::new(ContainerSpec {
                id: id.into(),
                process: process(main),
                ..Default::default()
            }),
        });
        (c.response(), c)
    };
    let (r, _first) = create("sandbox", &["sleep", "30"]);
    assert_eq!(r, Response::Created);
    let (r, mut second) = create("app", &["sh", "-c", "echo two; exit 4"]);
    assert_eq!(r, Response::Created);
    // The guest is set up once, by the first.
    assert_eq!(*platform.setups.lock().unwrap(), ["sandbox"]);
    // Ids are unique.
    let (r, _) = create("app", &["true"]);
    assert!(
        matches!(&r, Response::Error { message } if message.contains("already created")),
        "{r:?}"
    );
    let start = |id: Option<&str>| {
        Client::one_shot(
            &agent,
            &Request::Start {
                container: id.map(str::to_owned),
            },
        )
    };
    assert!(matches!(start(Some("app")), Response::Started { .. }));
    let (out, _, event) = second.until_exit();
    assert_eq!(out, b"two\n");
    assert_eq!(event, exited(4));
    // Its end is not the guest's: the first is still created and starts.
    assert!(matches!(start(None), Response::Started { .. }));
    // Requests name a container of the VM.
    let r = start(Some("nope"));
    assert!(
        matches!(&r, Response::Error { message } if message.contains("no container nope")),
        "{r:?}"
    );
    let remove = |id: &str| {
        Client::one_shot(
            &agent,
            &Request::Remove {
                container: id.into(),
            },
        )
    };
    let r = remove("sandbox");
    assert!(
        matches!(&r, Response::Error { message } if message.contains("goes with the VM")),
        "{r:?}"
    );
    assert_eq!(remove("app"), Response::Ok);
    assert!(matches!(start(Some("app")), Response::Error { .. }));
    // The first container's requests still reach it.
    let r = Client::one_shot(
        &agent,
        &Request::Signal {
            signal: libc::SIGKILL,
            all: false,
            container: None,
        },
    );
    assert_eq!(r, Response::Ok);
}

#[test]
fn a_running_pod_container_is_not_removed_and_an_exec_names_its_container() {
    let (agent, _) = agent();
    for (id, main) in [("sandbox", ["sleep", "30"]), ("app", ["sleep", "30"])] {
        let mut c = Client::connect(&agent);
        c.request(&Request::Create {
            spec: Box::new(ContainerSpec {
                id: id.into(),
                process: process(&main),
                ..Default::default()
            }),
        });
        assert_eq!(c.response(), Response::Created);
        std::mem::forget(c);
    }
    let r = Client::one_shot(
        &agent,
        &Request::Start {
            container: Some("app".into()),
        },
    );
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    let r = Client::one_shot(
        &agent,
        &Request::Remove {
            container: "app".into(),
        },
    );
    assert!(
        matches!(&r, Response::Error { message } if message.contains("running")),
        "{r:?}"
    );
    // Stats need the container's own cgroup (none on a host's test
    // platform), and name a container of the VM.
    for id in ["app", "nope"] {
        let r = Client::one_shot(
            &agent,
            &Request::Stats {
                container: id.into(),
            },
        );
        assert!(matches!(r, Response::Error { .. }), "{r:?}");
    }
    let mut c = Client::connect(&agent);
    c.request(&Request::Exec {
        process: Box::new(process(&["sh", "-c", "echo in-app"])),
        container: Some("app".into()),
    });
    assert!(matches!(c.response(), Response::Started { .. }));
    let (out, _, event) = c.until_exit();
    assert_eq!((out.as_slice(), event), (&b"in-app\n"[..], exited(0)));
    let mut c = Client::connect(&agent);
    c.request(&Request::Exec {
        process: Box::new(process(&["true"])),
        container: Some("nope".into()),
    });
    assert!(matches!(c.response(), Response::Error { .. }));
    let r = Client::one_shot(
        &agent,
        &Request::Signal {
            signal: libc::SIGKILL,
            all: true,
            container: Some("app".into()),
        },
    );
    assert_eq!(r, Response::Ok);
}
