//! Shared helpers of the end-to-end suites. These suites boot real guests, so
//! they need a KVM with hardware virtualization: `make test` runs them through
//! `tests/testhost/run`. Run by hand elsewhere, they fail and say why; they
//! never skip.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod census;
pub mod engines;
pub mod oci;

use husk::proto::{self, BootCommand};
use husk::rootfs::{image, initramfs};

/// Panics (fails the test) unless this process can boot guest kernels;
/// returns the test's leak census ([`census::Census`]: keep it until the
/// test's end, it checks when dropped).
pub fn require_kvm() -> census::Census {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = husk::check::virt_extension(&cpuinfo).is_some();
    let has_kvm = Path::new("/dev/kvm").exists();
    assert!(
        has_virt && has_kvm,
        "this end-to-end test boots real guests and needs /dev/kvm with vmx/svm \
         (have /dev/kvm: {has_kvm}, vmx/svm: {has_virt}); run it through the KVM test \
         host: `make test`, or `tests/testhost/run -- cargo test --test NAME`"
    );
    census::Census::begin()
}

/// The guest kernel under test.
pub fn kernel() -> PathBuf {
    let k = husk::paths::default_kernel();
    assert!(
        k.is_file(),
        "guest kernel {} missing: run `make kernel` or set HUSK_KERNEL",
        k.display()
    );
    k
}

/// The guest init under test.
pub fn init_binary() -> PathBuf {
    let init = husk::paths::default_init();
    assert!(
        init.is_file(),
        "guest init {} missing: run `make build` or set HUSK_INIT",
        init.display()
    );
    init
}

/// Path of a static busybox (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// A directory with busybox and its applet links, as a minimal rootfs.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for sub in ["etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy /bin/busybox (busybox-static)");
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::write(dir.join("etc/hostname"), "husk-guest\n").unwrap();
}

/// Files for one boot: initramfs with husk-init, ext4 rootfs image.
pub struct BootFiles {
    pub dir: tempfile::TempDir,
    pub initramfs: PathBuf,
    pub image: PathBuf,
}

pub fn boot_files() -> BootFiles {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    busybox_rootfs(&root);
    let image = dir.path().join("rootfs.ext4");
    image::build_ext4(&root, &image).unwrap();
    let initramfs = dir.path().join("initramfs.cpio");
    let init = std::fs::read(init_binary()).unwrap();
    let mut out = std::fs::File::create(&initramfs).unwrap();
    initramfs::write_archive(&mut out, &initramfs::husk_initramfs(init)).unwrap();
    BootFiles {
        dir,
        initramfs,
        image,
    }
}

/// The kernel command line that makes husk-init mount `/dev/vda` and run `args`.
pub fn guest_cmdline(args: &[&str]) -> String {
    let cmd = BootCommand {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: "/".into(),
    };
    format!(
        "console=ttyS0 reboot=k panic=-1 {}=/dev/vda {}={}",
        proto::PARAM_ROOT,
        proto::PARAM_CMD,
        proto::encode_command(&cmd)
    )
}

/// What a finished child printed and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// How long output pipes are still read after the child exited: a runtime's
/// `create` hands its stdout/stderr to the container, so they stay open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How long a child killed on expiry of its limit gets to die.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Waits for `child` at most `limit`; kills it and fails the test on expiry.
/// Output is whatever arrived until shortly after the child exited.
pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Finished {
    use std::sync::{Arc, Mutex};
    let start = Instant::now();
    let pump = |mut pipe: Box<dyn std::io::Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        (buf, done)
    };
    let (out, out_done) = pump(Box::new(child.stdout.take().unwrap()));
    let (err, err_done) = pump(Box::new(child.stderr.take().unwrap()));
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            // A process stuck in the kernel does not die even of SIGKILL:
            // fail the test rather than hang it.
            let killed = Instant::now();
            let reaped = loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break true,
                    Ok(None) if killed.elapsed() > KILL_WAIT => break false,
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            panic!(
                "{what} did not finish within {limit:?}{}; output so far:\n{}\n{}",
                if reaped {
                    String::new()
                } else {
                    format!(
                        " and was still there {KILL_WAIT:?} after SIGKILL (stuck in the kernel?)"
                    )
                },
                text(&out),
                text(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = Instant::now();
    while exited.elapsed() < DRAIN_AFTER_EXIT
        && !(out_done.load(std::sync::atomic::Ordering::SeqCst)
            && err_done.load(std::sync::atomic::Ordering::SeqCst))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    Finished {
        status,
        stdout: text(&out),
        stderr: text(&err),
        elapsed: start.elapsed(),
    }
}

/// Boots our kernel under QEMU `-M microvm` with the files and command line,
/// the way husk's own VMM will: serial console on stdout, root on virtio-blk,
/// init's exit port wired to QEMU's isa-debug-exit.
pub fn qemu_microvm(files: &BootFiles, cmdline: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,acpi=off,rtc=off,x-option-roms=off"])
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel())
        .arg("-initrd")
        .arg(&files.initramfs)
        .args(["-append", cmdline])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none",
            files.image.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args([
            "-device",
            &format!("isa-debug-exit,iobase={:#x},iosize=4", proto::EXIT_PORT),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// How long a service in a just-started container may take to answer.
pub const SERVICE_WAIT: Duration = Duration::from_secs(90);

/// Fetches `url` from the namespace `ns` (None: the test host's) with
/// Python, retrying until it answers or [`SERVICE_WAIT`] passes.
pub fn fetch(ns: Option<&str>, url: &str) -> String {
    let script = format!(
        "import urllib.request,sys\n\
         print(urllib.request.urlopen('{url}', timeout=5).read().decode(), end='')"
    );
    let start = Instant::now();
    loop {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("python3");
                c.args(["-c", &script]);
                c
            }
        };
        let out = cmd.output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < SERVICE_WAIT,
            "{url} did not answer from {ns:?} within {SERVICE_WAIT:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Builds `tests/data/seccomp_probe.c` as a static program at `dir/probe`
/// (gcc, which scripts/install-deps.sh installs) and returns its path.
pub fn seccomp_probe(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seccomp_probe.c");
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc (scripts/install-deps.sh installs it)");
    assert!(st.success(), "building {}", src.display());
    out
}

/// Builds `tests/data/hostile_guest.c` (a guest kernel that attacks the
/// VMM's devices, then resets) as a freestanding ELF at `dir/hostile` and
/// returns its path.
pub fn hostile_kernel(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("hostile");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let st = Command::new("gcc")
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pic",
            "-no-pie",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-O1",
            "-Wl,--build-id=none",
            "-Wl,-z,noexecstack",
        ])
        .arg(format!(
            "-Wl,-T,{}",
            data.join("hostile_guest.ld").display()
        ))
        .arg("-o")
        .arg(&out)
        .arg(data.join("hostile_guest.c"))
        .status()
        .expect("gcc (scripts/install-deps.sh installs it)");
    assert!(st.success(), "building the hostile guest kernel");
    out
}

/// The value of the line starting with `key` in a `/proc/PID/status` (or
/// `fdinfo`) text, trimmed; empty when there is none.
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or_else(String::new, |v| v.trim().to_owned())
}

/// The lines of `text`, each with its runs of blanks made one space (how a
/// `uid_map` or a `status` line compares whatever its padding).
pub fn spaced_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
