//! `husk install --engine ENGINE`: registers husk with a container engine
//! in the engine's own configuration, keeping everything else in it, and
//! says what changed and whether the engine must be restarted.
//!
//! - **podman**: `containers.conf`, `[engine.runtimes] husk = ["PATH"]`
//!   (then `podman --runtime husk ...`); podman reads it at each command.
//! - **docker**: `daemon.json`, `"runtimes": {"husk": {"path": "PATH"}}`
//!   (then `docker run --runtime husk ...`); dockerd reads it at start or on
//!   `SIGHUP`.
//! - **containerd**: no configuration: `ctr run --runtime
//!   io.containerd.husk.v2` finds `containerd-shim-husk-v2` on containerd's
//!   `PATH`; the shim beside husk is linked into [`SHIM_LINK_DIR`] when no
//!   shim is on the `PATH` yet.
//! - **cri**: the above, and a CRI runtime handler `husk` in containerd's
//!   `config.toml` (`runtime_type = "io.containerd.husk.v2"`, husk's pod
//!   annotations passed on), for a Kubernetes `RuntimeClass` with
//!   `handler: husk` ([docs/kubernetes.md]); containerd must be restarted.
//!
//! `--uninstall` takes out exactly what install puts in. The edits are pure
//! functions of the file's text ([`edit_podman`], [`edit_docker`],
//! [`edit_containerd`]); TOML is edited in place (`toml_edit`: comments and
//! order kept), JSON rewritten with its keys as they were. A file that does
//! not parse is an error naming it, and nothing is written.

use std::path::{Path, PathBuf};

/// The engines husk registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    Docker,
    Containerd,
    Cri,
}

/// The name engines know husk by.
pub const RUNTIME_NAME: &str = "husk";
/// containerd's runtime type of husk's shim.
pub const SHIM_RUNTIME_TYPE: &str = "io.containerd.husk.v2";
/// The shim's binary name.
pub const SHIM_BINARY: &str = "containerd-shim-husk-v2";
/// Where the shim is linked when containerd cannot find it.
pub const SHIM_LINK_DIR: &str = "/usr/local/bin";
/// Pod annotations of husk's that containerd passes to the sandbox.
pub const POD_ANNOTATIONS: &str = "io.husk.*";

impl Engine {
    /// The engine's system configuration file.
    pub fn default_config(self) -> Option<PathBuf> {
        match self {
            Engine::Podman => Some("/etc/containers/containers.conf".into()),
            Engine::Docker => Some("/etc/docker/daemon.json".into()),
            Engine::Cri => Some("/etc/containerd/config.toml".into()),
            Engine::Containerd => None,
        }
    }

    /// What the user does for the change to take effect.
    fn restart(self) -> &'static str {
        match self {
            Engine::Podman => "no restart needed: podman reads containers.conf at each command",
            Engine::Docker => "restart dockerd (systemctl restart docker), or send it SIGHUP",
            Engine::Containerd => "no restart needed: containerd looks the shim up at each task",
            Engine::Cri => "restart containerd (systemctl restart containerd)",
        }
    }
}

/// Why the configuration was not changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid {format}: {reason} (fix or move the file, then run again)")]
    Parse {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: {what} is not a {expected}; husk leaves a setting it does not understand alone (fix it by hand)")]
    Shape {
        path: PathBuf,
        what: String,
        expected: &'static str,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{shim} is neither on PATH nor beside {husk}: build it (make build) and install it \
         next to husk"
    )]
    NoShim { shim: &'static str, husk: PathBuf },
}

/// A pure edit's result: the new text (`None`: unchanged) and what changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Edit {
    pub text: Option<String>,
    pub changes: Vec<String>,
}

fn parse_err(path: &Path, format: &'static str, reason: impl ToString) -> InstallError {
    InstallError::Parse {
        path: path.to_path_buf(),
        format,
        reason: reason.to_string(),
    }
}

fn shape_err(path: &Path, what: &str, expected: &'static str) -> InstallError {
    InstallError::Shape {
        path: path.to_path_buf(),
        what: what.to_owned(),
        expected,
    }
}

/// The TOML table at `keys` under `doc`, made (as a `[section]`) where
/// missing; an error if something else is there.
fn toml_table<'a>(
    doc: &'a mut toml_edit::Table,
    keys: &[&str],
    path: &Path,
) -> Result<&'a mut toml_edit::Table, InstallError> {
    let mut table = doc;
    let mut walked = String::new();
    for key in keys {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(key);
        let item = table.entry(key).or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| shape_err(path, &walked, "table"))?;
    }
    Ok(table)
}

/// `containers.conf`: `[engine.runtimes] husk = ["<husk>"]` (see the module
/// docs); `path` names the file in errors.
pub fn edit_podman(
    text: &str,
    husk: &Path,
    uninstall: bool,
    path: &Path,
) -> Result<Edit, InstallError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| parse_err(path, "TOML", e))?;
    let husk_s = husk.to_string_lossy().into_owned();
    let mut changes = Vec::new();
    if uninstall {
        if let Some(runtimes) = doc
            .get_mut("engine")
            .and_then(|e| e.as_table_like_mut())
            .and_then(|e| e.get_mut("runtimes"))
            .and_then(|r| r.as_table_like_mut())
        {
            if runtimes.remove(RUNTIME_NAME).is_some() {
                changes.push(format!("removed [engine.runtimes] {RUNTIME_NAME}"));
            }
        }
    } else {
        let runtimes = toml_table(doc.as_table_mut(), &["engine", "runtimes"], path)?;
        let want = toml_edit::Array::from_iter([husk_s.as_str()]);
        let same = runtimes
            .get(RUNTIME_NAME)
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.len() == 1 && a.get(0).and_then(|v| v.as_str()) == Some(&husk_s));
        if !same {
            runtimes.insert(RUNTIME_NAME, toml_edit::value(want));
            changes.push(format!(
                "set [engine.runtimes] {RUNTIME_NAME} = [\"{husk_s}\"]"
            ));
        }
    }
    Ok(Edit {
        text: (!changes.is_empty()).then(|| doc.to_string()),
        changes,
    })
}

/// `daemon.json`: `"runtimes": {"husk": {"path": "<husk>"}}`.
pub fn edit_docker(
    text: &str,
    husk: &Path,
    uninstall: bool,
    path: &Path,
) -> Result<Edit, InstallError> {
    let mut doc: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(text).map_err(|e| parse_err(path, "JSON", e))?
    };
    let root = doc
        .as_object_mut()
        .ok_or_else(|| shape_err(path, "the document", "JSON object"))?;
    let husk_s = husk.to_string_lossy().into_owned();
    let mut changes = Vec::new();
    if uninstall {
        if let Some(runtimes) = root.get_mut("runtimes").and_then(|r| r.as_object_mut()) {
            if runtimes.remove(RUNTIME_NAME).is_some() {
                changes.push(format!("removed runtimes.{RUNTIME_NAME}"));
            }
            if runtimes.is_empty() {
                root.remove("runtimes");
            }
        }
    } else {
        let runtimes = root
            .entry("runtimes")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| shape_err(path, "runtimes", "JSON object"))?;
        let want = serde_json::json!({ "path": husk_s });
        if runtimes.get(RUNTIME_NAME) != Some(&want) {
            runtimes.insert(RUNTIME_NAME.into(), want);
            changes.push(format!("set runtimes.{RUNTIME_NAME}.path = \"{husk_s}\""));
        }
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| parse_err(path, "JSON", e))?;
    Ok(Edit {
        text: (!changes.is_empty()).then(|| text + "\n"),
        changes,
    })
}

/// The CRI plugin's runtimes table of a containerd config of `version`.
fn cri_runtimes_keys(version: i64) -> &'static [&'static str] {
    match version {
        // containerd 2.x.
        3 => &[
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ],
        2 => &[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ],
        _ => &["plugins", "cri", "containerd", "runtimes"],
    }
}

/// containerd's `config.toml`: the CRI runtime handler `husk`.
pub fn edit_containerd(text: &str, uninstall: bool, path: &Path) -> Result<Edit, InstallError> {
    let fresh = text.trim().is_empty();
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| parse_err(path, "TOML", e))?;
    let mut changes = Vec::new();
    if fresh && !uninstall {
        doc.insert("version", toml_edit::value(2));
        changes.push("set version = 2 (a new file)".to_owned());
    }
    let version = match doc.get("version") {
        None => 1,
        Some(v) => v
            .as_integer()
            .ok_or_else(|| shape_err(path, "version", "number"))?,
    };
    let keys = cri_runtimes_keys(version);
    let shown = keys
        .iter()
        .map(|k| {
            if k.contains('.') {
                format!("\"{k}\"")
            } else {
                (*k).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    if uninstall {
        let mut table = Some(doc.as_table_mut() as &mut dyn toml_edit::TableLike);
        for key in keys {
            table = table
                .and_then(|t| t.get_mut(key))
                .and_then(|i| i.as_table_like_mut());
        }
        if let Some(runtimes) = table {
            if runtimes.remove(RUNTIME_NAME).is_some() {
                changes.push(format!("removed [{shown}.{RUNTIME_NAME}]"));
            }
        }
    } else {
        let runtimes = toml_table(doc.as_table_mut(), keys, path)?;
        let handler = toml_table(runtimes, &[RUNTIME_NAME], path)?;
        handler.set_implicit(false);
        if handler.get("runtime_type").and_then(|v| v.as_str()) != Some(SHIM_RUNTIME_TYPE) {
            handler.insert("runtime_type", toml_edit::value(SHIM_RUNTIME_TYPE));
            changes.push(format!(
                "set [{shown}.{RUNTIME_NAME}] runtime_type = \"{SHIM_RUNTIME_TYPE}\""
            ));
        }
        let has_annotations = handler
            .get("pod_annotations")
            .and_then(|v| v.as_array())
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(POD_ANNOTATIONS)));
        if !has_annotations {
            let mut list = handler
                .get("pod_annotations")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            list.push(POD_ANNOTATIONS);
            handler.insert("pod_annotations", toml_edit::value(list));
            changes.push(format!(
                "added \"{POD_ANNOTATIONS}\" to [{shown}.{RUNTIME_NAME}] pod_annotations"
            ));
        }
    }
    Ok(Edit {
        text: (!changes.is_empty()).then(|| doc.to_string()),
        changes,
    })
}

/// What `install` did.
#[derive(Debug)]
pub struct Report {
    /// One line per change (with its file).
    pub changes: Vec<String>,
    /// What the user does next, when something changed.
    pub restart: Option<&'static str>,
}

/// Reads `path` (missing: empty).
fn read(path: &Path) -> Result<String, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(InstallError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to `path` through a temporary file and a rename, keeping
/// the file's mode (new files: 0644), making its directory if needed.
fn write(path: &Path, text: &str) -> Result<(), InstallError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| InstallError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// The shim of `husk`: beside it.
fn shim_beside(husk: &Path) -> PathBuf {
    husk.parent().unwrap_or(Path::new(".")).join(SHIM_BINARY)
}

/// Whether `name` is an executable on `path_var`.
fn on_path(name: &str, path_var: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Links (or unlinks) the shim where containerd finds it (see the module
/// docs); `link_dir` is [`SHIM_LINK_DIR`] outside tests.
fn shim_link(
    husk: &Path,
    uninstall: bool,
    link_dir: &Path,
    path_var: &str,
) -> Result<Vec<String>, InstallError> {
    let link = link_dir.join(SHIM_BINARY);
    let ours = std::fs::read_link(&link)
        .ok()
        .is_some_and(|t| t.file_name().is_some_and(|n| n == SHIM_BINARY));
    if uninstall {
        if ours {
            std::fs::remove_file(&link).map_err(|source| InstallError::Write {
                path: link.clone(),
                source,
            })?;
            return Ok(vec![format!("removed the link {}", link.display())]);
        }
        return Ok(Vec::new());
    }
    if let Some(found) = on_path(SHIM_BINARY, path_var) {
        let _ = found;
        return Ok(Vec::new());
    }
    let shim = shim_beside(husk);
    if !shim.is_file() {
        return Err(InstallError::NoShim {
            shim: SHIM_BINARY,
            husk: husk.to_path_buf(),
        });
    }
    std::fs::create_dir_all(link_dir).map_err(|source| InstallError::Write {
        path: link_dir.to_path_buf(),
        source,
    })?;
    std::os::unix::fs::symlink(&shim, &link).map_err(|source| InstallError::Write {
        path: link.clone(),
        source,
    })?;
    Ok(vec![format!(
        "linked {} -> {} (containerd looks shims up on its PATH)",
        link.display(),
        shim.display()
    )])
}

/// Registers (or, `uninstall`, unregisters) `husk` with `engine` in
/// `config` (default: the engine's system file). `dry_run`: say, change
/// nothing.
pub fn install(
    engine: Engine,
    uninstall: bool,
    config: Option<&Path>,
    husk: &Path,
    dry_run: bool,
) -> Result<Report, InstallError> {
    install_with(
        engine,
        uninstall,
        config,
        husk,
        dry_run,
        Path::new(SHIM_LINK_DIR),
        &std::env::var("PATH").unwrap_or_default(),
    )
}

fn install_with(
    engine: Engine,
    uninstall: bool,
    config: Option<&Path>,
    husk: &Path,
    dry_run: bool,
    link_dir: &Path,
    path_var: &str,
) -> Result<Report, InstallError> {
    let mut changes = Vec::new();
    let file = config
        .map(Path::to_path_buf)
        .or_else(|| engine.default_config());
    if let Some(file) = file.filter(|_| engine != Engine::Containerd) {
        let text = read(&file)?;
        let edit = match engine {
            Engine::Podman => edit_podman(&text, husk, uninstall, &file)?,
            Engine::Docker => edit_docker(&text, husk, uninstall, &file)?,
            Engine::Cri | Engine::Containerd => edit_containerd(&text, uninstall, &file)?,
        };
        if let (Some(new), false) = (&edit.text, dry_run) {
            write(&file, new)?;
        }
        changes.extend(
            edit.changes
                .into_iter()
                .map(|c| format!("{}: {c}", file.display())),
        );
    }
    if matches!(engine, Engine::Containerd | Engine::Cri) && !dry_run {
        changes.extend(shim_link(husk, uninstall, link_dir, path_var)?);
    }
    Ok(Report {
        restart: (!changes.is_empty()).then(|| engine.restart()),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUSK: &str = "/usr/local/bin/husk";

    #[test]
    fn podman_keeps_the_rest_of_containers_conf_and_is_idempotent() {
        let path = Path::new("/etc/containers/containers.conf");
        let text = "# my settings\n[containers]\nlog_size_max = 1024\n\n[engine]\ncgroup_manager = \"cgroupfs\" # keep\n";
        let e = edit_podman(text, Path::new(HUSK), false, path).unwrap();
        let new = e.text.unwrap();
        assert!(
            new.starts_with("# my settings\n[containers]\nlog_size_max = 1024\n"),
            "{new}"
        );
        assert!(
            new.contains("cgroup_manager = \"cgroupfs\" # keep"),
            "{new}"
        );
        let doc: toml_edit::DocumentMut = new.parse().unwrap();
        assert_eq!(
            doc["engine"]["runtimes"]["husk"][0].as_str(),
            Some(HUSK),
            "{new}"
        );
        assert_eq!(e.changes.len(), 1);
        // Again: nothing to do.
        let again = edit_podman(&new, Path::new(HUSK), false, path).unwrap();
        assert_eq!(
            again,
            Edit {
                text: None,
                changes: vec![]
            }
        );
        // Another path replaces it.
        let moved = edit_podman(&new, Path::new("/opt/husk"), false, path).unwrap();
        assert!(moved.text.unwrap().contains("[\"/opt/husk\"]"));
        // Uninstall takes it out, and only it.
        let out = edit_podman(&new, Path::new(HUSK), true, path).unwrap();
        let out_text = out.text.unwrap();
        assert!(!out_text.contains("husk"), "{out_text}");
        assert!(out_text.contains("cgroup_manager"), "{out_text}");
        assert_eq!(
            edit_podman(&out_text, Path::new(HUSK), true, path).unwrap(),
            Edit {
                text: None,
                changes: vec![]
            }
        );
    }

    #[test]
    fn docker_keeps_daemon_json_and_is_idempotent() {
        let path = Path::new("/etc/docker/daemon.json");
        let text = r#"{"log-driver": "journald", "runtimes": {"crun": {"path": "/usr/bin/crun"}}}"#;
        let e = edit_docker(text, Path::new(HUSK), false, path).unwrap();
        let new = e.text.unwrap();
        let v: serde_json::Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["runtimes"]["crun"]["path"], "/usr/bin/crun");
        assert_eq!(v["runtimes"]["husk"]["path"], HUSK);
        assert_eq!(
            edit_docker(&new, Path::new(HUSK), false, path)
                .unwrap()
                .text,
            None
        );
        let out = edit_docker(&new, Path::new(HUSK), true, path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out.text.unwrap()).unwrap();
        assert!(v["runtimes"].get("husk").is_none());
        assert_eq!(v["runtimes"]["crun"]["path"], "/usr/bin/crun");
        // A missing file is an empty object; a bad one is refused by name.
        assert!(edit_docker("", Path::new(HUSK), false, path)
            .unwrap()
            .text
            .is_some());
        let err = edit_docker("{nope", Path::new(HUSK), false, path).unwrap_err();
        assert!(
            err.to_string().contains("daemon.json is not valid JSON"),
            "{err}"
        );
        let err = edit_docker(r#"{"runtimes": 3}"#, Path::new(HUSK), false, path).unwrap_err();
        assert!(matches!(err, InstallError::Shape { .. }), "{err}");
    }

    #[test]
    fn containerd_gets_a_cri_handler_in_its_config_version() {
        let path = Path::new("/etc/containerd/config.toml");
        // A new file: version 2.
        let e = edit_containerd("", false, path).unwrap();
        let new = e.text.unwrap();
        let doc: toml_edit::DocumentMut = new.parse().unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        let h = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["husk"];
        assert_eq!(h["runtime_type"].as_str(), Some(SHIM_RUNTIME_TYPE));
        assert_eq!(h["pod_annotations"][0].as_str(), Some(POD_ANNOTATIONS));
        assert!(
            new.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]"),
            "{new}"
        );
        assert_eq!(edit_containerd(&new, false, path).unwrap().text, None);
        // An existing version 2 file keeps its settings.
        let existing = "version = 2\n# root\nroot = \"/var/lib/containerd\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let new = edit_containerd(existing, false, path)
            .unwrap()
            .text
            .unwrap();
        assert!(
            new.starts_with("version = 2\n# root\nroot = \"/var/lib/containerd\"\n"),
            "{new}"
        );
        assert!(
            new.contains("runtime_type = \"io.containerd.runc.v2\""),
            "{new}"
        );
        assert!(new.contains("io.containerd.husk.v2"), "{new}");
        let out = edit_containerd(&new, true, path).unwrap().text.unwrap();
        assert!(!out.contains("husk"), "{out}");
        assert!(out.contains("io.containerd.runc.v2"), "{out}");
        // containerd 2's version 3, and the old version 1 layout.
        let v3 = edit_containerd("version = 3\n", false, path)
            .unwrap()
            .text
            .unwrap();
        assert!(v3.contains("io.containerd.cri.v1.runtime"), "{v3}");
        let v1 = edit_containerd("root = \"/x\"\n", false, path)
            .unwrap()
            .text
            .unwrap();
        assert!(
            v1.contains("[plugins.cri.containerd.runtimes.husk]"),
            "{v1}"
        );
        let err = edit_containerd("version = \"two\"\n", false, path).unwrap_err();
        assert!(matches!(err, InstallError::Shape { .. }), "{err}");
        let err = edit_containerd("[[[", false, path).unwrap_err();
        assert!(err.to_string().contains("not valid TOML"), "{err}");
    }

    #[test]
    fn install_writes_the_file_links_the_shim_and_uninstall_undoes_both() {
        let dir = tempfile::tempdir().unwrap();
        let husk = dir.path().join("bin/husk");
        std::fs::create_dir_all(husk.parent().unwrap()).unwrap();
        std::fs::write(&husk, b"").unwrap();
        std::fs::write(shim_beside(&husk), b"").unwrap();
        let conf = dir.path().join("etc/containerd/config.toml");
        let links = dir.path().join("links");
        let r = install_with(
            Engine::Cri,
            false,
            Some(&conf),
            &husk,
            false,
            &links,
            "/nonexistent",
        )
        .unwrap();
        assert_eq!(r.changes.len(), 4, "{:?}", r.changes);
        assert_eq!(r.restart, Some(Engine::Cri.restart()));
        assert!(std::fs::read_to_string(&conf)
            .unwrap()
            .contains(SHIM_RUNTIME_TYPE));
        assert!(links.join(SHIM_BINARY).is_symlink());
        // Idempotent: nothing more, no restart asked for.
        let again = install_with(
            Engine::Cri,
            false,
            Some(&conf),
            &husk,
            false,
            &links,
            &links.to_string_lossy(),
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.restart, None);
        let out = install_with(Engine::Cri, true, Some(&conf), &husk, false, &links, "").unwrap();
        assert_eq!(out.changes.len(), 2, "{:?}", out.changes);
        assert!(!links.join(SHIM_BINARY).exists());
        assert!(!std::fs::read_to_string(&conf).unwrap().contains("husk"));
        // A dry run writes nothing.
        let podman = dir.path().join("containers.conf");
        let dry = install_with(
            Engine::Podman,
            false,
            Some(&podman),
            &husk,
            true,
            &links,
            "",
        )
        .unwrap();
        assert_eq!(dry.changes.len(), 1);
        assert!(!podman.exists());
        // No shim anywhere: said so, the config untouched.
        std::fs::remove_file(shim_beside(&husk)).unwrap();
        let err =
            install_with(Engine::Containerd, false, None, &husk, false, &links, "").unwrap_err();
        assert!(matches!(err, InstallError::NoShim { .. }), "{err}");
    }
}
