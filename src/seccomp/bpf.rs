//! Classic BPF for seccomp: the few instructions husk's filters use, an
//! assembler whose long jumps go through labels, and an interpreter that
//! runs a program the way the kernel does (tests and fuzzing check compiled
//! profiles with it).
//!
//! Conditional jumps in classic BPF reach at most 255 instructions ahead;
//! the assembler only emits them over a few instructions and reaches
//! anything further with `BPF_JA`, whose offset is 32 bits.

use crate::agent_proto::{SockFilter, BPF_MAXINSNS};

// Opcodes (`linux/bpf_common.h`): class | size | mode, or class | op | src.
/// `BPF_LD | BPF_W | BPF_ABS`: A = 32-bit word of `seccomp_data` at k.
pub const LD_W_ABS: u16 = 0x20;
/// `BPF_ALU | BPF_AND | BPF_K`: A &= k.
pub const ALU_AND_K: u16 = 0x54;
/// `BPF_JMP | BPF_JA`: skip k instructions.
pub const JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
pub const JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGT | BPF_K` (unsigned).
pub const JMP_JGT_K: u16 = 0x25;
/// `BPF_JMP | BPF_JGE | BPF_K` (unsigned).
pub const JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`: the filter's verdict is k.
pub const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data` (`linux/seccomp.h`).
pub const NR_OFFSET: u32 = 0;
pub const ARCH_OFFSET: u32 = 4;
/// `args[i]` is at 16 + 8 i, its low half first (little-endian).
pub const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
pub const fn arg_high(i: u32) -> u32 {
    16 + 8 * i + 4
}
/// Syscall arguments in `seccomp_data`.
pub const MAX_ARGS: usize = 6;

/// A place in the program a `BPF_JA` can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// A program being written: instructions, then labels resolved at the end.
#[derive(Debug, Default)]
pub struct Asm {
    code: Vec<SockFilter>,
    /// Where each label is bound.
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every `BPF_JA` to a label.
    jumps: Vec<(usize, Label)>,
}

/// A program longer than the kernel takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} BPF instructions, more than the kernel's limit of {BPF_MAXINSNS}")]
pub struct TooLong {
    pub len: usize,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Instructions so far.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    pub fn insn(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.code.push(SockFilter(code, jt, jf, k));
    }

    pub fn load(&mut self, offset: u32) {
        self.insn(LD_W_ABS, 0, 0, offset);
    }

    pub fn ret(&mut self, verdict: u32) {
        self.insn(RET_K, 0, 0, verdict);
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the next instruction.
    pub fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    /// An unconditional jump to `label` (bound before or after).
    pub fn jump(&mut self, label: Label) {
        self.jumps.push((self.code.len(), label));
        self.insn(JMP_JA, 0, 0, 0);
    }

    /// The finished program: every jump resolved, at most
    /// [`BPF_MAXINSNS`] long.
    pub fn finish(mut self) -> Result<Vec<SockFilter>, TooLong> {
        if self.code.len() > BPF_MAXINSNS {
            return Err(TooLong {
                len: self.code.len(),
            });
        }
        for (at, label) in &self.jumps {
            let target = self.labels[label.0].expect("every label is bound before finish");
            assert!(target > *at, "seccomp programs only jump forward");
            // Fits: both are below BPF_MAXINSNS.
            self.code[*at].3 = u32::try_from(target - at - 1).expect("below BPF_MAXINSNS");
        }
        Ok(self.code)
    }
}

/// `struct seccomp_data`, for [`run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; MAX_ARGS],
}

impl SeccompData {
    fn word(&self, offset: u32) -> Option<u32> {
        let low = |v: u64| v as u32; // the low half, by definition
        let high = |v: u64| (v >> 32) as u32;
        Some(match offset {
            NR_OFFSET => self.nr as u32,
            ARCH_OFFSET => self.arch,
            8 => low(self.instruction_pointer),
            12 => high(self.instruction_pointer),
            16..=63 if offset.is_multiple_of(4) => {
                let arg = self.args[((offset - 16) / 8) as usize];
                if offset.is_multiple_of(8) {
                    low(arg)
                } else {
                    high(arg)
                }
            }
            _ => return None,
        })
    }
}

/// Why [`run`] stopped without a verdict (the kernel's checker refuses
/// such programs at load time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("instruction {at}: opcode {code:#x} is not one husk emits")]
    Opcode { at: usize, code: u16 },
    #[error("instruction {at}: load of offset {offset} outside seccomp_data")]
    Load { at: usize, offset: u32 },
    #[error("instruction {at}: jump past the end")]
    Jump { at: usize },
    #[error("the program ends without a return")]
    NoReturn,
}

/// Runs `program` on `data` as the kernel would: the verdict
/// (`SECCOMP_RET_*` | data).
pub fn run(program: &[SockFilter], data: &SeccompData) -> Result<u32, RunError> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    while let Some(&SockFilter(code, jt, jf, k)) = program.get(pc) {
        let next = pc + 1;
        let cond = |taken: bool| next + usize::from(if taken { jt } else { jf });
        pc = match code {
            LD_W_ABS => {
                a = data.word(k).ok_or(RunError::Load { at: pc, offset: k })?;
                next
            }
            ALU_AND_K => {
                a &= k;
                next
            }
            JMP_JA => next + k as usize,
            JMP_JEQ_K => cond(a == k),
            JMP_JGT_K => cond(a > k),
            JMP_JGE_K => cond(a >= k),
            RET_K => return Ok(k),
            _ => return Err(RunError::Opcode { at: pc, code }),
        };
        if pc > program.len() {
            return Err(RunError::Jump { at: pc });
        }
    }
    Err(RunError::NoReturn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_forward_jumps() {
        let mut asm = Asm::new();
        let end = asm.label();
        asm.load(NR_OFFSET);
        asm.insn(JMP_JEQ_K, 0, 1, 7);
        asm.jump(end);
        asm.ret(1);
        asm.bind(end);
        asm.ret(2);
        let prog = asm.finish().unwrap();
        assert_eq!(prog[2], SockFilter(JMP_JA, 0, 0, 1));
        let data = |nr| SeccompData {
            nr,
            ..Default::default()
        };
        assert_eq!(run(&prog, &data(7)), Ok(2));
        assert_eq!(run(&prog, &data(8)), Ok(1));
    }

    #[test]
    fn too_long_is_refused() {
        let mut asm = Asm::new();
        for _ in 0..=BPF_MAXINSNS {
            asm.ret(0);
        }
        assert_eq!(
            asm.finish().unwrap_err(),
            TooLong {
                len: BPF_MAXINSNS + 1
            }
        );
    }

    #[test]
    fn the_interpreter_rejects_what_the_kernel_would() {
        let d = SeccompData::default();
        assert_eq!(run(&[], &d), Err(RunError::NoReturn));
        assert_eq!(
            run(&[SockFilter(0x07, 0, 0, 0)], &d),
            Err(RunError::Opcode { at: 0, code: 0x07 })
        );
        assert_eq!(
            run(&[SockFilter(LD_W_ABS, 0, 0, 64)], &d),
            Err(RunError::Load { at: 0, offset: 64 })
        );
        assert_eq!(
            run(
                &[SockFilter(JMP_JA, 0, 0, 5), SockFilter(RET_K, 0, 0, 0)],
                &d
            ),
            Err(RunError::Jump { at: 6 })
        );
    }

    #[test]
    fn loads_read_both_halves_of_each_argument() {
        let d = SeccompData {
            nr: 1,
            arch: 2,
            instruction_pointer: 0x3_0000_0004,
            args: [0x5_0000_0006, 0, 0, 0, 0, 0x7_0000_0008],
        };
        assert_eq!(d.word(8), Some(4));
        assert_eq!(d.word(12), Some(3));
        assert_eq!(d.word(arg_low(0)), Some(6));
        assert_eq!(d.word(arg_high(0)), Some(5));
        assert_eq!(d.word(arg_low(5)), Some(8));
        assert_eq!(d.word(arg_high(5)), Some(7));
        assert_eq!(d.word(18), None);
    }
}
