//! Call frame information from a binary's `.eh_frame`: at a given
//! instruction, is the function's frame set up (so a frame-pointer walk finds
//! its caller), and if not, where on the stack is its return address?
//!
//! Only the ELF headers and the two unwind sections are read, never the
//! whole file. x86-64 only, like the sampler.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use gimli::{BaseAddresses, CfaRule, EhFrame, EhFrameOffset, LittleEndian, RegisterRule, UnwindContext, UnwindSection};

/// DWARF register numbers on x86-64.
const RBP: gimli::Register = gimli::X86_64::RBP;
const RSP: gimli::Register = gimli::X86_64::RSP;
const RETURN_ADDRESS: gimli::Register = gimli::X86_64::RA;

/// How to find the caller of the function executing at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRule {
    /// The frame is set up: %rbp is this function's frame pointer, so a
    /// frame-pointer walk finds its return address and its caller's frame.
    FramePointer,
    /// No frame yet (a leaf without one, a prologue, an epilogue): the return
    /// address is at `sp + return_offset`, and %rbp still belongs to the
    /// caller unless `rbp_saved` (then it may have been reused already).
    StackPointer { return_offset: u64, rbp_saved: bool },
    /// The binary describes this address some other way (an expression, as
    /// PLT stubs do), or not at all though it has unwind tables: unknown.
    Unknown,
}

/// One binary's unwind tables, read where they are needed: a lookup reads
/// about 20 entries of `.eh_frame_hdr`'s sorted table and one FDE and its
/// CIE, never the sections whole (a debug build of Weir has 6 MiB of them).
#[derive(Debug)]
pub struct UnwindTables {
    source: Source,
    /// File offset and length of `.eh_frame`, and its address as
    /// `.eh_frame_hdr` states it.
    eh_frame: (u64, u64, u64),
    /// File offset of `.eh_frame_hdr`'s table of (initial location, FDE
    /// address) pairs, its number of entries, and the header's address (both
    /// are relative to it).
    table: (u64, u64, u64),
    text_addr: u64,
    layout: BinaryLayout,
}

/// Where a binary's bytes are read from.
#[derive(Debug)]
enum Source {
    File(File),
    /// The vDSO, read from this process's memory (a few KiB).
    Image(Vec<u8>),
}

impl Source {
    fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if len > MAX_ENTRY {
            return None;
        }
        match self {
            Source::File(file) => {
                let mut buf = vec![0; usize::try_from(len).ok()?];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset).ok()?;
                Some(buf)
            }
            Source::Image(image) => {
                let start = usize::try_from(offset).ok()?;
                image.get(start..start.checked_add(usize::try_from(len).ok()?)?).map(<[u8]>::to_vec)
            }
        }
    }

    fn u32_at(&self, offset: u64) -> Option<u32> {
        u32_at(&self.read(offset, 4)?, 0)
    }
}

/// `.eh_frame_hdr` encodings: the pointer to `.eh_frame` PC-relative, the
/// count a 4-byte unsigned, the table's entries 4-byte signed relative to
/// the header — what every linker writes.
const PCREL_SDATA4: u8 = 0x1b;
const UDATA4: u8 = 0x03;
const DATAREL_SDATA4: u8 = 0x3b;
/// Bound on one CIE or FDE, and on the vDSO image.
const MAX_ENTRY: u64 = 1 << 20;

/// Where a binary's file contents are placed in its own address numbering,
/// and where its PLT stubs are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BinaryLayout {
    /// (file offset, virtual address, size in the file) of each PT_LOAD segment.
    loads: Vec<(u64, u64, u64)>,
    /// (address, size) of `.plt`, `.plt.sec` and `.plt.got`.
    plt: Vec<(u64, u64)>,
}

impl BinaryLayout {
    /// The layout of the ELF file at `path`.
    pub fn read(path: &Path) -> Option<Self> {
        read_layout(&mut File::open(path).ok()?).map(|layout| layout.binary)
    }

    /// The address in the binary's own numbering of a file offset.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(offset, _, size)| *offset <= file_offset && file_offset < offset + size)
            .map(|(offset, vaddr, _)| file_offset - offset + vaddr)
    }

    /// Whether the code at `file_offset` is a PLT stub: a jump to a function
    /// of another object, which symbol tables do not name.
    pub fn is_plt(&self, file_offset: u64) -> bool {
        self.address_of(file_offset)
            .is_some_and(|address| self.plt.iter().any(|(start, size)| *start <= address && address < start + size))
    }
}

/// What the ELF headers say about where things are.
#[derive(Debug, Default, PartialEq, Eq)]
struct ElfLayout {
    /// (file offset, address, size) of `.eh_frame` and `.eh_frame_hdr`.
    eh_frame: Option<(u64, u64, u64)>,
    eh_frame_hdr: Option<(u64, u64, u64)>,
    text_addr: u64,
    binary: BinaryLayout,
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

const PT_LOAD: u32 = 1;
/// Bounds on what is read from a file that claims to be an ELF binary.
const MAX_HEADER_TABLE: u64 = 1 << 20;

fn read_at<R: Read + Seek>(file: &mut R, offset: u64, len: u64, limit: u64) -> Option<Vec<u8>> {
    if len > limit {
        return None;
    }
    let mut buf = vec![0; usize::try_from(len).ok()?];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Where an ELF64 little-endian file's program and section headers are.
pub(crate) struct ElfHeader {
    pub phoff: u64,
    pub shoff: u64,
    pub phentsize: u64,
    pub phnum: u64,
    pub shentsize: u64,
    pub shnum: u64,
    pub shstrndx: u64,
}

impl ElfHeader {
    /// From the file's first 64 bytes; None for anything but a 64-bit
    /// little-endian ELF file with entries of at least the standard sizes.
    pub(crate) fn read(header: &[u8]) -> Option<Self> {
        if header.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let half = |at| u16_at(header, at).map(u64::from);
        let h = Self {
            phoff: u64_at(header, 0x20)?,
            shoff: u64_at(header, 0x28)?,
            phentsize: half(0x36)?,
            phnum: half(0x38)?,
            shentsize: half(0x3a)?,
            shnum: half(0x3c)?,
            shstrndx: half(0x3e)?,
        };
        (h.phentsize >= 56 && h.shentsize >= 64).then_some(h)
    }
}

/// Reads the ELF64 little-endian headers: program headers, section headers and
/// their names. None for anything else.
fn read_layout<R: Read + Seek>(file: &mut R) -> Option<ElfLayout> {
    let ElfHeader { phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx } =
        ElfHeader::read(&read_at(file, 0, 64, 64)?)?;
    let mut layout = ElfLayout::default();
    let phdrs = read_at(file, phoff, phentsize * phnum, MAX_HEADER_TABLE)?;
    for ph in phdrs.chunks_exact(phentsize as usize) {
        if u32_at(ph, 0)? == PT_LOAD {
            layout.binary.loads.push((u64_at(ph, 8)?, u64_at(ph, 16)?, u64_at(ph, 32)?));
        }
    }
    let shdrs = read_at(file, shoff, shentsize * shnum, MAX_HEADER_TABLE)?;
    let section = |i: u64| shdrs.get((i * shentsize) as usize..((i + 1) * shentsize) as usize);
    let names_header = section(shstrndx)?;
    let names = read_at(file, u64_at(names_header, 24)?, u64_at(names_header, 32)?, MAX_HEADER_TABLE)?;
    for i in 0..shnum {
        let sh = section(i)?;
        let name_at = u32_at(sh, 0)? as usize;
        let name = names.get(name_at..)?.split(|b| *b == 0).next()?;
        let placed = (u64_at(sh, 24)?, u64_at(sh, 16)?, u64_at(sh, 32)?);
        match name {
            b".eh_frame" => layout.eh_frame = Some(placed),
            b".eh_frame_hdr" => layout.eh_frame_hdr = Some(placed),
            b".text" => layout.text_addr = placed.1,
            b".plt" | b".plt.sec" | b".plt.got" => layout.binary.plt.push((placed.1, placed.2)),
            _ => {}
        }
    }
    Some(layout)
}

impl UnwindTables {
    /// The unwind tables of the ELF file at `path`; None when it has none
    /// (or is not a 64-bit little-endian ELF file, or cannot be read, or its
    /// `.eh_frame_hdr` table is not in the encoding linkers write).
    pub fn read(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let layout = read_layout(&mut &file)?;
        Self::new(Source::File(file), layout)
    }

    /// The unwind tables of this process's vDSO, the kernel's code mapped
    /// into every process (the same image in every 64-bit process of this
    /// kernel), with the size of its mapping. Offsets are from its start.
    pub fn vdso() -> Option<(Self, u64)> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let vdso = crate::procmaps::parse_maps(&maps).into_iter().find(|m| m.pseudo.as_deref() == Some("[vdso]"))?;
        let size = vdso.end.checked_sub(vdso.start)?;
        let mut mem = File::open("/proc/self/mem").ok()?;
        let image = read_at(&mut mem, vdso.start, size, MAX_ENTRY)?;
        let layout = read_layout(&mut std::io::Cursor::new(&image))?;
        Some((Self::new(Source::Image(image), layout)?, size))
    }

    fn new(source: Source, layout: ElfLayout) -> Option<Self> {
        let (frame_off, _, frame_len) = layout.eh_frame?;
        let (hdr_off, hdr_addr, hdr_len) = layout.eh_frame_hdr?;
        let header = source.read(hdr_off, 12.min(hdr_len))?;
        // version 1, then the three encodings.
        if header.get(..4)? != [1, PCREL_SDATA4, UDATA4, DATAREL_SDATA4] {
            return None;
        }
        let frame_ptr = i64::from(u32_at(&header, 4)? as i32);
        let frame_addr = hdr_addr.checked_add(4)?.checked_add_signed(frame_ptr)?;
        let count = u64::from(u32_at(&header, 8)?);
        (12 + count * 8 <= hdr_len).then_some(())?;
        Some(Self {
            source,
            eh_frame: (frame_off, frame_len, frame_addr),
            table: (hdr_off.checked_add(12)?, count, hdr_addr),
            text_addr: layout.text_addr,
            layout: layout.binary,
        })
    }

    /// The offset in `.eh_frame` of the FDE of the last table entry starting
    /// at or below `address`.
    fn fde_offset(&self, address: u64) -> Option<u64> {
        let (table, count, hdr_addr) = self.table;
        let entry = |i: u64| -> Option<(u64, u64)> {
            let pair = self.source.read(table.checked_add(i * 8)?, 8)?;
            let at = |o| hdr_addr.checked_add_signed(i64::from(u32_at(&pair, o)? as i32));
            Some((at(0)?, at(4)?))
        };
        // The first entry starting above `address`.
        let (mut low, mut high) = (0, count);
        while low < high {
            let mid = low + (high - low) / 2;
            if entry(mid)?.0 <= address {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        let (_, fde) = entry(low.checked_sub(1)?)?;
        fde.checked_sub(self.eh_frame.2)
    }

    /// The length-prefixed entry (CIE or FDE) at `offset` in `.eh_frame`.
    fn entry(&self, offset: u64) -> Option<Vec<u8>> {
        let (frame_off, frame_len, _) = self.eh_frame;
        // A table entry may point anywhere: only inside the section is read.
        if offset.checked_add(4)? > frame_len {
            return None;
        }
        let at = frame_off.checked_add(offset)?;
        let len = u64::from(self.source.u32_at(at)?);
        // 0 ends the section; 0xffffffff is the 64-bit format, never in .eh_frame.
        if len == 0 || len == 0xffff_ffff || offset + 4 + len > frame_len {
            return None;
        }
        self.source.read(at, 4 + len)
    }

    /// The frame rule at the instruction at `file_offset`.
    pub fn rule_at(&self, file_offset: u64) -> FrameRule {
        self.lookup(file_offset).unwrap_or(FrameRule::Unknown)
    }

    fn lookup(&self, file_offset: u64) -> Option<FrameRule> {
        let address = self.layout.address_of(file_offset)?;
        let fde_offset = self.fde_offset(address)?;
        let fde = self.entry(fde_offset)?;
        // The CIE pointer counts back from its own place to the CIE.
        let cie_offset = fde_offset.checked_add(4)?.checked_sub(u64::from(u32_at(&fde, 4)?))?;
        let cie = self.entry(cie_offset)?;
        // The CIE, then the FDE pointing back to it, as a little section of
        // their own; its base is set so that the FDE's PC-relative addresses
        // resolve as they do in the whole section.
        let mut section = cie;
        let placed = section.len() as u64;
        section.extend_from_slice(&fde);
        section.get_mut(placed as usize + 4..placed as usize + 8)?.copy_from_slice(&(placed as u32 + 4).to_le_bytes());
        let bases = BaseAddresses::default()
            .set_eh_frame(self.eh_frame.2.checked_add(fde_offset)?.checked_sub(placed)?)
            .set_eh_frame_hdr(self.table.2)
            .set_text(self.text_addr);
        let eh_frame = EhFrame::new(&section, LittleEndian);
        let fde = eh_frame.partial_fde_from_offset(&bases, EhFrameOffset(placed as usize)).ok()?;
        let fde = fde.parse(EhFrame::cie_from_offset).ok()?;
        if !fde.contains(address) {
            return None;
        }
        let mut context = UnwindContext::new();
        let row = fde.unwind_info_for_address(&eh_frame, &bases, &mut context, address).ok()?;
        rule_of_row(row, &eh_frame, address)
    }
}

/// What one row of the unwind table says about finding the caller.
fn rule_of_row<R: gimli::Reader>(
    row: &gimli::UnwindTableRow<R::Offset>,
    eh_frame: &EhFrame<R>,
    address: u64,
) -> Option<FrameRule> {
    if row.register(RETURN_ADDRESS) != Some(RegisterRule::Offset(-8)) {
        return None;
    }
    let rbp_saved = !matches!(row.register(RBP), None | Some(RegisterRule::SameValue | RegisterRule::Undefined));
    match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset: 16 } if register == RBP => Some(FrameRule::FramePointer),
        CfaRule::RegisterAndOffset { register, offset } if register == RSP && offset >= 8 && offset % 8 == 0 => {
            Some(FrameRule::StackPointer { return_offset: offset as u64 - 8, rbp_saved })
        }
        // PLT stubs: %rsp plus 8 or 16, depending on where in the stub.
        CfaRule::Expression(expression) => {
            let offset = stack_offset(&expression.get(eh_frame).ok()?, address)?;
            (offset >= 8 && offset % 8 == 0 && offset <= MAX_CFA_OFFSET)
                .then_some(FrameRule::StackPointer { return_offset: offset - 8, rbp_saved })
        }
        _ => None,
    }
}

/// A CFA expression's answer beyond this is not a stack offset.
const MAX_CFA_OFFSET: u64 = 4096;

/// Evaluates a CFA expression at `address` as an offset from %rsp (taking
/// %rsp as 0); None where it needs any register but %rsp and %rip.
fn stack_offset<R: gimli::Reader>(expression: &gimli::Expression<R>, address: u64) -> Option<u64> {
    let encoding = gimli::Encoding { format: gimli::Format::Dwarf32, version: 4, address_size: 8 };
    let mut evaluation = expression.clone().evaluation(encoding);
    let mut step = evaluation.evaluate().ok()?;
    loop {
        step = match step {
            gimli::EvaluationResult::Complete => break,
            gimli::EvaluationResult::RequiresRegister { register, .. } if register == RSP => {
                evaluation.resume_with_register(gimli::Value::Generic(0)).ok()?
            }
            gimli::EvaluationResult::RequiresRegister { register, .. } if register == RETURN_ADDRESS => {
                evaluation.resume_with_register(gimli::Value::Generic(address)).ok()?
            }
            _ => return None,
        };
    }
    match evaluation.result().first()?.location {
        gimli::Location::Address { address } => Some(address),
        _ => None,
    }
}

/// Checks a frame-pointer walk (innermost first) against each frame's rule,
/// `rule(address, is_sampled_instruction)` (None: no unwind tables for that
/// code, so the walk is taken as it is). Where the sampled function had no
/// frame yet, the walk skipped its caller: the caller is put back from
/// `stack_top` (the words at sp, sp+8, … that look like return addresses), or
/// the walk is cut after the sampled function when it cannot be found. Where
/// a caller had no frame set up at its call, whatever the walk found above it
/// is not its caller: the walk is cut after it.
pub fn checked_walk(
    stack: &[u64],
    stack_top: &[u64],
    mut rule: impl FnMut(u64, bool) -> Option<FrameRule>,
) -> Vec<u64> {
    let Some((&ip, rest)) = stack.split_first() else { return Vec::new() };
    let mut out = vec![ip];
    match rule(ip, true) {
        None | Some(FrameRule::FramePointer) => out.extend_from_slice(rest),
        Some(FrameRule::StackPointer { return_offset, rbp_saved }) => {
            let word = usize::try_from(return_offset / 8).ok().and_then(|i| stack_top.get(i)).filter(|w| **w != 0);
            let Some(&caller) = word else { return out };
            out.push(caller);
            if rbp_saved {
                // %rbp may already hold something else: the walk from it is not the caller's.
                return out;
            }
            out.extend_from_slice(rest);
        }
        Some(FrameRule::Unknown) => return out,
    }
    for i in 1..out.len() {
        if !matches!(rule(out[i], false), None | Some(FrameRule::FramePointer)) {
            out.truncate(i + 1);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP8: FrameRule = FrameRule::StackPointer { return_offset: 0, rbp_saved: false };

    #[test]
    fn a_frameless_leaf_gets_its_caller_back_from_the_stack_top() {
        // main -> x -> y -> z; z has no frame, so the walk went z, x, main.
        let rules = |a: u64, _: bool| Some(if a == 0x30 { SP8 } else { FrameRule::FramePointer });
        assert_eq!(checked_walk(&[0x30, 0x10, 0x1], &[0x20, 0, 0, 0], rules), vec![0x30, 0x20, 0x10, 0x1]);
        // Pushed one register first: the return address is one word up.
        let pushed = FrameRule::StackPointer { return_offset: 8, rbp_saved: false };
        let rules = |a: u64, _: bool| Some(if a == 0x30 { pushed } else { FrameRule::FramePointer });
        assert_eq!(checked_walk(&[0x30, 0x10, 0x1], &[0x99, 0x20, 0, 0], rules), vec![0x30, 0x20, 0x10, 0x1]);
    }

    #[test]
    fn a_caller_it_cannot_know_is_cut_never_guessed() {
        let rules = |a: u64, _: bool| Some(if a == 0x30 { SP8 } else { FrameRule::FramePointer });
        assert_eq!(checked_walk(&[0x30, 0x10, 0x1], &[0, 0, 0, 0], rules), vec![0x30], "no return address found");
        let deep = FrameRule::StackPointer { return_offset: 64, rbp_saved: false };
        assert_eq!(checked_walk(&[0x30, 0x10], &[0x20; 4], |_, ip| Some(if ip { deep } else { SP8 })), vec![0x30]);
        let saved = FrameRule::StackPointer { return_offset: 8, rbp_saved: true };
        let rules = |a: u64, _: bool| Some(if a == 0x30 { saved } else { FrameRule::FramePointer });
        assert_eq!(checked_walk(&[0x30, 0x10], &[0, 0x20, 0, 0], rules), vec![0x30, 0x20], "%rbp reused");
        assert_eq!(checked_walk(&[0x30, 0x10], &[0x20; 4], |_, _| Some(FrameRule::Unknown)), vec![0x30]);
        // A caller without a frame at its call: what the walk found above it is wrong.
        let rules = |a: u64, _: bool| Some(if a == 0x10 { SP8 } else { FrameRule::FramePointer });
        assert_eq!(checked_walk(&[0x30, 0x10, 0x5, 0x1], &[0; 4], rules), vec![0x30, 0x10]);
    }

    #[test]
    fn code_without_unwind_tables_keeps_the_walk() {
        assert_eq!(checked_walk(&[0x30, 0x10, 0x1], &[0x20; 4], |_, _| None), vec![0x30, 0x10, 0x1]);
        assert_eq!(checked_walk(&[], &[], |_, _| None), Vec::<u64>::new());
    }

    /// The test binary itself is an ELF file with unwind tables.
    #[test]
    fn reads_its_own_unwind_tables_and_finds_a_rule_for_its_code() {
        let exe = std::env::current_exe().expect("exe");
        let mut file = File::open(&exe).expect("open");
        let layout = read_layout(&mut file).expect("an ELF file");
        assert!(layout.eh_frame.is_some() && layout.eh_frame_hdr.is_some(), "{layout:?}");
        let tables = UnwindTables::read(&exe).expect("tables");
        // A function's first instruction: the return address is at sp.
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let here = reads_its_own_unwind_tables_and_finds_a_rule_for_its_code as fn() as usize as u64;
        let mapping = crate::procmaps::parse_maps(&maps)
            .into_iter()
            .find(|m| m.executable && m.start <= here && here < m.end)
            .expect("mapped");
        let offset = here - mapping.start + mapping.file_offset;
        assert_eq!(tables.rule_at(offset), FrameRule::StackPointer { return_offset: 0, rbp_saved: false });
        assert_eq!(tables.rule_at(u64::MAX / 2), FrameRule::Unknown, "outside every segment");
    }

    /// The rule at `file_offset` from the whole sections through gimli's own
    /// `.eh_frame_hdr` lookup: how the profiler found rules before.
    fn rule_from_whole_sections(path: &Path, file_offset: u64) -> FrameRule {
        let mut file = File::open(path).expect("open");
        let layout = read_layout(&mut file).expect("an ELF file");
        let (frame_off, frame_addr, frame_len) = layout.eh_frame.expect(".eh_frame");
        let (hdr_off, hdr_addr, hdr_len) = layout.eh_frame_hdr.expect(".eh_frame_hdr");
        let frame = read_at(&mut file, frame_off, frame_len, 1 << 30).expect("read");
        let hdr = read_at(&mut file, hdr_off, hdr_len, 1 << 30).expect("read");
        let bases =
            BaseAddresses::default().set_eh_frame(frame_addr).set_eh_frame_hdr(hdr_addr).set_text(layout.text_addr);
        let eh_frame = EhFrame::new(&frame, LittleEndian);
        let rule = || {
            let address = layout.binary.address_of(file_offset)?;
            let hdr = gimli::EhFrameHdr::new(&hdr, LittleEndian).parse(&bases, 8).ok()?;
            let mut context = UnwindContext::new();
            let row = hdr
                .table()?
                .unwind_info_for_address(&eh_frame, &bases, &mut context, address, EhFrame::cie_from_offset)
                .ok()?;
            rule_of_row(row, &eh_frame, address)
        };
        rule().unwrap_or(FrameRule::Unknown)
    }

    /// Reading only the entries a lookup needs finds the rules reading the
    /// whole sections found, at every `step`th byte of the code.
    fn assert_same_rules_as_whole_sections(path: &Path, step: u64) {
        let tables = UnwindTables::read(path).expect("unwind tables");
        let (mut known, mut total) = (0, 0);
        for &(offset, _, size) in &tables.layout.loads {
            for file_offset in (offset..offset + size).step_by(step as usize) {
                let rule = tables.rule_at(file_offset);
                assert_eq!(rule, rule_from_whole_sections(path, file_offset), "{}+{file_offset:#x}", path.display());
                known += usize::from(rule != FrameRule::Unknown);
                total += 1;
            }
        }
        assert!(known > total / 10, "{}: {known} of {total} offsets have a rule", path.display());
    }

    #[test]
    fn finds_the_rules_the_whole_sections_give() {
        assert_same_rules_as_whole_sections(&std::env::current_exe().expect("exe"), 4099);
        assert_same_rules_as_whole_sections(Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"), 509);
        assert_same_rules_as_whole_sections(Path::new("/usr/bin/bash"), 509);
    }

    /// A table whose FDE pointers lead outside `.eh_frame` (or anywhere)
    /// gives no rule, and never a panic.
    #[test]
    fn a_corrupt_table_gives_no_rules() {
        let mut image = std::fs::read("/usr/bin/bash").expect("read");
        let layout = read_layout(&mut std::io::Cursor::new(&image)).expect("an ELF file");
        let (hdr_off, _, hdr_len) = layout.eh_frame_hdr.expect(".eh_frame_hdr");
        let loads = layout.binary.loads.clone();
        for (i, entry) in image[hdr_off as usize + 12..(hdr_off + hdr_len) as usize].chunks_exact_mut(8).enumerate() {
            let wild: i32 = [i32::MAX, i32::MIN, -1, 0][i % 4];
            entry[4..].copy_from_slice(&wild.to_le_bytes());
        }
        let tables = UnwindTables::new(Source::Image(image), layout).expect("the header is intact");
        for &(offset, _, size) in &loads {
            for file_offset in (offset..offset + size).step_by(4099) {
                assert_eq!(tables.rule_at(file_offset), FrameRule::Unknown, "{file_offset:#x}");
            }
        }
    }

    #[test]
    fn reads_the_vdsos_unwind_tables() {
        let (tables, size) = UnwindTables::vdso().expect("this kernel maps a vDSO with unwind tables");
        assert!(size >= 4096, "{size}");
        let covered = (0..size).any(|offset| tables.rule_at(offset) != FrameRule::Unknown);
        assert!(covered, "some vDSO code has a rule");
    }

    #[test]
    fn rejects_what_is_not_elf() {
        let path = std::env::temp_dir().join(format!("weir-cfi-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\n").expect("write");
        assert!(UnwindTables::read(&path).is_none());
        let _ = std::fs::remove_file(path);
    }
}
