//! Addresses to function names, with blazesym.
//!
//! User frames resolve through a process's cached memory maps to (binary,
//! file offset), so they resolve after the process has exited; results are
//! cached per binary build id, so a binary shared by many processes (or
//! rebuilt at the same path) is looked up once per build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};

use crate::cfi::{self, BinaryLayout, FrameRule, UnwindTables};
use crate::elfsym::SymbolFile;
use crate::kallsyms;
use crate::procmaps::{Mapping, ProcessInfo};

pub use crate::profile::{NO_USER_STACK, UNWIND_STOPPED};
/// Where every completely unwound user stack ends: process and thread entry
/// points of glibc, musl and the Go runtime. A stack ending anywhere else was
/// cut short, typically by code built without frame pointers.
pub const STACK_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "libc_start_main_stage2",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.rt0_go",
    "runtime.mstart",
];

/// Where separate debug files are found by build id (Debian's `-dbg` and
/// `-dbgsym` packages install there).
const DEBUG_BUILD_ID_DIR: &str = "/usr/lib/debug/.build-id";

/// The kernel's symbol table.
const KALLSYMS: &str = "/proc/kallsyms";

/// The name of a frame in a PLT stub: a jump to another object's function.
pub const PLT_STUB: &str = "[plt]";

/// What is known of one binary file.
#[derive(Debug)]
struct Binary {
    /// The ELF build id, or the path where there is none.
    identity: Vec<u8>,
    /// Its symbol tables, read on demand.
    symbols: Option<SymbolFile>,
    /// Its separate debug file's, found by build id.
    debug_symbols: Option<(PathBuf, SymbolFile)>,
    /// Its segments (a debug file's own place no file contents) and PLT.
    layout: Option<BinaryLayout>,
}

/// `/usr/lib/debug/.build-id/ab/cdef….debug` for build id abcdef…, if it exists.
fn debug_file(build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let path = Path::new(DEBUG_BUILD_ID_DIR).join(format!("{first:02x}")).join(format!("{rest}.debug"));
    path.is_file().then_some(path)
}

/// A caching symbolizer.
pub struct Symbolizer {
    /// Only for binaries whose symbols are xz-compressed (see [`SymbolFile`]).
    blaze: Blaze,
    binaries: HashMap<PathBuf, Binary>,
    user: HashMap<(Vec<u8>, u64), String>,
    kernel: HashMap<u64, String>,
    /// File offsets by binary, and kernel addresses, whose names are wanted
    /// and not yet known: resolved together, one pass over each table.
    queued_user: HashMap<PathBuf, Vec<u64>>,
    queued_kernel: Vec<u64>,
    /// Unwind tables by binary identity; None where a binary has none.
    unwind: HashMap<Vec<u8>, Option<UnwindTables>>,
    rules: HashMap<(Vec<u8>, u64), Option<FrameRule>>,
    /// This process's vDSO's tables and mapping size, read once: the same
    /// image as every 64-bit process's (a mapping of another size is not).
    vdso: Option<Option<(UnwindTables, u64)>>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("binaries", &self.binaries.len())
            .field("cached", &(self.user.len() + self.kernel.len()))
            .finish()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// A symbolized user stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStack {
    /// Innermost first.
    pub frames: Vec<String>,
    /// True when unwinding was cut short (see [`UNWIND_STOPPED`]).
    pub truncated: bool,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            blaze: Blaze::builder().enable_demangling(true).build(),
            binaries: HashMap::new(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            queued_user: HashMap::new(),
            queued_kernel: Vec::new(),
            unwind: HashMap::new(),
            rules: HashMap::new(),
            vdso: None,
        }
    }

    /// The frame rule at `addr` in `process`; None where its code has no
    /// unwind tables (anonymous code, binaries without them).
    fn frame_rule(&mut self, process: Option<&ProcessInfo>, addr: u64) -> Option<FrameRule> {
        let (mapping, offset) = process?.locate(addr)?;
        if mapping.pseudo.as_deref() == Some("[vdso]") {
            let (tables, size) = self.vdso.get_or_insert_with(UnwindTables::vdso).as_ref()?;
            return (*size == mapping.end - mapping.start).then(|| tables.rule_at(offset));
        }
        let path = mapping.path.as_deref()?;
        let identity = self.identity(path);
        let key = (identity, offset);
        if let Some(rule) = self.rules.get(&key) {
            return *rule;
        }
        let tables = self.unwind.entry(key.0.clone()).or_insert_with(|| UnwindTables::read(path));
        let rule = tables.as_ref().map(|t| t.rule_at(offset));
        self.rules.insert(key, rule);
        rule
    }

    fn identity(&mut self, path: &Path) -> Vec<u8> {
        self.binary(path).identity.clone()
    }

    fn binary(&mut self, path: &Path) -> &Binary {
        self.binaries.entry(path.to_path_buf()).or_insert_with(|| {
            let build_id = blazesym::helper::read_elf_build_id(&path).ok().flatten();
            let debug_symbols = build_id
                .as_deref()
                .and_then(debug_file)
                .and_then(|file| Some((file.clone(), SymbolFile::open(&file)?)));
            Binary {
                identity: build_id.map_or_else(|| path.as_os_str().as_encoded_bytes().to_vec(), |id| id.to_vec()),
                symbols: SymbolFile::open(path),
                debug_symbols,
                layout: BinaryLayout::read(path),
            }
        })
    }

    /// Blazesym's answer for one address, for files this crate cannot read
    /// the symbols of (see [`SymbolFile::compressed_only`]).
    fn elf_symbol_in(&self, file: &Path, input: Input<&[u64]>) -> Option<String> {
        let source = Source::Elf(Elf { debug_syms: false, ..Elf::new(file) });
        match self.blaze.symbolize(&source, input).ok()?.pop()? {
            Symbolized::Sym(sym) => Some(sym.name.to_string()),
            _ => None,
        }
    }

    /// The ELF symbols (never DWARF: parsing a binary's debug information
    /// costs the agent tens of MiB, and profiles show functions, not lines)
    /// at `offsets` (sorted, distinct) in `path`, or in its separate debug
    /// file's symbol table where the binary itself names none.
    fn elf_symbols(&mut self, path: &Path, offsets: &[u64]) -> Vec<Option<String>> {
        self.binary(path);
        let mut names: Vec<Option<String>> = vec![None; offsets.len()];
        let Some(binary) = self.binaries.get(path) else { return names };
        let layout = binary.layout.as_ref();
        // A stub's address would take the name of whatever precedes it (`_init`).
        let plt: Vec<bool> = offsets.iter().map(|o| layout.is_some_and(|l| l.is_plt(*o))).collect();
        let in_file = |symbols: &SymbolFile, file: &Path, addresses: &[Option<u64>], names: &mut [Option<String>]| {
            let open: Vec<usize> = (0..names.len()).filter(|i| names[*i].is_none() && !plt[*i]).collect();
            if symbols.compressed_only {
                for i in open {
                    names[i] = addresses[i].and_then(|a| self.elf_symbol_in(file, Input::VirtOffset(&[a])));
                }
                return;
            }
            let asked: Vec<u64> = open.iter().filter_map(|i| addresses[*i]).collect();
            let mut found = symbols.names(&asked).into_iter();
            for i in open {
                if addresses[i].is_some() {
                    names[i] = found.next().flatten().map(crate::elfsym::demangle);
                }
            }
        };
        if let Some(symbols) = &binary.symbols {
            let addresses: Vec<Option<u64>> = offsets.iter().map(|o| symbols.address_of(*o)).collect();
            in_file(symbols, path, &addresses, &mut names);
        }
        // The debug file's segments hold no file contents: look it up by address.
        if let (Some((file, symbols)), Some(layout)) = (&binary.debug_symbols, layout) {
            let addresses: Vec<Option<u64>> = offsets.iter().map(|o| layout.address_of(*o)).collect();
            in_file(symbols, file, &addresses, &mut names);
        }
        for (name, plt) in names.iter_mut().zip(plt) {
            if plt {
                *name = Some(PLT_STUB.to_string());
            }
        }
        names
    }

    /// Queues the name of the code at `offset` in `path` unless it is known.
    fn queue_file_frame(&mut self, path: &Path, offset: u64) {
        let key = (self.identity(path), offset);
        if !self.user.contains_key(&key) {
            self.queued_user.entry(path.to_path_buf()).or_default().push(offset);
        }
    }

    fn file_frame(&mut self, path: &Path, offset: u64) -> String {
        let key = (self.identity(path), offset);
        if !self.user.contains_key(&key) {
            self.queue_file_frame(path, offset);
            self.resolve_queued();
        }
        self.user.get(&key).cloned().unwrap_or_default()
    }

    /// Resolves every queued name: one pass per binary, one over kallsyms.
    pub fn resolve_queued(&mut self) {
        for (path, mut offsets) in std::mem::take(&mut self.queued_user) {
            offsets.sort_unstable();
            offsets.dedup();
            let identity = self.identity(&path);
            let names = self.elf_symbols(&path, &offsets);
            for (offset, name) in offsets.into_iter().zip(names) {
                let name = name.unwrap_or_else(|| {
                    format!("{}+{offset:#x}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
                });
                self.user.insert((identity.clone(), offset), sanitize(name));
            }
        }
        let mut addresses = std::mem::take(&mut self.queued_kernel);
        if addresses.is_empty() {
            return;
        }
        addresses.sort_unstable();
        addresses.dedup();
        let open = || std::fs::File::open(KALLSYMS).map(std::io::BufReader::new);
        let names = kallsyms::resolve(open, &addresses).unwrap_or_default();
        for (i, addr) in addresses.iter().enumerate() {
            let name = match names.get(i) {
                Some(Some(name)) => sanitize(crate::elfsym::demangle(name.clone())),
                _ => format!("[kernel] {addr:#x}"),
            };
            self.kernel.insert(*addr, name);
        }
    }

    /// The frames of a user stack that are certain (see [`cfi::checked_walk`]).
    fn checked_walk(&mut self, process: Option<&ProcessInfo>, stack: &[u64], stack_top: &[u64]) -> Vec<u64> {
        cfi::checked_walk(stack, stack_top, |addr, sampled| {
            // A return address follows its call: the call's rule is the one before it.
            self.frame_rule(process, if sampled { addr } else { addr.saturating_sub(1) })
        })
    }

    /// Queues the names a user stack needs, to be resolved with every other
    /// queued one by [`Self::resolve_queued`].
    pub fn queue_user_stack(&mut self, process: Option<&ProcessInfo>, stack: &[u64], stack_top: &[u64]) {
        let Some(process) = process else { return };
        for (depth, addr) in self.checked_walk(Some(process), stack, stack_top).into_iter().enumerate() {
            if let Some((Mapping { path: Some(path), .. }, offset)) = process.locate(addr) {
                self.queue_file_frame(path, if depth == 0 { offset } else { offset.saturating_sub(1) });
            }
        }
    }

    /// Queues the names a kernel stack needs (see [`Self::queue_user_stack`]).
    pub fn queue_kernel_stack(&mut self, stack: &[u64]) {
        let missing = stack.iter().filter(|a| !self.kernel.contains_key(a));
        self.queued_kernel.extend(missing);
    }

    /// Symbolizes a user stack (innermost first) against the process's cached
    /// maps, checked against the binaries' unwind tables first (see
    /// [`cfi::checked_walk`]); `stack_top` holds the return-address-like words
    /// at the sampled stack pointer.
    pub fn user_stack(&mut self, process: Option<&ProcessInfo>, stack: &[u64], stack_top: &[u64]) -> UserStack {
        self.queue_user_stack(process, stack, stack_top);
        self.resolve_queued();
        let stack = self.checked_walk(process, stack, stack_top);
        let mut frames = Vec::with_capacity(stack.len());
        for (depth, addr) in stack.iter().enumerate() {
            match process.and_then(|p| p.locate(*addr)) {
                Some((m, offset)) => match (&m.path, &m.pseudo) {
                    // A return address may be past a function's end (a call to a noreturn function).
                    (Some(path), _) => {
                        frames.push(self.file_frame(path, if depth == 0 { offset } else { offset.saturating_sub(1) }))
                    }
                    (None, Some(pseudo)) => frames.push(pseudo.clone()),
                    (None, None) => frames.push(format!("[anonymous code] {addr:#x}")),
                },
                // The sampled instruction itself may be in JIT code or a pseudo-map.
                None if depth == 0 => frames.push(format!("[unknown] {addr:#x}")),
                // A return address outside all code: the frame chain is broken.
                None => return UserStack { frames, truncated: true },
            }
        }
        // The walk ended early unless it reached an entry point.
        let complete = frames.last().is_some_and(|outermost| STACK_ROOTS.contains(&outermost.as_str()));
        UserStack { frames, truncated: !complete }
    }

    /// Symbolizes a kernel stack (innermost first) through kallsyms.
    pub fn kernel_stack(&mut self, stack: &[u64]) -> Vec<String> {
        self.queue_kernel_stack(stack);
        self.resolve_queued();
        stack.iter().map(|a| self.kernel.get(a).cloned().unwrap_or_default()).collect()
    }
}

/// Frame names are joined with ';' in folded stacks.
pub fn sanitize(name: String) -> String {
    if name.contains([';', '\n']) {
        name.replace([';', '\n'], ":")
    } else {
        name
    }
}
