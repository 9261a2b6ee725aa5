//! The container's own seccomp profile (`linux.seccomp`), compiled on the
//! host into a classic BPF filter that husk-init loads into the container
//! process inside the guest (and into every exec), where runc would load it
//! on the host. Compiling here means a profile husk cannot honour fails
//! `create` with a message, before any VM starts.
//!
//! Why not a crate: `seccompiler` (rust-vmm) compiles filters with one match
//! action for every rule, and libseccomp is a C library the static guest
//! init would have to carry; OCI profiles mix actions and errno values per
//! rule (podman's and docker's defaults return `EPERM` for most calls and
//! `ENOSYS` for `clone3`). husk's VMM filters, which fit seccompiler's
//! shape, are another matter.
//!
//! Semantics, as runc over libseccomp gives them:
//! - the filter is for x86_64, the only ABI the guest kernel runs (it is
//!   built without IA-32 and x32 emulation); a call from any other
//!   architecture, or with the x32 bit, kills the thread (libseccomp's
//!   "bad architecture" action). `architectures` is accepted and needs no
//!   more than that.
//! - names this architecture does not have are skipped (runc does the
//!   same); an empty profile still installs a filter.
//! - the `args` of one entry are ANDed, unless an index appears twice, in
//!   which case each is a rule of its own (ORed), as runc does; entries for
//!   the same call are tried in the profile's order, conditional ones
//!   before the first unconditional one, then the default action.
//! - `SCMP_CMP_MASKED_EQ` takes the mask in `value` and the datum in
//!   `valueTwo`; comparisons are on all 64 bits.
//! - `errnoRet` (and `defaultErrnoRet`) defaults to `EPERM`; it is refused
//!   on actions other than ERRNO and TRACE, and above 65535.
//! - `SCMP_ACT_NOTIFY` and `listenerPath` are refused: the container's
//!   system calls happen in the guest kernel, out of reach of a host
//!   listener. `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` only means something
//!   with a listener and is ignored.

pub mod bpf;
pub mod syscalls;

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use crate::agent_proto::{SeccompProgram, SockFilter};
use bpf::{Asm, Label, ALU_AND_K, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K};

/// `AUDIT_ARCH_X86_64` (`linux/audit.h`).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set in the numbers of x32 system calls (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `SECCOMP_RET_KILL_THREAD`: libseccomp's action for a foreign architecture.
pub const RET_KILL_THREAD: u32 = 0;
/// `SECCOMP_FILTER_FLAG_*` (`linux/seccomp.h`).
pub const FLAG_TSYNC: u32 = 1;
pub const FLAG_LOG: u32 = 2;
pub const FLAG_SPEC_ALLOW: u32 = 4;
/// The largest `errnoRet` (the 16 data bits of a seccomp verdict).
pub const MAX_ERRNO_RET: u32 = 0xffff;

/// Actions, operators, architectures and flags as `husk features` lists them.
pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
pub const ARCHS: &[&str] = &["SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"];
pub const KNOWN_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];
/// Flags that reach the kernel (WAIT_KILLABLE_RECV needs a listener).
pub const SUPPORTED_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_TSYNC",
];

/// A profile husk cannot load, and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "linux.seccomp: {what} asks for seccomp user notification, which husk does not \
         support: the container's system calls are made in its VM's kernel, out of reach of \
         a listener on the host (remove listenerPath and SCMP_ACT_NOTIFY)"
    )]
    Notify { what: String },
    #[error(
        "linux.seccomp: {what}: errnoRet is only meaningful with SCMP_ACT_ERRNO or \
         SCMP_ACT_TRACE, not {action}"
    )]
    ErrnoAction { what: String, action: String },
    #[error("linux.seccomp: {what}: errnoRet {value} is above {MAX_ERRNO_RET}")]
    ErrnoRange { what: String, value: u32 },
    #[error(
        "linux.seccomp: syscall {name}: argument index {index} is out of range (a system call \
         has arguments 0 to 5)"
    )]
    ArgIndex { name: String, index: usize },
    #[error("linux.seccomp: the profile compiles to {0} (list fewer calls or conditions)")]
    TooLong(#[from] bpf::TooLong),
}

/// What `action` (with `errno_ret`) returns from the filter.
fn verdict(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    what: impl Fn() -> String,
) -> Result<u32, SeccompError> {
    match action {
        LinuxSeccompAction::ScmpActNotify => return Err(SeccompError::Notify { what: what() }),
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace => {
            if let Some(value) = errno_ret.filter(|v| *v > MAX_ERRNO_RET) {
                return Err(SeccompError::ErrnoRange {
                    what: what(),
                    value,
                });
            }
        }
        _ if errno_ret.is_some() => {
            return Err(SeccompError::ErrnoAction {
                what: what(),
                action: action.to_string(),
            })
        }
        _ => {}
    }
    // oci-spec's numbers are the kernel's SECCOMP_RET_* (EPERM when no
    // errno is given).
    Ok(action.as_u32(errno_ret))
}

/// One condition on a 64-bit argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    index: u32,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: u64,
}

/// The calls of one number: conditional rules (conditions ANDed) with
/// their verdicts in order, and the verdict when none matches.
#[derive(Debug, Default)]
struct Call {
    rules: Vec<(Vec<Cond>, u32)>,
    unconditional: Option<u32>,
}

/// The rules of one profile entry: one with every condition, or one per
/// condition when an index repeats (runc's reading).
fn rules_of(name: &str, args: &[LinuxSeccompArg]) -> Result<Vec<Vec<Cond>>, SeccompError> {
    let mut conds = Vec::with_capacity(args.len());
    for a in args {
        let index = u32::try_from(a.index())
            .ok()
            .filter(|i| (*i as usize) < bpf::MAX_ARGS)
            .ok_or_else(|| SeccompError::ArgIndex {
                name: name.to_owned(),
                index: a.index(),
            })?;
        conds.push(Cond {
            index,
            op: a.op(),
            value: a.value(),
            value_two: a.value_two().unwrap_or(0),
        });
    }
    let mut seen = [false; bpf::MAX_ARGS];
    let repeats = conds
        .iter()
        .any(|c| std::mem::replace(&mut seen[c.index as usize], true));
    Ok(if repeats {
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    })
}

/// Emits `cond`: falls through when it holds, jumps to `fail` when not.
fn emit_cond(asm: &mut Asm, cond: &Cond, fail: Label) {
    let high = (cond.value >> 32) as u32;
    let low = cond.value as u32; // the low half, by definition
    let (hi_off, lo_off) = (bpf::arg_high(cond.index), bpf::arg_low(cond.index));
    // Each block ends with `ja fail`; its jumps reach OK (the instruction
    // after the block) or FAIL (its last) with short offsets from the
    // instruction at `i` of an `n`-long block.
    let block = |asm: &mut Asm, body: &[(u16, Target, Target, u32)]| {
        let n = body.len() + 1;
        for (i, (code, t, f, k)) in body.iter().enumerate() {
            let off = |t: &Target| -> u8 {
                let to = match t {
                    Target::Next => i + 1,
                    Target::Ok => n,
                    Target::Fail => n - 1,
                };
                u8::try_from(to - (i + 1)).expect("blocks are a few instructions long")
            };
            asm.insn(*code, off(t), off(f), *k);
        }
        asm.jump(fail);
    };
    use Target::{Fail, Next, Ok};
    const LD: u16 = bpf::LD_W_ABS;
    match cond.op {
        LinuxSeccompOperator::ScmpCmpEq => block(
            asm,
            &[
                (LD, Next, Next, hi_off),
                (JMP_JEQ_K, Next, Fail, high),
                (LD, Next, Next, lo_off),
                (JMP_JEQ_K, Ok, Fail, low),
            ],
        ),
        LinuxSeccompOperator::ScmpCmpNe => block(
            asm,
            &[
                (LD, Next, Next, hi_off),
                (JMP_JEQ_K, Next, Ok, high),
                (LD, Next, Next, lo_off),
                (JMP_JEQ_K, Fail, Ok, low),
            ],
        ),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (dhigh, dlow) = ((cond.value_two >> 32) as u32, cond.value_two as u32);
            block(
                asm,
                &[
                    (LD, Next, Next, hi_off),
                    (ALU_AND_K, Next, Next, high),
                    (JMP_JEQ_K, Next, Fail, dhigh),
                    (LD, Next, Next, lo_off),
                    (ALU_AND_K, Next, Next, low),
                    (JMP_JEQ_K, Ok, Fail, dlow),
                ],
            )
        }
        // Greater (GT, GE): the high halves decide unless equal, then the
        // low. Less is the negation: LT of GE, LE of GT (OK and FAIL swap).
        LinuxSeccompOperator::ScmpCmpGt
        | LinuxSeccompOperator::ScmpCmpGe
        | LinuxSeccompOperator::ScmpCmpLt
        | LinuxSeccompOperator::ScmpCmpLe => {
            let (last, ok, fail) = match cond.op {
                LinuxSeccompOperator::ScmpCmpGt => (JMP_JGT_K, Ok, Fail),
                LinuxSeccompOperator::ScmpCmpGe => (JMP_JGE_K, Ok, Fail),
                LinuxSeccompOperator::ScmpCmpLt => (JMP_JGE_K, Fail, Ok),
                // LE
                _ => (JMP_JGT_K, Fail, Ok),
            };
            block(
                asm,
                &[
                    (LD, Next, Next, hi_off),
                    (JMP_JGT_K, ok, Next, high),
                    (JMP_JEQ_K, Next, fail, high),
                    (LD, Next, Next, lo_off),
                    (last, ok, fail, low),
                ],
            )
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Next,
    Ok,
    Fail,
}

/// Compiles `linux.seccomp` for x86_64. Also returns the names skipped
/// because x86_64 has no such call (for a log line).
pub fn compile(profile: &LinuxSeccomp) -> Result<(SeccompProgram, Vec<String>), SeccompError> {
    if let Some(path) = profile.listener_path() {
        return Err(SeccompError::Notify {
            what: format!("listenerPath {}", path.display()),
        });
    }
    let default = verdict(
        profile.default_action(),
        profile.default_errno_ret(),
        || "defaultAction".to_owned(),
    )?;
    let mut flags = 0;
    for f in profile.flags().as_deref().unwrap_or_default() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 0,
        };
    }
    // Calls by number, in the order the profile first names them.
    let mut order: Vec<u32> = Vec::new();
    let mut calls: BTreeMap<u32, Call> = BTreeMap::new();
    let mut skipped = Vec::new();
    for entry in profile.syscalls().as_deref().unwrap_or_default() {
        let first = entry.names().first().cloned().unwrap_or_default();
        let v = verdict(entry.action(), entry.errno_ret(), || {
            format!("syscall {first}")
        })?;
        let rules = rules_of(&first, entry.args().as_deref().unwrap_or_default())?;
        for name in entry.names() {
            let Some(nr) = syscalls::number(name) else {
                skipped.push(name.clone());
                continue;
            };
            let call = calls.entry(nr).or_insert_with(|| {
                order.push(nr);
                Call::default()
            });
            for conds in &rules {
                if conds.is_empty() {
                    call.unconditional.get_or_insert(v);
                } else {
                    call.rules.push((conds.clone(), v));
                }
            }
        }
    }
    skipped.sort();
    skipped.dedup();

    let mut asm = Asm::new();
    asm.load(bpf::ARCH_OFFSET);
    asm.insn(JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64);
    asm.ret(RET_KILL_THREAD);
    asm.load(bpf::NR_OFFSET);
    asm.insn(JMP_JGE_K, 0, 1, X32_SYSCALL_BIT);
    asm.ret(RET_KILL_THREAD);
    // Dispatch: a call with only an unconditional verdict returns it at
    // once; one with conditions jumps to its block.
    let mut blocks = Vec::new();
    for nr in &order {
        let call = &calls[nr];
        asm.insn(JMP_JEQ_K, 0, 1, *nr);
        if call.rules.is_empty() {
            asm.ret(call.unconditional.unwrap_or(default));
        } else {
            let l = asm.label();
            asm.jump(l);
            blocks.push((l, call));
        }
    }
    asm.ret(default);
    for (label, call) in blocks {
        asm.bind(label);
        for (conds, v) in &call.rules {
            let next = asm.label();
            for c in conds {
                emit_cond(&mut asm, c, next);
            }
            asm.ret(*v);
            asm.bind(next);
        }
        asm.ret(call.unconditional.unwrap_or(default));
    }
    let filter: Vec<SockFilter> = asm.finish()?;
    Ok((SeccompProgram { flags, filter }, skipped))
}

#[cfg(test)]
mod tests;
