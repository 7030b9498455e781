//! Fetching and unpacking Debian packages with the host's own tools
//! (`apt-cache`, `apt-get download`, `dpkg-deb -x`): nothing is installed on
//! the host, and apt verifies every package against the archive's signatures.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from apt and dpkg.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error(
        "`{tool}` is not available on this host, so the debian-12 image cannot be built here.\n\
         Either build it on a Debian/Ubuntu host (`vmctl image build`, then copy the state \
         directory's images/ and vmctl.lock), or declare your own boot image instead:\n  \
         image \"my-linux\" {{ kernel \"vmlinuz\"; initrd \"initrd.img\"; cmdline \"console=ttyS0\" }}\n  \
         vm \"x\" {{ os \"my-linux\" }}"
    )]
    Unavailable { tool: &'static str },
    #[error("apt cannot serve {package} version {version} (pinned in {lock}): {detail}")]
    VersionUnavailable {
        package: String,
        version: String,
        lock: String,
        detail: String,
    },
    #[error("apt knows no installable version of {package} (run `apt-get update`?): {detail}")]
    NoCandidate { package: String, detail: String },
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("running `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
}

fn run(cmd: &mut Command) -> Result<String, AptError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| AptError::Io {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .filter(|l| !l.starts_with("W:"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(AptError::Failed { command, detail });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Fail with a clear message (naming the alternative) unless apt and dpkg are here.
pub fn require_tools() -> Result<(), AptError> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if !on_path(tool) {
            return Err(AptError::Unavailable { tool });
        }
    }
    Ok(())
}

/// The version `apt-get download PKG` would fetch.
pub fn candidate_version(package: &str) -> Result<String, AptError> {
    let out = run(Command::new("apt-cache").args(["policy", package]))?;
    parse_candidate(&out).ok_or_else(|| AptError::NoCandidate {
        package: package.to_string(),
        detail: out.trim().lines().take(3).collect::<Vec<_>>().join("; "),
    })
}

fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// The `Depends:` of one package version, as package names (alternatives and
/// version constraints dropped).
pub fn depends(package: &str, version: &str) -> Result<Vec<String>, AptError> {
    let out = run(Command::new("apt-cache").args(["show", &format!("{package}={version}")]))?;
    Ok(parse_depends(&out))
}

fn parse_depends(show: &str) -> Vec<String> {
    // `apt-cache show` may print several stanzas; the first is the one asked for.
    let stanza = show.split("\n\n").next().unwrap_or_default();
    stanza
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .map(|deps| {
            deps.split(',')
                .filter_map(|d| d.split('|').next())
                .filter_map(|d| d.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Download exactly `package=version` into `dir` (which should be empty) and
/// return the `.deb`'s path. `lock` names the lock file in the error when that
/// version cannot be served.
pub fn download(package: &str, version: &str, dir: &Path, lock: &str) -> Result<PathBuf, AptError> {
    std::fs::create_dir_all(dir).map_err(|source| AptError::Io {
        command: format!("mkdir {}", dir.display()),
        source,
    })?;
    let res = run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(dir));
    if let Err(AptError::Failed { detail, .. }) = &res
        && (detail.contains("not found") || detail.contains("Unable to locate"))
    {
        return Err(AptError::VersionUnavailable {
            package: package.into(),
            version: version.into(),
            lock: lock.into(),
            detail: detail.clone(),
        });
    }
    res?;
    let prefix = format!("{package}_");
    let rd = std::fs::read_dir(dir).map_err(|source| AptError::Io {
        command: format!("ls {}", dir.display()),
        source,
    })?;
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(ent.path());
        }
    }
    Err(AptError::Failed {
        command: format!("apt-get download {package}={version}"),
        detail: "no .deb file appeared".into(),
    })
}

/// Unpack a `.deb`'s files into `dest` (no maintainer scripts run).
pub fn extract(deb: &Path, dest: &Path) -> Result<(), AptError> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_from_policy() {
        let p = "linux-image-cloud-amd64:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n";
        assert_eq!(parse_candidate(p).as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn depends_from_show() {
        let s = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), a | b\n\nPackage: other\nDepends: zzz\n";
        assert_eq!(parse_depends(s), ["linux-image-6.1.0-56-cloud-amd64", "a"]);
        assert!(parse_depends("Package: x\n").is_empty());
    }
}
