//! The key layout under `/vmctl/<cluster>/` (docs/scale-out.md): the lock,
//! one record per VM, the journal. One place builds and parses keys so a
//! name can never escape its prefix.

use crate::ClusterError;

/// Width of a journal sequence number: keys sort in append order.
const SEQ_WIDTH: usize = 20;

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of cluster `name` (already checked by `EtcdConfig::validate`).
    pub fn new(cluster: &str) -> Self {
        Keys {
            prefix: format!("/vmctl/{cluster}/"),
        }
    }

    /// `/vmctl/<cluster>/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/vmctl/<cluster>/lock`: held through a lease; its creation revision
    /// is the fencing token.
    pub fn lock(&self) -> String {
        format!("{}lock", self.prefix)
    }

    /// `/vmctl/<cluster>/vms/`.
    pub fn vms_prefix(&self) -> String {
        format!("{}vms/", self.prefix)
    }

    /// `/vmctl/<cluster>/vms/<name>`.
    pub fn vm(&self, name: &str) -> Result<String, ClusterError> {
        check_name("VM", name)?;
        Ok(format!("{}{name}", self.vms_prefix()))
    }

    /// `/vmctl/<cluster>/journal/`.
    pub fn journal_prefix(&self) -> String {
        format!("{}journal/", self.prefix)
    }

    /// `/vmctl/<cluster>/journal/<seq>`, zero-padded so keys sort by seq.
    pub fn journal(&self, seq: u64) -> String {
        format!("{}{seq:0width$}", self.journal_prefix(), width = SEQ_WIDTH)
    }

    /// The VM name of a key under `vms/`, or None for a key that is not one.
    pub fn vm_name_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let name = key.strip_prefix(self.vms_prefix().as_str())?;
        check_name("VM", name).ok().map(|()| name)
    }

    /// The sequence number of a key under `journal/`.
    pub fn seq_of(&self, key: &str) -> Option<u64> {
        let s = key.strip_prefix(self.journal_prefix().as_str())?;
        if s.len() != SEQ_WIDTH || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
}

/// A cluster or VM name becomes one path segment of a key: ASCII letters,
/// digits, `.`, `_`, `-`, at most 253 bytes, not `.` or `..`.
pub fn check_name(what: &str, name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "{what} name {name:?} cannot be part of an etcd key (letters, digits, '.', '_', '-')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("lab");
        assert_eq!(k.lock(), "/vmctl/lab/lock");
        assert_eq!(k.vm("db").unwrap(), "/vmctl/lab/vms/db");
        assert_eq!(k.journal(7), "/vmctl/lab/journal/00000000000000000007");
        assert_eq!(k.seq_of(&k.journal(7)), Some(7));
        assert_eq!(k.seq_of("/vmctl/lab/journal/7"), None);
        assert_eq!(k.vm_name_of("/vmctl/lab/vms/db"), Some("db"));
        assert_eq!(k.vm_name_of("/vmctl/lab/vms/a/b"), None);
        assert!(k.journal(1) < k.journal(10));
    }

    #[test]
    fn names_cannot_escape() {
        let k = Keys::new("lab");
        for bad in ["", "a/b", "..", ".", "x\n", "é"] {
            assert!(k.vm(bad).is_err(), "{bad:?}");
        }
    }
}
