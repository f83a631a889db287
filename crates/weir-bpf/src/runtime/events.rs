//! Runtime events as the kernel posts them, decoded from the ring.

use std::net::IpAddr;

use weir_runtime::Action;

use crate::api::{read_pod, read_pod_prefix, rt_action, rt_event_type};
use crate::skel::runtime::types;

/// Event flags (WEIR_RT_F_*).
pub const F_PATH_TRUNCATED: u16 = 1 << 0;
pub const F_ARGS_TRUNCATED: u16 = 1 << 1;
pub const F_LSM: u16 = 1 << 3;
/// The program is no file of any mount (memfd): its path is the memfd's name.
pub const F_FILELESS: u16 = 1 << 4;
/// The program's file was deleted.
pub const F_DELETED: u16 = 1 << 5;
/// The working directory was deleted.
pub const F_CWD_DELETED: u16 = 1 << 6;
/// A dynamic loader run directly (`ld.so PROGRAM`): the path is PROGRAM's.
pub const F_LOADER: u16 = 1 << 7;

/// A kernel event, decoded from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: EventKind,
    /// The rule's action code (WEIR_RT_ACTION_*) and its bank slot + 1 (0: none).
    pub action: Option<Action>,
    pub rule_slot: Option<u32>,
    pub errno: i32,
    pub flags: u16,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime: u64,
    pub start_time: u64,
    pub exit_code: u64,
    pub detail: EventDetail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    Exec,
    Fork,
    Exit,
    Connect,
    Bind,
    Listen,
    Accept,
    Socket,
    FileOpen,
    /// An unconnected send (sendto/sendmsg with an address), judged by connect rules.
    SendMsg,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        Self::Exec,
        Self::Fork,
        Self::Exit,
        Self::Connect,
        Self::Bind,
        Self::Listen,
        Self::Accept,
        Self::Socket,
        Self::FileOpen,
        Self::SendMsg,
    ];

    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            rt_event_type::EXEC => Self::Exec,
            rt_event_type::FORK => Self::Fork,
            rt_event_type::EXIT => Self::Exit,
            rt_event_type::CONNECT => Self::Connect,
            rt_event_type::BIND => Self::Bind,
            rt_event_type::LISTEN => Self::Listen,
            rt_event_type::ACCEPT => Self::Accept,
            rt_event_type::SOCKET => Self::Socket,
            rt_event_type::FILE_OPEN => Self::FileOpen,
            rt_event_type::SENDMSG => Self::SendMsg,
            _ => return None,
        })
    }

    /// The registry's name: exec, fork, ..., file_open.
    pub fn name(self) -> &'static str {
        let code = match self {
            Self::Exec => rt_event_type::EXEC,
            Self::Fork => rt_event_type::FORK,
            Self::Exit => rt_event_type::EXIT,
            Self::Connect => rt_event_type::CONNECT,
            Self::Bind => rt_event_type::BIND,
            Self::Listen => rt_event_type::LISTEN,
            Self::Accept => rt_event_type::ACCEPT,
            Self::Socket => rt_event_type::SOCKET,
            Self::FileOpen => rt_event_type::FILE_OPEN,
            Self::SendMsg => rt_event_type::SENDMSG,
        };
        crate::api::describe(rt_event_type::ALL, code).map_or("unknown", |d| d.0)
    }
}

fn action_of(code: u8) -> Option<Action> {
    match u32::from(code) {
        rt_action::AUDIT => Some(Action::Audit),
        rt_action::KILL => Some(Action::Kill),
        rt_action::DENY => Some(Action::Deny),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventDetail {
    None,
    Exec { path: String, cwd: String, args: Vec<String> },
    Network { family: u8, protocol: u8, sock_type: u16, local: (IpAddr, u16), remote: (IpAddr, u16) },
    File { path: String },
}

/// The kernel's C chars as bytes.
fn unsigned(chars: &[std::ffi::c_char]) -> Vec<u8> {
    chars.iter().map(|c| *c as u8).collect()
}

fn text(chars: &[std::ffi::c_char], len: u16) -> String {
    let bytes = unsigned(&chars[..usize::from(len).min(chars.len())]);
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn address(words: [u32; 4], family: u8) -> IpAddr {
    if family == 6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    } else {
        IpAddr::from(words[0].to_ne_bytes())
    }
}

/// Arguments as the kernel lays them out, each ended by a NUL: empty
/// arguments are arguments too (`printf '[%s]' ''`). A buffer cut at its
/// limit ends without a NUL, in its last, partial argument.
pub fn split_args(raw: &[u8]) -> Vec<String> {
    if raw.is_empty() {
        return Vec::new();
    }
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Decodes one ring record; None for a record of no known layout.
pub fn decode(raw: &[u8]) -> Option<KernelEvent> {
    let hdr: types::weir_rt_header = read_pod(raw)?;
    let kind = EventKind::from_code(u32::from(hdr.r#type))?;
    let detail = match kind {
        EventKind::Exec => {
            // Packed: path, cwd and arguments back to back, the record cut after them.
            let data_at = std::mem::offset_of!(types::weir_rt_exec_record, data);
            let e: types::weir_rt_exec_record = read_pod_prefix(raw, data_at)?;
            let (path_len, cwd_len, args_len) =
                (usize::from(e.path_len), usize::from(e.cwd_len), usize::from(e.args_len));
            if data_at + path_len + cwd_len + args_len > raw.len() {
                return None;
            }
            let data = &e.data[..path_len + cwd_len + args_len];
            let (path, rest) = data.split_at(path_len);
            let (cwd, args) = rest.split_at(cwd_len);
            EventDetail::Exec {
                path: text(path, e.path_len),
                cwd: text(cwd, e.cwd_len),
                args: split_args(&unsigned(args)),
            }
        }
        EventKind::Fork | EventKind::Exit => EventDetail::None,
        EventKind::FileOpen => {
            let e: types::weir_rt_file_event = read_pod(raw)?;
            EventDetail::File { path: text(&e.path, e.path_len) }
        }
        _ => {
            let e: types::weir_rt_net_event = read_pod(raw)?;
            EventDetail::Network {
                family: e.family,
                protocol: e.protocol,
                sock_type: e.sock_type,
                local: (address(e.local_addr, e.family), e.local_port),
                remote: (address(e.remote_addr, e.family), e.remote_port),
            }
        }
    };
    Some(KernelEvent {
        kind,
        action: action_of(hdr.action),
        rule_slot: (hdr.rule > 0).then(|| hdr.rule - 1),
        errno: hdr.errno_,
        flags: hdr.flags,
        pid: hdr.pid,
        tid: hdr.tid,
        ppid: hdr.ppid,
        uid: hdr.uid,
        gid: hdr.gid,
        cgroup_id: hdr.cgroup_id,
        ktime: hdr.ktime,
        start_time: hdr.start_time,
        exit_code: hdr.exit_code,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::split_args;

    #[test]
    fn empty_arguments_are_kept() {
        assert_eq!(split_args(b"printf\0[%s]\0\0mid\0\0"), ["printf", "[%s]", "", "mid", ""]);
        assert_eq!(split_args(b"true\0"), ["true"]);
        assert_eq!(split_args(b""), Vec::<String>::new());
        assert_eq!(split_args(b"echo\0cut-sho"), ["echo", "cut-sho"], "a cut buffer ends in its partial argument");
    }
}
