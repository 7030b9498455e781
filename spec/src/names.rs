//! What a VM may be called. A VM's name becomes a directory name, a cgroup
//! name, and (soon) part of network interface and host names, so it is held
//! to a DNS label (RFC 1123): 1–63 of `a-z`, `0-9` and `-`, starting with a
//! letter or digit and not ending with `-`. Uppercase is refused (two VMs
//! `Web` and `web` would collide wherever names are case-insensitive, as DNS
//! is) and so is `_` (not valid in a host name).

/// The longest VM name (a DNS label).
pub const MAX_VM_NAME: usize = 63;

/// Why `name` is not a valid VM name, or `None` when it is.
pub fn vm_name_problem(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    match bytes {
        [] => Some("it is empty"),
        _ if bytes.len() > MAX_VM_NAME => Some("it is longer than 63 characters"),
        _ if bytes.iter().any(u8::is_ascii_uppercase) => Some("it has uppercase letters"),
        _ if !bytes.iter().all(allowed) => Some("it has characters other than a-z, 0-9 and `-`"),
        [b'-', ..] => Some("it starts with `-`"),
        [.., b'-'] => Some("it ends with `-`"),
        _ => None,
    }
}

/// A valid name close to `name`: lowercased, whitespace, `_` and `.` turned
/// into `-`, anything else dropped, runs of `-` squeezed, trimmed to 63
/// characters without a `-` at either end; `vm` when nothing is left.
pub fn suggest_vm_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'a'..='z' | '0'..='9' => c,
            '-' | '_' | '.' => '-',
            c if c.is_whitespace() => '-',
            _ => continue,
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(MAX_VM_NAME);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "vm".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_valid_names() {
        for ok in ["a", "0", "web-2", "db01", &"a".repeat(63), "a-b-c"] {
            assert_eq!(vm_name_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn everything_else_is_refused_and_the_suggestion_is_valid() {
        let long = "x".repeat(64);
        for bad in [
            "",
            "Web",
            "my vm",
            "a_b",
            "..",
            ".hidden",
            "a/b",
            "-a",
            "a-",
            "tab\there",
            "nul\0",
            "é",
            "---",
            long.as_str(),
        ] {
            assert!(vm_name_problem(bad).is_some(), "{bad:?} accepted");
            let s = suggest_vm_name(bad);
            assert_eq!(vm_name_problem(&s), None, "{bad:?} → {s:?}");
        }
        assert_eq!(suggest_vm_name("My Web_Server.1"), "my-web-server-1");
        assert_eq!(suggest_vm_name("  -Db!  "), "db");
        assert_eq!(suggest_vm_name(".."), "vm");
        assert_eq!(
            suggest_vm_name(&format!("{}-b", "a".repeat(62))),
            "a".repeat(62)
        );
    }
}
