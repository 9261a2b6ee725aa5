//! The container's processes, from `/proc`: every process but init and the
//! kernel's threads.

use std::io;
use std::path::Path;

use crate::agent_proto::ProcessInfo;

/// pid of the kernel's thread creator; its children are kernel threads.
const KTHREADD: i32 = 2;
/// Init's own pid.
const INIT: i32 = 1;

/// State letter and ppid from the text of `/proc/PID/stat`. The command name
/// is in parentheses and may hold anything, so parse after the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, i32)> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_owned();
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The real uid from the text of `/proc/PID/status`.
pub fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}

/// `/proc/PID/cmdline` split at NULs.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// Whether a process belongs in the listing.
pub fn is_container_process(pid: i32, ppid: i32, cmdline: &[String]) -> bool {
    pid != INIT && pid != KTHREADD && !(ppid == KTHREADD && cmdline.is_empty())
}

fn read_process(dir: &Path, pid: i32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (state, ppid) = parse_stat(&stat)?;
    let cmdline = parse_cmdline(&std::fs::read(dir.join("cmdline")).unwrap_or_default());
    if !is_container_process(pid, ppid, &cmdline) {
        return None;
    }
    let uid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_uid(&s))
        .unwrap_or(0);
    Some(ProcessInfo {
        pid,
        ppid,
        uid,
        state,
        cmdline,
    })
}

/// Lists processes under `proc_root` (normally `/proc`), by pid. Processes
/// that end while being read are left out.
pub fn list(proc_root: &Path) -> io::Result<Vec<ProcessInfo>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(info) = read_process(&entry.path(), pid) {
            out.push(info);
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "42 (a) b) (c) S 7 42 42 0 -1 4194560 100 0 0 0";
        assert_eq!(parse_stat(stat), Some(("S".into(), 7)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x)"), None);
    }

    #[test]
    fn uid_and_cmdline_parse() {
        let status = "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGid:\t0\n";
        assert_eq!(parse_uid(status), Some(1000));
        assert_eq!(parse_cmdline(b"sh\0-c\0echo hi\0"), ["sh", "-c", "echo hi"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn init_and_kernel_threads_are_left_out() {
        let cmd = vec!["sh".to_owned()];
        assert!(!is_container_process(1, 0, &cmd));
        assert!(!is_container_process(2, 0, &[]));
        assert!(!is_container_process(9, 2, &[]));
        assert!(is_container_process(9, 1, &cmd));
        assert!(
            is_container_process(10, 9, &[]),
            "a zombie child has no cmdline"
        );
    }

    #[test]
    fn lists_this_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let all = list(Path::new("/proc")).unwrap();
        let mine = all
            .iter()
            .find(|p| p.pid == me)
            .expect("this test process is listed");
        assert!(!mine.cmdline.is_empty());
    }
}
