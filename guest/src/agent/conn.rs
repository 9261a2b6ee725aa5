//! The connection side of a session: a byte stream the host talks frames on,
//! a serialized frame writer shared by the threads of a session, the slot
//! through which a connection's reader finds the process its stdin frames are
//! for, and the output pump.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::reaper::ExitStatus;
use super::spawn::resize_pty;
use crate::agent_proto::{Frame, FrameKind, MAX_DATA};

/// A bidirectional byte stream a session runs over (a vsock connection in
/// the guest, a Unix socket pair in tests).
pub trait Connection: Read + Write + Send + Sized + 'static {
    /// A second handle on the same stream (for the writer side).
    fn try_clone(&self) -> io::Result<Self>;
    /// Ends the stream both ways; errors are of no interest.
    fn shutdown(&self);
}

impl Connection for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) {
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
}

/// Where a session's frames go.
pub trait FrameSink: Send + Sync {
    /// Sends one frame whole; `false` once the connection is broken (later
    /// frames are dropped).
    fn send(&self, frame: &Frame) -> bool;
    /// Ends the connection (after the session's last frame).
    fn close(&self);
}

/// Writes frames to a connection, one whole frame at a time.
pub struct FrameWriter<C: Connection> {
    inner: Mutex<WriterState<C>>,
}

struct WriterState<C> {
    conn: C,
    /// A write failed: the peer is gone, later frames are dropped.
    broken: bool,
}

impl<C: Connection> FrameWriter<C> {
    pub fn new(conn: C) -> Self {
        FrameWriter {
            inner: Mutex::new(WriterState {
                conn,
                broken: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WriterState<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Connection> FrameSink for FrameWriter<C> {
    fn send(&self, frame: &Frame) -> bool {
        let mut state = self.lock();
        if state.broken {
            return false;
        }
        let ok = state.conn.write_all(&frame.encode()).is_ok();
        state.broken = !ok;
        ok
    }

    fn close(&self) {
        self.lock().conn.shutdown();
    }
}

/// The main session's sink, which outlives its connection: a checkpoint
/// *holds* it (a marker frame goes out, then every sender waits: the
/// process's output stays in its pipes, in guest memory), and a restored
/// VM's host *attaches* a new connection, which gets what follows.
pub struct Relink {
    state: Mutex<RelinkState>,
    changed: Condvar,
}

struct RelinkState {
    current: Arc<dyn FrameSink>,
    held: bool,
}

impl Relink {
    pub fn new(sink: Arc<dyn FrameSink>) -> Arc<Relink> {
        Arc::new(Relink {
            state: Mutex::new(RelinkState {
                current: sink,
                held: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RelinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits while held; the guard of the state once it is not.
    fn unheld(&self) -> MutexGuard<'_, RelinkState> {
        let mut state = self.lock();
        while state.held {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state
    }

    /// Sends `marker` on the current connection (after every frame sent
    /// before it), then holds every later frame. False when already held.
    pub fn hold(&self, marker: &Frame) -> bool {
        let mut state = self.lock();
        if state.held {
            return false;
        }
        state.current.send(marker);
        state.held = true;
        true
    }

    pub fn is_held(&self) -> bool {
        self.lock().held
    }

    /// Whether `sink` is the connection frames go to (and it is not held).
    pub fn flows_to(&self, sink: &Arc<dyn FrameSink>) -> bool {
        let state = self.lock();
        !state.held && std::ptr::addr_eq(Arc::as_ptr(&state.current), Arc::as_ptr(sink))
    }

    /// Frames go to `sink` from now on, held ones first.
    pub fn attach(&self, sink: Arc<dyn FrameSink>) {
        let mut state = self.lock();
        state.current = sink;
        state.held = false;
        self.changed.notify_all();
    }

    /// Frames flow again to the connection they went to.
    pub fn release(&self) {
        self.lock().held = false;
        self.changed.notify_all();
    }
}

impl FrameSink for Relink {
    fn send(&self, frame: &Frame) -> bool {
        self.unheld().current.send(frame)
    }

    fn close(&self) {
        self.unheld().current.close()
    }
}

/// A running process as its connection's reader sees it: where stdin
/// frames, stdin EOF and resizes go.
pub struct ProcIo {
    pub pid: i32,
    stdin: Mutex<Option<File>>,
    terminal: Option<File>,
    /// True until the reaper has the process's status: only then may the
    /// pid be signalled (it cannot have been reused).
    live: Arc<Mutex<bool>>,
}

impl ProcIo {
    pub fn new(pid: i32, stdin: Option<File>, terminal: Option<File>) -> Self {
        ProcIo {
            pid,
            stdin: Mutex::new(stdin),
            terminal,
            live: Arc::new(Mutex::new(true)),
        }
    }

    /// Shares the flag the process's exit callback clears.
    pub fn with_liveness(mut self, live: Arc<Mutex<bool>>) -> Self {
        self.live = live;
        self
    }

    /// Sends `signal` to the process unless it has already been reaped.
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        if !(1..=super::MAX_SIGNAL).contains(&signal) {
            return Err(format!("invalid signal {signal}"));
        }
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(format!("process {} has already exited", self.pid));
        }
        // SAFETY: kill has no memory effects; the pid is an unreaped child of
        // ours (the reaper clears `live` under this lock before anything
        // else can reuse it).
        nix::errno::Errno::result(unsafe { libc::kill(self.pid, signal) })
            .map(drop)
            .map_err(|e| format!("sending signal {signal}: {}", super::spawn::errno_text(e)))
    }

    fn stdin(&self) -> MutexGuard<'_, Option<File>> {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds the process; blocks while its pipe (or terminal) is full. Once
    /// the process stopped reading (EPIPE), further input is dropped.
    pub fn write_stdin(&self, data: &[u8]) {
        if let Some(mut master) = self.terminal.as_ref() {
            let _ = master.write_all(data);
            return;
        }
        let mut stdin = self.stdin();
        if let Some(pipe) = stdin.as_mut() {
            if pipe.write_all(data).is_err() {
                *stdin = None;
            }
        }
    }

    /// Closes the process's stdin. With a terminal there is nothing to close
    /// (the master carries the output too): a no-op, as runc's `CloseIO`.
    pub fn close_stdin(&self) {
        self.stdin().take();
    }

    /// Resizes the terminal; a no-op without one.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        match &self.terminal {
            Some(master) => resize_pty(master, rows, cols),
            None => Ok(()),
        }
    }
}

enum SlotState {
    Pending,
    Ready(Arc<ProcIo>),
    Gone,
}

/// Hands a session's process to its connection reader once it runs: the
/// main session's connection exists before `Start`.
pub struct IoSlot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl IoSlot {
    pub fn pending() -> Arc<IoSlot> {
        Arc::new(IoSlot {
            state: Mutex::new(SlotState::Pending),
            changed: Condvar::new(),
        })
    }

    pub fn ready(io: Arc<ProcIo>) -> Arc<IoSlot> {
        let slot = IoSlot::pending();
        slot.set(SlotState::Ready(io));
        slot
    }

    fn set(&self, state: SlotState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_all();
    }

    /// The process started.
    pub fn fill(&self, io: Arc<ProcIo>) {
        self.set(SlotState::Ready(io));
    }

    /// The process will never run.
    pub fn abandon(&self) {
        self.set(SlotState::Gone);
    }

    /// Waits until the process runs (or never will: `None`).
    pub fn wait(&self) -> Option<Arc<ProcIo>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*state {
                SlotState::Pending => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                SlotState::Ready(io) => return Some(Arc::clone(io)),
                SlotState::Gone => return None,
            }
        }
    }
}

/// How long output may stay silent after the process exited before the
/// session ends without waiting for EOF (something it left behind holds
/// its stdout open).
pub const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Status reported if the reaper never delivers one (it always does).
const LOST_STATUS: ExitStatus = ExitStatus::Code(255);

/// Copies a process's output to `sink` as frames until every output reached
/// EOF (a pty master's EIO counts) and the process exited, or until the
/// outputs stayed silent for `idle` after it exited. `wake` becomes readable
/// (hangs up) when the status is in `exits`; `on_exit` runs when it arrives.
/// Returns the process's status: the caller sends `Exited` after all output.
pub fn pump_output(
    mut outputs: Vec<(File, FrameKind)>,
    wake: File,
    exits: &Receiver<ExitStatus>,
    sink: &dyn FrameSink,
    idle: Duration,
    mut on_exit: impl FnMut(),
) -> ExitStatus {
    let mut status: Option<ExitStatus> = None;
    let mut buf = vec![0u8; MAX_DATA];
    let idle_ms = u16::try_from(idle.as_millis()).unwrap_or(u16::MAX);
    while !outputs.is_empty() {
        let mut fds: Vec<PollFd> = outputs
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if status.is_none() {
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if status.is_some() {
            PollTimeout::from(idle_ms)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if status.is_none() && ready.get(outputs.len()).copied().unwrap_or(false) {
            status = Some(exits.recv().unwrap_or(LOST_STATUS));
            on_exit();
        }
        for i in (0..outputs.len()).rev() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some((file, kind)) = outputs.get_mut(i) else {
                continue;
            };
            match file.read(&mut buf) {
                Ok(0) => {
                    outputs.remove(i);
                }
                Ok(n) => {
                    let data = buf.get(..n).unwrap_or_default().to_vec();
                    // A broken connection still drains the output, so the
                    // process never blocks on a full pipe.
                    sink.send(&Frame::new(*kind, data));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EIO: the pty's slave side is closed everywhere.
                Err(_) => {
                    outputs.remove(i);
                }
            }
        }
    }
    match status {
        Some(s) => s,
        None => {
            let s = exits.recv().unwrap_or(LOST_STATUS);
            on_exit();
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Frame>>);
    impl FrameSink for Collect {
        fn send(&self, frame: &Frame) -> bool {
            self.0.lock().unwrap().push(frame.clone());
            true
        }
        fn close(&self) {}
    }

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn pump_sends_all_output_then_returns_the_status() {
        let (out_r, mut out_w) = pipe();
        let (err_r, mut err_w) = pipe();
        let (wake_r, wake_w) = pipe();
        let (tx, rx) = mpsc::channel();
        out_w.write_all(b"out").unwrap();
        err_w.write_all(b"err").unwrap();
        drop((out_w, err_w));
        tx.send(ExitStatus::Code(3)).unwrap();
        drop(wake_w);
        let sink = Collect::default();
        let mut exits_seen = 0;
        let status = pump_output(
            vec![(out_r, FrameKind::Stdout), (err_r, FrameKind::Stderr)],
            wake_r,
            &rx,
            &sink,
            DRAIN_IDLE,
            || exits_seen += 1,
        );
        assert_eq!(status, ExitStatus::Code(3));
        assert_eq!(exits_seen, 1);
        let frames = sink.0.into_inner().unwrap();
        assert!(frames.contains(&Frame::new(FrameKind::Stdout, b"out".to_vec())));
        assert!(frames.contains(&Frame::new(FrameKind::Stderr, b"err".to_vec())));
    }

    #[test]
    fn pump_gives_up_on_output_held_open_after_exit() {
        let (out_r, _held_open) = pipe();
        let (wake_r, wake_w) = pipe();
        let (tx, rx) = mpsc::channel();
        tx.send(ExitStatus::Signal(9)).unwrap();
        drop(wake_w);
        let sink = Collect::default();
        let status = pump_output(
            vec![(out_r, FrameKind::Stdout)],
            wake_r,
            &rx,
            &sink,
            Duration::from_millis(50),
            || {},
        );
        assert_eq!(status, ExitStatus::Signal(9));
    }

    #[test]
    fn a_held_relink_sends_its_marker_then_waits_for_the_next_connection() {
        let first = Arc::new(Collect::default());
        let second = Arc::new(Collect::default());
        let first_sink: Arc<dyn FrameSink> = first.clone();
        let second_sink: Arc<dyn FrameSink> = second.clone();
        let relink = Relink::new(first_sink.clone());
        let frame = |b: &[u8]| Frame::new(FrameKind::Stdout, b.to_vec());
        assert!(relink.send(&frame(b"before")));
        assert!(relink.flows_to(&first_sink));
        assert!(relink.hold(&frame(b"marker")));
        assert!(!relink.hold(&frame(b"again")), "held once");
        assert!(!relink.flows_to(&first_sink));
        let sender = {
            let relink = Arc::clone(&relink);
            std::thread::spawn(move || {
                relink.send(&Frame::new(FrameKind::Stdout, b"after".to_vec()))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!sender.is_finished(), "a held frame waits");
        relink.attach(second_sink.clone());
        assert!(sender.join().unwrap());
        assert!(relink.flows_to(&second_sink));
        let got = |c: &Collect| {
            c.0.lock()
                .unwrap()
                .iter()
                .map(|f| f.payload.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(got(&first), vec![b"before".to_vec(), b"marker".to_vec()]);
        assert_eq!(got(&second), vec![b"after".to_vec()]);
        // Given up: frames flow to the same connection again.
        assert!(relink.hold(&frame(b"m2")));
        relink.release();
        assert!(relink.send(&frame(b"again")));
        assert_eq!(got(&second).len(), 3);
    }

    #[test]
    fn slot_hands_over_the_process_or_nothing() {
        let slot = IoSlot::pending();
        let waiter = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || slot.wait().map(|io| io.pid))
        };
        slot.fill(Arc::new(ProcIo::new(7, None, None)));
        assert_eq!(waiter.join().unwrap(), Some(7));
        let gone = IoSlot::pending();
        gone.abandon();
        assert!(gone.wait().is_none());
    }
}
