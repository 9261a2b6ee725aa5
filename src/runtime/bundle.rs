//! OCI bundles: `<bundle>/config.json` loaded with oci-spec and checked
//! before anything is created.
//!
//! Checks, in order (the first failure is reported): the container id
//! (runc's rule), no container of that id under the state root, the bundle
//! directory, `config.json` present and well-formed, `ociVersion` 1.x,
//! `process` present (for create), `root.path` present and existing
//! (relative paths are relative to the bundle).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

use super::state;

/// The bundle's configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// The OCI runtime spec major version husk reads.
pub const SUPPORTED_MAJOR: u64 = 1;

/// A bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// runc's wording.
    #[error("invalid container ID format")]
    InvalidId { id: String },
    /// runc's wording.
    #[error("container with given ID already exists")]
    Duplicate { id: String },
    #[error("bundle {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("bundle {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} not found: the bundle has no config.json")]
    ConfigMissing { path: PathBuf },
    #[error("reading {path}: {source}")]
    ConfigRead { path: PathBuf, source: io::Error },
    #[error("parsing {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unsupported ociVersion {version:?}: husk reads 1.x configurations")]
    UnsupportedVersion { version: String },
    /// runc's wording.
    #[error("process property must not be empty")]
    NoProcess,
    #[error("config.json has no root.path")]
    NoRoot,
    #[error("root.path {path}: {source}")]
    Rootfs { path: PathBuf, source: io::Error },
}

/// A loaded, checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, lexically cleaned bundle directory (runc's `filepath.Abs`).
    pub path: PathBuf,
    /// Absolute root filesystem path (`root.path` joined to `path`).
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// The spec's annotations, sorted.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// Checks a container id against runc's rule: one or more of
/// `[A-Za-z0-9_+.-]` (Go's `^[\w+\-\.]+$`), and not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), BundleError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.');
    if id.is_empty() || id == "." || id == ".." || !id.chars().all(ok_char) {
        return Err(BundleError::InvalidId { id: id.to_owned() });
    }
    Ok(())
}

/// Everything `create` checks: id, no duplicate under `state_root`, and the
/// bundle with a `process`.
pub fn load_for_create(bundle: &Path, state_root: &Path, id: &str) -> Result<Bundle, BundleError> {
    validate_id(id)?;
    if state::exists(state_root, id) {
        return Err(BundleError::Duplicate { id: id.to_owned() });
    }
    let b = load(bundle)?;
    if b.spec.process().is_none() {
        return Err(BundleError::NoProcess);
    }
    Ok(b)
}

/// Loads and checks `<bundle>/config.json` (everything but the id and the
/// `process` requirement).
pub fn load(bundle: &Path) -> Result<Bundle, BundleError> {
    let path = absolute(bundle).map_err(|source| BundleError::Dir {
        path: bundle.to_path_buf(),
        source,
    })?;
    let meta = fs::metadata(&path).map_err(|source| BundleError::Dir {
        path: path.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(BundleError::NotADirectory { path });
    }
    let config = path.join(CONFIG_FILE);
    let text = match fs::read(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BundleError::ConfigMissing { path: config })
        }
        Err(source) => {
            return Err(BundleError::ConfigRead {
                path: config,
                source,
            })
        }
    };
    let spec: Spec = serde_json::from_slice(&text).map_err(|source| BundleError::ConfigParse {
        path: config.clone(),
        source,
    })?;
    check_version(spec.version())?;
    let root = spec.root().as_ref().ok_or(BundleError::NoRoot)?;
    if root.path().as_os_str().is_empty() {
        return Err(BundleError::NoRoot);
    }
    let rootfs = clean(&path.join(root.path()));
    fs::metadata(&rootfs).map_err(|source| BundleError::Rootfs {
        path: rootfs.clone(),
        source,
    })?;
    Ok(Bundle { path, rootfs, spec })
}

/// Accepts `1`, `1.x`, `1.x.y`, `1.x.y-anything`.
fn check_version(version: &str) -> Result<(), BundleError> {
    let major = version.split(['.', '-', '+']).next().unwrap_or("");
    match major.parse::<u64>() {
        Ok(SUPPORTED_MAJOR) => Ok(()),
        _ => Err(BundleError::UnsupportedVersion {
            version: version.to_owned(),
        }),
    }
}

/// `path` made absolute against the current directory and cleaned.
fn absolute(path: &Path) -> io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(clean(path))
    } else {
        Ok(clean(&std::env::current_dir()?.join(path)))
    }
}

/// Lexical cleaning as Go's `filepath.Clean` for absolute paths: drops `.`
/// components, resolves `..` against the previous component, never above `/`.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const MINIMAL: &str = r#"{
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "annotations": {"b": "2", "a": "1"}
    }"#;

    /// A bundle dir with a rootfs and the given config.json text.
    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
        dir
    }

    fn with_field(field: &str, value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        v.to_string()
    }

    #[test]
    fn loads_a_minimal_bundle() {
        let dir = bundle_with(MINIMAL);
        let state_root = tempfile::tempdir().unwrap();
        let b = load_for_create(dir.path(), state_root.path(), "c1").unwrap();
        assert_eq!(b.path, dir.path());
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
        assert_eq!(
            b.spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["sh"]
        );
        let want: BTreeMap<_, _> = [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]
        .into();
        assert_eq!(b.annotations(), want);
    }

    #[test]
    fn relative_bundle_paths_become_absolute_and_clean() {
        let dir = bundle_with(MINIMAL);
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(dir.path(), &cwd);
        let b = load(&rel.join("rootfs/..").join(".")).unwrap();
        assert_eq!(b.path, dir.path());
        assert!(b.path.is_absolute());
    }

    /// `target` relative to `base`, through `..` (both absolute).
    fn pathdiff(target: &Path, base: &Path) -> PathBuf {
        let mut up = PathBuf::new();
        for _ in base.components().skip(1) {
            up.push("..");
        }
        up.join(target.strip_prefix("/").unwrap())
    }

    #[test]
    fn absolute_root_path_is_kept() {
        let dir = bundle_with(MINIMAL);
        let other = tempfile::tempdir().unwrap();
        let config = with_field(
            "root",
            serde_json::json!({"path": other.path().to_str().unwrap(), "readonly": true}),
        );
        fs::write(dir.path().join(CONFIG_FILE), config).unwrap();
        assert_eq!(load(dir.path()).unwrap().rootfs, other.path());
    }

    #[test]
    fn missing_bundle_dir() {
        let err = load(Path::new("/nonexistent/husk-bundle")).unwrap_err();
        assert!(matches!(err, BundleError::Dir { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/husk-bundle"));
    }

    #[test]
    fn bundle_that_is_a_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            load(f.path()),
            Err(BundleError::NotADirectory { .. })
        ));
    }

    #[test]
    fn missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::ConfigMissing { .. }), "{err}");
        assert!(err.to_string().contains("config.json"));
    }

    #[test]
    fn malformed_json_carries_the_serde_error() {
        let dir = bundle_with("{bad");
        let err = load(dir.path()).unwrap_err();
        let BundleError::ConfigParse { ref source, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(source.line(), 1);
        assert!(err.to_string().contains("key must be a string"), "{err}");
    }

    #[test]
    fn wrong_types_are_parse_errors() {
        let dir = bundle_with(&with_field("process", serde_json::json!("sh")));
        assert!(matches!(
            load(dir.path()),
            Err(BundleError::ConfigParse { .. })
        ));
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.2.0", "1", "1.1.0+dev"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for bad in ["2.0.0", "0.9", "", "v1.0.0", "one"] {
            assert!(
                matches!(
                    check_version(bad),
                    Err(BundleError::UnsupportedVersion { .. })
                ),
                "{bad}"
            );
        }
        let dir = bundle_with(&with_field("ociVersion", serde_json::json!("2.0.0")));
        let err = load(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported ociVersion \"2.0.0\": husk reads 1.x configurations"
        );
    }

    #[test]
    fn missing_process_fails_create_only() {
        let dir = bundle_with(&with_field("process", serde_json::Value::Null));
        assert!(load(dir.path()).is_ok());
        let state_root = tempfile::tempdir().unwrap();
        let err = load_for_create(dir.path(), state_root.path(), "c1").unwrap_err();
        assert!(matches!(err, BundleError::NoProcess));
        assert_eq!(err.to_string(), "process property must not be empty");
    }

    #[test]
    fn missing_root() {
        let dir = bundle_with(&with_field("root", serde_json::Value::Null));
        assert!(matches!(load(dir.path()), Err(BundleError::NoRoot)));
        let dir = bundle_with(&with_field("root", serde_json::json!({"path": ""})));
        assert!(matches!(load(dir.path()), Err(BundleError::NoRoot)));
    }

    #[test]
    fn nonexistent_root_path() {
        let dir = bundle_with(&with_field("root", serde_json::json!({"path": "nothere"})));
        let err = load(dir.path()).unwrap_err();
        let BundleError::Rootfs {
            ref path,
            ref source,
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!(path, &dir.path().join("nothere"));
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn container_ids() {
        for ok in [
            "a",
            "c1",
            "A_b-c.d+e",
            "0123456789abcdef",
            "...",
            "a..b",
            "-x",
        ] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", "a:b", "../x", "a\n"] {
            let err = validate_id(bad).unwrap_err();
            assert!(matches!(err, BundleError::InvalidId { .. }), "{bad}");
            assert_eq!(err.to_string(), "invalid container ID format");
        }
    }

    #[test]
    fn invalid_id_is_checked_before_the_bundle() {
        let state_root = tempfile::tempdir().unwrap();
        let err = load_for_create(Path::new("/nonexistent"), state_root.path(), "a/b").unwrap_err();
        assert!(matches!(err, BundleError::InvalidId { .. }));
    }

    #[test]
    fn duplicate_id() {
        let dir = bundle_with(MINIMAL);
        let state_root = tempfile::tempdir().unwrap();
        fs::create_dir(state_root.path().join("c1")).unwrap();
        let err = load_for_create(dir.path(), state_root.path(), "c1").unwrap_err();
        assert!(matches!(err, BundleError::Duplicate { ref id } if id == "c1"));
        assert_eq!(err.to_string(), "container with given ID already exists");
        assert!(load_for_create(dir.path(), state_root.path(), "c2").is_ok());
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
        assert_eq!(clean(Path::new("/../..")), PathBuf::from("/"));
        assert_eq!(clean(Path::new("//a//b")), PathBuf::from("/a/b"));
    }
}
