//! What `state` and `list` print, byte for byte as runc 1.1 does.
//!
//! * `state`: the OCI state JSON with runc's extra fields, in runc's order
//!   (`ociVersion id pid status bundle rootfs created [annotations] owner`),
//!   two-space indent, no trailing newline; `annotations` is left out when
//!   empty; `pid` is 0 once stopped; `owner` is always `""` (runc fills it
//!   only in `list`).
//! * `list --format json`: an array of the same objects on one line with
//!   `owner` set to the owner's user name, then a newline; `null` when
//!   there are no containers.
//! * `list`: a table aligned as Go's tabwriter (min width 12, padding 3)
//!   with the header `ID PID STATUS BUNDLE CREATED OWNER`.
//! * `list --quiet`: one id per line.
//!
//! JSON strings are escaped as Go's encoder does (`<`, `>`, `&`, U+2028 and
//! U+2029 as `\uXXXX`), so output compares equal to runc's.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::state::State;

/// OCI runtime spec version reported in state (the one husk implements).
pub const OCI_VERSION: &str = oci_spec::runtime::VERSION;
/// tabwriter settings of runc's `list`: minimum cell width.
const TABLE_MIN_WIDTH: usize = 12;
/// tabwriter settings of runc's `list`: padding after each cell.
const TABLE_PADDING: usize = 3;
/// Header cells of the `list` table.
const TABLE_HEADER: [&str; 6] = ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"];
/// Where user names are looked up.
const PASSWD_FILE: &str = "/etc/passwd";

/// A container's state as runc prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

impl OciState {
    /// The printed form of `state` with `owner` as given.
    pub fn new(state: &State, owner: String) -> OciState {
        OciState {
            oci_version: OCI_VERSION.to_owned(),
            id: state.id.clone(),
            pid: state.oci_pid(),
            status: state.status.as_str().to_owned(),
            bundle: state.bundle.clone(),
            rootfs: state.rootfs.clone(),
            created: state.created.clone(),
            annotations: state.annotations.clone(),
            owner,
        }
    }
}

/// `husk state` output (no trailing newline, as runc).
pub fn render_state(state: &State) -> String {
    let value = OciState::new(state, String::new());
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut ser)
        .expect("serializing plain structs to memory cannot fail");
    go_escape(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// `husk list --format json` output, with owners named by `owner_name`.
pub fn render_list_json(states: &[State], owner_name: &dyn Fn(u32) -> String) -> String {
    if states.is_empty() {
        return "null\n".to_owned();
    }
    let values: Vec<OciState> = states
        .iter()
        .map(|s| OciState::new(s, owner_name(s.owner_uid)))
        .collect();
    let mut text = go_escape(serde_json::to_string(&values).expect("serializing to memory"));
    text.push('\n');
    text
}

/// `husk list` table output.
pub fn render_list_table(states: &[State], owner_name: &dyn Fn(u32) -> String) -> String {
    let mut rows: Vec<Vec<String>> = vec![TABLE_HEADER.iter().map(|h| (*h).to_owned()).collect()];
    for s in states {
        rows.push(vec![
            s.id.clone(),
            s.oci_pid().to_string(),
            s.status.as_str().to_owned(),
            s.bundle.display().to_string(),
            s.created.clone(),
            owner_name(s.owner_uid),
        ]);
    }
    tabulate(&rows)
}

/// `husk list --quiet` output.
pub fn render_list_quiet(states: &[State]) -> String {
    states.iter().map(|s| format!("{}\n", s.id)).collect()
}

/// Lays out rows as Go's tabwriter with runc's settings: every cell but
/// the last of a row is padded to its column's width (the widest cell plus
/// [`TABLE_PADDING`], at least [`TABLE_MIN_WIDTH`]); the last is not padded.
/// Widths count characters.
fn tabulate(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns.saturating_sub(1)];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns.saturating_sub(1)) {
            let w = (cell.chars().count() + TABLE_PADDING).max(TABLE_MIN_WIDTH);
            widths[i] = widths[i].max(w);
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                let _ = write!(out, "{cell}{:pad$}", "");
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// Escapes what Go's JSON encoder escapes and serde_json does not. Safe on
/// whole documents: these characters can only occur inside strings.
fn go_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The user name of `uid` in `/etc/passwd`, or `#uid` (runc's fallback).
pub fn owner_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string(PASSWD_FILE).unwrap_or_default();
    owner_name_in(&passwd, uid)
}

/// The user name of `uid` in passwd-format text, or `#uid`.
pub fn owner_name_in(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let id: u32 = fields.next()?.parse().ok()?;
            (id == uid && !name.is_empty()).then(|| name.to_owned())
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::state::Status;

    fn state(id: &str, status: Status, annotations: &[(&str, &str)]) -> State {
        State {
            id: id.to_owned(),
            status,
            pid: Some(8411),
            pid_start_time: Some(1),
            boot_id: None,
            bundle: "/tmp/rb".into(),
            rootfs: "/tmp/rb/rootfs".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            created: "2026-11-28T07:02:00.294281076Z".to_owned(),
            owner_uid: 0,
            control_socket: "/run/husk/x/vsock".into(),
            console_log: "/run/husk/x/console.log".into(),
            vmm_log: "/run/husk/x/vmm.log".into(),
            rootfs_image: None,
            exit_status: None,
            cgroup: None,
            poststop_ran: false,
        }
    }

    fn root_name(uid: u32) -> String {
        if uid == 0 {
            "root".to_owned()
        } else {
            format!("#{uid}")
        }
    }

    /// Captured from Debian's runc 1.1.5 (`runc state t1`), with the
    /// ociVersion it was built with replaced by husk's.
    #[test]
    fn state_matches_runc_byte_for_byte() {
        let want = format!(
            "{{\n  \"ociVersion\": \"{OCI_VERSION}\",\n  \"id\": \"t1\",\n  \"pid\": 8411,\n  \
             \"status\": \"created\",\n  \"bundle\": \"/tmp/rb\",\n  \"rootfs\": \"/tmp/rb/rootfs\",\n  \
             \"created\": \"2026-11-28T07:02:00.294281076Z\",\n  \"annotations\": {{\n    \
             \"a.b\": \"c\",\n    \"x\": \"y\"\n  }},\n  \"owner\": \"\"\n}}"
        );
        let s = state("t1", Status::Created, &[("x", "y"), ("a.b", "c")]);
        assert_eq!(render_state(&s), want);
    }

    #[test]
    fn state_without_annotations_omits_them() {
        let text = render_state(&state("t6", Status::Running, &[]));
        assert!(!text.contains("annotations"));
        assert!(
            text.contains("\"created\": \"2026-11-28T07:02:00.294281076Z\",\n  \"owner\": \"\"\n}")
        );
        assert!(text.contains("\"status\": \"running\""));
    }

    #[test]
    fn stopped_state_shows_pid_zero() {
        let text = render_state(&state("t1", Status::Stopped, &[]));
        assert!(text.contains("\"pid\": 0,"), "{text}");
        assert!(text.contains("\"status\": \"stopped\""));
    }

    #[test]
    fn state_parses_as_oci_state() {
        let text = render_state(&state("t1", Status::Created, &[("k", "v")]));
        let s: oci_spec::runtime::State = serde_json::from_str(&text).unwrap();
        assert_eq!(s.id(), "t1");
        assert_eq!(s.pid(), &Some(8411));
        assert_eq!(s.status(), &oci_spec::runtime::ContainerState::Created);
        let back: OciState = serde_json::from_str(&text).unwrap();
        assert_eq!(back.annotations.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn go_style_escaping() {
        let s = state(
            "t1",
            Status::Created,
            &[("html", "<a href=\"x\">&</a>"), ("ls", "a\u{2028}b")],
        );
        let text = render_state(&s);
        assert!(
            text.contains(r#""html": "\u003ca href=\"x\"\u003e\u0026\u003c/a\u003e""#),
            "{text}"
        );
        assert!(text.contains(r#""ls": "a\u2028b""#));
        let back: OciState = serde_json::from_str(&text).unwrap();
        assert_eq!(back.annotations["html"], "<a href=\"x\">&</a>");
    }

    /// Captured from runc 1.1.5 (`runc list` with one created container).
    #[test]
    fn table_matches_runc() {
        let want = "ID          PID         STATUS      BUNDLE      CREATED                          OWNER\n\
                    t1          8411        created     /tmp/rb     2026-11-28T07:02:00.294281076Z   root\n";
        let text = render_list_table(&[state("t1", Status::Created, &[])], &root_name);
        assert_eq!(text, want);
    }

    #[test]
    fn empty_table_is_the_header() {
        let want = "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n";
        assert_eq!(render_list_table(&[], &root_name), want);
    }

    #[test]
    fn table_columns_grow_with_content() {
        let mut long = state("a-rather-long-container-id", Status::Stopped, &[]);
        long.bundle = "/var/lib/containers/bundle".into();
        long.owner_uid = 1000;
        let short = state("b", Status::Running, &[]);
        let text = render_list_table(&[long, short], &root_name);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let status_col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("stopped").unwrap(), status_col);
        assert_eq!(lines[2].find("running").unwrap(), status_col);
        assert_eq!(status_col, "a-rather-long-container-id".len() + 3 + 12);
        assert!(lines[1].ends_with("   #1000"));
        assert!(lines[1].contains(" 0           stopped"));
    }

    /// Captured from runc 1.1.5 (`runc list -f json`).
    #[test]
    fn list_json_matches_runc() {
        let want = format!(
            "[{{\"ociVersion\":\"{OCI_VERSION}\",\"id\":\"t1\",\"pid\":8411,\"status\":\"created\",\
             \"bundle\":\"/tmp/rb\",\"rootfs\":\"/tmp/rb/rootfs\",\"created\":\"2026-11-28T07:02:00.294281076Z\",\
             \"annotations\":{{\"a.b\":\"c\",\"x\":\"y\"}},\"owner\":\"root\"}}]\n"
        );
        let s = state("t1", Status::Created, &[("a.b", "c"), ("x", "y")]);
        assert_eq!(render_list_json(&[s], &root_name), want);
    }

    #[test]
    fn empty_list_json_is_null() {
        assert_eq!(render_list_json(&[], &root_name), "null\n");
    }

    #[test]
    fn quiet_list() {
        let states = [
            state("a", Status::Created, &[]),
            state("b", Status::Stopped, &[]),
        ];
        assert_eq!(render_list_quiet(&states), "a\nb\n");
        assert_eq!(render_list_quiet(&[]), "");
    }

    #[test]
    fn owner_names() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\nbad line\n:x:5:5::/:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(owner_name_in(passwd, 0), "root");
        assert_eq!(owner_name_in(passwd, 1000), "alice");
        assert_eq!(owner_name_in(passwd, 5), "#5");
        assert_eq!(owner_name_in(passwd, 42), "#42");
        assert_eq!(owner_name_in("", 0), "#0");
    }
}
