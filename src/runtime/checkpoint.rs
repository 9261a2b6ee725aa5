//! `husk checkpoint` and `husk restore`: a running container's whole VM
//! written to a directory, and a container continued from one.
//!
//! A checkpoint is a VM snapshot ([`crate::vmm::snapshot`]) of a container
//! that runs, plus what its virtio-fs servers hold for the guest:
//! 1. the guest's agent is asked to get ready ([`Request::Checkpoint`]): it
//!    refuses while exec sessions run (their connections cannot be kept;
//!    podman refuses these too), sends the main session's last frames and
//!    then holds its output (the process blocks once its pipes fill: what
//!    it writes stays in guest memory), writes file data out to the host
//!    and drops the guest's caches (fewer files held over virtio-fs);
//! 2. the VMM is asked for the checkpoint (the `CHECKPOINT` line on its
//!    vsock socket): it stops the vCPUs, has each fs server write down the
//!    guest's files by path and its open files, writes the VM state and
//!    guest RAM (zero pages as holes) into [`WORK_DIR`] of the container's
//!    state directory (in its jail), and ends;
//! 3. the files are moved to the image path (copied, holes kept, across
//!    file systems) and the container is removed, as runc does.
//!
//! `husk restore` creates the container from its bundle as `create` does,
//! but the VMM resumes the checkpoint instead of booting: guest RAM mapped
//! copy-on-write from the image, devices and vCPUs put back, its taps
//! attached, each fs server given the guest's files again, the guest told
//! its vsock connections are gone; then the VMM takes over the held main
//! session ([`Request::Reattach`], the guest's clock and random pool set
//! from the host's) and the process carries on, its TCP listeners and
//! connections included (they are guest memory).

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_proto::{Request, Response};
use crate::runtime::container::{self, ContainerError};
use crate::runtime::state::{self, Status};
use crate::vmm::snapshot::{FS_STATE_FILE, MEMORY_FILE, STATE_FILE};

/// The directory of the container's state directory a VMM writes its
/// checkpoint into.
pub const WORK_DIR: &str = "checkpoint";
/// How long the VMM may take to write a checkpoint and end.
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// How often its end is looked for.
const POLL: Duration = Duration::from_millis(10);
/// Most bytes of the VMM's answer line.
const MAX_ANSWER: usize = 4096;
/// The files of a checkpoint.
const FILES: [&str; 3] = [STATE_FILE, FS_STATE_FILE, MEMORY_FILE];
/// The checkpoint's descriptor, written last (a checkpoint that has it is
/// whole). The name is CRIU's inventory's: podman looks for that file to
/// tell a complete checkpoint before it restores one. The content is
/// husk's (JSON), which CRIU's tools do not read.
pub const INVENTORY: &str = "inventory.img";
/// The descriptor's format.
const INVENTORY_FORMAT: u32 = 1;

/// What [`INVENTORY`] says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// "husk": a checkpoint of husk's, not CRIU's.
    pub runtime: String,
    pub format: u32,
    /// The husk that wrote it.
    pub version: String,
    /// The container it was taken of.
    pub id: String,
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(
        "container {id} is {status}: only a running (or paused) container can be checkpointed"
    )]
    NotRunning { id: String, status: String },
    #[error(
        "{flag} is not supported: husk writes the whole VM at once (run husk checkpoint \
         without it)"
    )]
    Unsupported { flag: &'static str },
    #[error(
        "container {id} cannot be checkpointed: its VMM made no checkpoint files (it was \
         started by an earlier husk); restart it with this one"
    )]
    NoRoom { id: String },
    #[error("the container's agent refused the checkpoint: {0}")]
    Refused(String),
    #[error("asking the VMM at {path} for the checkpoint: {source}")]
    Ask {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the VMM of container {id} did not write its checkpoint ({missing} is missing); the VM \
         was stopped: see its log {log}"
    )]
    NotWritten {
        id: String,
        missing: String,
        log: PathBuf,
    },
    #[error("the VM could not write its checkpoint, and runs on: {0}")]
    Failed(String),
    #[error("the VMM of container {id} did not end within {secs} s of the checkpoint")]
    Timeout { id: String, secs: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a husk checkpoint ({missing} is missing): make one with \
         husk checkpoint --image-path {path}"
    )]
    NotACheckpoint { path: PathBuf, missing: String },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `husk checkpoint` was asked for.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub leave_running: bool,
    pub pre_dump: bool,
    pub lazy: bool,
}

/// `husk checkpoint` (see the module docs).
pub fn checkpoint(root: &Path, id: &str, opts: &CheckpointOptions) -> Result<(), CheckpointError> {
    for (set, flag) in [
        (opts.pre_dump, "--pre-dump"),
        (opts.lazy, "--lazy-pages / --page-server / --parent-path"),
    ] {
        if set {
            return Err(CheckpointError::Unsupported { flag });
        }
    }
    let mut st = container::load_fresh(root, id)?;
    if st.status == Status::Paused {
        // The agent must run to get ready; the VM stops right after.
        container::resume(root, id)?;
        st = container::load_fresh(root, id)?;
    }
    if st.status != Status::Running {
        return Err(CheckpointError::NotRunning {
            id: id.to_owned(),
            status: st.status.to_string(),
        });
    }
    let image = std::path::absolute(&opts.image_path).unwrap_or(opts.image_path.clone());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&image)
        .map_err(io_at(&image))?;
    // The VMM made its files when it built the VM.
    let work = state::container_dir(root, id).join(WORK_DIR);
    if !work.join(STATE_FILE).is_file() {
        return Err(CheckpointError::NoRoom { id: id.to_owned() });
    }

    let mut conn = container::connect(&st)?;
    match conn.request(&Request::Checkpoint) {
        Ok(Response::Ok) => {}
        Ok(Response::Error { message }) => return Err(CheckpointError::Refused(message)),
        Ok(other) => return Err(CheckpointError::Refused(format!("{other:?}"))),
        Err(e) => return Err(CheckpointError::Refused(e.to_string())),
    }
    let release = |st: &state::State| {
        // Output flows again: the container runs on as before.
        if let Ok(mut c) = container::connect(st) {
            let _ = c.request(&Request::CheckpointAbort);
        }
    };
    if let Err(e) = ask_vmm(&st.control_socket, opts.leave_running) {
        // A VM that could not write its checkpoint runs on.
        release(&st);
        return Err(e);
    }
    let _ = std::fs::remove_file(image.join(INVENTORY));
    if opts.leave_running {
        // The VMM keeps its files for the next checkpoint: copied.
        let copied = FILES
            .iter()
            .try_for_each(|name| copy_file(&work.join(name), &image.join(name)));
        release(&st);
        copied?;
        write_inventory(&image, id)?;
        log::info!(
            "container {id}: checkpointed to {} (running on)",
            image.display()
        );
        return Ok(());
    }
    let pid = st.pid.unwrap_or(0);
    let deadline = Instant::now() + WRITE_TIMEOUT;
    while container::vmm_alive(pid) {
        if Instant::now() > deadline {
            return Err(CheckpointError::Timeout {
                id: id.to_owned(),
                secs: WRITE_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(POLL);
    }
    if let Some(missing) = FILES.iter().find(|f| !has_data(&work.join(f))) {
        let _ = container::delete(root, id, true);
        return Err(CheckpointError::NotWritten {
            id: id.to_owned(),
            missing: (*missing).to_owned(),
            log: st.vmm_log.clone(),
        });
    }
    let _ = std::fs::remove_file(image.join(INVENTORY));
    for name in FILES {
        move_file(&work.join(name), &image.join(name))?;
    }
    write_inventory(&image, id)?;
    let _ = std::fs::remove_dir_all(&work);
    log::info!("container {id}: checkpointed to {}", image.display());
    container::delete(root, id, true)?;
    Ok(())
}

/// Writes [`INVENTORY`] into `image` (durably: it marks the checkpoint
/// whole).
fn write_inventory(image: &Path, id: &str) -> Result<(), CheckpointError> {
    let path = image.join(INVENTORY);
    let inventory = Inventory {
        runtime: "husk".into(),
        format: INVENTORY_FORMAT,
        version: env!("CARGO_PKG_VERSION").into(),
        id: id.to_owned(),
        files: FILES.iter().map(|f| (*f).to_owned()).collect(),
    };
    let data = serde_json::to_vec_pretty(&inventory)
        .map_err(|e| io_at(&path)(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_at(&path))?;
    f.write_all(&data).map_err(io_at(&path))?;
    f.sync_all().map_err(io_at(&path))
}

/// Whether `path` is a file with something in it.
fn has_data(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Sends the `CHECKPOINT` line to the VMM's vsock socket.
fn ask_vmm(socket: &Path, leave_running: bool) -> Result<(), CheckpointError> {
    use crate::vmm::devices::virtio::vsock::{CHECKPOINT_LINE, CHECKPOINT_OK, LEAVE_RUNNING};
    let ask = |source| CheckpointError::Ask {
        path: socket.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(ask)?;
    let mut line = CHECKPOINT_LINE.to_vec();
    if leave_running {
        line.extend_from_slice(LEAVE_RUNNING);
    }
    line.push(b'\n');
    s.write_all(&line).map_err(ask)?;
    // The VMM answers once the checkpoint is written (or could not be).
    s.set_read_timeout(Some(WRITE_TIMEOUT)).map_err(ask)?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < MAX_ANSWER {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ask(e)),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    match answer.strip_prefix("ERR ") {
        _ if answer == CHECKPOINT_OK => Ok(()),
        Some(why) => Err(CheckpointError::Failed(why.to_owned())),
        None if answer.is_empty() => Err(CheckpointError::Failed(
            "the VMM ended without answering (see its log)".into(),
        )),
        None => Err(CheckpointError::Failed(format!(
            "unexpected answer {answer:?}"
        ))),
    }
}

/// Copies `from` to `to` keeping its holes (a checkpoint the VMM writes
/// again later).
fn copy_file(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let mut src = std::fs::File::open(from).map_err(io_at(from))?;
    let len = src.metadata().map_err(io_at(from))?.len();
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(io_at(to))?;
    copy_data(&mut src, &mut dst, len).map_err(io_at(to))?;
    dst.set_len(len).map_err(io_at(to))?;
    dst.sync_all().map_err(io_at(to))
}

/// Moves `from` to `to`: a rename, or across file systems a copy that
/// keeps `from`'s holes (guest RAM is mostly holes) and then removes it.
fn move_file(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    match std::fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(io_at(from)(e)),
    }
    copy_file(from, to)?;
    std::fs::remove_file(from).map_err(io_at(from))
}

/// Copies the data extents of `src` (`SEEK_DATA` / `SEEK_HOLE`) to the
/// same offsets of `dst`.
fn copy_data(src: &mut std::fs::File, dst: &mut std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let seek = |fd: i32, at: u64, whence: i32| -> std::io::Result<Option<u64>> {
        let at = libc::off_t::try_from(at).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(fd, at, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data at or after `at`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(u64::try_from(r).map_err(std::io::Error::other)?))
    };
    let fd = src.as_raw_fd();
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while at < len {
        let Some(data) = seek(fd, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(fd, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        src.seek(SeekFrom::Start(data))?;
        dst.seek(SeekFrom::Start(data))?;
        let mut left = end - data;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            src.read_exact(&mut buf[..n])?;
            dst.write_all(&buf[..n])?;
            left -= n as u64;
        }
        at = end;
    }
    Ok(())
}

/// Checks that `image` holds a checkpoint before a container is made
/// from it; its absolute path.
pub fn check_image(image: &Path) -> Result<PathBuf, CheckpointError> {
    let image = std::path::absolute(image).unwrap_or(image.to_path_buf());
    let not = |missing: &str| CheckpointError::NotACheckpoint {
        path: image.clone(),
        missing: missing.to_owned(),
    };
    let inventory: Inventory = std::fs::read(image.join(INVENTORY))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .ok_or_else(|| not(&format!("{INVENTORY} of husk's")))?;
    if inventory.runtime != "husk" || inventory.format != INVENTORY_FORMAT {
        return Err(not(&format!(
            "{INVENTORY} of husk's format {INVENTORY_FORMAT}, not {} format {}",
            inventory.runtime, inventory.format
        )));
    }
    if let Some(missing) = FILES.iter().find(|f| !has_data(&image.join(f))) {
        return Err(not(missing));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn a_copy_keeps_the_data_and_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let f = std::fs::File::create(&from).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        f.write_all_at(b"end", (64 << 20) - 3).unwrap();
        drop(f);
        let mut src = std::fs::File::open(&from).unwrap();
        let to = dir.path().join("to");
        let mut dst = std::fs::File::create(&to).unwrap();
        copy_data(&mut src, &mut dst, 64 << 20).unwrap();
        dst.set_len(64 << 20).unwrap();
        let copied = std::fs::read(&to).unwrap();
        assert_eq!(copied, std::fs::read(&from).unwrap());
        assert!(
            std::fs::metadata(&to).unwrap().blocks() * 512 < 8 << 20,
            "holes kept"
        );
        // A rename where it can.
        move_file(&to, &dir.path().join("moved")).unwrap();
        assert!(!to.exists());
    }

    #[test]
    fn an_image_without_its_files_is_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_image(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not a husk checkpoint") && err.contains("husk checkpoint"),
            "{err}"
        );
        for f in FILES {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        write_inventory(dir.path(), "c1").unwrap();
        assert!(
            check_image(dir.path()).is_err(),
            "empty files are no checkpoint"
        );
        for f in FILES {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        assert_eq!(check_image(dir.path()).unwrap(), dir.path());
        // CRIU's inventory (or anything else under that name) is not ours.
        std::fs::write(dir.path().join(INVENTORY), b"\x54\x56\x43\x19").unwrap();
        let err = check_image(dir.path()).unwrap_err().to_string();
        assert!(err.contains("inventory.img of husk's"), "{err}");
    }

    #[test]
    fn what_a_vm_cannot_do_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CheckpointOptions {
            pre_dump: true,
            ..Default::default()
        };
        let err = checkpoint(dir.path(), "c1", &opts).unwrap_err().to_string();
        assert!(err.contains("--pre-dump"), "{err}");
    }
}
