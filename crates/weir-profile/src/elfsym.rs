//! ELF symbol tables read on demand, for the addresses a profile saw.
//!
//! A symbol table is never held: each lookup streams `.symtab` (then
//! `.dynsym`) twice in small chunks — once to find, for every asked address,
//! the highest symbol start at or below it, once to collect the few symbols
//! that start there — and reads only the names it reports from the string
//! table. What the agent holds is proportional to the addresses asked, not to
//! the binary (a debug build of Weir has 200,000 symbols).
//!
//! The choice is blazesym's (which the profiler used before): the symbols
//! starting at the highest start at or below the address, larger first; the
//! first that covers the address wins (a sizeless one in `.symtab` covers
//! anything up to the next start, in `.dynsym` only its own address);
//! `.dynsym` is asked only where `.symtab` knows nothing. Among aliases of
//! one function (same start, same size) the first in the table wins, where
//! blazesym's unstable sort picked any of them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::cfi::{u16_at, u32_at, u64_at, ElfHeader};

const SHT_NOBITS: u32 = 8;
const SHN_UNDEF: u16 = 0;
const SYM_SIZE: u64 = 24;
/// Symbols read at once while streaming a table.
const CHUNK_SYMS: u64 = 2048;
/// A name longer than this is not a name.
const MAX_NAME: u64 = 64 << 10;
/// Bound on the section header table read from a file claiming to be ELF.
const MAX_HEADER_TABLE: u64 = 1 << 20;

/// Where one symbol table and its strings are in the file.
#[derive(Debug, Clone, Copy)]
struct Table {
    offset: u64,
    count: u64,
    strings: u64,
    strings_size: u64,
    /// `.dynsym`: a sizeless symbol names only its own address.
    dynamic: bool,
}

/// One binary's symbol tables, read as needed.
#[derive(Debug)]
pub struct SymbolFile {
    file: File,
    symtab: Option<Table>,
    dynsym: Option<Table>,
    /// (file offset, address, size in the file) of each PT_LOAD segment.
    loads: Vec<(u64, u64, u64)>,
    /// The file keeps its symbols only xz-compressed in `.gnu_debugdata`
    /// (Fedora's MiniDebugInfo), which this reader does not decompress.
    pub compressed_only: bool,
}

/// One symbol table entry, as far as choosing a name needs.
#[derive(Debug, Clone, Copy)]
struct Entry {
    index: u64,
    name: u32,
    shndx: u16,
    value: u64,
    size: u64,
}

/// NOTYPE, OBJECT, FUNC and GNU_IFUNC symbols name code or data; sections,
/// files and TLS symbols do not.
fn names_a_place(info: u8) -> bool {
    matches!(info & 0xf, 0 | 1 | 2 | 10)
}

impl SymbolFile {
    /// The symbol tables of the 64-bit little-endian ELF file at `path`.
    pub fn open(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0).ok()?;
        let ElfHeader { phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx } = ElfHeader::read(&header)?;
        let read = |offset: u64, len: u64| -> Option<Vec<u8>> {
            if len > MAX_HEADER_TABLE {
                return None;
            }
            let mut buf = vec![0; usize::try_from(len).ok()?];
            file.read_exact_at(&mut buf, offset).ok()?;
            Some(buf)
        };
        let phdrs = read(phoff, phentsize * phnum)?;
        let loads = phdrs
            .chunks_exact(phentsize as usize)
            .filter(|ph| u32_at(ph, 0) == Some(1))
            .filter_map(|ph| Some((u64_at(ph, 8)?, u64_at(ph, 16)?, u64_at(ph, 32)?)))
            .collect();
        let shdrs = read(shoff, shentsize * shnum)?;
        let section = |i: u64| shdrs.get((i * shentsize) as usize..((i + 1) * shentsize) as usize);
        let names_header = section(shstrndx)?;
        let names = read(u64_at(names_header, 24)?, u64_at(names_header, 32)?)?;
        // (type, offset, size) by section name.
        let find = |wanted: &[u8]| {
            (0..shnum).find_map(|i| {
                let sh = section(i)?;
                let name = names.get(u32_at(sh, 0)? as usize..)?.split(|b| *b == 0).next()?;
                (name == wanted).then(|| Some((u32_at(sh, 4)?, u64_at(sh, 24)?, u64_at(sh, 32)?)))?
            })
        };
        let table = |syms: &[u8], strs: &[u8], dynamic: bool| {
            let (kind, offset, size) = find(syms)?;
            let (strs_kind, strings, strings_size) = find(strs)?;
            (kind != SHT_NOBITS && strs_kind != SHT_NOBITS && size >= SYM_SIZE).then_some(Table {
                offset,
                count: size / SYM_SIZE,
                strings,
                strings_size,
                dynamic,
            })
        };
        let symtab = table(b".symtab", b".strtab", false);
        let dynsym = table(b".dynsym", b".dynstr", true);
        let compressed_only = symtab.is_none() && find(b".gnu_debugdata").is_some();
        Some(Self { file, symtab, dynsym, loads, compressed_only })
    }

    /// The address in the binary's own numbering of a file offset (the
    /// PT_LOAD segment holding it).
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(offset, _, size)| *offset <= file_offset && file_offset < offset + size)
            .map(|(offset, vaddr, _)| file_offset - offset + vaddr)
    }

    /// The symbol names (mangled, as in the file) at `addresses`, in their
    /// order; None where neither table names one.
    pub fn names(&self, addresses: &[u64]) -> Vec<Option<String>> {
        let mut wanted: Vec<u64> = addresses.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut found: Vec<Option<String>> = vec![None; wanted.len()];
        for table in [self.symtab, self.dynsym].into_iter().flatten() {
            let missing: Vec<usize> = (0..wanted.len()).filter(|i| found[*i].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let asked: Vec<u64> = missing.iter().map(|i| wanted[*i]).collect();
            for (i, name) in missing.into_iter().zip(self.lookup(&table, &asked)) {
                found[i] = name;
            }
        }
        addresses.iter().map(|a| wanted.binary_search(a).ok().and_then(|i| found[i].clone())).collect()
    }

    /// Streams the table's symbols that name code or data.
    fn for_each_symbol(&self, table: &Table, mut visit: impl FnMut(Entry)) {
        let mut buf = vec![0u8; (CHUNK_SYMS * SYM_SIZE) as usize];
        let mut index = 0;
        while index < table.count {
            let n = (table.count - index).min(CHUNK_SYMS);
            let chunk = &mut buf[..(n * SYM_SIZE) as usize];
            if self.file.read_exact_at(chunk, table.offset + index * SYM_SIZE).is_err() {
                return;
            }
            for (i, sym) in chunk.chunks_exact(SYM_SIZE as usize).enumerate() {
                if names_a_place(sym[4]) {
                    visit(Entry {
                        index: index + i as u64,
                        name: u32_at(sym, 0).unwrap_or(0),
                        shndx: u16_at(sym, 6).unwrap_or(0),
                        value: u64_at(sym, 8).unwrap_or(0),
                        size: u64_at(sym, 16).unwrap_or(0),
                    });
                }
            }
            index += n;
        }
    }

    /// `asked` sorted and distinct.
    fn lookup(&self, table: &Table, asked: &[u64]) -> Vec<Option<String>> {
        // Each symbol's start is a candidate for the first asked address at
        // or above it; the highest start at or below an address is then the
        // highest candidate of it and of every lower asked address.
        let mut best: Vec<Option<u64>> = vec![None; asked.len()];
        self.for_each_symbol(table, |sym| {
            let i = asked.partition_point(|a| *a < sym.value);
            if let Some(slot) = best.get_mut(i) {
                *slot = (*slot).max(Some(sym.value));
            }
        });
        let mut highest = None;
        for slot in &mut best {
            highest = highest.max(*slot);
            *slot = highest;
        }
        let mut starts: Vec<u64> = best.iter().flatten().copied().collect();
        starts.dedup();
        let mut candidates: Vec<Entry> = Vec::new();
        self.for_each_symbol(table, |sym| {
            if starts.binary_search(&sym.value).is_ok() {
                candidates.push(sym);
            }
        });
        // Larger first, then table order.
        candidates.sort_by(|a, b| a.value.cmp(&b.value).then(b.size.cmp(&a.size)).then(a.index.cmp(&b.index)));
        asked
            .iter()
            .zip(best)
            .map(|(&address, start)| {
                let start = start?;
                let from = candidates.partition_point(|c| c.value < start);
                let chosen = candidates[from..].iter().take_while(|c| c.value == start).find(|c| {
                    c.shndx != SHN_UNDEF
                        && match c.size {
                            0 => !table.dynamic || address == c.value,
                            size => address < c.value.saturating_add(size),
                        }
                })?;
                self.name_at(table, chosen.name)
            })
            .collect()
    }

    /// The NUL-terminated UTF-8 string at `at` in the table's strings.
    fn name_at(&self, table: &Table, at: u32) -> Option<String> {
        let mut offset = u64::from(at);
        let mut name = Vec::new();
        let mut piece = [0u8; 256];
        while offset < table.strings_size && (name.len() as u64) < MAX_NAME {
            let len = (table.strings_size - offset).min(piece.len() as u64) as usize;
            self.file.read_exact_at(&mut piece[..len], table.strings + offset).ok()?;
            match piece[..len].iter().position(|b| *b == 0) {
                Some(end) => {
                    name.extend_from_slice(&piece[..end]);
                    return String::from_utf8(name).ok();
                }
                None => name.extend_from_slice(&piece[..len]),
            }
            offset += len as u64;
        }
        None
    }
}

/// A symbol's name as people read it: Rust's (without its hash) or C++'s
/// demangled, any other as it is — as blazesym demangles a name of unknown
/// language.
pub fn demangle(name: String) -> String {
    if let Ok(rust) = rustc_demangle::try_demangle(&name) {
        return format!("{rust:#}");
    }
    cpp_demangle::Symbol::new(name.as_bytes()).ok().and_then(|sym| sym.demangle().ok()).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What blazesym (the profiler's symbolizer before this one) names the
    /// code at each file offset of `path`, demangled.
    fn blazesym_names(path: &Path, offsets: &[u64]) -> Vec<Option<String>> {
        use blazesym::symbolize::source::{Elf, Source};
        use blazesym::symbolize::{Input, Symbolized, Symbolizer};
        let blaze = Symbolizer::builder().enable_demangling(true).build();
        let source = Source::Elf(Elf { debug_syms: false, ..Elf::new(path) });
        let found = blaze.symbolize(&source, Input::FileOffset(offsets)).expect("blazesym reads it");
        found
            .into_iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => Some(sym.name.to_string()),
                _ => None,
            })
            .collect()
    }

    /// Every `step`th byte of the file's executable segments, and the start
    /// of each segment.
    fn code_offsets(symbols: &SymbolFile, step: u64) -> Vec<u64> {
        symbols.loads.iter().flat_map(|(offset, _, size)| (*offset..offset + size).step_by(step as usize)).collect()
    }

    /// Names resolved here and by blazesym agree, except where the file has
    /// several names for one function (same start, same size): blazesym's
    /// unstable sort picked any; here the first in the table.
    fn assert_same_names_as_blazesym(path: &Path, step: u64) -> usize {
        let symbols = SymbolFile::open(path).expect("an ELF file");
        let offsets = code_offsets(&symbols, step);
        let addresses: Vec<u64> = offsets.iter().map(|o| symbols.address_of(*o).expect("in a segment")).collect();
        let ours: Vec<Option<String>> = symbols.names(&addresses).into_iter().map(|n| n.map(demangle)).collect();
        let theirs = blazesym_names(path, &offsets);
        // Where each name is defined: (start, size), by demangled name.
        let mut places: std::collections::HashMap<String, Vec<(u64, u64)>> = std::collections::HashMap::new();
        for table in [symbols.symtab, symbols.dynsym].into_iter().flatten() {
            symbols.for_each_symbol(&table, |sym| {
                if let Some(name) = symbols.name_at(&table, sym.name) {
                    places.entry(demangle(name)).or_default().push((sym.value, sym.size));
                }
            });
        }
        let (mut named, mut aliases) = (0, 0);
        for ((offset, ours), theirs) in offsets.iter().zip(&ours).zip(&theirs) {
            named += usize::from(ours.is_some());
            if ours != theirs {
                aliases += 1;
                let (Some(ours), Some(theirs)) = (ours, theirs) else {
                    panic!("{}+{offset:#x}: {ours:?} vs {theirs:?}", path.display())
                };
                let same_function = places[ours].iter().any(|place| places[theirs].contains(place));
                assert!(same_function, "{}+{offset:#x}: {ours} is no alias of {theirs}", path.display());
            }
        }
        assert!(named > offsets.len() / 100, "{}: {named} of {} offsets named", path.display(), offsets.len());
        eprintln!("{}: {} offsets, {named} named, {aliases} alias choices differ", path.display(), offsets.len());
        aliases
    }

    #[test]
    fn resolves_as_blazesym_did_on_this_test_binary() {
        assert_same_names_as_blazesym(&std::env::current_exe().expect("exe"), 61);
    }

    #[test]
    fn resolves_as_blazesym_did_on_libc_and_a_stripped_binary() {
        for path in ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash"] {
            assert_same_names_as_blazesym(Path::new(path), 13);
        }
    }

    #[test]
    fn rejects_what_is_not_elf() {
        let path = std::env::temp_dir().join(format!("weir-elfsym-not-elf-{}", std::process::id()));
        std::fs::write(&path, b"#!/bin/sh\n").expect("write");
        assert!(SymbolFile::open(&path).is_none());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn demangles_rust_and_cpp_names_and_keeps_c_names() {
        assert_eq!(demangle("_ZN4core3fmt5write17h0123456789abcdefE".into()), "core::fmt::write");
        assert_eq!(demangle("_ZN3foo3barEv".into()), "foo::bar()");
        assert_eq!(demangle("main".into()), "main");
    }
}
