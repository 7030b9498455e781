//! Which image a VM boots: its OS and the extra packages it declares. Each
//! distinct (OS, packages) pair is one image, one cache entry and one entry
//! in `vmctl.lock` (keyed `debian-12`, `debian-12+nginx,postgresql-client`).

use super::{ImageError, apt, debian12, minimal, rootfs};

/// How an OS is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    /// `debian-12`: a Debian root filesystem on the VM's root disk.
    Full,
    /// `debian-12-minimal`: kernel + busybox initramfs, no root filesystem.
    Minimal,
}

impl Recipe {
    /// The recipe for OS `os`, if it is a built-in Linux OS.
    pub fn of(os: &str) -> Option<Recipe> {
        match os {
            debian12::NAME => Some(Recipe::Full),
            minimal::NAME => Some(Recipe::Minimal),
            _ => None,
        }
    }

    /// Bumped whenever the recipe's output changes for the same packages: a
    /// lock made by another version cannot reproduce its digests.
    pub fn version(self) -> u32 {
        match self {
            Recipe::Full => debian12::RECIPE,
            Recipe::Minimal => minimal::RECIPE,
        }
    }

    /// Fail with a clear message (naming the alternative) unless the host
    /// tools this recipe runs are here.
    pub fn require_tools(self) -> Result<(), ImageError> {
        apt::require_tools()?;
        if self == Recipe::Full {
            rootfs::require_tools()?;
        }
        Ok(())
    }
}

/// An OS and the extra packages of one image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Variant {
    pub os: String,
    /// Sorted, unique.
    pub packages: Vec<String>,
}

impl Variant {
    pub fn new(os: &str, packages: &[String]) -> Self {
        let mut packages = packages.to_vec();
        packages.sort();
        packages.dedup();
        Variant {
            os: os.to_string(),
            packages,
        }
    }

    /// The recipe; an OS that is not built-in gets the full one's error
    /// later, so callers check [`Recipe::of`] first.
    pub fn recipe(&self) -> Recipe {
        Recipe::of(&self.os).unwrap_or(Recipe::Full)
    }

    /// The lock key: `debian-12`, or `debian-12+pkg1,pkg2`.
    pub fn key(&self) -> String {
        if self.packages.is_empty() {
            self.os.clone()
        } else {
            format!("{}+{}", self.os, self.packages.join(","))
        }
    }

    /// `images/<file>` holding the id of the image last resolved for this
    /// variant: the key itself when short, else the OS and a digest.
    pub fn pointer_file(&self) -> String {
        let key = self.key();
        if key.len() <= 120 {
            format!("{key}.id")
        } else {
            let digest = super::digest::sha256_hex(key.as_bytes());
            format!("{}+{}.id", self.os, &digest[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_pointers() {
        let base = Variant::new("debian-12", &[]);
        assert_eq!(base.key(), "debian-12");
        assert_eq!(base.pointer_file(), "debian-12.id");
        let v = Variant::new(
            "debian-12",
            &["nginx".into(), "curl".into(), "nginx".into()],
        );
        assert_eq!(v.key(), "debian-12+curl,nginx");
        let many: Vec<String> = (0..40).map(|i| format!("package-{i}")).collect();
        let long = Variant::new("debian-12", &many);
        assert!(long.pointer_file().len() < 60, "{}", long.pointer_file());
        assert_eq!(Recipe::of("debian-12-minimal"), Some(Recipe::Minimal));
        assert_eq!(Recipe::of("diag"), None);
    }
}
