//! OCI fidelity: the same bundle under runc and under husk, with
//! `oci-probe` (guest/src/probe.rs, a static program) as the container's
//! process printing what it sees; husk's view must equal runc's except
//! where docs/oci.md says why not.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::oci::{b, Env, LIMIT};
use common::{spaced_lines, wait_bounded};
use serde_json::Value;

/// Paths of runc's default config the guest kernel lacks (built without
/// kcore, sysrq and ACPI).
const GUEST_LACKS: [&str; 3] = ["/proc/kcore", "/proc/sysrq-trigger", "/proc/acpi"];

/// The probe, built with husk-init (`make build`).
fn probe() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/oci-probe");
    assert!(
        p.is_file(),
        "{} missing: run `make build` (it builds husk-init's oci-probe)",
        p.display()
    );
    p
}

/// A bundle of `runc spec`'s default config, the probe as its process
/// (checking `paths`), adjusted by `edit`.
fn bundle(env: &Env, name: &str, paths: &[&str], edit: impl FnOnce(&mut Value, &Path)) -> PathBuf {
    let dir = env.dir.path().join(name);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy(probe(), rootfs.join("oci-probe")).unwrap();
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&dir)
        .status()
        .expect("runc (scripts/install-deps.sh installs it)");
    assert!(st.success());
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    let mut args = vec!["/oci-probe".to_string()];
    args.extend(paths.iter().map(|p| p.to_string()));
    // runc's default masked paths the guest kernel lacks: looked at in
    // every case, so that they can be left out of the comparison.
    for p in GUEST_LACKS {
        if !paths.contains(&p) {
            args.push(p.to_string());
        }
    }
    config["process"]["args"] = args.into();
    config["root"]["readonly"] = false.into();
    edit(&mut config, &rootfs);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    dir
}

/// Runs the bundle under `runtime` and parses the probe's output.
fn view(env: &Env, runtime: &str, bundle: &Path, id: &str) -> Value {
    let out = if runtime == "runc" {
        let mut cmd = Command::new("runc");
        cmd.args(["run", "--bundle", b(bundle), id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait_bounded(cmd.spawn().unwrap(), LIMIT, "runc")
    } else {
        env.husk(&["run", "--bundle", b(bundle), id])
    };
    assert!(out.status.success(), "{runtime} run {id}: {}", out.stderr);
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{runtime}'s probe output: {e}: {}", out.stdout))
}

/// The parts of a view compared, with the differences docs/oci.md
/// explains taken out: the root's file system (virtio-fs), what the
/// guest kernel lacks (`/proc/kcore` and the other missing paths, hence
/// `/dev/core`), superblock options of sysfs and cgroup2 (shared with the
/// guest's own mounts, or the host's first mount), tmpfs's `inode64` (the
/// host kernel's build), and the rlimits derived from memory size.
fn normalized(v: &Value, missing: &[String]) -> Value {
    // Binds from the root file system show its type: the root's too.
    let root = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["point"] == "/")
        .map(|m| (m["fstype"].clone(), m["super"].clone()))
        .unwrap();
    let mounts: Vec<Value> = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !missing.iter().any(|p| m["point"] == p.as_str()))
        .map(|m| {
            let root = m["point"] == "/" || (m["fstype"] == root.0 && m["super"] == root.1);
            let fstype = m["fstype"].as_str().unwrap();
            let sup = if root || matches!(fstype, "sysfs" | "cgroup2") {
                "-".to_string()
            } else {
                m["super"]
                    .as_str()
                    .unwrap()
                    .split(',')
                    .filter(|o| *o != "inode64")
                    .collect::<Vec<_>>()
                    .join(",")
            };
            serde_json::json!({
                "point": m["point"],
                "fstype": if root { "<root>" } else { fstype },
                "options": m["options"],
                "super": sup,
                "propagation": m["propagation"],
            })
        })
        .collect();
    let mut dev = v["dev"].clone();
    dev.as_object_mut().unwrap().remove("/dev/core");
    let mut rlimits = v["rlimits"].clone();
    for derived in ["RLIMIT_NPROC", "RLIMIT_SIGPENDING"] {
        rlimits.as_object_mut().unwrap().remove(derived);
    }
    let mut access = v["access"].clone();
    for p in missing {
        access.as_object_mut().unwrap().remove(p);
    }
    serde_json::json!({
        "mounts": mounts,
        "dev": dev,
        "uid_map": v["uid_map"],
        "gid_map": v["gid_map"],
        "setgroups": v["setgroups"],
        "rlimits": rlimits,
        "status": v["status"],
        "hostname": v["hostname"],
        "cwd": v["cwd"],
        "umask": v["umask"],
        "pid": v["pid"],
        "access": access,
    })
}

/// Runs `bundle` under both and asserts the views match.
fn same_view(env: &Env, bundle: &Path, id: &str) -> Value {
    let runc = view(env, "runc", bundle, &format!("{id}-runc"));
    let husk = view(env, "husk", bundle, &format!("{id}-husk"));
    env.assert_gone(&format!("{id}-husk"));
    // What the guest kernel does not have (it is built without kcore,
    // sysrq and ACPI): absent in husk's view, so not compared.
    let missing: Vec<String> = husk["access"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, a)| a["error"].as_str().is_some_and(|e| e.starts_with("ENOENT")))
        .map(|(p, _)| p.clone())
        .collect();
    let (r, h) = (normalized(&runc, &missing), normalized(&husk, &missing));
    for key in r.as_object().unwrap().keys() {
        assert_eq!(
            serde_json::to_string_pretty(&h[key]).unwrap(),
            serde_json::to_string_pretty(&r[key]).unwrap(),
            "{id}: `{key}` differs (left: husk, right: runc)"
        );
    }
    husk
}

/// runc's default config: the mount table in config order (the `/dev`
/// tmpfs with its options, `/sys` after `/dev/mqueue`), `/dev` with
/// runc's nodes and links (`/dev/ptmx` a link to `pts/ptmx`), masked and
/// read-only paths, the process as pid 1 of its namespace.
#[test]
fn runc_spec_default_config() {
    let env = Env::new();
    let paths = [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/sys/firmware",
        "/proc/acpi",
    ];
    let dir = bundle(&env, "default", &paths, |_, _| {});
    let husk = same_view(&env, &dir, "default");
    assert_eq!(husk["pid"], 1);
    assert_eq!(husk["dev"]["/dev/ptmx"]["type"], "symlink");
    assert_eq!(husk["mounts"][2]["point"], "/dev");
    assert_eq!(husk["mounts"][2]["fstype"], "tmpfs");
}

/// `linux.devices` (a char device, a block device, a FIFO, with modes and
/// owners) are made as runc makes them.
#[test]
fn linux_devices_are_created() {
    let env = Env::new();
    let dir = bundle(&env, "devices", &[], |c, _| {
        c["linux"]["devices"] = serde_json::json!([
            {"path": "/dev/test1", "type": "c", "major": 1, "minor": 7, "fileMode": 432, "uid": 1000, "gid": 1001},
            {"path": "/dev/sub/test2", "type": "b", "major": 7, "minor": 0, "fileMode": 384},
            {"path": "/dev/test3", "type": "p", "fileMode": 420, "uid": 5, "gid": 6}
        ]);
    });
    let husk = same_view(&env, &dir, "devices");
    assert_eq!(husk["dev"]["/dev/test1"]["mode"], "0660");
    assert_eq!(husk["dev"]["/dev/test1"]["uid"], 1000);
}

/// Masked and read-only paths on device nodes, files and directories.
#[test]
fn masked_and_readonly_paths_on_nodes_files_and_dirs() {
    let env = Env::new();
    let paths = [
        "/dev/zero",
        "/dev/full",
        "/etc/ro-file",
        "/etc/masked-file",
        "/etc/masked-dir",
        "/etc/ro-dir",
    ];
    let dir = bundle(&env, "masks", &paths, |c, rootfs| {
        std::fs::create_dir_all(rootfs.join("etc/masked-dir")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc/ro-dir")).unwrap();
        std::fs::write(rootfs.join("etc/ro-file"), b"kept").unwrap();
        std::fs::write(rootfs.join("etc/masked-file"), b"secret").unwrap();
        c["linux"]["maskedPaths"] =
            serde_json::json!(["/dev/full", "/etc/masked-file", "/etc/masked-dir"]);
        c["linux"]["readonlyPaths"] =
            serde_json::json!(["/dev/zero", "/etc/ro-file", "/etc/ro-dir"]);
    });
    let husk = same_view(&env, &dir, "masks");
    assert_eq!(husk["access"]["/etc/masked-file"]["read"], "ok:0");
    assert!(husk["access"]["/etc/ro-file"]["write"]
        .as_str()
        .unwrap()
        .starts_with("EROFS"));
}

/// `linux.rootfsPropagation` is what the container's `/` shows. Compared
/// with the spec rather than with runc, whose result depends on the host's
/// own mounts (in the test host runc leaves `/` private for every value
/// and refuses `unbindable` for a rootfs that is not a mount point); a
/// slave has no master in a VM (no host mount can reach the guest), so it
/// shows private (docs/oci.md).
#[test]
fn rootfs_propagation_is_the_roots() {
    let env = Env::new();
    for (value, want) in [
        ("shared", "shared"),
        ("rshared", "shared"),
        ("rslave", "private"),
        ("private", "private"),
        ("unbindable", "unbindable"),
    ] {
        let dir = bundle(&env, &format!("prop-{value}"), &[], |c, _| {
            c["linux"]["rootfsPropagation"] = value.into();
        });
        let id = format!("prop-{value}");
        let husk = view(&env, "husk", &dir, &id);
        env.assert_gone(&id);
        let root = husk["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["point"] == "/")
            .unwrap();
        assert_eq!(root["propagation"], want, "{value}: {root}");
        // Recursive sharing reaches the mounts under it, as on a host.
        let proc = husk["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["point"] == "/proc")
            .unwrap();
        let proc_want = if value == "rshared" || value == "shared" {
            "shared"
        } else {
            "private"
        };
        assert_eq!(proc["propagation"], proc_want, "{value}: {proc}");
    }
    // Not a propagation: create fails saying so, and leaves nothing.
    let dir = bundle(&env, "prop-bad", &[], |c, _| {
        c["linux"]["rootfsPropagation"] = "sideways".into();
    });
    let done = env.husk(&["create", "--bundle", b(&dir), "prop-bad"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("rootfsPropagation") && done.stderr.contains("sideways"),
        "{}",
        done.stderr
    );
    env.assert_gone("prop-bad");
}

/// A user namespace with `linux.uidMappings` / `gidMappings`: the process
/// sees the maps runc writes (`0 1000 2000`, `0 1000 3000`), and is root
/// inside. In a user namespace runc cannot `mknod`, so it bind-mounts the
/// host's device nodes over `/dev/null` and the others; husk makes the
/// nodes before the process enters the namespace, so those bind mounts
/// are the one difference in the mount table (docs/oci.md).
#[test]
fn user_namespace_mappings_are_the_specs() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    // runc's init runs as the mapped root, which must reach the bundle.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = bundle(&env, "userns", &[], |c, rootfs| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 2000}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 3000}]);
        let chown = Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(rootfs)
            .status()
            .unwrap();
        assert!(chown.success());
    });
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runc = view(&env, "runc", &dir, "userns-runc");
    let husk = view(&env, "husk", &dir, "userns-husk");
    env.assert_gone("userns-husk");
    assert_eq!(husk["uid_map"], serde_json::json!(["0 1000 2000"]));
    assert_eq!(husk["gid_map"], serde_json::json!(["0 1000 3000"]));
    assert_eq!(husk["status"]["Uid"], "0 0 0 0");
    // runc's device binds aside, the views are the same.
    let missing: Vec<String> = GUEST_LACKS.iter().map(|p| p.to_string()).collect();
    let mut r = normalized(&runc, &missing);
    let mut h = normalized(&husk, &missing);
    // runc's binds of the host's device nodes: on /dev's nodes, and under
    // every masked file (bound from its /dev/null, itself such a bind).
    let binds: Vec<Value> = runc["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fstype"] == "devtmpfs")
        .map(|m| m["point"].clone())
        .collect();
    for view in [&mut r, &mut h] {
        view["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| !binds.contains(&m["point"]));
    }
    for key in r.as_object().unwrap().keys() {
        assert_eq!(
            serde_json::to_string_pretty(&h[key]).unwrap(),
            serde_json::to_string_pretty(&r[key]).unwrap(),
            "userns: `{key}` differs (left: husk, right: runc)"
        );
    }
}

/// An exec joins the container's user namespace (and its other ones): it
/// sees the maps and the container's processes, with the main one as pid 1.
#[test]
fn an_exec_joins_the_containers_namespaces() {
    let env = Env::new();
    let bundle = env.bundle("exec", &["sleep", "1000"], |c| {
        c["linux"]["namespaces"] = serde_json::json!([
            {"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "user"}
        ]);
        c["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 2000}]);
        c["linux"]["gidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 1000, "size": 3000}]);
    });
    let done = env.husk(&["run", "-d", "--bundle", b(&bundle), "ex"]);
    assert!(done.status.success(), "{}", done.stderr);
    let done = env.husk(&[
        "exec",
        "ex",
        "sh",
        "-c",
        "cat /proc/self/uid_map; id -u; cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname",
    ]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        spaced_lines(&done.stdout),
        ["0 1000 2000", "0", "sleep 1000", "husk-test"],
        "{}",
        done.stdout
    );
    let done = env.husk(&["delete", "--force", "ex"]);
    assert!(done.status.success(), "{}", done.stderr);
    env.assert_gone("ex");
}
