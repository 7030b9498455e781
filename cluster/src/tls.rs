//! TLS for the etcd connection: PEM files read into the options of
//! etcd-client's `tls` feature (rustls; no OpenSSL needed).

use etcd_client::{Certificate, Identity, TlsOptions};

use crate::{ClusterError, TlsFiles};

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|source| ClusterError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

/// The TLS options for `files`: the CA to trust and, when both are given,
/// our client certificate and key.
pub(crate) fn options(files: &TlsFiles) -> Result<TlsOptions, ClusterError> {
    let mut tls = TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(ClusterError::Config(
                "a client certificate needs both --etcd-cert and --etcd-key".into(),
            ));
        }
    }
    Ok(tls)
}
