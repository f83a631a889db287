//! Classic BPF (from libpcap) to one eBPF XDP program that tests every
//! expression rule in rank order. Pure.
//!
//! The generated program runs first on the interface. It stores the slot of
//! the first matching rule (or none) in `filter_expr_result` and tail-calls
//! the node program, which weighs that slot against the map-backed rules.
//! Every packet load is bounds-checked against `data_end` and a failed check
//! means "no match", as in classic BPF; division by a zero X is "no match" too.
//!
//! 802.1Q tags the kernel took out of the frame (rx VLAN offload, a Linux
//! bridge) are invisible to XDP, yet libpcap's code expects them on the wire.
//! Where the kernel can tell (the `bpf_xdp_metadata_rx_vlan_tag` kfunc, for a
//! program bound to its device), the program puts the tag back in the frame
//! for the expressions, takes it out again before the tail call, and hands
//! it to the node program, which counts the frame's wire length.

use crate::pcap::ClassicInsn;

/// One eBPF instruction, laid out as `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// A map the program refers to; the loader patches in its fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRef {
    /// `filter_expr_result`: where the match is stored.
    Result,
    /// `filter_progs`: slot 0 is the node program.
    TailCalls,
}

/// A generated program and where map fds must be patched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub insns: Vec<Insn>,
    /// (index of a BPF_LD_IMM64 instruction, which map).
    pub maps: Vec<(usize, MapRef)>,
}

// eBPF encoding.
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const K: u8 = 0x00;
const X: u8 = 0x08;
const MOV: u8 = 0xb0;
const ADD: u8 = 0x00;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const END: u8 = 0xd0;
const TO_BE: u8 = 0x08;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const PSEUDO_MAP_FD: u8 = 1;

// Register use: r6 ctx, r7 data, r8 data_end, r9 winning slot,
// r2 = A, r3 = X, r4/r5 scratch; r10 frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const RA: u8 = 2;
const RX: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const CTX: u8 = 6;
const DATA: u8 = 7;
const DATA_END: u8 = 8;
const SLOT: u8 = 9;
const FP: u8 = 10;

const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_TAIL_CALL: i32 = 12;
const HELPER_XDP_ADJUST_HEAD: i32 = 44;
const PSEUDO_KFUNC_CALL: u8 = 2;
const HELPER_XDP_GET_BUFF_LEN: i32 = 188;
const XDP_PASS: i32 = 2;
const NO_RULE: i32 = -1; // 0xFFFFFFFF as stored in 32 bits
const KEY_OFF: i16 = -4;
const SAVED_X_OFF: i16 = -80;
/// The tag the kernel holds: its protocol (big-endian) and TCI.
const VLAN_PROTO_OFF: i16 = -84;
const VLAN_TCI_OFF: i16 = -82;
/// Bit 0: the kernel holds a tag; bit 1: it is back in the frame.
const VLAN_STATE_OFF: i16 = -88;
const VLAN_HELD: i32 = 1;
const VLAN_REINSERTED: i32 = 2;
/// Offsets in `struct weir_filter_expr_result`.
const RESULT_VLAN_PRESENT: i16 = 8;
const RESULT_VLAN_TCI: i16 = 10;
/// Largest offset the verifier lets a packet pointer carry.
const MAX_PACKET_OFF: u32 = 0xffff;

fn mem_off(k: u32) -> i16 {
    -12 - 4 * k as i16
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// Where a jump goes once everything is laid out.
#[derive(Debug, Clone, Copy)]
enum Target {
    Classic(usize),
    Match,
    NoMatch,
    Done,
    /// A label of the prologue or epilogue: an index into `Emitter::labels`.
    Label(usize),
}

struct Emitter {
    insns: Vec<Insn>,
    maps: Vec<(usize, MapRef)>,
    /// (instruction index, block, target)
    fixups: Vec<(usize, usize, Target)>,
    /// Where each `Target::Label` lands, once placed.
    labels: Vec<usize>,
}

impl Emitter {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, block: usize, target: Target) {
        self.fixups.push((self.insns.len(), block, target));
        self.push(insn(code, dst, src, 0, imm));
    }
    fn label(&mut self) -> usize {
        self.labels.push(usize::MAX);
        self.labels.len() - 1
    }
    fn place(&mut self, label: usize) {
        self.labels[label] = self.insns.len();
    }
    /// Reloads the packet pointers (a head adjustment invalidates them).
    fn reload_packet(&mut self) {
        self.push(insn(LDX | W | MEM, DATA, CTX, 0, 0));
        self.push(insn(LDX | W | MEM, DATA_END, CTX, 4, 0));
    }
    fn adjust_head(&mut self, delta: i32) {
        self.push(insn(ALU64 | MOV | X, R1, CTX, 0, 0));
        self.push(insn(ALU64 | MOV | K, R2_KEY, 0, 0, delta));
        self.push(insn(JMP | CALL, 0, 0, 0, HELPER_XDP_ADJUST_HEAD));
    }
    /// Asks the kernel for the frame's offloaded tag; where it holds one,
    /// moves the MAC addresses 4 bytes forward and writes the tag after them.
    fn reinsert_vlan_tag(&mut self, kfunc: u32) {
        let untagged = self.label();
        let restore = self.label();
        self.push(insn(ST | W | MEM, FP, 0, VLAN_STATE_OFF, 0));
        self.push(insn(ST | W | MEM, FP, 0, VLAN_PROTO_OFF, 0));
        self.push(insn(ALU64 | MOV | X, R1, CTX, 0, 0));
        self.push(insn(ALU64 | MOV | X, R2_KEY, FP, 0, 0));
        self.push(insn(ALU64 | ADD | K, R2_KEY, 0, 0, i32::from(VLAN_PROTO_OFF)));
        self.push(insn(ALU64 | MOV | X, RX, FP, 0, 0));
        self.push(insn(ALU64 | ADD | K, RX, 0, 0, i32::from(VLAN_TCI_OFF)));
        self.push(insn(JMP | CALL, 0, PSEUDO_KFUNC_CALL, 0, kfunc as i32));
        self.jump(JMP | JNE | K, R0, 0, 0, 0, Target::Label(untagged));
        self.push(insn(ST | W | MEM, FP, 0, VLAN_STATE_OFF, VLAN_HELD));
        self.adjust_head(-4);
        self.reload_packet();
        // No headroom: the expressions see the frame as it is.
        self.jump(JMP | JNE | K, R0, 0, 0, 0, Target::Label(untagged));
        self.push(insn(ALU64 | MOV | X, R4, DATA, 0, 0));
        self.push(insn(ALU64 | ADD | K, R4, 0, 0, 16));
        self.jump(JMP | JGT | X, R4, DATA_END, 0, 0, Target::Label(restore));
        for to in [0, 4, 8] {
            self.push(insn(LDX | W | MEM, R5, DATA, to + 4, 0));
            self.push(insn(STX | W | MEM, DATA, R5, to, 0));
        }
        self.push(insn(LDX | H | MEM, R5, FP, VLAN_PROTO_OFF, 0));
        self.push(insn(STX | H | MEM, DATA, R5, 12, 0));
        self.push(insn(LDX | H | MEM, R5, FP, VLAN_TCI_OFF, 0));
        self.push(insn(ALU | END | TO_BE, R5, 0, 0, 16));
        self.push(insn(STX | H | MEM, DATA, R5, 14, 0));
        self.push(insn(ST | W | MEM, FP, 0, VLAN_STATE_OFF, VLAN_HELD | VLAN_REINSERTED));
        self.jump(JMP | JA, 0, 0, 0, 0, Target::Label(untagged));
        self.place(restore);
        self.adjust_head(4);
        self.reload_packet();
        self.place(untagged);
    }
    /// Undoes `reinsert_vlan_tag`, so the node program sees the frame the kernel gave.
    fn remove_vlan_tag(&mut self) {
        let kept = self.label();
        self.push(insn(LDX | W | MEM, R5, FP, VLAN_STATE_OFF, 0));
        self.jump(JMP | 0x40 /* JSET */ | K, R5, 0, VLAN_REINSERTED, 0, Target::Label(kept));
        let done = self.label();
        self.jump(JMP | JA, 0, 0, 0, 0, Target::Label(done));
        self.place(kept);
        self.reload_packet();
        self.push(insn(ALU64 | MOV | X, R4, DATA, 0, 0));
        self.push(insn(ALU64 | ADD | K, R4, 0, 0, 16));
        self.jump(JMP | JGT | X, R4, DATA_END, 0, 0, Target::Label(done));
        for to in [12, 8, 4] {
            self.push(insn(LDX | W | MEM, R5, DATA, to - 4, 0));
            self.push(insn(STX | W | MEM, DATA, R5, to, 0));
        }
        self.adjust_head(4);
        self.place(done);
    }
    fn map(&mut self, dst: u8, which: MapRef) {
        self.maps.push((self.insns.len(), which));
        self.push(insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, 0));
        self.push(insn(0, 0, 0, 0, 0));
    }
    /// `dst = size-byte big-endian load at r4` after bounds-checking r4..r4+size.
    fn checked_load(&mut self, dst: u8, size: u8, block: usize) {
        let bytes = match size {
            W => 4,
            H => 2,
            _ => 1,
        };
        self.push(insn(ALU64 | MOV | X, R5, R4, 0, 0));
        self.push(insn(ALU64 | ADD | K, R5, 0, 0, bytes));
        self.jump(JMP | JGT | X, R5, DATA_END, 0, block, Target::NoMatch);
        self.push(insn(LDX | size | MEM, dst, R4, 0, 0));
        if bytes > 1 {
            self.push(insn(ALU | END | TO_BE, dst, 0, 0, bytes * 8));
        }
    }
    /// r4 = data + k, or no match when k lies beyond any packet.
    fn absolute(&mut self, k: u32, size: u8, block: usize) {
        if k > MAX_PACKET_OFF - 4 {
            self.jump(JMP | JA, 0, 0, 0, block, Target::NoMatch);
            return;
        }
        self.push(insn(ALU64 | MOV | X, R4, DATA, 0, 0));
        self.push(insn(ALU64 | ADD | K, R4, 0, 0, k as i32));
        self.checked_load(RA, size, block);
    }
    /// r4 = data + X + k, bounded so the verifier can follow it.
    fn indirect(&mut self, k: u32, size: u8, block: usize) {
        if k > MAX_PACKET_OFF - 4 {
            self.jump(JMP | JA, 0, 0, 0, block, Target::NoMatch);
            return;
        }
        self.push(insn(ALU64 | MOV | X, R4, RX, 0, 0));
        self.push(insn(ALU64 | ADD | K, R4, 0, 0, k as i32));
        self.jump(JMP | JGT | K, R4, 0, (MAX_PACKET_OFF - 4) as i32, block, Target::NoMatch);
        self.push(insn(ALU64 | MOV | X, R5, DATA, 0, 0));
        self.push(insn(ALU64 | ADD | X, R5, R4, 0, 0));
        self.push(insn(ALU64 | MOV | X, R4, R5, 0, 0));
        self.checked_load(RA, size, block);
    }
    /// dst = the frame length (bpf_xdp_get_buff_len), keeping X.
    fn length(&mut self, dst: u8) {
        self.push(insn(STX | DW | MEM, FP, RX, SAVED_X_OFF, 0));
        self.push(insn(ALU64 | MOV | X, R1, CTX, 0, 0));
        self.push(insn(JMP | CALL, 0, 0, 0, HELPER_XDP_GET_BUFF_LEN));
        self.push(insn(LDX | DW | MEM, RX, FP, SAVED_X_OFF, 0));
        self.push(insn(ALU | MOV | X, dst, R0, 0, 0));
    }
}

/// Translates the classic programs of the expression rules (slot, program),
/// in rank order, into one XDP program. `rx_vlan_tag` is the BTF id of the
/// kernel's `bpf_xdp_metadata_rx_vlan_tag` kfunc: with it, the expressions
/// see a tag the kernel took out of the frame where libpcap would (the
/// program must then be loaded bound to its device). Without expression
/// rules such a program still hands the tag to the node program.
pub fn generate(rules: &[(u32, Vec<ClassicInsn>)], rx_vlan_tag: Option<u32>) -> Result<Program, String> {
    let mut e = Emitter { insns: Vec::new(), maps: Vec::new(), fixups: Vec::new(), labels: Vec::new() };
    e.push(insn(ALU64 | MOV | X, CTX, R1, 0, 0));
    e.reload_packet();
    e.push(insn(ALU64 | MOV | K, SLOT, 0, 0, NO_RULE));
    for k in 0..16 {
        e.push(insn(ST | W | MEM, FP, 0, mem_off(k), 0));
    }
    e.push(insn(ST | W | MEM, FP, 0, VLAN_STATE_OFF, 0));
    e.push(insn(ST | W | MEM, FP, 0, VLAN_PROTO_OFF, 0));
    if let Some(kfunc) = rx_vlan_tag {
        e.reinsert_vlan_tag(kfunc);
    }

    // Per block: start index of each classic instruction, and the block's match/no-match labels.
    let mut starts: Vec<Vec<usize>> = Vec::with_capacity(rules.len());
    let mut matches = Vec::with_capacity(rules.len());
    let mut next_blocks = Vec::with_capacity(rules.len());
    for (block, (slot, program)) in rules.iter().enumerate() {
        if program.is_empty() {
            return Err(format!("expression of slot {slot} compiled to nothing"));
        }
        let mut block_starts = Vec::with_capacity(program.len());
        e.push(insn(ALU | MOV | K, RA, 0, 0, 0));
        e.push(insn(ALU | MOV | K, RX, 0, 0, 0));
        for (pc, ci) in program.iter().enumerate() {
            block_starts.push(e.insns.len());
            translate(&mut e, block, pc, ci)?;
        }
        starts.push(block_starts);
        matches.push(e.insns.len());
        e.push(insn(ALU | MOV | K, SLOT, 0, 0, *slot as i32));
        e.jump(JMP | JA, 0, 0, 0, block, Target::Done);
        next_blocks.push(e.insns.len());
    }
    let done = e.insns.len();
    if rx_vlan_tag.is_some() {
        e.remove_vlan_tag();
    }
    e.push(insn(ST | W | MEM, FP, 0, KEY_OFF, 0));
    e.map(R1, MapRef::Result);
    e.push(insn(ALU64 | MOV | X, R2_KEY, FP, 0, 0));
    e.push(insn(ALU64 | ADD | K, R2_KEY, 0, 0, i32::from(KEY_OFF)));
    e.push(insn(JMP | CALL, 0, 0, 0, HELPER_MAP_LOOKUP));
    e.push(insn(JMP | JEQ | K, R0, 0, 7, 0));
    e.push(insn(ST | W | MEM, R0, 0, 0, 1));
    e.push(insn(STX | W | MEM, R0, SLOT, 4, 0));
    e.push(insn(LDX | W | MEM, R5, FP, VLAN_STATE_OFF, 0));
    e.push(insn(ALU | AND | K, R5, 0, 0, VLAN_HELD));
    e.push(insn(STX | H | MEM, R0, R5, RESULT_VLAN_PRESENT, 0));
    e.push(insn(LDX | H | MEM, R5, FP, VLAN_TCI_OFF, 0));
    e.push(insn(STX | H | MEM, R0, R5, RESULT_VLAN_TCI, 0));
    e.push(insn(ALU64 | MOV | X, R1, CTX, 0, 0));
    e.map(R2_KEY, MapRef::TailCalls);
    e.push(insn(ALU64 | MOV | K, RX, 0, 0, 0));
    e.push(insn(JMP | CALL, 0, 0, 0, HELPER_TAIL_CALL));
    // The tail call failed (no node program in the slot): let the packet through.
    e.push(insn(ALU64 | MOV | K, R0, 0, 0, XDP_PASS));
    e.push(insn(JMP | EXIT, 0, 0, 0, 0));

    for (at, block, target) in std::mem::take(&mut e.fixups) {
        let to = match target {
            Target::Classic(pc) => *starts[block].get(pc).ok_or_else(|| format!("a jump leaves expression {block}"))?,
            Target::Match => matches[block],
            Target::NoMatch => next_blocks[block],
            Target::Done => done,
            Target::Label(label) => e.labels[label],
        };
        let off = to as i64 - at as i64 - 1;
        e.insns[at].off = i16::try_from(off).map_err(|_| "the expressions are too long for one program".to_string())?;
    }
    Ok(Program { insns: e.insns, maps: e.maps })
}

/// Why an expression that loops is refused.
pub const LOOP_REFUSED: &str =
    "the expression needs a loop (a backward jump), which Weir's compiler to XDP does not support; \
     libpcap compiles `protochain` into one: match the next header directly instead (`ip6 proto 6` looks past a \
     fragment header but no other extension header)";

/// r2 doubles as the key pointer once A is no longer needed.
const R2_KEY: u8 = RA;

fn translate(e: &mut Emitter, block: usize, pc: usize, ci: &ClassicInsn) -> Result<(), String> {
    let class = (ci.code & 0x07) as u8;
    let size = (ci.code & 0x18) as u8;
    let mode = (ci.code & 0xe0) as u8;
    let k = ci.k;
    let jump_to = |off: u32| Target::Classic(pc + 1 + off as usize);
    if k >= 0xffff_f000 && matches!(class, 0x00 | 0x01) && matches!(mode, 0x20 | 0x40) {
        return Err("the expression reads packet metadata (Linux ancillary data) that an XDP hook does not have".into());
    }
    match class {
        0x00 => match mode {
            0x00 => e.push(insn(ALU | MOV | K, RA, 0, 0, k as i32)),
            0x20 => e.absolute(k, size, block),
            0x40 => e.indirect(k, size, block),
            0x60 if k < 16 => e.push(insn(LDX | W | MEM, RA, FP, mem_off(k), 0)),
            0x80 => e.length(RA),
            _ => return Err(format!("unsupported load {:#06x}", ci.code)),
        },
        0x01 => match mode {
            0x00 => e.push(insn(ALU | MOV | K, RX, 0, 0, k as i32)),
            0x60 if k < 16 => e.push(insn(LDX | W | MEM, RX, FP, mem_off(k), 0)),
            0x80 => e.length(RX),
            0xa0 => {
                // X = 4 * (P[k] & 0xf): the IPv4 header length.
                let saved_a = R0;
                e.push(insn(ALU64 | MOV | X, saved_a, RA, 0, 0));
                e.absolute(k, B, block);
                e.push(insn(ALU | MOV | X, RX, RA, 0, 0));
                e.push(insn(ALU | AND | K, RX, 0, 0, 0xf));
                e.push(insn(ALU | LSH | K, RX, 0, 0, 2));
                e.push(insn(ALU64 | MOV | X, RA, saved_a, 0, 0));
            }
            _ => return Err(format!("unsupported load into X {:#06x}", ci.code)),
        },
        0x02 if k < 16 => e.push(insn(STX | W | MEM, FP, RA, mem_off(k), 0)),
        0x03 if k < 16 => e.push(insn(STX | W | MEM, FP, RX, mem_off(k), 0)),
        0x04 => {
            let op = (ci.code & 0xf0) as u8;
            let from_x = ci.code & 0x08 != 0;
            if op == 0x80 {
                e.push(insn(ALU | 0x80, RA, 0, 0, 0));
            } else if from_x {
                if op == 0x30 || op == 0x90 {
                    e.jump(JMP32 | JEQ | K, RX, 0, 0, block, Target::NoMatch);
                }
                e.push(insn(ALU | op | X, RA, RX, 0, 0));
            } else {
                if (op == 0x30 || op == 0x90) && k == 0 {
                    return Err("division by zero".into());
                }
                if (op == 0x60 || op == 0x70) && k >= 32 {
                    return Err("a shift of 32 bits or more".into());
                }
                e.push(insn(ALU | op | K, RA, 0, 0, k as i32));
            }
        }
        0x05 => {
            let op = (ci.code & 0xf0) as u8;
            if op == JA {
                // Classic jumps only go forward, except an unconditional one
                // whose offset wraps around: libpcap's loops (protochain).
                if (k as i32) < 0 {
                    return Err(LOOP_REFUSED.into());
                }
                e.jump(JMP | JA, 0, 0, 0, block, jump_to(k));
            } else {
                let (src, imm, source) = if ci.code & 0x08 != 0 { (RX, 0, X) } else { (0, k as i32, K) };
                e.jump(JMP32 | op | source, RA, src, imm, block, jump_to(u32::from(ci.jt)));
                e.jump(JMP | JA, 0, 0, 0, block, jump_to(u32::from(ci.jf)));
            }
        }
        0x06 => {
            if ci.code & 0x18 == 0x10 {
                e.jump(JMP32 | JNE | K, RA, 0, 0, block, Target::Match);
                e.jump(JMP | JA, 0, 0, 0, block, Target::NoMatch);
            } else {
                e.jump(JMP | JA, 0, 0, 0, block, if k != 0 { Target::Match } else { Target::NoMatch });
            }
        }
        0x07 => match ci.code & 0xf8 {
            0x00 => e.push(insn(ALU | MOV | X, RX, RA, 0, 0)),
            0x80 => e.push(insn(ALU | MOV | X, RA, RX, 0, 0)),
            _ => return Err(format!("unsupported misc instruction {:#06x}", ci.code)),
        },
        _ => return Err(format!("unsupported instruction {:#06x}", ci.code)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program_and_maps_are_marked() {
        let classic = crate::pcap::compile("udp dst port 53 and udp[10] & 0x80 != 0").expect("compiles");
        let tcp = crate::pcap::compile("tcp[tcpflags] & tcp-syn != 0 and len > 100").expect("compiles");
        let rules = [(3, classic), (9, tcp)];
        for (rules, vlan) in [(&rules[..], None), (&rules[..], Some(4242)), (&[][..], Some(4242))] {
            let program = generate(rules, vlan).expect("translates");
            let n = program.insns.len() as i64;
            for (i, ins) in program.insns.iter().enumerate() {
                let class = ins.code & 0x07;
                let op = ins.code & 0xf0;
                if (class == JMP || class == JMP32) && op != CALL && op != EXIT {
                    let to = i as i64 + 1 + i64::from(ins.off);
                    assert!((0..n).contains(&to), "jump at {i} to {to} leaves the program");
                }
            }
            assert_eq!(program.maps.iter().map(|m| m.1).collect::<Vec<_>>(), [MapRef::Result, MapRef::TailCalls]);
            assert_eq!(program.insns.last().map(|i| i.code), Some(JMP | EXIT));
            let kfunc_calls =
                program.insns.iter().filter(|i| i.code == JMP | CALL && i.regs >> 4 == PSEUDO_KFUNC_CALL).count();
            assert_eq!(kfunc_calls, usize::from(vlan.is_some()), "the tag is asked for only when it can be");
        }
    }

    #[test]
    fn a_protochain_loop_is_refused_as_a_loop() {
        for text in ["ip6 protochain 6", "protochain 17", "ip protochain 6"] {
            let classic = crate::pcap::compile(text).expect("libpcap compiles it");
            let err = generate(&[(0, classic)], None).expect_err("a loop is refused");
            assert_eq!(err, LOOP_REFUSED, "{text}");
        }
        assert!(LOOP_REFUSED.contains("protochain") && LOOP_REFUSED.contains("backward jump"));
        generate(&[(0, crate::pcap::compile("ip6 proto 6").expect("compiles"))], None).expect("no loop");
    }

    #[test]
    fn metadata_loads_are_refused() {
        let ancillary = ClassicInsn { code: 0x20, jt: 0, jf: 0, k: 0xffff_f000 };
        let ret = ClassicInsn { code: 0x06, jt: 0, jf: 0, k: 1 };
        assert!(generate(&[(0, vec![ancillary, ret])], None).expect_err("refused").contains("metadata"));
    }
}
