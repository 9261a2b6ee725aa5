//! Where husk finds its guest kernel and guest init.

use std::env;
use std::path::{Path, PathBuf};

/// Environment variable naming the guest kernel (an ELF `vmlinux` or bzImage).
pub const ENV_KERNEL: &str = "HUSK_KERNEL";
/// Environment variable naming the guest init binary (`husk-init`).
pub const ENV_INIT: &str = "HUSK_INIT";
/// Environment variable overriding the kernel cache directory.
pub const ENV_KERNEL_CACHE: &str = "HUSK_KERNEL_CACHE";
/// Environment variable overriding husk's cache root (`~/.cache/husk`).
pub const ENV_CACHE: &str = "HUSK_CACHE";

/// The target triple the guest init is built for (a static binary).
pub const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
/// File name of the guest init binary.
pub const INIT_NAME: &str = "husk-init";

/// husk's cache root: `$HUSK_CACHE`, else `$HOME/.cache/husk`, else
/// `/var/cache/husk`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os(ENV_CACHE) {
        return PathBuf::from(dir);
    }
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Path::new(&home).join(".cache/husk"),
        _ => PathBuf::from("/var/cache/husk"),
    }
}

/// The kernel husk boots when none is named: `$HUSK_KERNEL`, else the
/// `default` build of `kernels/build.sh` in the kernel cache.
pub fn default_kernel() -> PathBuf {
    if let Some(k) = env::var_os(ENV_KERNEL) {
        return PathBuf::from(k);
    }
    let cache = env::var_os(ENV_KERNEL_CACHE)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kernels"));
    cache.join("default/vmlinux")
}

/// The guest init: `$HUSK_INIT`, else the installed one
/// (`<prefix>/bin/husk` -> `<prefix>/lib/husk/husk-init`), else where cargo
/// puts it relative to the running executable in a checkout
/// (`target/<profile>/husk` -> `target/x86_64-unknown-linux-musl/<profile>/`).
/// The host-target build of husk-init beside husk is never used: it is not
/// static.
pub fn default_init() -> PathBuf {
    if let Some(p) = env::var_os(ENV_INIT) {
        return PathBuf::from(p);
    }
    let candidates = init_candidates(env::current_exe().ok().as_deref());
    candidates
        .iter()
        .find(|p| p.is_file())
        .or(candidates.first())
        .cloned()
        .unwrap_or_else(|| PathBuf::from(INIT_NAME))
}

fn init_candidates(exe: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Some(dir) = exe.and_then(Path::parent) else {
        return out;
    };
    if let Some(prefix) = dir.parent() {
        out.push(prefix.join("lib/husk").join(INIT_NAME));
    }
    // target/<profile>/husk or target/<profile>/deps/<test binary>
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    if let (Some(target), Some(_)) = (dir.parent(), dir.file_name()) {
        for profile in ["release", "debug"] {
            out.push(target.join(INIT_TARGET).join(profile).join(INIT_NAME));
        }
    }
    out
}

/// Whether this process runs in a user namespace other than the initial
/// one (rootless podman runs its runtime in one, as uid 0 there).
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| !is_initial_uid_map(&m))
        .unwrap_or(false)
}

/// The host uid `uid` of this process's user namespace stands for (itself
/// in the initial namespace, or where `/proc/self/uid_map` does not say).
pub fn host_uid(uid: u32) -> u32 {
    std::fs::read_to_string("/proc/self/uid_map")
        .ok()
        .and_then(|m| uid_on_host(&m, uid))
        .unwrap_or(uid)
}

/// What `uid` maps to on the host by the `uid_map` text `map`.
fn uid_on_host(map: &str, uid: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [inside, outside, count] = f[..] else {
            return None;
        };
        let uid = u64::from(uid);
        (uid >= inside && uid - inside < count)
            .then(|| u32::try_from(outside + (uid - inside)).ok())
            .flatten()
    })
}

/// Whether a `uid_map` is the initial user namespace's (`0 0 4294967295`).
fn is_initial_uid_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_looked_for_beside_the_exe_then_in_the_musl_target_dir() {
        let c = init_candidates(Some(Path::new("/w/target/debug/deps/e2e-123")));
        assert_eq!(c[0], Path::new("/w/target/debug/lib/husk/husk-init"));
        let installed = init_candidates(Some(Path::new("/usr/local/bin/husk")));
        assert_eq!(installed[0], Path::new("/usr/local/lib/husk/husk-init"));
        assert!(c.contains(&PathBuf::from(
            "/w/target/x86_64-unknown-linux-musl/release/husk-init"
        )));
        assert!(init_candidates(None).is_empty());
    }

    #[test]
    fn the_initial_user_namespace_is_told_apart() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1000          1\n"));
        assert!(!is_initial_uid_map(
            "         0     100000      65536\n         1 1000 1\n"
        ));
        assert!(!is_initial_uid_map(""));
        let rootless = "         0       1001          1\n         1     100000      65536\n";
        assert_eq!(uid_on_host(rootless, 0), Some(1001));
        assert_eq!(uid_on_host(rootless, 5), Some(100_004));
        assert_eq!(uid_on_host(rootless, 70_000), None);
        assert_eq!(uid_on_host("0 0 4294967295", 42), Some(42));
        assert_eq!(uid_on_host("garbage\n", 0), None);
    }
}
