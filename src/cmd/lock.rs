//! `vmctl lock show|break`: who holds a cluster's shared lock on etcd
//! (holder, fencing token, lease and its TTL left), and freeing it by
//! revoking the holder's lease (docs/scale-out.md, "Shared state on etcd").
//! A dead holder's lock frees itself when its lease expires; `break` is for
//! a holder that is alive but must be stopped, and its next write is then
//! refused by etcd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vmctl_cluster::{Auth, ClusterError, Etcd, EtcdConfig, LockStatus, TlsFiles};

use crate::cmd::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: LockCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LockCommand {
    /// Who holds the cluster lock: holder, fencing token, lease, TTL left.
    Show(ShowArgs),
    /// Free the cluster lock by revoking its holder's lease; says what it broke.
    Break(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A KDL file whose `cluster` node says how to reach etcd (instead of
    /// --endpoints and the TLS/auth flags).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "endpoints"
    )]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Print JSON (`{"format_version":"1",...}`).
    #[arg(long)]
    pub json: bool,
}

/// How to reach the shared state: the flags every etcd-backed command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(long, env = "VMCTL_ETCD_ENDPOINTS", value_name = "URL,...")]
    pub endpoints: Option<String>,
    /// Cluster name: the keys live under /vmctl/<cluster>/.
    #[arg(long, env = "VMCTL_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// PEM CA certificate that signed the etcd members' certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate (with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM client key (with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (password from VMCTL_ETCD_PASSWORD or --etcd-password-file).
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
    /// File whose first line is the etcd user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The client configuration these flags describe.
    pub fn config(&self) -> miette::Result<EtcdConfig> {
        let endpoints = self.endpoints.as_deref().ok_or_else(|| {
            miette::miette!(
                help = "pass --endpoints URL,... (or VMCTL_ETCD_ENDPOINTS), or -f FILE with a `cluster` node",
                "where is etcd?"
            )
        })?;
        let mut cfg = EtcdConfig::new(EtcdConfig::parse_endpoints(endpoints), &self.cluster);
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            cfg.tls = Some(TlsFiles {
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            });
        }
        if let Some(user) = &self.etcd_user {
            let password = match &self.etcd_password_file {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| miette::miette!("cannot read {}: {e}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                None => std::env::var("VMCTL_ETCD_PASSWORD").map_err(|_| {
                    miette::miette!(
                        help = "set VMCTL_ETCD_PASSWORD or pass --etcd-password-file",
                        "--etcd-user {user} needs a password"
                    )
                })?,
            };
            cfg.auth = Some(Auth {
                user: user.clone(),
                password,
            });
        }
        Ok(cfg)
    }

    pub fn connect(&self) -> miette::Result<Etcd> {
        Etcd::connect(self.config()?).map_err(report)
    }
}

/// A cluster error as a report with a hint of what to do.
pub fn report(e: ClusterError) -> miette::Report {
    let help = match &e {
        ClusterError::Unavailable { .. } => {
            "check --endpoints; a majority of the etcd members must be up and reachable"
        }
        ClusterError::Auth { .. } => {
            "check --etcd-user and its password, or the client certificate"
        }
        ClusterError::Held { .. } => {
            "wait for it to finish; a holder that died frees the lock when its lease expires; `vmctl lock break` frees it now"
        }
        ClusterError::Fenced { .. } | ClusterError::LeaseLost { .. } => {
            "another vmctl took the lock: run again once it is done"
        }
        ClusterError::Config(_) | ClusterError::ReadFile { .. } => "check the etcd flags",
        _ => "",
    };
    if help.is_empty() {
        miette::miette!("{e}")
    } else {
        miette::miette!(help = help, "{e}")
    }
}

pub fn run(g: &Global, args: Args) -> miette::Result<ExitCode> {
    match args.command {
        LockCommand::Show(a) => show(g, a),
        LockCommand::Break(a) => break_lock(g, a),
    }
}

/// etcd as the flags, or the file's `cluster` node, say.
fn connect(g: &Global, a: &ShowArgs) -> miette::Result<Etcd> {
    let Some(file) = &a.file else {
        return a.etcd.connect();
    };
    let loaded = crate::cmd::load(g, file)?;
    let spec = loaded
        .state
        .cluster
        .as_ref()
        .ok_or_else(|| miette::miette!("{} has no `cluster` node", file.display()))?;
    let cfg = crate::cluster::session::etcd_config(spec)?;
    Etcd::connect(cfg).map_err(report)
}

fn show(g: &Global, a: ShowArgs) -> miette::Result<ExitCode> {
    let etcd = connect(g, &a)?;
    let status = etcd.lock_status().map_err(report)?;
    let text = if a.json {
        json_line(serde_json::json!({
            "format_version": "1",
            "cluster": a.etcd.cluster,
            "held": status.is_some(),
            "lock": status,
        }))?
    } else {
        match &status {
            Some(s) => format!(
                "cluster {:?}: lock held by {}\n{}",
                a.etcd.cluster,
                s.holder.holder,
                details(s)
            ),
            None => format!("cluster {:?}: the lock is free\n", a.etcd.cluster),
        }
    };
    crate::cmd::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn break_lock(g: &Global, a: ShowArgs) -> miette::Result<ExitCode> {
    let etcd = connect(g, &a)?;
    let broken = etcd.break_lock().map_err(report)?;
    let text = if a.json {
        json_line(serde_json::json!({
            "format_version": "1",
            "cluster": a.etcd.cluster,
            "broken": broken,
        }))?
    } else {
        match &broken {
            Some(s) => format!(
                "cluster {:?}: broke the lock held by {} (its next write of shared state will be refused)\n{}",
                a.etcd.cluster,
                s.holder.holder,
                details(s)
            ),
            None => format!(
                "cluster {:?}: the lock was free; nothing to break\n",
                a.etcd.cluster
            ),
        }
    };
    crate::cmd::print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn details(s: &LockStatus) -> String {
    let lease = if s.lease_id == 0 {
        "none".to_string()
    } else {
        let secs = |t: Option<i64>| t.map_or("?".to_string(), humantime_secs);
        format!(
            "{:x} (TTL {}, {} left)",
            s.lease_id,
            secs(s.granted_ttl_secs),
            secs(s.ttl_left_secs)
        )
    };
    format!(
        "  command: {}\n  since:   {}\n  token:   {}\n  lease:   {lease}\n",
        s.holder.command, s.holder.started_at, s.token
    )
}

fn humantime_secs(t: i64) -> String {
    format!("{:?}", Duration::from_secs(u64::try_from(t).unwrap_or(0)))
}

fn json_line(v: serde_json::Value) -> miette::Result<String> {
    serde_json::to_string_pretty(&v)
        .map(|s| s + "\n")
        .map_err(|e| miette::miette!("cannot encode JSON: {e}"))
}
