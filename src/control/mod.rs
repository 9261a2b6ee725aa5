//! Host side of the agent protocol ([`crate::agent_proto`]): connections to
//! husk-init through the VMM's vsock Unix socket.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_proto::{Frame, FrameError, FrameKind, Request, Response, AGENT_PORT};

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connecting to the VM at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest agent did not answer at {path} within {secs} s")]
    NotReady { path: PathBuf, secs: u64 },
    #[error("the VM's vsock socket {path} refused the agent connection: {line:?}")]
    Handshake { path: PathBuf, line: String },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the guest agent closed the connection before answering")]
    Closed,
    #[error("{0}")]
    Agent(String),
    #[error("unexpected agent frame {kind:?} while waiting for a response")]
    Unexpected { kind: FrameKind },
}

/// One connection to the guest agent.
pub struct AgentConn {
    pub stream: UnixStream,
}

/// How often a connection attempt is retried while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long one handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentConn {
    /// Connects once: `CONNECT <port>` through the VMM's vsock socket.
    pub fn connect_once(uds: &Path) -> Result<AgentConn, ControlError> {
        let mut stream = UnixStream::connect(uds).map_err(|source| ControlError::Connect {
            path: uds.to_path_buf(),
            source,
        })?;
        let io_err = |source| ControlError::Connect {
            path: uds.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(io_err)?;
        stream
            .write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
            .map_err(io_err)?;
        // Read the answer byte by byte: nothing after the newline may be
        // consumed, it is the first frame.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() < 64 => line.push(byte[0]),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if !line.starts_with("OK ") {
            return Err(ControlError::Handshake {
                path: uds.to_path_buf(),
                line,
            });
        }
        stream.set_read_timeout(None).map_err(io_err)?;
        Ok(AgentConn { stream })
    }

    /// Connects, retrying until the agent listens or `limit` passes (the
    /// guest may still be booting). `alive` is asked between attempts and
    /// stops the retries when the VM is gone.
    pub fn connect(
        uds: &Path,
        limit: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<AgentConn, ControlError> {
        let start = Instant::now();
        loop {
            match AgentConn::connect_once(uds) {
                Ok(conn) => return Ok(conn),
                Err(e) if start.elapsed() >= limit || !alive() => {
                    return Err(match e {
                        ControlError::Handshake { .. } | ControlError::Connect { .. } => {
                            ControlError::NotReady {
                                path: uds.to_path_buf(),
                                secs: limit.as_secs(),
                            }
                        }
                        other => other,
                    })
                }
                Err(_) => std::thread::sleep(RETRY_INTERVAL),
            }
        }
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), ControlError> {
        frame.write_to(&mut self.stream)?;
        Ok(())
    }

    /// The next frame; `None` at end of stream.
    pub fn recv(&mut self) -> Result<Option<Frame>, ControlError> {
        Ok(Frame::read_from(&mut self.stream)?)
    }

    /// Sends a request and waits for its response; an agent error becomes
    /// [`ControlError::Agent`].
    pub fn request(&mut self, req: &Request) -> Result<Response, ControlError> {
        self.send(&Frame::json(FrameKind::Request, req))?;
        let frame = self.recv()?.ok_or(ControlError::Closed)?;
        if frame.kind != FrameKind::Response {
            return Err(ControlError::Unexpected { kind: frame.kind });
        }
        match frame.parse::<Response>("response")? {
            Response::Error { message } => Err(ControlError::Agent(message)),
            other => Ok(other),
        }
    }
}

/// Reads a `CONNECT` answer line from a buffered reader (for tests of fake
/// agents).
pub fn read_line(r: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut s = String::new();
    r.read_line(&mut s)?;
    Ok(s.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::os::unix::net::UnixListener;

    /// A fake VMM socket: answers the handshake, then answers one request.
    fn fake_agent(path: &Path, answer: Response) -> std::thread::JoinHandle<Request> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            assert_eq!(read_line(&mut reader).unwrap(), "CONNECT 1024");
            let mut w = stream;
            w.write_all(b"OK 1073741824\n").unwrap();
            let req = Frame::read_from(&mut reader).unwrap().unwrap();
            Frame::json(FrameKind::Response, &answer)
                .write_to(&mut w)
                .unwrap();
            req.parse::<Request>("request").unwrap()
        })
    }

    #[test]
    fn a_request_gets_its_response() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let agent = fake_agent(&path, Response::Started { pid: 9 });
        let mut conn = AgentConn::connect(&path, Duration::from_secs(2), &|| true).unwrap();
        assert_eq!(
            conn.request(&Request::Start { container: None }).unwrap(),
            Response::Started { pid: 9 }
        );
        assert_eq!(agent.join().unwrap(), Request::Start { container: None });
    }

    #[test]
    fn agent_errors_become_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let _agent = fake_agent(
            &path,
            Response::Error {
                message: "container not running".into(),
            },
        );
        let mut conn = AgentConn::connect(&path, Duration::from_secs(2), &|| true).unwrap();
        let err = conn.request(&Request::Ps { container: None }).unwrap_err();
        assert_eq!(err.to_string(), "container not running");
    }

    #[test]
    fn no_socket_is_a_bounded_wait_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let start = Instant::now();
        let err = AgentConn::connect(&path, Duration::from_millis(200), &|| true)
            .err()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("did not answer"), "{err}");
        let err = AgentConn::connect(&path, Duration::from_secs(30), &|| false)
            .err()
            .unwrap();
        assert!(matches!(err, ControlError::NotReady { .. }));
    }

    #[test]
    fn a_refused_handshake_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            drop(s);
        });
        let err = AgentConn::connect_once(&path).err().unwrap();
        assert!(matches!(err, ControlError::Handshake { .. }), "{err}");
        t.join().unwrap();
    }
}
