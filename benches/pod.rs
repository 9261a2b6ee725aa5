//! Kubernetes pods through containerd's CRI, husk next to runc, side by
//! side in one run (`make bench-pod`, in the KVM test host):
//!
//! - **pod start**: `RunPodSandbox` + `CreateContainer` + `StartContainer`
//!   until the container's first line is in its CRI log, the median of
//!   `--runs` (after one pod of each handler to warm up: husk's first pod
//!   builds its template VM);
//! - **memory per idle pod**: the host's `MemAvailable` before and after
//!   `--pods` pods with one sleeping container each, divided by their
//!   number.
//!
//! Prints one JSON object (and writes it to `--json FILE`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/cri.rs"]
mod cri_harness;

use std::time::{Duration, Instant};

use cri_harness::*;

/// The handlers compared.
const HANDLERS: [&str; 2] = ["runc", "husk"];
/// How long a pod's first line may take.
const FIRST_LINE_LIMIT: Duration = Duration::from_secs(180);
/// Settling time before memory is read (page cache, lazy frees).
const SETTLE: Duration = Duration::from_secs(3);

struct Args {
    runs: usize,
    pods: usize,
    json: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        runs: 5,
        pods: 4,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--pods" => a.pods = it.next().and_then(|v| v.parse().ok()).expect("--pods N"),
            "--json" => a.json = it.next().map(Into::into),
            // cargo bench passes --bench.
            "--bench" => {}
            other => panic!("unknown argument {other} (--runs N, --pods N, --json FILE)"),
        }
    }
    a
}

/// Where a pod start's time went: `RunPodSandbox`, `CreateContainer`,
/// `StartContainer`, then the wait for the first line.
#[derive(Debug, Clone, Copy)]
struct Phases {
    run_pod: Duration,
    create: Duration,
    start: Duration,
    first_line: Duration,
}

/// One pod started until its container's first line: its time, by phase.
fn pod_start(c: &Containerd, handler: &str, name: &str) -> (Duration, Phases) {
    let began = Instant::now();
    let config = c.pod_config(name);
    let pod = c.run_pod(&config, handler);
    let t_pod = began.elapsed();
    let ctr = c.create(&pod, &config, "main", &["echo", "ready"], vec![]);
    let t_create = began.elapsed();
    c.start_container(&ctr);
    let t_start = began.elapsed();
    while !c.log_lines(name, "main").iter().any(|l| l == "ready") {
        assert!(
            began.elapsed() < FIRST_LINE_LIMIT,
            "{handler} pod {name} wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = began.elapsed();
    c.wait_exited(&ctr);
    c.remove_container(&ctr);
    c.remove_pod(&pod);
    let phases = Phases {
        run_pod: t_pod,
        create: t_create - t_pod,
        start: t_start - t_create,
        first_line: took - t_start,
    };
    (took, phases)
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemAvailable in /proc/meminfo")
}

/// Host memory (KiB) per idle pod of `handler`, `count` pods at once.
fn memory_per_pod(c: &Containerd, handler: &str, count: usize) -> u64 {
    std::thread::sleep(SETTLE);
    let before = mem_available_kib();
    let mut pods = Vec::new();
    for i in 0..count {
        let name = format!("idle-{handler}-{i}");
        let config = c.pod_config(&name);
        let pod = c.run_pod(&config, handler);
        let ctr = c.create(
            &pod,
            &config,
            "main",
            &[
                "sh",
                "-c",
                "echo up; trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done",
            ],
            vec![],
        );
        c.start_container(&ctr);
        let began = Instant::now();
        while !c.log_lines(&name, "main").iter().any(|l| l == "up") {
            assert!(began.elapsed() < FIRST_LINE_LIMIT, "{name} never came up");
            std::thread::sleep(Duration::from_millis(50));
        }
        pods.push((pod, ctr));
    }
    std::thread::sleep(SETTLE);
    let after = mem_available_kib();
    for (pod, ctr) in &pods {
        c.stop_container(ctr, 2);
        c.remove_container(ctr);
        c.remove_pod(pod);
    }
    before.saturating_sub(after) / u64::try_from(count.max(1)).unwrap_or(1)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let c = Containerd::start();
    let mut results = serde_json::Map::new();
    for handler in HANDLERS {
        pod_start(&c, handler, &format!("warm-{handler}"));
        let (times, phases): (Vec<Duration>, Vec<Phases>) = (0..a.runs)
            .map(|i| pod_start(&c, handler, &format!("{handler}-{i}")))
            .unzip();
        let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
        let med = median(times).as_secs_f64() * 1e3;
        let phase =
            |f: fn(&Phases) -> Duration| median(phases.iter().map(f).collect()).as_secs_f64() * 1e3;
        let by_phase = serde_json::json!({
            "run_pod_sandbox_ms": phase(|p| p.run_pod),
            "create_container_ms": phase(|p| p.create),
            "start_container_ms": phase(|p| p.start),
            "to_first_line_ms": phase(|p| p.first_line),
        });
        eprintln!("pod: {handler}: pod start median {med:.0} ms over {ms:.0?}; phases (medians) {by_phase}");
        let kib = memory_per_pod(&c, handler, a.pods);
        eprintln!(
            "pod: {handler}: {:.1} MiB of host memory per idle pod ({} pods)",
            kib as f64 / 1024.0,
            a.pods
        );
        results.insert(
            handler.into(),
            serde_json::json!({
                "pod_start_ms": ms,
                "pod_start_median_ms": med,
                "phases_median": by_phase,
                "memory_per_idle_pod_mib": kib as f64 / 1024.0,
            }),
        );
    }
    let husk = results["husk"]["pod_start_median_ms"]
        .as_f64()
        .unwrap_or(0.0);
    let runc = results["runc"]["pod_start_median_ms"]
        .as_f64()
        .unwrap_or(1.0);
    results.insert("husk_over_runc_pod_start".into(), (husk / runc).into());
    let out = serde_json::Value::Object(results);
    println!("{out:#}");
    if let Some(path) = a.json {
        std::fs::write(&path, format!("{out:#}\n")).expect("writing --json");
    }
    c.assert_nothing_left();
}
