//! tcpdump/pcap filter expressions, compiled by libpcap into classic BPF.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::Mutex;

/// One classic BPF instruction (`struct bpf_insn` of libpcap).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassicInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut ClassicInsn,
}

#[link(name = "pcap")]
extern "C" {
    fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut c_void;
    fn pcap_compile(p: *mut c_void, fp: *mut BpfProgram, s: *const c_char, optimize: c_int, netmask: u32) -> c_int;
    fn pcap_geterr(p: *mut c_void) -> *const c_char;
    fn pcap_freecode(fp: *mut BpfProgram);
    fn pcap_close(p: *mut c_void);
    fn bpf_filter(pc: *const ClassicInsn, pkt: *const u8, wirelen: c_uint, buflen: c_uint) -> c_uint;
}

const DLT_EN10MB: c_int = 1;
const PCAP_NETMASK_UNKNOWN: u32 = 0xFFFF_FFFF;

/// libpcap's parser keeps global state in older releases; one at a time.
static COMPILER: Mutex<()> = Mutex::new(());

/// Compiles an expression for Ethernet frames, as tcpdump would.
pub fn compile(expression: &str) -> Result<Vec<ClassicInsn>, String> {
    let text = CString::new(expression).map_err(|_| "the expression contains a NUL byte".to_string())?;
    let _guard = COMPILER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: plain values; the handle is closed below on every path.
    let handle = unsafe { pcap_open_dead(DLT_EN10MB, 65535) };
    if handle.is_null() {
        return Err("libpcap could not open a compiler handle".into());
    }
    let mut program = BpfProgram { bf_len: 0, bf_insns: std::ptr::null_mut() };
    // SAFETY: handle and program are valid; text outlives the call.
    let rc = unsafe { pcap_compile(handle, &mut program, text.as_ptr(), 1, PCAP_NETMASK_UNKNOWN) };
    let result = if rc != 0 {
        // SAFETY: pcap_geterr returns a NUL-terminated string owned by the handle.
        let message = unsafe { CStr::from_ptr(pcap_geterr(handle)) }.to_string_lossy().into_owned();
        Err(message)
    } else {
        // SAFETY: on success libpcap filled bf_len instructions at bf_insns.
        let insns = unsafe { std::slice::from_raw_parts(program.bf_insns, program.bf_len as usize) }.to_vec();
        // SAFETY: the program was allocated by pcap_compile.
        unsafe { pcap_freecode(&mut program) };
        Ok(insns)
    };
    // SAFETY: the handle came from pcap_open_dead and is not used again.
    unsafe { pcap_close(handle) };
    result
}

/// libpcap's own verdict: whether `program` (from `compile`) accepts `frame`,
/// a whole Ethernet frame as it was on the wire.
pub fn matches(program: &[ClassicInsn], frame: &[u8]) -> bool {
    if program.is_empty() {
        return false;
    }
    let len = c_uint::try_from(frame.len()).unwrap_or(c_uint::MAX);
    // SAFETY: libpcap's interpreter reads only `program` (which ends in a
    // return: pcap_compile validated it) and at most `len` bytes of `frame`.
    unsafe { bpf_filter(program.as_ptr(), frame.as_ptr(), len, len) != 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compiles_tcpdump_syntax_and_reports_errors() {
        let prog = super::compile("udp dst port 53 and udp[10] & 0x80 != 0").expect("compiles");
        assert!(prog.len() > 5 && prog.iter().any(|i| i.code == 0x06), "ends in returns");
        let err = super::compile("udp dst prot 53").expect_err("rejected");
        assert!(err.contains("syntax error") || err.contains("prot"), "{err}");
    }

    #[test]
    fn judges_frames_as_libpcap_does() {
        let vlan = super::compile("vlan 100").expect("compiles");
        let mut frame = vec![0u8; 12];
        frame.extend([0x81, 0x00, 0x00, 100, 0x08, 0x00]);
        frame.extend([0x45; 20]);
        assert!(super::matches(&vlan, &frame));
        frame[15] = 101;
        assert!(!super::matches(&vlan, &frame));
    }
}
