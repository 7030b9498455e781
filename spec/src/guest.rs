//! The rules for guest-configuration values (`hostname`, `user`, `ssh-key`,
//! `file`, `packages`), as pure functions.
//!
//! These values end up inside the guest — in `/etc/hostname`, `/etc/passwd`,
//! `authorized_keys`, arbitrary files and `apt-get install` — where a bad one
//! fails late (at boot or image build) and far from the KDL file. Checking them
//! here, with no KDL or spans involved, lets the syntax layer point at the
//! exact value and lets these rules be unit-tested on their own.

use base64::Engine as _;

/// The OSes whose image runs vmctl's in-guest `vmctl-config` service, and so
/// take `hostname`, `user`, `packages` and `file`.
pub const CONFIGURABLE_OSES: &[&str] = &["debian-12"];

/// Whether `os` takes guest-configuration nodes.
pub fn os_takes_config(os: &str) -> bool {
    CONFIGURABLE_OSES.contains(&os)
}

/// The longest hostname (RFC 1123, without a trailing dot).
pub const MAX_HOSTNAME: usize = 253;
/// The longest label of a hostname.
pub const MAX_HOSTNAME_LABEL: usize = 63;

/// Why `name` is not an RFC 1123 hostname, or `None` when it is.
pub fn hostname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_HOSTNAME {
        return Some(format!("it is longer than {MAX_HOSTNAME} characters"));
    }
    for label in name.split('.') {
        let b = label.as_bytes();
        let ok = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-';
        let why = match b {
            [] => "it has an empty label (`..`, or a `.` at either end)".to_string(),
            _ if b.len() > MAX_HOSTNAME_LABEL => {
                format!("its label `{label}` is longer than {MAX_HOSTNAME_LABEL} characters")
            }
            _ if !b.iter().all(ok) => {
                format!("its label `{label}` has characters other than a-z, 0-9 and `-`")
            }
            [b'-', ..] => format!("its label `{label}` starts with `-`"),
            [.., b'-'] => format!("its label `{label}` ends with `-`"),
            _ => continue,
        };
        return Some(why);
    }
    None
}

/// A valid hostname close to `name`: each label made a DNS label
/// ([`crate::names::suggest_vm_name`]), empty labels dropped.
pub fn suggest_hostname(name: &str) -> String {
    let labels: Vec<String> = name
        .split('.')
        .filter(|l| !l.trim().is_empty())
        .map(crate::names::suggest_vm_name)
        .collect();
    let mut out = if labels.is_empty() {
        "vm".to_string()
    } else {
        labels.join(".")
    };
    while out.len() > MAX_HOSTNAME {
        match out.rfind('.') {
            Some(i) => out.truncate(i),
            None => out.truncate(MAX_HOSTNAME_LABEL),
        }
    }
    out
}

/// The longest user name (Debian's `useradd` limit).
pub const MAX_USER_NAME: usize = 32;

/// Accounts the Debian 12 image already has (or systemd creates); declaring
/// one would take over a system account.
pub const SYSTEM_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "_apt",
    "nobody",
    "messagebus",
    "sshd",
];

/// Why `name` is not a valid user name (`[a-z_][a-z0-9_-]{0,31}`), or `None`.
pub fn user_name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let rest_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-';
    match b {
        [] => Some("it is empty"),
        _ if b.len() > MAX_USER_NAME => Some("it is longer than 32 characters"),
        _ if b.iter().any(u8::is_ascii_uppercase) => Some("it has uppercase letters"),
        [first, ..] if !(first.is_ascii_lowercase() || *first == b'_') => {
            Some("it does not start with a letter a-z or `_`")
        }
        _ if !b.iter().all(rest_ok) => Some("it has characters other than a-z, 0-9, `_` and `-`"),
        _ => None,
    }
}

/// Whether `name` is one of the image's system accounts.
pub fn is_system_user(name: &str) -> bool {
    SYSTEM_USERS.contains(&name) || name.starts_with("systemd-")
}

/// A valid user name close to `name`: lowercased, other characters dropped
/// (spaces and `.` become `-`), a leading digit or `-` prefixed with `u`,
/// cut to 32; `user` when nothing is left.
pub fn suggest_user_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        match c {
            'a'..='z' | '0'..='9' | '_' | '-' => out.push(c),
            '.' => out.push('-'),
            c if c.is_whitespace() => out.push('-'),
            _ => {}
        }
    }
    if out.is_empty() {
        return "user".into();
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        out.insert(0, 'u');
    }
    out.truncate(MAX_USER_NAME);
    out
}

/// The OpenSSH public key types vmctl accepts in `ssh-key`.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// What is wrong with an `ssh-key` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshKeyError {
    #[error("the key is empty")]
    Empty,
    #[error("the key spans several lines")]
    Multiline,
    #[error("`{0}` is not an OpenSSH public key type")]
    UnknownType(String),
    #[error("the key has a type but no key data")]
    MissingBlob,
    #[error("the key data is not valid base64")]
    NotBase64,
    #[error("the key data is truncated")]
    Truncated,
    #[error("the key data is a `{found}` key, but the line says `{declared}`")]
    TypeMismatch { declared: String, found: String },
}

/// A well-formed OpenSSH public key line (`TYPE BASE64 [COMMENT]`), split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKey<'a> {
    pub kind: &'a str,
    pub blob: &'a str,
    pub comment: Option<&'a str>,
}

/// Check an OpenSSH public key line: a known type, base64 key data that
/// decodes, whose embedded type (its first length-prefixed string) is the
/// declared type, and an optional comment; one line.
pub fn parse_ssh_key(line: &str) -> Result<SshKey<'_>, SshKeyError> {
    if line.contains(['\n', '\r']) {
        return Err(SshKeyError::Multiline);
    }
    let line = line.trim();
    let mut parts = line.splitn(2, char::is_whitespace);
    let kind = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or(SshKeyError::Empty)?;
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(SshKeyError::UnknownType(kind.to_string()));
    }
    let rest = parts.next().unwrap_or("").trim_start();
    let mut parts = rest.splitn(2, char::is_whitespace);
    let blob = parts
        .next()
        .filter(|b| !b.is_empty())
        .ok_or(SshKeyError::MissingBlob)?;
    let comment = parts.next().map(str::trim).filter(|c| !c.is_empty());
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| SshKeyError::NotBase64)?;
    let len = bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(SshKeyError::Truncated)?;
    let embedded = bytes.get(4..4 + len).ok_or(SshKeyError::Truncated)?;
    if embedded != kind.as_bytes() {
        return Err(SshKeyError::TypeMismatch {
            declared: kind.to_string(),
            found: String::from_utf8_lossy(embedded).into_owned(),
        });
    }
    // The key material itself follows the type.
    if bytes.len() <= 4 + len {
        return Err(SshKeyError::Truncated);
    }
    Ok(SshKey {
        kind,
        blob,
        comment,
    })
}

/// Guest paths vmctl will not write: kernel file systems, runtime state and
/// vmctl's own configuration.
pub const RESERVED_PATHS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/etc/vmctl"];

/// What is wrong with a `file` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    /// Not a normalised absolute path; the text says why.
    Malformed(&'static str),
    /// Under one of [`RESERVED_PATHS`] (the one given).
    Reserved(&'static str),
}

/// Check a guest file path: absolute, normalised (no `.`/`..` segments, no
/// `//`, not ending in `/`), no NUL, not under [`RESERVED_PATHS`].
pub fn file_path_problem(path: &str) -> Option<PathProblem> {
    let why = if !path.starts_with('/') {
        Some("it is not absolute (start it with `/`)")
    } else if path.ends_with('/') {
        Some("it ends with `/` (name a file, not a directory)")
    } else if path.contains("//") {
        Some("it has an empty segment (`//`)")
    } else if path.split('/').any(|s| s == "." || s == "..") {
        Some("it has a `.` or `..` segment")
    } else if path.contains('\0') {
        Some("it contains a NUL character")
    } else {
        None
    };
    if let Some(why) = why {
        return Some(PathProblem::Malformed(why));
    }
    RESERVED_PATHS
        .iter()
        .find(|r| path == **r || path.strip_prefix(**r).is_some_and(|s| s.starts_with('/')))
        .map(|r| PathProblem::Reserved(r))
}

/// The highest file mode (`07777`: permission bits plus setuid, setgid, sticky).
pub const MAX_FILE_MODE: u32 = 0o7777;
/// The mode of a `file` without `mode=`.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// An octal mode string (`"0600"`, `"644"`, `"4755"`) as a number, or why not.
pub fn parse_mode(s: &str) -> Result<u32, &'static str> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("it is not an octal number (digits 0-7)");
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= MAX_FILE_MODE => Ok(m),
        _ => Err("it is above 07777"),
    }
}

/// Why `name` is not a Debian package name (`[a-z0-9][a-z0-9+.-]+`), or `None`.
pub fn package_name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(c);
    match b {
        [] => Some("it is empty"),
        [_] => Some("it is shorter than 2 characters"),
        _ if b.contains(&b'=') => Some("it has a version (`=`)"),
        _ if b.contains(&b':') => Some("it has an architecture (`:`)"),
        _ if b.iter().any(u8::is_ascii_uppercase) => Some("it has uppercase letters"),
        _ if !b.iter().all(ok) => Some("it has characters other than a-z, 0-9, `+`, `.` and `-`"),
        [first, ..] if !(first.is_ascii_lowercase() || first.is_ascii_digit()) => {
            Some("it does not start with a letter or digit")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TYPE` + base64 of a blob whose embedded type is `inner`.
    fn key(kind: &str, inner: &str, comment: &str) -> String {
        let mut blob = Vec::new();
        blob.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        blob.extend_from_slice(inner.as_bytes());
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        format!("{kind} {b64} {comment}").trim_end().to_string()
    }

    #[test]
    fn hostnames() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        for ok in ["web", "web-1.lab.example", "1host", "A", &"a".repeat(63)] {
            assert_eq!(hostname_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "web_1",
            "-web",
            "web-",
            "a..b",
            "web.",
            ".web",
            "my host",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(hostname_problem(bad).is_some(), "{bad:?} accepted");
            let s = suggest_hostname(bad);
            assert_eq!(hostname_problem(&s), None, "{bad:?} → {s:?}");
        }
        assert_eq!(suggest_hostname("Web_1.Lab."), "web-1.lab");
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "_svc", "a", "bob-2", "x_y", &"a".repeat(32)] {
            assert_eq!(user_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "2bob",
            "-x",
            "al ice",
            "a.b",
            "é",
            &"a".repeat(33),
        ] {
            assert!(user_name_problem(bad).is_some(), "{bad:?} accepted");
            let s = suggest_user_name(bad);
            assert_eq!(user_name_problem(&s), None, "{bad:?} → {s:?}");
        }
        assert_eq!(suggest_user_name("Alice Smith"), "alice-smith");
        assert_eq!(suggest_user_name("2bob"), "u2bob");
        for sys in ["root", "www-data", "_apt", "systemd-network", "sshd"] {
            assert!(is_system_user(sys), "{sys}");
        }
        assert!(!is_system_user("alice"));
        assert!(!is_system_user("systemd"));
    }

    #[test]
    fn ssh_keys() {
        let good = key("ssh-ed25519", "ssh-ed25519", "alice@laptop");
        let k = parse_ssh_key(&good).unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, Some("alice@laptop"));
        assert!(parse_ssh_key(&key("ssh-rsa", "ssh-rsa", "")).is_ok());
        assert!(
            parse_ssh_key(&key(
                "sk-ssh-ed25519@openssh.com",
                "sk-ssh-ed25519@openssh.com",
                "a b c"
            ))
            .is_ok()
        );
        assert_eq!(parse_ssh_key("  "), Err(SshKeyError::Empty));
        assert_eq!(
            parse_ssh_key(&format!("{good}\n{good}")),
            Err(SshKeyError::Multiline)
        );
        assert_eq!(
            parse_ssh_key("ssh-dss AAAA"),
            Err(SshKeyError::UnknownType("ssh-dss".into()))
        );
        assert_eq!(parse_ssh_key("ssh-ed25519"), Err(SshKeyError::MissingBlob));
        assert_eq!(
            parse_ssh_key("ssh-ed25519 not*base64"),
            Err(SshKeyError::NotBase64)
        );
        assert_eq!(
            parse_ssh_key("ssh-ed25519 AAAA"),
            Err(SshKeyError::Truncated)
        );
        assert_eq!(
            parse_ssh_key(&key("ssh-ed25519", "ssh-rsa", "")),
            Err(SshKeyError::TypeMismatch {
                declared: "ssh-ed25519".into(),
                found: "ssh-rsa".into()
            })
        );
        // Only the type, no key material.
        let only_type = base64::engine::general_purpose::STANDARD
            .encode([&11u32.to_be_bytes()[..], b"ssh-ed25519"].concat());
        assert_eq!(
            parse_ssh_key(&format!("ssh-ed25519 {only_type}")),
            Err(SshKeyError::Truncated)
        );
    }

    #[test]
    fn file_paths() {
        for ok in [
            "/etc/motd",
            "/srv/www/index.html",
            "/etc/vmctl.conf",
            "/device",
        ] {
            assert_eq!(file_path_problem(ok), None, "{ok}");
        }
        for bad in [
            "etc/motd",
            "/etc/",
            "/",
            "/etc//motd",
            "/etc/../motd",
            "/./x",
            "/a\0",
        ] {
            assert!(
                matches!(file_path_problem(bad), Some(PathProblem::Malformed(_))),
                "{bad:?}"
            );
        }
        for (bad, root) in [
            ("/proc/sys/x", "/proc"),
            ("/sys", "/sys"),
            ("/dev/sda", "/dev"),
            ("/run/x", "/run"),
            ("/etc/vmctl/config.json", "/etc/vmctl"),
        ] {
            assert_eq!(file_path_problem(bad), Some(PathProblem::Reserved(root)));
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert_eq!(parse_mode("07777"), Ok(0o7777));
        assert!(parse_mode("10000").is_err());
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw-r--r--").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn package_names() {
        for ok in [
            "nginx",
            "g++",
            "libstdc++6",
            "postgresql-client",
            "0ad",
            "python3.11",
        ] {
            assert_eq!(package_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "Nginx",
            "nginx=1.2",
            "nginx:amd64",
            "-x",
            "+x",
            "a_b",
            "a b",
        ] {
            assert!(package_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
