//! OCI hooks that run on the host (in the runtime namespace): `prestart`,
//! `createRuntime` (during create, once the VM and container are set up),
//! `poststart` (after start) and `poststop` (at delete). Each gets the
//! container's OCI state JSON on stdin. A failing prestart/createRuntime hook
//! fails the create; poststart/poststop failures are logged (OCI runtime
//! spec, "Lifecycle").
//!
//! `createContainer` and `startContainer` run in the container namespace,
//! which for husk is inside the guest: they travel in the container spec and
//! husk-init's agent runs them (see `agent_proto::GuestHook`).

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

/// File in the container's state directory holding its hooks.
pub const HOOKS_FILE: &str = "hooks.json";

/// Errors of hooks.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: {reason}")]
    Failed {
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("hooks file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Saves the hooks for later verbs (poststart at start, poststop at delete).
pub fn save(dir: &Path, hooks: Option<&Hooks>) -> Result<(), HookError> {
    let path = dir.join(HOOKS_FILE);
    let data = serde_json::to_vec(&hooks).unwrap_or_default();
    std::fs::write(&path, data).map_err(|e| HookError::File {
        path,
        reason: e.to_string(),
    })
}

/// Loads what [`save`] stored; a missing file means no hooks.
pub fn load(dir: &Path) -> Result<Option<Hooks>, HookError> {
    let path = dir.join(HOOKS_FILE);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| HookError::File {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HookError::File {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Runs `hooks` in order with `state` on stdin; stops at the first failure.
pub fn run(kind: &'static str, hooks: &[Hook], state: &str) -> Result<(), HookError> {
    for hook in hooks {
        run_one(kind, hook, state)?;
    }
    Ok(())
}

/// Runs hooks whose failures are only logged (poststart, poststop).
pub fn run_logged(kind: &'static str, hooks: &[Hook], state: &str) {
    for hook in hooks {
        if let Err(e) = run_one(kind, hook, state) {
            log::warn!("{e}");
        }
    }
}

fn run_one(kind: &'static str, hook: &Hook, state: &str) -> Result<(), HookError> {
    let fail = |reason: String| HookError::Failed {
        kind,
        path: hook.path().clone(),
        reason,
    };
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some(argv0) = args.first() {
        cmd.arg0(argv0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|kv| kv.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state.as_bytes());
    }
    let limit = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(u64::try_from(t).unwrap_or(u64::MAX)));
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(status) => break status,
            None if limit.is_some_and(|l| start.elapsed() >= l) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {} s",
                    limit.unwrap_or_default().as_secs()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    Err(fail(format!("{status}: {}", stderr.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_hook_gets_the_state_on_stdin_and_its_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!(
            r#"{{"path": "/bin/sh", "args": ["sh", "-c", "cat > {0}; echo \"$GREETING\" >> {0}"], "env": ["GREETING=hi"]}}"#,
            out.display()
        ));
        run("createRuntime", &[h], r#"{"id":"c"}"#).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"c\"}hi\n");
    }

    #[test]
    fn failures_and_timeouts_name_the_hook() {
        let bad = hook(r#"{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 2"]}"#);
        let err = run("prestart", &[bad], "{}").unwrap_err().to_string();
        assert!(
            err.contains("prestart hook /bin/sh") && err.contains("nope"),
            "{err}"
        );
        let slow = hook(r#"{"path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1}"#);
        let err = run("createRuntime", &[slow], "{}").unwrap_err().to_string();
        assert!(err.contains("timed out after 1 s"), "{err}");
        let missing = hook(r#"{"path": "/no/such/hook"}"#);
        assert!(run("poststart", &[missing], "{}").is_err());
    }

    #[test]
    fn hooks_round_trip() {
        let host: Hooks = serde_json::from_str(r#"{"poststop": [{"path": "/x"}]}"#).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), Some(&host)).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(host));
        assert_eq!(load(&dir.path().join("none")).unwrap(), None);
    }
}
