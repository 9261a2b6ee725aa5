//! Kubernetes pods through containerd's CRI, driven by a CRI client
//! (gRPC on containerd's CRI socket, the `k8s-cri` protobufs), with the
//! `husk` runtime handler (containerd-shim-husk-v2) next to `runc`.
//!
//! The harness (containerd with its CRI plugin, the client) is
//! `tests/common/cri.rs`.

mod common;
#[path = "common/cri.rs"]
mod cri_harness;

use std::time::{Duration, Instant};

use cri_harness::*;
use k8s_cri::v1 as cri;

#[test]
fn a_pod_is_one_vm_whose_containers_share_localhost_ipc_and_volumes() {
    let c = Containerd::start();
    let config = c.pod_config("duo");
    let pod = c.run_pod(&config, "husk");
    let empty_dir = c.dir.path().join("empty-dir-duo");
    std::fs::create_dir(&empty_dir).unwrap();
    // A serves HTTP on the pod's localhost and leaves a file in the
    // emptyDir; B reads both.
    let a = c.create(
        &pod,
        &config,
        "a",
        &[
            "/bin/sh",
            "-c",
            "echo a-was-here > /cache/from-a; echo in-shm > /dev/shm/from-a; \
             exec httpd -f -p 127.0.0.1:8080 -h /www",
        ],
        vec![mount(&empty_dir, "/cache")],
    );
    c.start_container(&a);
    let b = c.create(
        &pod,
        &config,
        "b",
        &[
            "/bin/sh",
            "-c",
            "until wget -q -O - http://127.0.0.1:8080/; do sleep 1; done; \
             cat /cache/from-a /dev/shm/from-a; echo b-was-here > /cache/from-b; \
             trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done",
        ],
        vec![mount(&empty_dir, "/cache")],
    );
    c.start_container(&b);
    let start = Instant::now();
    while !c.log_lines("duo", "b").iter().any(|l| l == "in-shm") {
        assert!(
            start.elapsed() < CALL_LIMIT,
            "b never read a's page and file: {:?}",
            c.log_lines("duo", "b")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        c.log_lines("duo", "b"),
        vec![
            "served through the CRI".to_string(),
            "a-was-here".into(),
            "in-shm".into()
        ]
    );
    // B writes after its last line: its write may still be on the way.
    let began = Instant::now();
    while std::fs::read_to_string(empty_dir.join("from-b")).unwrap_or_default() != "b-was-here\n" {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "b's file never reached the host: {:?}",
            std::fs::read_to_string(empty_dir.join("from-b"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One VM for the pod: the sandbox's.
    let vmms = pod_vmms(&c, &[&pod, &a, &b]);
    assert_eq!(vmms.len(), 1, "one VM per pod: {vmms:#?}");
    assert!(vmms[0].contains(&pod), "{vmms:?}");
    // Each container: its own root and pid namespace; the pod's hostname,
    // ipc namespace and network.
    let (code, a_ns, _) = c.exec_sync(&a, NS_CMD, 60);
    assert_eq!(code, 0);
    let (code, b_ns, _) = c.exec_sync(&b, NS_CMD, 60);
    assert_eq!(code, 0);
    let (a_ipc, a_pid) = a_ns.split_once('\n').unwrap();
    let (b_ipc, b_pid) = b_ns.split_once('\n').unwrap();
    assert_eq!(a_ipc, b_ipc, "one ipc namespace per pod");
    assert_ne!(a_pid.trim(), b_pid.trim(), "a pid namespace per container");
    let (_, host, _) = c.exec_sync(&b, &["hostname"], 60);
    assert_eq!(host.trim(), "duo");
    // containerd's `Pids` of a container: its own processes (in the VM).
    let pids = |id: &str| -> Vec<String> {
        let out = c.ctr(&["task", "ps", id]);
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let (a_pids, b_pids) = (pids(&a), pids(&b));
    assert!(
        !a_pids.is_empty() && !b_pids.is_empty() && a_pids.iter().all(|p| !b_pids.contains(p)),
        "each container's own processes: a {a_pids:?}, b {b_pids:?}"
    );
    let (_, init, _) = c.exec_sync(&b, &["cat", "/proc/1/cmdline"], 60);
    assert!(
        init.contains("until wget"),
        "b's pid 1 is its own process: {init:?}"
    );
    let (_, ls, _) = c.exec_sync(&b, &["ls", "/"], 60);
    assert!(!ls.contains("pod"), "b sees its own root: {ls}");
    let (code, out, err) = c.exec_sync(&a, &["sh", "-c", "echo out; echo err >&2; exit 7"], 60);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    // A container of a pod that shares its process namespace sees the
    // sandbox's process as pid 1.
    let shared = c.create_with_pid(
        &pod,
        &config,
        "shared-pid",
        &["sh", "-c", "sleep 999 & exec sleep 1000"],
        vec![],
        cri::NamespaceMode::Pod,
    );
    c.start_container(&shared);
    let (_, init, _) = c.exec_sync(&shared, &["cat", "/proc/1/cmdline"], 60);
    assert!(
        init.contains("trap"),
        "the pod's pid 1 is the sandbox's: {init:?}"
    );
    c.stop_container(&shared, 2);
    c.wait_exited(&shared);
    c.remove_container(&shared);
    // What it started went with it (its cgroup is killed, as runc's shim
    // does), though the pod's pid namespace lives on.
    let look = c.create_with_pid(
        &pod,
        &config,
        "shared-pid-2",
        &["sleep", "1000"],
        vec![],
        cri::NamespaceMode::Pod,
    );
    c.start_container(&look);
    let (_, ps, _) = c.exec_sync(&look, &["ps"], 60);
    assert!(
        ps.contains("sleep 1000"),
        "ps lists the pod's processes: {ps}"
    );
    assert!(!ps.contains("sleep 999"), "left behind: {ps}");
    c.stop_container(&look, 2);
    c.wait_exited(&look);
    c.remove_container(&look);
    // What the kubelet changes in a volume while the pod runs (a configMap
    // or secret update: new files, then the `..data` link swapped to them,
    // as its atomic writer does) is seen inside without a restart.
    let config_map = empty_dir.join("config");
    std::fs::create_dir_all(config_map.join("..v1")).unwrap();
    std::fs::write(config_map.join("..v1/key"), "one\n").unwrap();
    std::os::unix::fs::symlink("..v1", config_map.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/key", config_map.join("key")).unwrap();
    let read_key = || c.exec_sync(&b, &["cat", "/cache/config/key"], 60).1;
    assert_eq!(read_key(), "one\n");
    std::fs::create_dir_all(config_map.join("..v2")).unwrap();
    std::fs::write(config_map.join("..v2/key"), "two\n").unwrap();
    std::os::unix::fs::symlink("..v2", config_map.join("..data_tmp")).unwrap();
    std::fs::rename(config_map.join("..data_tmp"), config_map.join("..data")).unwrap();
    let began = Instant::now();
    while read_key() != "two\n" {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the update never reached the container: {:?}",
            read_key()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Stopping one container leaves the other running.
    c.stop_container(&b, 10);
    let status = c.wait_exited(&b);
    assert_eq!(status.exit_code, 0, "{status:?}");
    let (code, out, _) = c.exec_sync(&a, &["cat", "/cache/from-b"], 60);
    assert_eq!((code, out.as_str()), (0, "b-was-here\n"));
    c.remove_container(&b);
    c.stop_container(&a, 2);
    c.wait_exited(&a);
    c.remove_container(&a);
    c.remove_pod(&pod);
    c.assert_nothing_left();
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("from-a")).unwrap(),
        "a-was-here\n",
        "the pod's volumes are the user's: left as they were"
    );
}

#[test]
fn a_pod_container_that_exits_non_zero_reports_it_and_leaves_nothing() {
    let c = Containerd::start();
    let config = c.pod_config("one");
    let pod = c.run_pod(&config, "husk");
    let shared = c.dir.path().join("shared-one");
    std::fs::create_dir(&shared).unwrap();
    let a = c.create(
        &pod,
        &config,
        "a",
        &[
            "/bin/sh",
            "-c",
            "echo hello from a; echo a-was-here > /data/a; exit 3",
        ],
        vec![mount(&shared, "/data")],
    );
    c.start_container(&a);
    let status = c.wait_exited(&a);
    assert_eq!(status.exit_code, 3, "{status:?}");
    assert_eq!(c.log_lines("one", "a"), vec!["hello from a".to_string()]);
    assert_eq!(
        std::fs::read_to_string(shared.join("a")).unwrap(),
        "a-was-here\n"
    );
    // A mount husk cannot give a VM (a Unix socket) fails the container's
    // start (the CRI creates the task then) with husk's reason, and leaves
    // nothing of the container.
    let sock_path = c.dir.path().join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let bad = cri::CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "bad".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["true".into()],
            log_path: "bad.log".into(),
            mounts: vec![cri::Mount {
                container_path: "/run/app.sock".into(),
                host_path: sock_path.to_string_lossy().into_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        sandbox_config: Some(config.clone()),
    };
    let bad = c
        .call("CreateContainer", |mut cl| async move {
            cl.create_container(bad).await
        })
        .container_id;
    let start = cri::StartContainerRequest {
        container_id: bad.clone(),
    };
    let err = c
        .try_call("StartContainer", |mut cl| async move {
            cl.start_container(start).await
        })
        .map(|_| ())
        .unwrap_err();
    assert!(err.message().contains("Unix socket"), "{err:?}");
    let pod_dir = c
        .dir
        .path()
        .join("husk-shim")
        .join(NAMESPACE)
        .join(format!("{pod}.pod"));
    let entries: Vec<_> = std::fs::read_dir(&pod_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    // (a's entry went when its task was deleted: the CRI deletes the task
    // of a container that exited.)
    assert!(entries.is_empty(), "entries left: {entries:?}");
    c.remove_container(&bad);
    // A container that never started is removed with its pod.
    let never = c.create(&pod, &config, "never", &["/bin/true"], vec![]);
    c.remove_container(&a);
    c.remove_container(&never);
    c.remove_pod(&pod);
    c.assert_nothing_left();
}

#[test]
fn a_pod_containers_limits_apply_in_its_vm_and_an_oom_kill_is_reported() {
    let c = Containerd::start();
    let config = c.pod_config("limits");
    let pod = c.run_pod(&config, "husk");
    let limit = 32 << 20;
    let limited = || {
        Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        })
    };
    let calm = c.create_with(
        &pod,
        &config,
        "calm",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done",
        ],
        vec![],
        cri::NamespaceMode::Container,
        limited(),
    );
    c.start_container(&calm);
    // The container's own cgroup in the guest, seen through its cgroup
    // namespace as runc's would be.
    let (code, out, err) = c.exec_sync(
        &calm,
        &["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
        60,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{limit}\n50000 100000\n"));
    // Its execs count against it: they join its cgroup (the root of its
    // cgroup namespace).
    let (_, cgroup, _) = c.exec_sync(&calm, &["cat", "/proc/self/cgroup"], 60);
    assert_eq!(cgroup, "0::/\n");
    // Its stats are its own cgroup's in the guest (its limit, not the VM's).
    let metrics = c.ctr(&["task", "metrics", &calm]);
    assert!(metrics.contains(&limit.to_string()), "{metrics}");
    // A probe's timeout is honoured: the exec is killed, the call returns.
    let began = Instant::now();
    let req = cri::ExecSyncRequest {
        container_id: calm.clone(),
        cmd: vec!["sleep".into(), "60".into()],
        timeout: 2,
    };
    let timed_out = c.try_call("ExecSync", |mut cl| async move { cl.exec_sync(req).await });
    assert!(
        began.elapsed() < Duration::from_secs(40),
        "ExecSync's timeout of 2 s took {:?}: {timed_out:?}",
        began.elapsed()
    );
    assert!(timed_out.is_err(), "{timed_out:?}");
    // A container that outgrows its limit is killed by the guest's OOM
    // killer and reported as the CRI reports it under runc.
    let hog = c.create_with(
        &pod,
        &config,
        "hog",
        &["tail", "/dev/zero"],
        vec![],
        cri::NamespaceMode::Container,
        limited(),
    );
    c.start_container(&hog);
    let status = c.wait_exited(&hog);
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}"
    );
    // The pod and its other container live on.
    let (code, _, _) = c.exec_sync(&calm, &["true"], 60);
    assert_eq!(code, 0);
    // A pod whose cgroup the kubelet limited (containerd 1.6 passes no pod
    // sizing annotations) gets a VM of that size, less what the VMM takes.
    /// Removes the test's pod cgroup at the end, failed or not.
    struct PodCgroup(&'static std::path::Path);
    impl Drop for PodCgroup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let pod_cgroup = PodCgroup(std::path::Path::new("/sys/fs/cgroup/husk-e2e-pod"));
    std::fs::create_dir(pod_cgroup.0).unwrap();
    let big = {
        std::fs::write(pod_cgroup.0.join("memory.max"), format!("{}", 400u64 << 20)).unwrap();
        let mut big_config = c.pod_config("big");
        big_config.linux.as_mut().unwrap().cgroup_parent = "/husk-e2e-pod".into();
        let big_pod = c.run_pod(&big_config, "husk");
        let ctr = c.create(
            &big_pod,
            &big_config,
            "main",
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done",
            ],
            vec![],
        );
        c.start_container(&ctr);
        let (_, meminfo, _) = c.exec_sync(&ctr, &["grep", "MemTotal", "/proc/meminfo"], 60);
        c.stop_container(&ctr, 2);
        c.wait_exited(&ctr);
        c.remove_container(&ctr);
        c.remove_pod(&big_pod);
        meminfo
    };
    drop(pod_cgroup);
    let kib: u64 = big
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (300 << 10..=368 << 10).contains(&kib),
        "a pod VM of 400 - 32 MiB: {big}"
    );
    c.remove_container(&hog);
    c.stop_container(&calm, 10);
    c.wait_exited(&calm);
    c.remove_container(&calm);
    c.remove_pod(&pod);
    c.assert_nothing_left();
}

/// Pods started at once.
const PARALLEL_PODS: usize = 10;

#[test]
fn ten_pods_start_in_parallel_each_in_its_own_vm_and_leave_nothing() {
    let c = Containerd::start();
    let pods: Vec<(String, cri::PodSandboxConfig, String)> = std::thread::scope(|s| {
        let started: Vec<_> = (0..PARALLEL_PODS)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    let name = format!("p{i}");
                    let config = c.pod_config(&name);
                    let pod = c.run_pod(&config, "husk");
                    let ctr = c.create(
                        &pod,
                        &config,
                        "main",
                        &["sh", "-c", &format!("echo pod {i} up; hostname")],
                        vec![],
                    );
                    c.start_container(&ctr);
                    (pod, config, ctr)
                })
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (_, config, ctr)) in pods.iter().enumerate() {
        let status = c.wait_exited(ctr);
        assert_eq!(status.exit_code, 0, "pod {i}: {status:?}");
        let name = &config.metadata.as_ref().unwrap().name;
        assert_eq!(
            c.log_lines(name, "main"),
            vec![format!("pod {i} up"), name.clone()],
            "pod {i}"
        );
    }
    let ids: Vec<&str> = pods.iter().map(|(p, _, _)| p.as_str()).collect();
    let vmms = pod_vmms(&c, &ids);
    assert_eq!(vmms.len(), PARALLEL_PODS, "a VM per pod: {vmms:#?}");
    std::thread::scope(|s| {
        for (pod, _, ctr) in &pods {
            let c = &c;
            s.spawn(move || {
                c.remove_container(ctr);
                c.remove_pod(pod);
            });
        }
    });
    c.assert_nothing_left();
}
