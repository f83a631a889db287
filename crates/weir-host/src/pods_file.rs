//! The lab's pods file as a contract between `weir lab up`, which writes it,
//! and the agents, which follow it: the file's digest, and where an agent
//! says which digest it has applied, so `weir lab up` can return only once
//! the agents have caught up with a change.

use std::path::Path;

/// The file in an agent's state directory that names the digest of the pods
/// file whose pods — on every node of the cluster — the agent has applied.
pub const PODS_APPLIED: &str = "pods-applied";

/// The digest of a pods file's bytes (FNV-1a, 64 bits, in hex): not a
/// security measure, a name for one version of the file.
pub fn digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// Records, atomically, that the agent whose state directory is `state_dir`
/// has applied the pods file with digest `digest`.
pub fn record_applied(state_dir: &Path, digest: &str) -> std::io::Result<()> {
    let tmp = state_dir.join(format!("{PODS_APPLIED}.tmp"));
    std::fs::write(&tmp, digest)?;
    std::fs::rename(tmp, state_dir.join(PODS_APPLIED))
}

/// The digest the agent whose state directory is `state_dir` has applied.
pub fn applied(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(PODS_APPLIED)).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests_name_contents() {
        assert_eq!(super::digest(b""), "cbf29ce484222325");
        assert_ne!(super::digest(b"[]"), super::digest(b"[ ]"));
        let dir = std::env::temp_dir().join(format!("weir-pods-applied-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(super::applied(&dir), None);
        super::record_applied(&dir, "abc").expect("record");
        assert_eq!(super::applied(&dir).as_deref(), Some("abc"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
