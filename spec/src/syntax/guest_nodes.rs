//! Reading the guest-configuration nodes of a `vm`: `hostname`, `user { ... }`,
//! `packages` and `file`.
//!
//! Kept apart from the machine nodes in `syntax.rs` because these describe
//! what happens *inside* the guest and have their own value rules
//! ([`crate::guest`]). Like the rest of the syntax layer, each value is checked
//! on its own here and a bad one is reported once and dropped; which OS may
//! take these nodes, and `copy-from` inheritance, are decided in `resolve`.

use kdl::{KdlNode, KdlValue};
use miette::SourceSpan;

use super::{Reader, Spanned, example};
use crate::diagnostic::Diag;
use crate::guest::{self, PathProblem, SshKeyError};
use crate::suggest::did_you_mean;

/// The guest-configuration nodes of a `vm` (all may repeat except `hostname`).
pub(crate) const GUEST_NODES: &[&str] = &["hostname", "user", "packages", "file"];
pub(crate) const USER_NODES: &[&str] = &["ssh-key", "sudo"];
pub(crate) const FILE_PROPS: &[&str] = &["content", "mode"];

#[derive(Debug, Clone)]
pub(crate) struct RawUser {
    pub name: Spanned<String>,
    pub ssh_keys: Vec<String>,
    pub sudo: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RawGuestFile {
    pub path: Spanned<String>,
    pub content: String,
    pub mode: u32,
}

/// What a `vm` declares for its guest; only values that passed their checks.
#[derive(Debug, Default)]
pub(crate) struct RawGuest {
    pub hostname: Option<Spanned<String>>,
    pub users: Vec<RawUser>,
    /// Unique, in the order written.
    pub packages: Vec<Spanned<String>>,
    pub files: Vec<RawGuestFile>,
    /// The name of every guest-configuration node written (valid or not):
    /// what an OS without guest configuration is told about.
    pub nodes: Vec<SourceSpan>,
    /// The name of every `packages` node.
    pub packages_nodes: Vec<SourceSpan>,
    /// A `packages` value was refused (so the list is not what was meant).
    pub packages_reported: bool,
}

impl Reader<'_> {
    /// One guest-configuration child of a `vm` (its name is in [`GUEST_NODES`]).
    pub(super) fn read_guest_node(&mut self, node: &KdlNode, g: &mut RawGuest) {
        g.nodes.push(node.name().span());
        match node.name().value() {
            "hostname" => g.hostname = self.hostname(node),
            "user" => self.user(node, g),
            "packages" => self.packages(node, g),
            _ => self.guest_file(node, g),
        }
    }

    fn hostname(&mut self, node: &KdlNode) -> Option<Spanned<String>> {
        let h = self.string_node(node)?;
        if let Some(why) = guest::hostname_problem(&h.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::bad-hostname",
                    format!("{:?} is not a valid hostname: {why}", h.val),
                )
                .label(h.span, "bad hostname")
                .help(format!(
                    "a hostname is dot-separated labels of 1-63 of a-z, 0-9 and `-` (not at \
                     either end of a label), 253 characters at most; try `hostname \"{}\"`",
                    guest::suggest_hostname(&h.val)
                )),
            );
            return None;
        }
        Some(h)
    }

    fn user(&mut self, node: &KdlNode, g: &mut RawGuest) {
        let (args, _) = self.split(node, &[]);
        let name = self
            .one_arg(node, &args)
            .and_then(|e| self.string(e, "user"))
            .and_then(|n| self.user_name(n, g));
        let mut ssh_keys: Vec<String> = Vec::new();
        let mut sudo = false;
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for child in node.iter_children() {
            if !self.accept_child(child, "`user`", USER_NODES, &["ssh-key"], &mut seen) {
                continue;
            }
            self.no_children(child);
            let (args, _) = self.split(child, &[]);
            if child.name().value() == "sudo" {
                if let Some(e) = self.one_arg(child, &args) {
                    sudo = self.boolean(e, "sudo").unwrap_or(false);
                }
                continue;
            }
            if args.is_empty() {
                self.one_arg(child, &args);
            }
            for e in args {
                if let Some(k) = self.string(e, "ssh-key").and_then(|k| self.ssh_key(k))
                    && !ssh_keys.contains(&k)
                {
                    ssh_keys.push(k);
                }
            }
        }
        if let Some(name) = name {
            g.users.push(RawUser {
                name,
                ssh_keys,
                sudo,
            });
        }
    }

    /// A user name that is well-formed, not a system account and not taken.
    fn user_name(&mut self, n: Spanned<String>, g: &RawGuest) -> Option<Spanned<String>> {
        if let Some(why) = guest::user_name_problem(&n.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::bad-user-name",
                    format!("{:?} is not a valid user name: {why}", n.val),
                )
                .label(n.span, "bad user name")
                .help(format!(
                    "user names are 1-32 of a-z, 0-9, `_` and `-`, starting with a letter \
                     or `_`; try `user \"{}\"`",
                    guest::suggest_user_name(&n.val)
                )),
            );
            return None;
        }
        if guest::is_system_user(&n.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::reserved-user",
                    format!("`{}` is a system account of the guest image", n.val),
                )
                .label(n.span, "system account")
                .help(
                    "declare your own account instead and give it root rights with \
                     `sudo #true`, e.g. `user \"alice\" { ssh-key \"ssh-ed25519 ...\"; sudo #true }`",
                ),
            );
            return None;
        }
        if let Some(first) = g.users.iter().find(|u| u.name.val == n.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-user",
                    format!("user `{}` is declared twice in this VM", n.val),
                )
                .label(n.span, "second")
                .label(first.name.span, "first")
                .help("put all of a user's `ssh-key`s and `sudo` in one `user` block"),
            );
            return None;
        }
        Some(n)
    }

    /// A well-formed OpenSSH public key line, trimmed.
    fn ssh_key(&mut self, k: Spanned<String>) -> Option<String> {
        let err = match guest::parse_ssh_key(&k.val) {
            Ok(_) => return Some(k.val.trim().to_string()),
            Err(e) => e,
        };
        let help = match &err {
            SshKeyError::UnknownType(t) if t == "ssh-dss" => {
                "DSA keys are refused by the guest's OpenSSH; make an ed25519 key with \
                 `ssh-keygen -t ed25519` and use its `.pub` line"
                    .to_string()
            }
            SshKeyError::UnknownType(t) => {
                let known = guest::SSH_KEY_TYPES.join(", ");
                match did_you_mean(t, guest::SSH_KEY_TYPES.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? key types: {known}"),
                    None => format!(
                        "write the whole line of your `.pub` file (`TYPE KEY [COMMENT]`, \
                         no options); key types: {known}"
                    ),
                }
            }
            SshKeyError::Multiline => {
                "give each key its own string: `ssh-key \"KEY1\" \"KEY2\"`".to_string()
            }
            _ => "paste the whole line of your public key file, e.g. `ssh-key \"$(cat \
                  ~/.ssh/id_ed25519.pub)\"` gives `ssh-key \"ssh-ed25519 AAAAC3Nz... \
                  alice@laptop\"`"
                .to_string(),
        };
        self.sink.push(
            Diag::error(
                "vmctl::spec::bad-ssh-key",
                format!("not an OpenSSH public key: {err}"),
            )
            .label(k.span, "bad key")
            .help(help),
        );
        None
    }

    fn packages(&mut self, node: &KdlNode, g: &mut RawGuest) {
        g.packages_nodes.push(node.name().span());
        self.no_children(node);
        let (args, _) = self.split(node, &[]);
        if args.is_empty() {
            self.one_arg(node, &args);
            g.packages_reported = true;
        }
        for e in args {
            let Some(p) = self.string(e, "packages") else {
                g.packages_reported = true;
                continue;
            };
            if let Some(why) = guest::package_name_problem(&p.val) {
                let help = if p.val.contains(['=', ':']) {
                    "write just the package name: vmctl.lock pins its version, and the \
                     architecture is the VM's"
                        .to_string()
                } else {
                    format!(
                        "Debian package names are 2 or more of a-z, 0-9, `+`, `.` and `-`, \
                         starting with a letter or digit, e.g. {}",
                        example("packages")
                    )
                };
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-package-name",
                        format!("{:?} is not a Debian package name: {why}", p.val),
                    )
                    .label(p.span, "bad package name")
                    .help(help),
                );
                g.packages_reported = true;
                continue;
            }
            if let Some(first) = g.packages.iter().find(|q| q.val == p.val) {
                self.sink.push(
                    Diag::warning(
                        "vmctl::spec::duplicate-package",
                        format!("package `{}` is listed twice", p.val),
                    )
                    .label(p.span, "again")
                    .label(first.span, "first")
                    .help("remove one of them (it is installed once either way)"),
                );
                continue;
            }
            g.packages.push(p);
        }
    }

    fn guest_file(&mut self, node: &KdlNode, g: &mut RawGuest) {
        self.no_children(node);
        let before = self.sink.errors.len();
        let (args, props) = self.split(node, FILE_PROPS);
        // A misspelled `content=` is reported once, not again as missing.
        let mut content_reported = self.sink.errors.len() > before;
        let path = self
            .one_arg(node, &args)
            .and_then(|e| self.string(e, "file"))
            .and_then(|p| self.file_path(p, g));
        let mut content = None;
        let mut mode = Some(guest::DEFAULT_FILE_MODE);
        for (k, e) in props {
            if k == "content" {
                content = self.string(e, "file \"...\" content=").map(|s| s.val);
                content_reported = content.is_none();
                continue;
            }
            let span = self.value_span(e);
            let text = match e.value() {
                KdlValue::String(s) => s.clone(),
                KdlValue::Integer(_) => {
                    // `mode=600` or `mode=0o600`: suggest the same digits quoted.
                    let written = self
                        .text
                        .get(span.offset()..span.offset() + span.len())
                        .unwrap_or("");
                    let digits = written.strip_prefix("0o").unwrap_or(written);
                    let shown = match guest::parse_mode(digits) {
                        Ok(m) => format!("{m:04o}"),
                        Err(_) => "0644".to_string(),
                    };
                    self.wrong_type(
                        e,
                        "an octal string",
                        format!("write the mode as an octal string: mode=\"{shown}\""),
                    );
                    mode = None;
                    continue;
                }
                _ => {
                    self.wrong_type(e, "an octal string", "for example: mode=\"0600\"".into());
                    mode = None;
                    continue;
                }
            };
            match guest::parse_mode(&text) {
                Ok(m) => mode = Some(m),
                Err(why) => {
                    self.sink.push(
                        Diag::error(
                            "vmctl::spec::bad-file-mode",
                            format!("{text:?} is not a file mode: {why}"),
                        )
                        .label(span, "bad mode")
                        .help(
                            "a mode is up to 4 octal digits, at most 07777, e.g. mode=\"0600\" \
                             (owner read/write) or mode=\"0755\" (executable)",
                        ),
                    );
                    mode = None;
                }
            }
        }
        let Some(path) = path else { return };
        let Some(content) = content else {
            if !content_reported {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::missing-value",
                        format!("file `{}` has no `content`", path.val),
                    )
                    .label(path.span, "this file")
                    .help(format!(
                        "give its whole content: file {} content=\"...\\n\"",
                        crate::render::quote(&path.val)
                    )),
                );
            }
            return;
        };
        let Some(mode) = mode else { return };
        g.files.push(RawGuestFile {
            path,
            content,
            mode,
        });
    }

    /// A normalised absolute path outside the reserved trees, not declared before.
    fn file_path(&mut self, p: Spanned<String>, g: &RawGuest) -> Option<Spanned<String>> {
        match guest::file_path_problem(&p.val) {
            Some(PathProblem::Malformed(why)) => {
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::bad-file-path",
                        format!("{:?} is not a usable guest path: {why}", p.val),
                    )
                    .label(p.span, "bad path")
                    .help(
                        "write the file's absolute, normalised path in the guest, e.g. \
                         file \"/etc/motd\" content=\"...\"",
                    ),
                );
                return None;
            }
            Some(PathProblem::Reserved(root)) => {
                let why = if root == "/etc/vmctl" {
                    "vmctl writes its own configuration there".to_string()
                } else {
                    format!("{root} is not a real directory on the root disk")
                };
                self.sink.push(
                    Diag::error(
                        "vmctl::spec::reserved-path",
                        format!("vmctl does not write files under {root}"),
                    )
                    .label(p.span, "reserved path")
                    .help(format!(
                        "{why}; put the file elsewhere, e.g. under /etc or /srv"
                    )),
                );
                return None;
            }
            None => {}
        }
        if let Some(first) = g.files.iter().find(|f| f.path.val == p.val) {
            self.sink.push(
                Diag::error(
                    "vmctl::spec::duplicate-file",
                    format!("file `{}` is declared twice in this VM", p.val),
                )
                .label(p.span, "second")
                .label(first.path.span, "first")
                .help("keep one `file` per path: its content is the whole file"),
            );
            return None;
        }
        Some(p)
    }
}
