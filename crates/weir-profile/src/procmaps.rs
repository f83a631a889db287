//! Processes' memory maps, snapshotted while they live.

use std::path::{Path, PathBuf};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub executable: bool,
    /// The backing file; None for anonymous memory and pseudo-maps like `[vdso]`.
    pub path: Option<PathBuf>,
    /// The name of a pseudo-map such as `[vdso]`.
    pub pseudo: Option<String>,
}

/// What symbolization needs to know about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub tgid: u32,
    /// The executable, from `/proc/PID/exe`.
    pub exe: Option<PathBuf>,
    pub maps: Vec<Mapping>,
}

impl ProcessInfo {
    /// Reads `/proc/TGID/{exe,maps}`; fails once the process is gone.
    pub fn snapshot(tgid: u32) -> std::io::Result<Self> {
        let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps"))?;
        let exe = std::fs::read_link(format!("/proc/{tgid}/exe")).ok();
        Ok(Self { tgid, exe, maps: parse_maps(&maps) })
    }

    /// The executable mapping holding `addr`, and `addr`'s offset in its file.
    pub fn locate(&self, addr: u64) -> Option<(&Mapping, u64)> {
        self.maps
            .iter()
            .find(|m| m.executable && m.start <= addr && addr < m.end)
            .map(|m| (m, addr - m.start + m.file_offset))
    }

    /// Whether the executable's file name or full path is `binary`.
    pub fn runs(&self, binary: &str) -> bool {
        self.exe.as_deref().is_some_and(|exe| exe == Path::new(binary) || exe.file_name().is_some_and(|n| n == binary))
    }
}

/// Parses `/proc/PID/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let name = fields.next().map(str::trim).unwrap_or_default();
            let path = name.starts_with('/').then(|| PathBuf::from(name.trim_end_matches(" (deleted)")));
            let pseudo = name.starts_with('[').then(|| name.to_string());
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.as_bytes().get(2) == Some(&b'x'),
                path,
                pseudo,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c2a00000-55d0c2a01000 r--p 00000000 fe:01 1234    /usr/bin/hot
55d0c2a01000-55d0c2a02000 r-xp 00001000 fe:01 1234    /usr/bin/hot
7f10aa000000-7f10aa1b0000 r-xp 00026000 fe:01 99      /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1e5f2000-7ffd1e5f4000 r-xp 00000000 00:00 0       [vdso]
7f10ab000000-7f10ab001000 rw-p 00000000 00:00 0 
";

    #[test]
    fn parses_file_backed_executable_mappings() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(maps[3].path, None, "pseudo-maps have no file");
        assert_eq!(maps[3].pseudo.as_deref(), Some("[vdso]"));
        assert_eq!(maps[4].path, None, "anonymous memory has no file");
    }

    #[test]
    fn locates_an_address_as_a_file_offset() {
        let info = ProcessInfo { tgid: 1, exe: Some("/usr/bin/hot".into()), maps: parse_maps(MAPS) };
        let (m, off) = info.locate(0x55d0c2a01010).expect("in the text mapping");
        assert_eq!(m.path.as_deref(), Some(Path::new("/usr/bin/hot")));
        assert_eq!(off, 0x1010);
        assert!(info.locate(0x55d0c2a00010).is_none(), "not executable");
        assert!(info.locate(0x10).is_none());
        assert!(info.runs("hot") && info.runs("/usr/bin/hot") && !info.runs("cold"));
    }
}
