//! Kernel modules in an initramfs: which `.ko` files a wanted module needs and
//! in which order `insmod` must load them. A Debian kernel package ships no
//! `modules.dep` (depmod makes it on install), so the `depends=` field is read
//! from each module's own `.modinfo` ELF section, as `modinfo -F depends` does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Errors while resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("kernel module {0:?} is not in the kernel package")]
    Missing(String),
    #[error("{path}: not a valid 64-bit ELF kernel module ({why})")]
    BadModule { path: PathBuf, why: &'static str },
    #[error("module dependency cycle through {0:?}")]
    Cycle(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A module to put in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name (`-` normalised to `_`).
    pub name: String,
    /// Where it is on the host (inside the unpacked kernel package).
    pub path: PathBuf,
    /// Its file name (`kvm-amd.ko`).
    pub file_name: String,
}

fn bad(path: &Path, why: &'static str) -> KmodError {
    KmodError::BadModule {
        path: path.to_path_buf(),
        why,
    }
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The bytes of the `.modinfo` section of an ELF64 little-endian module.
pub fn modinfo_section<'a>(elf: &'a [u8], path: &Path) -> Result<&'a [u8], KmodError> {
    if elf.get(0..4) != Some(b"\x7fELF") {
        return Err(bad(path, "no ELF magic"));
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad(path, "not ELF64 little-endian"));
    }
    let shoff = read_u64(elf, 0x28).ok_or_else(|| bad(path, "truncated header"))?;
    let shentsize = read_u16(elf, 0x3a).ok_or_else(|| bad(path, "truncated header"))? as usize;
    let shnum = read_u16(elf, 0x3c).ok_or_else(|| bad(path, "truncated header"))? as usize;
    let shstrndx = read_u16(elf, 0x3e).ok_or_else(|| bad(path, "truncated header"))? as usize;
    if shentsize < 0x40 {
        return Err(bad(path, "section header too small"));
    }
    let shoff = usize::try_from(shoff).map_err(|_| bad(path, "section table offset"))?;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = read_u32(elf, base)?;
        let off = usize::try_from(read_u64(elf, base.checked_add(0x18)?)?).ok()?;
        let size = usize::try_from(read_u64(elf, base.checked_add(0x20)?)?).ok()?;
        Some((name, off, size))
    };
    let slice = |off: usize, size: usize| elf.get(off..off.checked_add(size)?);
    let (_, str_off, str_size) = section(shstrndx).ok_or_else(|| bad(path, "no section names"))?;
    let names = slice(str_off, str_size).ok_or_else(|| bad(path, "section names out of file"))?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(|| bad(path, "section table out of file"))?;
        let name = names
            .get(name as usize..)
            .and_then(|s| s.split(|&c| c == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return slice(off, size).ok_or_else(|| bad(path, ".modinfo out of file"));
        }
    }
    Err(bad(path, "no .modinfo section"))
}

/// The value of `key` in a `.modinfo` section (`key=value\0...`).
pub fn modinfo_field(modinfo: &[u8], key: &str) -> Option<String> {
    modinfo
        .split(|&c| c == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

/// The module names `path` depends on.
pub fn depends_of(path: &Path) -> Result<Vec<String>, KmodError> {
    let elf = std::fs::read(path).map_err(|source| KmodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let info = modinfo_section(&elf, path)?;
    Ok(modinfo_field(info, "depends")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(normalise)
        .collect())
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Every `.ko` under `dir` (e.g. `lib/modules/<version>/kernel`), by name.
pub fn index(dir: &Path) -> Result<BTreeMap<String, Module>, KmodError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| KmodError::Io {
            path: d.clone(),
            source,
        })?;
        for ent in rd {
            let ent = ent.map_err(|source| KmodError::Io {
                path: d.clone(),
                source,
            })?;
            let path = ent.path();
            let ft = ent.file_type().map_err(|source| KmodError::Io {
                path: path.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(file_name) = path.file_name().and_then(|n| n.to_str())
                && let Some(stem) = file_name.strip_suffix(".ko")
            {
                out.insert(
                    normalise(stem),
                    Module {
                        name: normalise(stem),
                        file_name: file_name.to_string(),
                        path: path.clone(),
                    },
                );
            }
        }
    }
    Ok(out)
}

/// `wanted` and everything they depend on, dependencies first (the order
/// `insmod` needs), each once.
pub fn resolve(
    index: &BTreeMap<String, Module>,
    wanted: &[&str],
) -> Result<Vec<Module>, KmodError> {
    resolve_with(index, wanted, |m| depends_of(&m.path))
}

fn resolve_with(
    index: &BTreeMap<String, Module>,
    wanted: &[&str],
    deps: impl Fn(&Module) -> Result<Vec<String>, KmodError>,
) -> Result<Vec<Module>, KmodError> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, Module>,
        deps: &dyn Fn(&Module) -> Result<Vec<String>, KmodError>,
        done: &mut BTreeSet<String>,
        active: &mut BTreeSet<String>,
        out: &mut Vec<Module>,
    ) -> Result<(), KmodError> {
        if done.contains(name) {
            return Ok(());
        }
        if !active.insert(name.to_string()) {
            return Err(KmodError::Cycle(name.to_string()));
        }
        let m = index
            .get(name)
            .ok_or_else(|| KmodError::Missing(name.to_string()))?;
        for d in deps(m)? {
            visit(&d, index, deps, done, active, out)?;
        }
        active.remove(name);
        done.insert(name.to_string());
        out.push(m.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut active = BTreeSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(
            &normalise(w),
            index,
            &deps,
            &mut done,
            &mut active,
            &mut out,
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(names: &[&str]) -> BTreeMap<String, Module> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Module {
                        name: n.to_string(),
                        path: PathBuf::from(format!("/m/{n}.ko")),
                        file_name: format!("{n}.ko"),
                    },
                )
            })
            .collect()
    }

    fn fake_deps(m: &Module) -> Result<Vec<String>, KmodError> {
        Ok(match m.name.as_str() {
            "virtio_mmio" | "virtio_blk" => vec!["virtio".into(), "virtio_ring".into()],
            "virtio" => vec!["virtio_ring".into()],
            "a" => vec!["b".into()],
            "b" => vec!["a".into()],
            _ => vec![],
        })
    }

    #[test]
    fn dependencies_come_first_once() {
        let index = idx(&["virtio", "virtio_ring", "virtio_mmio", "virtio_blk"]);
        let order = resolve_with(&index, &["virtio_mmio", "virtio-blk"], fake_deps).unwrap();
        let names: Vec<&str> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"]
        );
    }

    #[test]
    fn missing_and_cycles_are_errors() {
        let index = idx(&["a", "b"]);
        assert!(matches!(
            resolve_with(&index, &["nope"], fake_deps),
            Err(KmodError::Missing(_))
        ));
        assert!(matches!(
            resolve_with(&index, &["a"], fake_deps),
            Err(KmodError::Cycle(_))
        ));
    }

    #[test]
    fn modinfo_fields() {
        let info = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_mmio\0";
        assert_eq!(
            modinfo_field(info, "depends").as_deref(),
            Some("virtio,virtio_ring")
        );
        assert_eq!(modinfo_field(info, "name").as_deref(), Some("virtio_mmio"));
        assert_eq!(modinfo_field(info, "vermagic"), None);
    }

    #[test]
    fn garbage_is_not_a_module() {
        let p = Path::new("x.ko");
        assert!(modinfo_section(b"not an elf", p).is_err());
        let mut hdr = vec![0u8; 64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 2;
        hdr[5] = 1;
        // section table far outside the file
        hdr[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        hdr[0x3a] = 0x40;
        hdr[0x3c] = 1;
        assert!(modinfo_section(&hdr, p).is_err());
    }
}
