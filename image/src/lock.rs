//! `vmctl.lock`: the pins that make a lab rebuild identically. It sits beside
//! the KDL file (commit it with the lab) and records, per built-in image, the
//! exact Debian package versions (and their `.deb` digests) and the sha256 of
//! the kernel and initrd they produced.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ImageError;

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub format_version: String,
    /// Image variant (`debian-12`, `debian-12+nginx`) → its pins.
    #[serde(default)]
    pub images: BTreeMap<String, LockedImage>,
}

impl Default for LockFile {
    fn default() -> Self {
        Self {
            format_version: "1".into(),
            images: BTreeMap::new(),
        }
    }
}

/// What one built image was made from and what it came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedImage {
    /// The version of vmctl's assembly recipe (initramfs layout, agent script).
    pub recipe: u32,
    pub packages: Vec<LockedPackage>,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// The cache key: `<state-dir>/images/<image_id>/`.
    pub image_id: String,
    /// The root filesystem built then (informational: a rebuild from the
    /// same packages gives the same package set, not the same ext4 bytes —
    /// docs/images.md says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_sha256: Option<String>,
}

/// One Debian package, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// sha256 of the `.deb` file.
    pub sha256: String,
}

impl LockFile {
    /// Read `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<Self, ImageError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ImageError::io(path, source)),
        };
        let lock: LockFile = serde_json::from_str(&text).map_err(|e| ImageError::BadLock {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if lock.format_version != "1" {
            return Err(ImageError::BadLock {
                path: path.to_path_buf(),
                detail: format!(
                    "format_version {:?} is not one this vmctl reads (\"1\")",
                    lock.format_version
                ),
            });
        }
        Ok(lock)
    }

    /// Write atomically (temp file + rename), pretty-printed for review.
    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| ImageError::BadLock {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        text.push('\n');
        super::write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmctl.lock");
        assert_eq!(LockFile::read(&path).unwrap(), LockFile::default());
        let mut lock = LockFile::default();
        lock.images.insert(
            "debian-12".into(),
            LockedImage {
                recipe: 1,
                packages: vec![LockedPackage {
                    name: "busybox-static".into(),
                    version: "1:1.35.0-4".into(),
                    sha256: "ab".into(),
                }],
                kernel_sha256: "k".into(),
                initrd_sha256: "i".into(),
                image_id: "id".into(),
                rootfs_sha256: None,
            },
        );
        lock.write(&path).unwrap();
        assert_eq!(LockFile::read(&path).unwrap(), lock);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmctl.lock");
        std::fs::write(&path, "{not json").unwrap();
        let err = LockFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("vmctl.lock"), "{err}");
        std::fs::write(&path, r#"{"format_version":"9"}"#).unwrap();
        let err = LockFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("format_version"), "{err}");
    }
}
