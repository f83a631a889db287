//! Addresses to function names, with blazesym.
//!
//! User frames resolve through a process's cached memory maps to (binary,
//! file offset), so they resolve after the process has exited; results are
//! cached per binary build id, so a binary shared by many processes (or
//! rebuilt at the same path) is looked up once per build.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};

use crate::cfi::{self, BinaryLayout, FrameRule, UnwindTables};
use crate::procmaps::ProcessInfo;

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

/// The name of a frame in a PLT stub: a jump to another object's function.
pub const PLT_STUB: &str = "[plt]";

/// What is known of one binary file.
#[derive(Debug)]
struct Binary {
    /// The ELF build id, or the path where there is none.
    identity: Vec<u8>,
    /// Its separate debug file, found by build id.
    debug_file: Option<PathBuf>,
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
    blaze: Blaze,
    binaries: HashMap<PathBuf, Binary>,
    user: HashMap<(Vec<u8>, u64), String>,
    kernel: HashMap<u64, String>,
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
        self.binaries.entry(path.to_path_buf()).or_insert_with(|| match blazesym::helper::read_elf_build_id(&path) {
            Ok(Some(build_id)) => Binary {
                debug_file: debug_file(&build_id),
                identity: build_id.to_vec(),
                layout: BinaryLayout::read(path),
            },
            _ => Binary {
                identity: path.as_os_str().as_encoded_bytes().to_vec(),
                debug_file: None,
                layout: BinaryLayout::read(path),
            },
        })
    }

    /// The ELF symbol (never DWARF: parsing a binary's debug information
    /// costs the agent tens of MiB, and profiles show functions, not lines)
    /// at `offset` in `path`, or in its separate debug file's symbol table
    /// where the binary itself is stripped.
    fn elf_symbol(&mut self, path: &Path, offset: u64) -> Option<String> {
        let binary = self.binary(path);
        let (debug_file, layout) = (binary.debug_file.clone(), binary.layout.clone());
        // A stub's address would take the name of whatever precedes it (`_init`).
        if layout.as_ref().is_some_and(|l| l.is_plt(offset)) {
            return Some(PLT_STUB.to_string());
        }
        if let Some(name) = self.elf_symbol_in(path, Input::FileOffset(&[offset])) {
            return Some(name);
        }
        // The debug file's segments hold no file contents: look it up by address.
        let address = layout?.address_of(offset)?;
        self.elf_symbol_in(&debug_file?, Input::VirtOffset(&[address]))
    }

    fn elf_symbol_in(&self, file: &Path, input: Input<&[u64]>) -> Option<String> {
        let source = Source::Elf(Elf { debug_syms: false, ..Elf::new(file) });
        match self.blaze.symbolize(&source, input).ok()?.pop()? {
            Symbolized::Sym(sym) => Some(sym.name.to_string()),
            _ => None,
        }
    }

    fn file_frame(&mut self, path: &Path, offset: u64) -> String {
        let key = (self.identity(path), offset);
        if let Some(name) = self.user.get(&key) {
            return name.clone();
        }
        let name = self.elf_symbol(path, offset).unwrap_or_else(|| {
            format!("{}+{offset:#x}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
        });
        let name = sanitize(name);
        self.user.insert(key, name.clone());
        name
    }

    /// Symbolizes a user stack (innermost first) against the process's cached
    /// maps, checked against the binaries' unwind tables first (see
    /// [`cfi::checked_walk`]); `stack_top` holds the return-address-like words
    /// at the sampled stack pointer.
    pub fn user_stack(&mut self, process: Option<&ProcessInfo>, stack: &[u64], stack_top: &[u64]) -> UserStack {
        let stack = cfi::checked_walk(stack, stack_top, |addr, sampled| {
            // A return address follows its call: the call's rule is the one before it.
            self.frame_rule(process, if sampled { addr } else { addr.saturating_sub(1) })
        });
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
        let missing: Vec<u64> = stack.iter().copied().filter(|a| !self.kernel.contains_key(a)).collect();
        if !missing.is_empty() {
            let source = Source::Kernel(Kernel::default());
            let resolved = self.blaze.symbolize(&source, Input::AbsAddr(&missing)).unwrap_or_default();
            for (i, addr) in missing.iter().enumerate() {
                let name = match resolved.get(i) {
                    Some(Symbolized::Sym(sym)) => sanitize(sym.name.to_string()),
                    _ => format!("[kernel] {addr:#x}"),
                };
                self.kernel.insert(*addr, name);
            }
        }
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
