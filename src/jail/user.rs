//! The VMM's own user: under a root engine, each container's VMM drops to a
//! uid and gid of its own, from a range kept for husk, before its guest
//! runs.
//!
//! With no capability left (every VMM thread keeps none, see
//! [`super::caps`]), uid 0 still owns every root-owned file a thread can
//! reach; as its own uid, a VMM thread that slips its code can write only
//! what that container's VMM was given (its timeline, its exit file, its
//! logs, its vsock socket), and no two containers' VMMs share a uid.
//!
//! - The range: [`RANGE_START`] .. `+` [`RANGE_SIZE`], above the ids
//!   `/etc/subuid` ranges, systemd's dynamic users and Kubernetes' user
//!   namespaces use by default.
//! - The claim: a file `<claims>/<uid>` made with `O_EXCL`, holding the
//!   claiming container's state directory; a claim whose directory is gone
//!   is released by `delete`, a failed `create` and, for a wiped state root,
//!   the container's keeper ([`release_stale`]), or taken back by the next
//!   claim that finds it.
//! - The annotation [`ANNOTATION`]: `auto` (the default), `root` (no drop:
//!   the VMM stays uid 0 without capabilities), or `UID[:GID]` pinned by
//!   the operator (not claimed: theirs to keep apart).
//! - Per thread: [`drop_thread`] uses the raw system calls, which change
//!   the calling thread's credentials only (the C library's wrappers would
//!   change every thread's), each VMM thread as it applies its filter.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vmm::devices::virtio::fs::idmap::{IdMap, IdRange};

/// The annotation choosing the VMM's user.
pub const ANNOTATION: &str = "io.husk.vmm.user";
/// First uid (and gid) of husk's range.
pub const RANGE_START: u32 = 0x7d00_0000;
/// Uids in the range: one per running container.
pub const RANGE_SIZE: u32 = 65_536;
/// Where claims live (host-wide: every state root's containers share the
/// range).
pub const CLAIMS_DIR: &str = "/run/husk-users";
/// Most bytes of a claim file.
const MAX_CLAIM: u64 = 4096;

/// A VMM's uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmUser {
    pub uid: u32,
    pub gid: u32,
    /// Whether it was claimed from the range (and is released with the
    /// container).
    #[serde(default)]
    pub claimed: bool,
    /// The same ids as the VMM's user namespace numbers them, when the VMM
    /// enters one ([`in_namespace`]); `uid` and `gid` are the host's.
    #[serde(default)]
    pub in_ns: Option<NsIds>,
}

/// A uid and gid inside a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsIds {
    pub uid: u32,
    pub gid: u32,
}

impl VmmUser {
    /// The ids a VMM thread drops to: the ones its user namespace gives
    /// this user.
    pub fn thread_ids(&self) -> NsIds {
        self.in_ns.unwrap_or(NsIds {
            uid: self.uid,
            gid: self.gid,
        })
    }
}

/// The user of a VMM that enters a user namespace whose maps are `uids`
/// and `gids` (host ids of namespace ids): its threads can only become ids
/// the namespace maps, so a uid of husk's range is not theirs. `Auto`: the
/// container's root (namespace id 0) where it is not the host's root, else
/// the first mapped id that is not; `Pinned` host ids must be mapped;
/// `Root`: no drop. Never the host's root: a thread that is uid 0 on the
/// host owns every root file.
pub fn in_namespace(
    choice: Choice,
    uids: &IdMap,
    gids: &IdMap,
) -> Result<Option<VmmUser>, UserError> {
    let pick = |map: &IdMap, which: &'static str, pinned: Option<u32>| {
        let none = |why: String| UserError::NotMapped { which, why };
        if map.is_identity() {
            return Err(none("the user namespace has no map".into()));
        }
        if let Some(host) = pinned {
            if !map.maps_host(host) {
                return Err(none(format!(
                    "{ANNOTATION} pins host {which} {host}, which the namespace does not map"
                )));
            }
            return Ok((host, map.to_container(host)));
        }
        let not_root = |r: &IdRange| {
            let skip = u32::from(r.host == 0);
            (skip < r.size).then(|| (r.host + skip, r.container + skip))
        };
        let mut ranges = map.ranges().to_vec();
        ranges.sort_by_key(|r| r.container);
        ranges.iter().find_map(not_root).ok_or_else(|| {
            none(format!(
                "the namespace maps only the host's root {which}, which a VMM thread must not \
                 be"
            ))
        })
    };
    let (uid, gid) = match choice {
        Choice::Root => return Ok(None),
        Choice::Auto => (None, None),
        Choice::Pinned { uid, gid } => (Some(uid), Some(gid)),
    };
    let (host_uid, ns_uid) = pick(uids, "uid", uid)?;
    let (host_gid, ns_gid) = pick(gids, "gid", gid)?;
    Ok(Some(VmmUser {
        uid: host_uid,
        gid: host_gid,
        claimed: false,
        in_ns: Some(NsIds {
            uid: ns_uid,
            gid: ns_gid,
        }),
    }))
}

/// What [`ANNOTATION`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// A uid of the range, claimed for the container.
    Auto,
    /// No drop.
    Root,
    /// These ids.
    Pinned { uid: u32, gid: u32 },
}

/// Parses an [`ANNOTATION`] value; `None` when it is none of its forms (or
/// pins uid or gid 0, which is `root`'s to say).
pub fn parse_annotation(value: &str) -> Option<Choice> {
    match value {
        "auto" => Some(Choice::Auto),
        "root" => Some(Choice::Root),
        _ => {
            let (uid, gid) = match value.split_once(':') {
                Some((u, g)) => (u.parse().ok()?, g.parse().ok()?),
                None => {
                    let u = value.parse().ok()?;
                    (u, u)
                }
            };
            (uid != 0 && gid != 0).then_some(Choice::Pinned { uid, gid })
        }
    }
}

/// Why a user could not be claimed or dropped to.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("claiming a VMM user in {dir}: {source}")]
    Claim {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "all {RANGE_SIZE} VMM users from {RANGE_START} are claimed (see {dir}); delete stopped \
         containers, or pin a user with the annotation {ANNOTATION}=UID:GID"
    )]
    Exhausted { dir: PathBuf },
    #[error(
        "the VMM's user namespace: no {which} for its threads: {why}; map a {which} that is not \
         the host's root, or set {ANNOTATION}=root"
    )]
    NotMapped { which: &'static str, why: String },
    #[error("dropping this thread to uid {uid} gid {gid}: {step}: {source}")]
    Drop {
        uid: u32,
        gid: u32,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// FNV-1a of the container's state directory: where its search for a
/// free uid starts (so ids spread over the range).
fn first_slot(key: &Path) -> u32 {
    let h = crate::runtime::state::fnv1a(key.as_os_str().as_encoded_bytes());
    u32::try_from(h % u64::from(RANGE_SIZE)).unwrap_or(0)
}

/// How long an empty claim (being made: created, not yet written) counts
/// as live; one older was left by a create that died in between.
const EMPTY_CLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the claim file `path` names a state directory that is gone.
fn stale(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() > MAX_CLAIM {
        return false;
    }
    if meta.len() == 0 {
        return meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > EMPTY_CLAIM_GRACE);
    }
    match std::fs::read_to_string(path) {
        Ok(owner) => !Path::new(owner.trim_end()).is_dir(),
        Err(_) => false,
    }
}

/// Releases every claim under `claims` whose container's state directory
/// is gone: what `delete` and a failed `create` leave once they removed
/// it, and what a wiped state root leaves (its keeper calls this).
pub fn release_stale(claims: &Path) {
    let Ok(entries) = std::fs::read_dir(claims) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if stale(&path) {
            if let Err(err) = std::fs::remove_file(&path) {
                log::warn!("releasing VMM user claim {}: {err}", path.display());
            }
        }
    }
}

/// Claims a uid of the range for the container whose state directory is
/// `state_dir` (absolute), under `claims` ([`CLAIMS_DIR`]).
pub fn claim(claims: &Path, state_dir: &Path) -> Result<VmmUser, UserError> {
    let err = |source| UserError::Claim {
        dir: claims.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(claims)
        .map_err(err)?;
    let start = first_slot(state_dir);
    for i in 0..RANGE_SIZE {
        let slot = (start + i) % RANGE_SIZE;
        let uid = RANGE_START + slot;
        let path = claims.join(uid.to_string());
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !stale(&path) {
                    continue;
                }
                // Taken back from a container that is gone; a create
                // that races for it loses on create_new.
                let _ = std::fs::remove_file(&path);
                match open() {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(err(e)),
                }
            }
            Err(e) => return Err(err(e)),
        };
        let mut file = file;
        file.write_all(state_dir.as_os_str().as_encoded_bytes())
            .map_err(err)?;
        return Ok(VmmUser {
            uid,
            gid: uid,
            claimed: true,
            in_ns: None,
        });
    }
    Err(UserError::Exhausted {
        dir: claims.to_path_buf(),
    })
}

/// Threads a VMM may have beyond its vCPUs (its main, relay, VM, record,
/// signal, stdin, terminal-size and create-watch threads, with room).
pub const THREADS_BEYOND_VCPUS: u64 = 64;

/// Bounds the threads of a VMM that runs as its own user: `RLIMIT_NPROC`
/// counts every task of the user, and a VMM's user has no other. The limit
/// is process-wide; it binds threads once they dropped to the user (uid 0
/// is exempt).
pub fn limit_threads(vcpus: u32) -> std::io::Result<()> {
    let n = u64::from(vcpus) + THREADS_BEYOND_VCPUS;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n)
        .map_err(std::io::Error::from)
}

/// `CAP_SETGID`, `CAP_SETUID`, `CAP_SETPCAP` (`linux/capability.h`).
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;

/// What a thread keeps to make [`drop_thread`]'s calls.
pub fn drop_needs() -> u64 {
    super::caps::mask(&[CAP_SETGID, CAP_SETUID, CAP_SETPCAP])
}

fn os_err(step: &'static str, user: &VmmUser) -> UserError {
    let ids = user.thread_ids();
    UserError::Drop {
        uid: ids.uid,
        gid: ids.gid,
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// Makes the calling thread `user` (real, effective, saved and file-system
/// ids; no supplementary groups), leaving it no capability and none in its
/// bounding set. The thread must hold [`drop_needs`] (and nothing else it
/// means to keep: a uid change clears the rest).
pub fn drop_thread(user: &VmmUser) -> Result<(), UserError> {
    // SAFETY: setgroups with a count of 0 reads no memory.
    if unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) } != 0 {
        return Err(os_err("setgroups", user));
    }
    let NsIds { uid: u, gid: g } = user.thread_ids();
    // SAFETY: setresgid with integer arguments, this thread only.
    if unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) } != 0 {
        return Err(os_err("setresgid", user));
    }
    for cap in [CAP_SETGID, CAP_SETUID, CAP_SETPCAP] {
        // SAFETY: prctl with integer arguments. The effective set keeps
        // CAP_SETUID for the next call; the bounding set loses it.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            return Err(os_err("dropping from the bounding set", user));
        }
    }
    // SAFETY: setresuid with integer arguments, this thread only. From
    // uid 0 to non-zero ids (and no SECBIT_KEEP_CAPS) the kernel clears the
    // permitted, effective and ambient sets; in a user namespace, whose root
    // the thread was not, the caller's next `limit_thread` does.
    if unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) } != 0 {
        return Err(os_err("setresuid", user));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_is_auto_root_or_ids() {
        assert_eq!(parse_annotation("auto"), Some(Choice::Auto));
        assert_eq!(parse_annotation("root"), Some(Choice::Root));
        assert_eq!(
            parse_annotation("5000"),
            Some(Choice::Pinned {
                uid: 5000,
                gid: 5000
            })
        );
        assert_eq!(
            parse_annotation("5000:6000"),
            Some(Choice::Pinned {
                uid: 5000,
                gid: 6000
            })
        );
        for bad in [
            "",
            "0",
            "0:5",
            "5:0",
            "x",
            "5:",
            ":5",
            "-1",
            "1:2:3",
            "99999999999",
        ] {
            assert_eq!(parse_annotation(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn claims_are_unique_released_and_taken_back_when_stale() {
        let dir = tempfile::tempdir().unwrap();
        let claims = dir.path().join("claims");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let ua = claim(&claims, &a).unwrap();
        let ub = claim(&claims, &b).unwrap();
        assert_ne!(ua.uid, ub.uid);
        for u in [ua, ub] {
            assert!(u.claimed && u.uid == u.gid);
            assert!((RANGE_START..RANGE_START + RANGE_SIZE).contains(&u.uid));
        }
        // A claim goes once its container's directory is gone; one being
        // made (empty) stays.
        std::fs::write(claims.join("5"), b"").unwrap();
        release_stale(&claims);
        assert!(claims.join(ua.uid.to_string()).exists());
        assert!(claims.join("5").exists());
        std::fs::remove_dir(&a).unwrap();
        release_stale(&claims);
        assert!(!claims.join(ua.uid.to_string()).exists());
        assert!(claims.join(ub.uid.to_string()).exists());
        // A claim of a container whose directory is gone is taken back.
        std::fs::remove_dir(&b).unwrap();
        std::fs::create_dir(&b).unwrap();
        let again = claim(&claims, &b).unwrap();
        assert_ne!(again.uid, ub.uid, "b's old claim is still b's");
        let c = dir.path().join("c");
        std::fs::remove_dir(&b).unwrap();
        std::fs::create_dir(&c).unwrap();
        // c hashes elsewhere; plant a stale claim where it starts.
        let start = RANGE_START + first_slot(&c);
        std::fs::write(
            claims.join(start.to_string()),
            b.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(claim(&claims, &c).unwrap().uid, start);
    }

    #[test]
    fn a_dropped_thread_has_the_ids_and_no_capability() {
        crate::test_support::need_root("setresuid(2)");
        let user = VmmUser {
            uid: RANGE_START + 7,
            gid: RANGE_START + 8,
            claimed: false,
            in_ns: None,
        };
        assert!(crate::test_support::in_child(move || {
            let last = crate::jail::caps::last_cap();
            crate::jail::caps::limit_thread(drop_needs(), last).unwrap();
            drop_thread(&user).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let field = |name: &str| crate::test_support::status_words(&status, name);
            let uid = (RANGE_START + 7).to_string();
            let gid = (RANGE_START + 8).to_string();
            field("Uid:").iter().all(|u| *u == uid)
                && field("Gid:").iter().all(|g| *g == gid)
                && field("Groups:").is_empty()
                && field("CapEff:") == ["0000000000000000"]
                && field("CapPrm:") == ["0000000000000000"]
                && field("CapBnd:") == ["0000000000000000"]
        }));
    }

    #[test]
    fn in_a_user_namespace_the_vmm_drops_to_mapped_ids_never_host_root() {
        let map = |text: &str| IdMap::parse_proc("uid_map", text).unwrap();
        let ids = |u: &VmmUser| (u.uid, u.gid, u.in_ns.map(|n| (n.uid, n.gid)), u.claimed);
        // The container's root, as the host numbers it.
        let u = in_namespace(Choice::Auto, &map("0 1000 2000\n"), &map("0 1000 3000\n"))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&u), (1000, 1000, Some((0, 0)), false));
        assert_eq!(u.thread_ids(), NsIds { uid: 0, gid: 0 });
        // Ranges out of order; the container's root is the host's: the
        // next id.
        let u = in_namespace(Choice::Auto, &map("10 5000 5\n0 0 2\n"), &map("0 7000 1\n"))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&u), (1, 7000, Some((1, 0)), false));
        // Pinned host ids must be mapped.
        let u = in_namespace(
            Choice::Pinned {
                uid: 1005,
                gid: 1007,
            },
            &map("0 1000 2000\n"),
            &map("0 1000 3000\n"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(ids(&u), (1005, 1007, Some((5, 7)), false));
        let e = in_namespace(
            Choice::Pinned {
                uid: 9999,
                gid: 1000,
            },
            &map("0 1000 2000\n"),
            &map("0 1000 3000\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pins host uid 9999") && e.contains(ANNOTATION),
            "{e}"
        );
        // Only the host's root mapped, or no map: refused, saying so.
        let e = in_namespace(Choice::Auto, &map("0 0 1\n"), &map("0 1000 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the host's root uid"), "{e}");
        assert!(in_namespace(Choice::Auto, &map("0 1000 1\n"), &IdMap::default()).is_err());
        assert_eq!(
            in_namespace(Choice::Root, &map("0 0 1\n"), &map("0 0 1\n")).unwrap(),
            None
        );
        // Old plans (no namespace ids) read as before.
        let old: VmmUser = serde_json::from_str(r#"{"uid":5,"gid":6,"claimed":true}"#).unwrap();
        assert_eq!(old.thread_ids(), NsIds { uid: 5, gid: 6 });
    }
}
