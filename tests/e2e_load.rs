//! End to end, in the KVM test host: husk under load. Many containers
//! created, started, exec'd into and deleted at once, and a soak of
//! sequential create/start/delete cycles; every exit code checked, the leak
//! census at the end, and host memory back to where it started.
//!
//! The sizes come from the environment so that `make soak` can run the long
//! version (docs/reliability.md): `HUSK_LOAD_CONTAINERS` (default
//! [`DEFAULT_CONTAINERS`]) and `HUSK_SOAK_CYCLES` (default
//! [`DEFAULT_CYCLES`]). Each test prints its figures (wall time, peak host
//! memory, latency spread) on stderr, prefixed `load:`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oci::*;

/// Containers at once under `make test`.
const DEFAULT_CONTAINERS: usize = 50;
/// Sequential cycles under `make test` (`make soak`: 1000).
const DEFAULT_CYCLES: usize = 30;
/// How many containers are being created at the same moment (an engine
/// starting a batch).
const CREATE_JOBS: usize = 8;
/// Host memory in use may be this much above its starting point once
/// everything is deleted (page cache the kernel keeps, allocator slack);
/// a leaked VM costs more than this in a few cycles.
const MEMORY_SLACK_KIB: u64 = 48 * 1024;
/// How often the memory sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Host memory in use, KiB: MemTotal - MemAvailable.
fn memory_used_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{name} not in /proc/meminfo"))
    };
    field("MemTotal:") - field("MemAvailable:")
}

/// Memory in use after the kernel dropped clean caches (so that what is
/// compared is what processes and tmpfs hold).
fn settled_memory_kib() -> u64 {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    std::thread::sleep(Duration::from_millis(500));
    memory_used_kib()
}

/// Samples host memory in use until dropped; the peak is kept.
struct PeakMemory {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakMemory {
    fn start() -> PeakMemory {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(memory_used_kib()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(memory_used_kib(), Ordering::SeqCst);
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        PeakMemory {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

/// Median, 90th percentile and maximum, in ms.
fn spread(mut samples: Vec<Duration>) -> (u128, u128, u128) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_millis()
    };
    (at(0.5), at(0.9), samples.last().unwrap().as_millis())
}

/// Runs `work` over `items` on `jobs` threads; results in item order.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    jobs: usize,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let queue = std::sync::Mutex::new(items.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let next = queue.lock().unwrap().pop();
                let Some((i, item)) = next else { return };
                let r = work(item);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// A failure of one step of one container, for the summary.
fn check(done: &common::Finished, what: String, want: Option<i32>) -> Option<String> {
    (done.status.code() != want).then(|| {
        format!(
            "{what}: exit {:?}, wanted {want:?}: {}",
            done.status.code(),
            done.stderr.lines().last().unwrap_or("")
        )
    })
}

#[test]
fn many_containers_at_once_run_exec_and_go() {
    let env = Env::new();
    let n = count_from_env("HUSK_LOAD_CONTAINERS", DEFAULT_CONTAINERS);
    let bundle = env.bundle("b", &["sleep", "100000"], |_| {});
    // A first container makes the template and image: the load measures
    // the steady state.
    let warm = env.husk(&["run", "-d", "--bundle", b(&bundle), "warm"]);
    assert!(warm.status.success(), "{}", warm.stderr);
    assert!(env.husk(&["delete", "--force", "warm"]).status.success());
    let baseline = settled_memory_kib();
    let peak = PeakMemory::start();
    let began = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let created = in_parallel(ids.clone(), CREATE_JOBS, |id| {
        let t = Instant::now();
        let done = env.husk(&["create", "--bundle", b(&bundle), &id]);
        (check(&done, format!("create {id}"), Some(0)), t.elapsed())
    });
    let create_s = began.elapsed();
    let mut failures: Vec<String> = created.iter().filter_map(|(f, _)| f.clone()).collect();
    let create_times: Vec<Duration> = created.iter().map(|(_, t)| *t).collect();
    let steps = in_parallel(ids.clone(), CREATE_JOBS, |id| {
        let mut bad = Vec::new();
        bad.extend(check(
            &env.husk(&["start", &id]),
            format!("start {id}"),
            Some(0),
        ));
        let exec = env.husk(&["exec", &id, "sh", "-c", &format!("echo {id}; exit 3")]);
        bad.extend(check(&exec, format!("exec {id}"), Some(3)));
        if exec.status.code() == Some(3) && exec.stdout.trim() != id {
            bad.push(format!("exec {id} printed {:?}", exec.stdout));
        }
        bad
    });
    failures.extend(steps.into_iter().flatten());
    let all_running = began.elapsed();
    let used_running = memory_used_kib();
    let deleted = in_parallel(ids, CREATE_JOBS, |id| {
        let done = env.husk(&["delete", "--force", &id]);
        check(&done, format!("delete --force {id}"), Some(0))
    });
    failures.extend(deleted.into_iter().flatten());
    let total = began.elapsed();
    let peak_kib = peak.finish();
    let list = env.husk(&["list", "-q"]);
    assert_eq!(list.stdout.trim(), "", "containers left");
    let after = settled_memory_kib();
    let (p50, p90, max) = spread(create_times);
    eprintln!(
        "load: {n} containers, {CREATE_JOBS} at a time: created in {:.1} s, all started and \
         exec'd at {:.1} s, all deleted at {:.1} s; create latency p50 {p50} ms, p90 {p90} ms, \
         max {max} ms; host memory in use: {} MiB before, {} MiB with all running, peak {} MiB, \
         {} MiB after ({:+} MiB); {} wrong exit codes",
        create_s.as_secs_f64(),
        all_running.as_secs_f64(),
        total.as_secs_f64(),
        baseline / 1024,
        used_running / 1024,
        peak_kib / 1024,
        after / 1024,
        (after as i64 - baseline as i64) / 1024,
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        after <= baseline + MEMORY_SLACK_KIB,
        "host memory did not come back: {} KiB before, {} KiB after",
        baseline,
        after
    );
}

#[test]
fn a_soak_of_sequential_cycles_keeps_exit_codes_and_memory() {
    let env = Env::new();
    let cycles = count_from_env("HUSK_SOAK_CYCLES", DEFAULT_CYCLES);
    let bundle = env.bundle("b", &["sh", "-c", "exit 7"], |_| {});
    let warm = env.husk(&["run", "--bundle", b(&bundle), "warm"]);
    assert_eq!(warm.status.code(), Some(7), "{}", warm.stderr);
    env.assert_gone("warm");
    let baseline = settled_memory_kib();
    let peak = PeakMemory::start();
    let began = Instant::now();
    let mut failures = Vec::new();
    let mut times = Vec::with_capacity(cycles);
    for i in 0..cycles {
        let id = format!("s{i}");
        let t = Instant::now();
        let created = env.husk(&["create", "--bundle", b(&bundle), &id]);
        failures.extend(check(&created, format!("create {id}"), Some(0)));
        // `start` returns at once; the process's status is the VMM's, read
        // back from state once it stopped.
        failures.extend(check(
            &env.husk(&["start", &id]),
            format!("start {id}"),
            Some(0),
        ));
        let stopped = (0..600).any(|_| {
            let st = env.husk(&["state", &id]);
            if st.stdout.contains("\"stopped\"") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
            false
        });
        if !stopped {
            failures.push(format!("{id} never stopped"));
        }
        let exit = husk::runtime::state::State::load(&env.root(), &id)
            .ok()
            .and_then(|st| st.exit_status);
        if exit != Some(husk::runtime::state::ExitStatus::Code(7)) {
            failures.push(format!("{id}: recorded exit {exit:?}, wanted code 7"));
        }
        failures.extend(check(
            &env.husk(&["delete", &id]),
            format!("delete {id}"),
            Some(0),
        ));
        times.push(t.elapsed());
        if !failures.is_empty() {
            break;
        }
    }
    let total = began.elapsed();
    let peak_kib = peak.finish();
    let after = settled_memory_kib();
    let (p50, p90, max) = spread(times.clone());
    eprintln!(
        "load: {} create/start/delete cycles in {:.1} s; cycle p50 {p50} ms, p90 {p90} ms, \
         max {max} ms; host memory in use: {} MiB before, peak {} MiB, {} MiB after ({:+} MiB); \
         {} failures",
        times.len(),
        total.as_secs_f64(),
        baseline / 1024,
        peak_kib / 1024,
        after / 1024,
        (after as i64 - baseline as i64) / 1024,
        failures.len(),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        after <= baseline + MEMORY_SLACK_KIB,
        "host memory did not come back: {baseline} KiB before, {after} KiB after"
    );
}
