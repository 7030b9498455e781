//! What is needed to reach the shared state: endpoints, the cluster name
//! (the key prefix `/vmctl/<cluster>/`), the lock's lease TTL, timeouts, TLS
//! and auth. Filled by the CLI flags today and by the KDL `cluster` node
//! later; nothing here talks to etcd.

use std::path::PathBuf;
use std::time::Duration;

use crate::ClusterError;

/// The lock's default lease TTL: a dead holder frees the lock within this.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);

/// How to reach etcd and which cluster's keys to use.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://127.0.0.1:2379`, `https://…`); any member will do.
    pub endpoints: Vec<String>,
    /// The cluster name: every key lives under `/vmctl/<cluster>/`.
    pub cluster: String,
    /// The lock's lease TTL (etcd rounds it up to whole seconds, at least
    /// its own minimum, about 2 s with default election timing).
    pub lock_ttl: Duration,
    /// How long to wait for a TCP/TLS connection to one endpoint.
    pub dial_timeout: Duration,
    /// How long one request may take before it counts as timed out.
    pub request_timeout: Duration,
    /// How long a call keeps retrying (with backoff) before it reports
    /// `Unavailable`.
    pub retry_for: Duration,
    pub tls: Option<TlsFiles>,
    pub auth: Option<Auth>,
}

/// PEM files for TLS: the CA that signed the members' certificates and,
/// for client-certificate auth, our certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// etcd's own user/password auth.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdConfig {
    /// A configuration with the defaults: lock TTL 15 s, dial 2 s, request
    /// 3 s, retries for 10 s, no TLS, no auth.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> Self {
        EtcdConfig {
            endpoints,
            cluster: cluster.into(),
            lock_ttl: DEFAULT_LOCK_TTL,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(10),
            tls: None,
            auth: None,
        }
    }

    /// Split a comma-separated endpoint list (`--endpoints`,
    /// `VMCTL_ETCD_ENDPOINTS`, the KDL `endpoints=`), dropping blanks.
    pub fn parse_endpoints(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_display(&self) -> String {
        self.endpoints.join(",")
    }

    /// Refuse what cannot work before any network traffic.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.endpoints.is_empty() {
            return Err(ClusterError::Config(
                "no etcd endpoints (--endpoints or VMCTL_ETCD_ENDPOINTS)".into(),
            ));
        }
        for e in &self.endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            let member = rest.map(|r| r.strip_suffix('/').unwrap_or(r));
            if !member.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
                return Err(ClusterError::Config(format!(
                    "endpoint {e:?} is not an http:// or https:// URL of one member (host:port)"
                )));
            }
            if self.tls.is_some() && e.starts_with("http://") {
                return Err(ClusterError::Config(format!(
                    "endpoint {e:?} is plain http but TLS files were given: use https://"
                )));
            }
        }
        crate::keys::check_name("cluster", &self.cluster)?;
        if self.lock_ttl < Duration::from_secs(1) {
            return Err(ClusterError::Config(format!(
                "lock TTL {:?} is below etcd's one-second granularity",
                self.lock_ttl
            )));
        }
        if self.request_timeout.is_zero() || self.dial_timeout.is_zero() {
            return Err(ClusterError::Config("timeouts must be above zero".into()));
        }
        Ok(())
    }

    /// The lease TTL to ask etcd for, in whole seconds (rounded up).
    pub(crate) fn lock_ttl_secs(&self) -> i64 {
        let s = self.lock_ttl.as_secs() + u64::from(self.lock_ttl.subsec_nanos() > 0);
        i64::try_from(s).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_checked() {
        let eps = EtcdConfig::parse_endpoints(" http://127.0.0.1:2379,, https://h:1 ");
        assert_eq!(eps, ["http://127.0.0.1:2379", "https://h:1"]);
        assert!(EtcdConfig::new(eps, "lab").validate().is_ok());
        for bad in ["127.0.0.1:2379", "http://", "ftp://x:1", "http://h:1/v3/x"] {
            let c = EtcdConfig::new(vec![bad.into()], "lab");
            assert!(
                matches!(c.validate(), Err(ClusterError::Config(_))),
                "{bad}"
            );
        }
        assert!(EtcdConfig::new(vec![], "lab").validate().is_err());
        assert!(
            EtcdConfig::new(vec!["http://h:1".into()], "a/b")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn tls_needs_https_and_ttl_rounds_up() {
        let mut c = EtcdConfig::new(vec!["http://h:1".into()], "lab");
        c.tls = Some(TlsFiles {
            ca: None,
            cert: None,
            key: None,
        });
        assert!(c.validate().is_err());
        c.lock_ttl = Duration::from_millis(1500);
        assert_eq!(c.lock_ttl_secs(), 2);
        let a = Auth {
            user: "u".into(),
            password: "secret".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
    }
}
