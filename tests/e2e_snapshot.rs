//! End to end, in the KVM test host: containers start from a snapshot of a
//! booted template VM (`crate::runtime::template`), and still differ from
//! each other where it matters.

mod common;

use std::path::{Path, PathBuf};

use common::oci::*;
use common::*;

/// Runs husk with its own cache root (templates and images land there).
fn husk(env: &Env, cache: &Path, args: &[&str]) -> Finished {
    let (kernel, init) = (kernel(), init_binary());
    env.husk_with_env(
        &[
            ("HUSK_CACHE", cache),
            ("HUSK_KERNEL", &kernel),
            ("HUSK_INIT", &init),
        ],
        args,
    )
}

fn templates(cache: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache.join("templates")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

fn timeline_marks(env: &Env, id: &str) -> Vec<String> {
    std::fs::read_to_string(env.root().join(id).join("timeline"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// What a container reports about itself: boot id, random bytes, clock.
const REPORT: &str = "cat /proc/sys/kernel/random/boot_id; \
                      head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                      date +%s; echo ok > /tmp/written; cat /tmp/written";

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn restored_containers_share_no_random_state_and_keep_the_hosts_time() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let bundle = env.bundle("b", &["sh", "-c", REPORT], |_| {});

    let mut reports = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let done = husk(&env, &cache, &["run", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{id}: {}", done.stderr);
        let lines: Vec<String> = done.stdout.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 4, "{id}: {:?}", done.stdout);
        let guest_time: i64 = lines[2].trim().parse().unwrap();
        assert!(
            (guest_time - now_s()).abs() <= 10,
            "{id}: guest clock {guest_time}, host {}",
            now_s()
        );
        assert_eq!(lines[3], "ok", "{id}: the guest can write");
        reports.push(lines);
        env.assert_gone(id);
    }
    // One template for the three, built by the first.
    assert_eq!(templates(&cache).len(), 1, "{:?}", templates(&cache));
    for (i, a) in reports.iter().enumerate() {
        for c in &reports[i + 1..] {
            assert_ne!(a[0], c[0], "two containers share a boot id");
            assert_ne!(a[1], c[1], "two containers read the same random bytes");
        }
    }

    // The restore path, seen in the start-up timeline.
    let done = husk(&env, &cache, &["create", "--bundle", b(&bundle), "r4"]);
    assert!(done.status.success(), "{}", done.stderr);
    let marks = timeline_marks(&env, "r4");
    assert!(marks.iter().any(|m| m == "vmm.restored"), "{marks:?}");
    assert!(!marks.iter().any(|m| m == "guest.init"), "{marks:?}");
    assert!(husk(&env, &cache, &["start", "r4"]).status.success());
    env.wait_status("r4", "stopped");
    assert!(husk(&env, &cache, &["delete", "r4"]).status.success());
    env.assert_gone("r4");
}

#[test]
fn the_annotation_boots_cold_and_a_bad_value_is_refused() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let cold = env.bundle("cold", &["sh", "-c", REPORT], |c| {
        c["annotations"] = serde_json::json!({"io.husk.snapshot": "false"});
    });
    let done = husk(&env, &cache, &["create", "--bundle", b(&cold), "c1"]);
    assert!(done.status.success(), "{}", done.stderr);
    let marks = timeline_marks(&env, "c1");
    assert!(marks.iter().any(|m| m == "guest.init"), "{marks:?}");
    assert!(!marks.iter().any(|m| m == "vmm.restored"), "{marks:?}");
    assert!(husk(&env, &cache, &["start", "c1"]).status.success());
    env.wait_status("c1", "stopped");
    assert!(husk(&env, &cache, &["delete", "c1"]).status.success());
    env.assert_gone("c1");
    assert!(
        templates(&cache).is_empty(),
        "a cold boot makes no template"
    );

    let bad = env.bundle("bad", &["true"], |c| {
        c["annotations"] = serde_json::json!({"io.husk.snapshot": "sometimes"});
    });
    let done = husk(&env, &cache, &["run", "--bundle", b(&bad), "c2"]);
    assert!(!done.status.success());
    assert!(
        done.stderr.contains("io.husk.snapshot") && done.stderr.contains("sometimes"),
        "{}",
        done.stderr
    );
    env.assert_gone("c2");
    assert!(templates(&cache).is_empty());
}

/// Containers with a shared directory restore from a template too (its
/// virtio-fs device served an empty directory and was only probed); each
/// restored container sees its own directory, and the template has none of
/// either.
#[test]
fn containers_with_volumes_restore_and_see_only_their_own_directory() {
    let env = Env::new();
    let cache = env.dir.path().join("cache");
    let mut seen = Vec::new();
    // One rootfs (one image, one template) for the three; each bundle binds
    // its own directory.
    let first = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "cat /data/who > /data/out; ls /data >> /data/out",
        ],
        |_| {},
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.join("config.json")).unwrap()).unwrap();
    for id in ["v1", "v2", "v3"] {
        let data = env.dir.path().join(format!("data-{id}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("who"), format!("{id}\n")).unwrap();
        let bundle = env.dir.path().join(format!("b-{id}"));
        std::fs::create_dir(&bundle).unwrap();
        let mut c = config.clone();
        c["root"]["path"] = serde_json::json!(first.join("rootfs"));
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind"]}
        ));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        let done = husk(&env, &cache, &["create", "--bundle", b(&bundle), id]);
        assert!(done.status.success(), "{id}: {}", done.stderr);
        let marks = timeline_marks(&env, id);
        seen.push(marks.iter().any(|m| m == "vmm.restored"));
        assert!(husk(&env, &cache, &["start", id]).status.success());
        env.wait_status(id, "stopped");
        assert!(husk(&env, &cache, &["delete", id]).status.success());
        env.assert_gone(id);
        // Its own directory, and only that: `who` (its id) and `out`.
        assert_eq!(
            std::fs::read_to_string(data.join("out")).unwrap(),
            format!("{id}\nout\nwho\n"),
            "{id}"
        );
    }
    // The first built the template (and restored from it), the others
    // restored it.
    assert_eq!(seen, [true, true, true]);
    let t = templates(&cache);
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(
        !t[0].join("share").exists(),
        "the template keeps only its snapshot"
    );
}
