//! A writer for the `newc` cpio format, the only archive format the Linux
//! kernel unpacks as an initramfs. Deterministic on purpose: entries are
//! written in path order with fixed inode numbers, owner root and mtime 0, so
//! the same inputs always give the same bytes (the lock file pins the digest).

use std::collections::BTreeMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// One entry of an archive being assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { perm: u32 },
    File { perm: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { perm: u32, major: u32, minor: u32 },
}

/// Errors while assembling an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path {0:?}: must be relative, without `..`, empty or NUL parts")]
    BadPath(String),
    #[error("archive path {0:?} is given twice")]
    Duplicate(String),
    #[error("archive member {0:?} is larger than newc's 4 GiB limit")]
    TooLarge(String),
    #[error("writing the archive: {0}")]
    Io(#[from] io::Error),
}

/// An initramfs under construction: a set of paths, written sorted. Parent
/// directories are created implicitly (mode 0755).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn check_path(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/');
    let ok = !trimmed.is_empty()
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(CpioError::BadPath(path.to_string()))
    }
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = check_path(path)?;
        // Implicit parents.
        let mut parent = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir { perm: 0o755 });
        }
        match self.entries.get(&path) {
            // An explicit directory may restate an implicit one.
            Some(Entry::Dir { .. }) if matches!(entry, Entry::Dir { .. }) => {
                self.entries.insert(path, entry);
                Ok(())
            }
            Some(_) => Err(CpioError::Duplicate(path)),
            None => {
                self.entries.insert(path, entry);
                Ok(())
            }
        }
    }

    /// A directory with permission bits `perm` (e.g. 0o755).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry::Dir {
                perm: perm & 0o7777,
            },
        )
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_string()));
        }
        self.insert(
            path,
            Entry::File {
                perm: perm & 0o7777,
                data,
            },
        )
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// A character device node (e.g. /dev/console, 5:1).
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry::CharDev {
                perm: perm & 0o7777,
                major,
                minor,
            },
        )
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Write the whole archive (with its `TRAILER!!!`) to `out`.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<(), CpioError> {
        let mut w = NewcWriter::new(out);
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            match entry {
                Entry::Dir { perm } => w.entry(ino, S_IFDIR | perm, 2, path, &[], (0, 0))?,
                Entry::File { perm, data } => {
                    w.entry(ino, S_IFREG | perm, 1, path, data, (0, 0))?
                }
                Entry::Symlink { target } => {
                    w.entry(ino, S_IFLNK | 0o777, 1, path, target.as_bytes(), (0, 0))?
                }
                Entry::CharDev { perm, major, minor } => {
                    w.entry(ino, S_IFCHR | perm, 1, path, &[], (*major, *minor))?
                }
            }
        }
        w.entry(0, 0, 1, "TRAILER!!!", &[], (0, 0))?;
        Ok(())
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CpioError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Streams newc headers and data, padding each to 4 bytes.
struct NewcWriter<'a, W: Write> {
    out: &'a mut W,
    written: u64,
}

impl<'a, W: Write> NewcWriter<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Self { out, written: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn entry(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        name: &str,
        data: &[u8],
        rdev: (u32, u32),
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(name.into()))?;
        let namesize =
            u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge(name.into()))?;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_newc() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        let bytes = a.to_bytes().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("070701"));
        // mode of a 0755 regular file
        assert_eq!(&text[14..22], "000081ed");
        // file size 10
        assert_eq!(&text[54..62], "0000000a");
        // name "init\0" = 5 bytes, header 110 + 5 = 115 -> padded to 116
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn parents_are_implicit_and_sorted_first() {
        let mut a = Archive::new();
        a.file("lib/modules/x.ko", 0o644, vec![1, 2, 3]).unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        let names: Vec<&String> = a.entries.keys().collect();
        assert_eq!(
            names,
            ["bin", "bin/sh", "lib", "lib/modules", "lib/modules/x.ko"]
        );
    }

    #[test]
    fn rejects_bad_and_duplicate_paths() {
        let mut a = Archive::new();
        assert!(matches!(a.dir("../etc", 0o755), Err(CpioError::BadPath(_))));
        assert!(matches!(a.dir("a//b", 0o755), Err(CpioError::BadPath(_))));
        assert!(matches!(a.dir("", 0o755), Err(CpioError::BadPath(_))));
        a.file("etc/x", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.file("etc/x", 0o644, vec![]),
            Err(CpioError::Duplicate(_))
        ));
        // restating a directory is fine
        a.dir("etc", 0o700).unwrap();
    }

    #[test]
    fn deterministic_bytes() {
        let build = || {
            let mut a = Archive::new();
            a.char_dev("dev/console", 0o600, 5, 1).unwrap();
            a.file("b", 0o644, b"bb".to_vec()).unwrap();
            a.file("a", 0o644, b"a".to_vec()).unwrap();
            a.to_bytes().unwrap()
        };
        assert_eq!(build(), build());
    }

    /// The host's cpio tool (when installed) must list what we wrote.
    #[test]
    fn cpio_tool_reads_it() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("skipped: no cpio tool");
            return;
        };
        if !out.status.success() {
            return;
        }
        let mut a = Archive::new();
        a.file("etc/vmctl/modules", 0o644, b"virtio.ko\n".to_vec())
            .unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        let bytes = a.to_bytes().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(listing, "bin\nbin/sh\netc\netc/vmctl\netc/vmctl/modules\n");
    }
}
