//! `oci-probe`: prints what a container process sees, as one JSON object on
//! stdout, the way an OCI conformance checker reads it. The fidelity tests
//! (tests/e2e_fidelity.rs) run it as the process of the same bundle under
//! runc and under husk and compare the two.
//!
//! What it reads: `/proc/self/mountinfo` in order (mount point, file system
//! type, per-mount options, the super block options, propagation), every
//! entry under `/dev` (type, device numbers, mode, owner, link target),
//! `/proc/self/{uid_map,gid_map}`, the rlimits, ids, capability sets,
//! `NoNewPrivs` and the seccomp mode, hostname, cwd and umask. Each argument
//! `PATH` adds what reading and writing it gives (`ok` or the errno name),
//! for masked and read-only paths; `--wait-file PATH` makes it wait (up to
//! 60 s) for that file to exist before printing, for signal tests.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use serde_json::{json, Value};

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).to_string(),
        None => e.to_string(),
    }
}

/// Unescapes the octal escapes (`\040`) mountinfo uses in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One mountinfo line as JSON, or `None` for a malformed line.
fn mount_entry(line: &str) -> Option<Value> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    if left.len() < 6 || right.len() < 3 {
        return None;
    }
    let mut propagation = Vec::new();
    for tag in &left[6..] {
        let name = tag.split(':').next().unwrap_or("");
        match name {
            "shared" => propagation.push("shared"),
            "master" => propagation.push("slave"),
            "unbindable" => propagation.push("unbindable"),
            _ => {}
        }
    }
    if propagation.is_empty() {
        propagation.push("private");
    }
    Some(json!({
        "point": unescape(left[4]),
        "root": unescape(left[3]),
        "options": left[5],
        "fstype": right[0],
        "source": unescape(right[1]),
        "super": right[2],
        "propagation": propagation.join(","),
    }))
}

fn mounts() -> Value {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    Value::Array(text.lines().filter_map(mount_entry).collect())
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "file"
    }
}

fn node(path: &Path) -> Value {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return json!({"error": errno_name(&e)}),
    };
    let kind = kind_of(&meta);
    let mut v = json!({
        "type": kind,
        "mode": format!("{:04o}", meta.mode() & 0o7777),
        "uid": meta.uid(),
        "gid": meta.gid(),
    });
    if kind == "char" || kind == "block" {
        let rdev = meta.rdev();
        v["major"] = json!(libc::major(rdev));
        v["minor"] = json!(libc::minor(rdev));
    }
    if kind == "symlink" {
        v["target"] = json!(fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default());
        // A link's own mode means nothing.
        v.as_object_mut().map(|o| o.remove("mode"));
    }
    v
}

/// Every entry under `dir`, depth first, at most `depth` levels down and
/// 2000 entries (a container's /dev is small; this bounds a strange one).
fn walk(dir: &Path, depth: u32, out: &mut BTreeMap<String, Value>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= 2000 {
            return;
        }
        let path = entry.path();
        let v = node(&path);
        let is_dir = v["type"] == "dir";
        out.insert(path.to_string_lossy().into_owned(), v);
        if is_dir && depth > 0 {
            walk(&path, depth - 1, out);
        }
    }
}

fn read_trimmed(path: &str) -> Value {
    match fs::read_to_string(path) {
        Ok(s) => Value::Array(
            s.lines()
                .map(|l| json!(l.split_whitespace().collect::<Vec<_>>().join(" ")))
                .collect(),
        ),
        Err(e) => json!({"error": errno_name(&e)}),
    }
}

const RLIMITS: [(&str, i32); 16] = [
    ("RLIMIT_AS", libc::RLIMIT_AS as i32),
    ("RLIMIT_CORE", libc::RLIMIT_CORE as i32),
    ("RLIMIT_CPU", libc::RLIMIT_CPU as i32),
    ("RLIMIT_DATA", libc::RLIMIT_DATA as i32),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE as i32),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS as i32),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK as i32),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE as i32),
    ("RLIMIT_NICE", libc::RLIMIT_NICE as i32),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE as i32),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC as i32),
    ("RLIMIT_RSS", libc::RLIMIT_RSS as i32),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO as i32),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME as i32),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING as i32),
    ("RLIMIT_STACK", libc::RLIMIT_STACK as i32),
];

fn rlimits() -> Value {
    let mut out = serde_json::Map::new();
    for (name, resource) in RLIMITS {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        let rc = unsafe { libc::getrlimit(resource as _, &mut lim) };
        if rc == 0 {
            out.insert(name.into(), json!([lim.rlim_cur, lim.rlim_max]));
        }
    }
    Value::Object(out)
}

/// The lines of /proc/self/status a checker compares.
fn status() -> Value {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if matches!(
                key,
                "Uid"
                    | "Gid"
                    | "Groups"
                    | "CapInh"
                    | "CapPrm"
                    | "CapEff"
                    | "CapBnd"
                    | "CapAmb"
                    | "NoNewPrivs"
                    | "Seccomp"
            ) {
                let v: Vec<&str> = value.split_whitespace().collect();
                out.insert(key.into(), json!(v.join(" ")));
            }
        }
    }
    Value::Object(out)
}

/// What reading and writing `path` gives.
fn access(path: &str) -> Value {
    let read = match fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = [0u8; 64];
            match f.read(&mut buf) {
                Ok(n) => format!("ok:{n}"),
                Err(e) => errno_name(&e),
            }
        }
        Err(e) => errno_name(&e),
    };
    let write = match fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => "ok".to_owned(),
        Err(e) => errno_name(&e),
    };
    let mut v = node(Path::new(path));
    v["read"] = json!(read);
    v["write"] = json!(write);
    v
}

fn umask() -> u32 {
    // SAFETY: umask only sets and returns the process's mask; set back at once.
    let old = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    old
}

fn main() {
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--wait-file" {
            let file = args.next().unwrap_or_default();
            for _ in 0..600 {
                if Path::new(&file).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        } else {
            paths.push(arg);
        }
    }
    let mut dev = BTreeMap::new();
    walk(Path::new("/dev"), 2, &mut dev);
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut access_of = serde_json::Map::new();
    for p in &paths {
        access_of.insert(p.clone(), access(p));
    }
    let mut ns = serde_json::Map::new();
    for kind in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        let link = fs::read_link(format!("/proc/self/ns/{kind}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        ns.insert(kind.into(), json!(link));
    }
    let out = json!({
        "mounts": mounts(),
        "dev": dev,
        "uid_map": read_trimmed("/proc/self/uid_map"),
        "gid_map": read_trimmed("/proc/self/gid_map"),
        "setgroups": read_trimmed("/proc/self/setgroups"),
        "rlimits": rlimits(),
        "status": status(),
        "hostname": hostname,
        "cwd": cwd,
        "umask": format!("{:04o}", umask()),
        "pid": std::process::id(),
        "ns": ns,
        "access": access_of,
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}
