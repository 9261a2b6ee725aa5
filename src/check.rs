//! `husk check`: can this host run husk microVMs, and if not, why not.
//!
//! Each [`Check`] reports a [`Finding`]; the host is usable only when every
//! finding is `Ok`. The checks run in order and stop at the first failure that
//! makes later ones meaningless (no `/dev/kvm` -> no point opening it).

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::io::{FromRawFd as _, IntoRawFd as _};
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, VcpuExit};

/// Path of the KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The only KVM API version there has ever been (`KVM_GET_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    /// What was checked, and what was found.
    pub what: String,
    /// For a failure: what to do about it.
    pub advice: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Finding {
            ok: true,
            what: what.into(),
            advice: None,
        }
    }
    fn fail(what: impl Into<String>, advice: impl Into<String>) -> Self {
        Finding {
            ok: false,
            what: what.into(),
            advice: Some(advice.into()),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when a husk guest can boot on this host.
    pub fn usable(&self) -> bool {
        !self.findings.is_empty() && self.findings.iter().all(|f| f.ok)
    }

    /// The report as text, one finding per line, advice indented below.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let mut what = f.what.lines();
            out.push_str(if f.ok { "ok    " } else { "FAIL  " });
            out.push_str(what.next().unwrap_or(""));
            out.push('\n');
            for line in what {
                out.push_str("      ");
                out.push_str(line);
                out.push('\n');
            }
            if let Some(advice) = &f.advice {
                for line in advice.lines() {
                    out.push_str("      -> ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out.push_str(if self.usable() {
            "husk check: this host can run husk microVMs\n"
        } else {
            "husk check: this host cannot run husk microVMs (see FAIL above)\n"
        });
        out
    }
}

/// What the checks look at; the real host in production, fixed values in
/// tests.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub kvm_device: PathBuf,
    pub cpuinfo: String,
    pub kernel: PathBuf,
    pub init: PathBuf,
}

impl HostFacts {
    /// Reads the facts of the running host.
    pub fn probe() -> Self {
        HostFacts {
            kvm_device: PathBuf::from(KVM_DEVICE),
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            kernel: crate::paths::default_kernel(),
            init: crate::paths::default_init(),
        }
    }
}

/// Which hardware virtualization extension the CPU flags show.
pub fn virt_extension(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|(_, v)| v)
                .unwrap_or("")
                .split_whitespace()
        });
    let mut found = None;
    for flag in flags {
        match flag {
            "vmx" => found = Some("vmx (Intel VT-x)"),
            "svm" => found = Some("svm (AMD-V)"),
            _ => {}
        }
    }
    found
}

/// Runs every check.
pub fn run(facts: &HostFacts) -> Report {
    let mut report = Report::default();
    let f = &mut report.findings;

    // 1. The device node.
    match std::fs::metadata(&facts.kvm_device) {
        Ok(meta) if meta.file_type().is_char_device() => f.push(Finding::ok(format!(
            "{} exists",
            facts.kvm_device.display()
        ))),
        Ok(_) => {
            f.push(Finding::fail(
                format!(
                    "{} exists but is not a character device",
                    facts.kvm_device.display()
                ),
                "something replaced the KVM device node; remove it and reload the kvm module",
            ));
            return report;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            f.push(Finding::fail(
                format!("{} does not exist", facts.kvm_device.display()),
                "load the KVM module (`modprobe kvm_intel` or `modprobe kvm_amd`) and enable\n\
                 virtualization (VT-x/AMD-V) in the firmware; inside a VM, enable nested\n\
                 virtualization on its host",
            ));
            return report;
        }
        Err(e) => {
            f.push(Finding::fail(
                format!("{}: {e}", facts.kvm_device.display()),
                "check the device node and its permissions",
            ));
            return report;
        }
    }

    // 2. Permission to use it.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&facts.kvm_device)
    {
        Ok(file) => {
            f.push(Finding::ok(format!(
                "{} opens read-write",
                facts.kvm_device.display()
            )));
            file
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            f.push(Finding::fail(
                format!(
                    "no permission to open {} read-write",
                    facts.kvm_device.display()
                ),
                "run husk as root, or add this user to the group owning the device\n\
                 (usually `kvm`: `usermod -aG kvm $USER`, then log in again)",
            ));
            return report;
        }
        Err(e) => {
            f.push(Finding::fail(
                format!("cannot open {}: {e}", facts.kvm_device.display()),
                "check that the kvm module is loaded and working (dmesg)",
            ));
            return report;
        }
    };
    // SAFETY: the fd was just opened on the KVM device and ownership moves
    // into `Kvm`, which closes it.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };

    // 3. API version and the capabilities the VMM relies on.
    let api = kvm.get_api_version();
    if api != KVM_API_VERSION {
        f.push(Finding::fail(
            format!("KVM API version {api}, expected {KVM_API_VERSION}"),
            "this kernel's KVM is not supported",
        ));
        return report;
    }
    let needed = [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory regions"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cap, _)| !kvm.check_extension(*cap))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        f.push(Finding::ok(format!(
            "KVM API {api} with {}",
            needed
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    } else {
        f.push(Finding::fail(
            format!("KVM lacks {}", missing.join(", ")),
            "use a host kernel with a complete KVM (Linux 5.10 or newer)",
        ));
        return report;
    }

    // 4. A vCPU actually runs guest code.
    match smoke_test(&kvm) {
        Ok(()) => f.push(Finding::ok(
            "a test vCPU ran guest code and exited as expected",
        )),
        Err(e) => {
            f.push(Finding::fail(
                format!("a test vCPU did not run: {e}"),
                "KVM is present but cannot run guests here; see dmesg",
            ));
            return report;
        }
    }

    // 5. Hardware virtualization: without it, KVM may exist (nested, with
    //    instruction emulation) but a Linux guest kernel dies early.
    match virt_extension(&facts.cpuinfo) {
        Some(ext) => f.push(Finding::ok(format!(
            "CPU has hardware virtualization: {ext}"
        ))),
        None => f.push(Finding::fail(
            "CPU shows neither vmx nor svm: KVM here has no hardware virtualization,\n\
             so guest kernel code would be emulated instruction by instruction and\n\
             a Linux guest dies early (\"KVM internal error\" / emulation failure)",
            "run husk on a machine (or VM with nested virtualization) whose\n\
             /proc/cpuinfo shows vmx or svm; for development, run commands inside the\n\
             KVM test host: tests/testhost/run -- husk check",
        )),
    }

    // 6. What a boot needs besides KVM.
    f.push(file_finding(
        "guest kernel",
        &facts.kernel,
        "run `make kernel` (kernels/build.sh) or set HUSK_KERNEL",
    ));
    f.push(file_finding(
        "guest init",
        &facts.init,
        "run `make build` or set HUSK_INIT",
    ));
    report
}

fn file_finding(what: &str, path: &Path, advice: &str) -> Finding {
    if path.is_file() {
        Finding::ok(format!("{what}: {}", path.display()))
    } else {
        Finding::fail(format!("{what} not found at {}", path.display()), advice)
    }
}

/// Guest physical address of the smoke test's code page.
const SMOKE_CODE_ADDR: u64 = 0x1000;
/// Size of the smoke test's guest memory.
const SMOKE_MEM_SIZE: usize = 0x1000;
/// Port and value the smoke test's guest writes.
const SMOKE_PORT: u16 = 0x3f8;
const SMOKE_VALUE: u8 = 0x2a;

/// Boots a one-page real-mode guest that writes a byte to a port and halts.
fn smoke_test(kvm: &Kvm) -> Result<(), String> {
    #[rustfmt::skip]
    let code: [u8; 6] = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, SMOKE_VALUE, // mov al, 0x2a
        0xee,              // out dx, al
    ];
    let mut program = code.to_vec();
    program.push(0xf4); // hlt

    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: an anonymous private mapping; the result is checked below and
    // unmapped by `Mapping`'s drop.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SMOKE_MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let mapping = Mapping(addr);
    // SAFETY: the mapping is SMOKE_MEM_SIZE bytes and the program is smaller.
    unsafe {
        std::ptr::copy_nonoverlapping(program.as_ptr(), addr.cast::<u8>(), program.len());
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: SMOKE_CODE_ADDR,
        memory_size: SMOKE_MEM_SIZE as u64,
        userspace_addr: addr as u64,
        flags: 0,
    };
    // SAFETY: the region points at a live mapping of the stated size that
    // outlives the VM (the VM is dropped before `mapping`).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = SMOKE_CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let mut saw_out = false;
    for _ in 0..4 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(port, data) if port == SMOKE_PORT && data == [SMOKE_VALUE] => {
                saw_out = true
            }
            VcpuExit::Hlt if saw_out => {
                drop(vcpu);
                drop(vm);
                drop(mapping);
                return Ok(());
            }
            other => return Err(format!("unexpected vCPU exit {other:?}")),
        }
    }
    Err("the vCPU did not halt".into())
}

/// Unmaps the smoke test's memory.
struct Mapping(*mut libc::c_void);

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: self.0 came from a successful mmap of SMOKE_MEM_SIZE bytes.
        unsafe { libc::munmap(self.0, SMOKE_MEM_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dev: &Path) -> HostFacts {
        HostFacts {
            kvm_device: dev.to_owned(),
            cpuinfo: "flags\t\t: fpu sse2\n".into(),
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            init: PathBuf::from("/nonexistent/husk-init"),
        }
    }

    #[test]
    fn finds_vmx_or_svm_only_in_the_flags_line() {
        assert_eq!(
            virt_extension("flags : fpu vmx sse\n"),
            Some("vmx (Intel VT-x)")
        );
        assert_eq!(virt_extension("flags\t: fpu svm\n"), Some("svm (AMD-V)"));
        assert_eq!(
            virt_extension("model name : svm-like cpu\nflags : fpu\n"),
            None
        );
        assert_eq!(virt_extension(""), None);
    }

    #[test]
    fn a_missing_device_fails_first_and_says_what_to_do() {
        let report = run(&facts(Path::new("/nonexistent/kvm")));
        assert!(!report.usable());
        assert_eq!(report.findings.len(), 1);
        let text = report.render();
        assert!(
            text.contains("FAIL  /nonexistent/kvm does not exist"),
            "{text}"
        );
        assert!(text.contains("modprobe kvm_intel"), "{text}");
    }

    #[test]
    fn a_regular_file_is_not_a_kvm_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let report = run(&facts(file.path()));
        assert!(!report.usable());
        assert!(report.render().contains("not a character device"));
    }

    #[test]
    fn empty_report_is_not_usable() {
        assert!(!Report::default().usable());
        let r = Report {
            findings: vec![Finding::ok("a"), Finding::fail("b", "do c")],
        };
        assert!(!r.usable());
        assert!(r.render().contains("      -> do c"));
    }
}
