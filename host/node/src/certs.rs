//! `wasmnode certs`: a development CA and node certificates for `[node.tls]`.
//!
//! The CA is made once (`ca.crt`, `ca.key`) and reused by later runs, so certificates
//! for new nodes can be added to a cluster's set. Production clusters use their own CA
//! (cert-manager, Vault, a company PKI); these are for development and tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sha2::{Digest, Sha256};

/// How long a node certificate is valid.
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the development CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A development CA: its key, and the settings it signs with.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
}

impl Ca {
    /// A new CA with a new key.
    pub fn new() -> Result<Ca, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let params = ca_params(&key, SystemTime::now());
        let cert_pem = params.self_signed(&key).map_err(|e| e.to_string())?.pem();
        Ok(Ca { key, cert_pem })
    }

    /// The CA a previous run made (its subject is derived from its key, so the key is
    /// all that is needed to sign for it again).
    pub fn load(cert_pem: String, key_pem: &str) -> Result<Ca, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("not a private key: {e}"))?;
        Ok(Ca { key, cert_pem })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate and key for a node whose host is each of `names` (IP addresses or
    /// DNS names, `*.` wildcards allowed), good for both sides of a connection.
    pub fn issue(&self, names: &[String]) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| format!("{names:?}: {e}"))?;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + NODE_VALIDITY).into();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(&self.key, now), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The CA's settings; its common name carries a digest of its public key, so each CA
/// made is told apart and can be rebuilt from its key.
fn ca_params(key: &KeyPair, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let digest = Sha256::digest(key.public_key_raw());
    let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(DnType::OrganizationName, "wasmnode");
    params.distinguished_name.push(DnType::CommonName, format!("wasmnode development CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_VALIDITY).into();
    params
}

/// What `wasmnode certs` wrote.
pub struct Written {
    pub ca_created: bool,
    pub files: Vec<PathBuf>,
}

/// Makes (or reuses) `dir/ca.crt` and `dir/ca.key`, then `dir/NAME.crt` and
/// `dir/NAME.key` for each host (a `*` in a wildcard name is written `_`). Keys are
/// written readable by their owner only.
pub fn write(dir: &Path, hosts: &[String]) -> Result<Written, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let read = |p: &Path| crate::files::read_text(p, crate::tls::PEM_LIMIT).map_err(|e| format!("{} {e}", p.display()));
    let mut files = Vec::new();
    let (ca, ca_created) = if ca_key.exists() {
        let ca = Ca::load(read(&ca_crt)?, &read(&ca_key)?).map_err(|e| format!("{}: {e}", ca_key.display()))?;
        (ca, false)
    } else {
        let ca = Ca::new()?;
        write_file(&ca_key, &ca.key_pem(), true)?;
        write_file(&ca_crt, ca.cert_pem(), false)?;
        files.extend([ca_crt, ca_key]);
        (ca, true)
    };
    for host in hosts {
        let (cert, key) = ca.issue(std::slice::from_ref(host))?;
        let stem = host.replace('*', "_");
        let (crt, keyf) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        write_file(&keyf, &key, true)?;
        write_file(&crt, &cert, false)?;
        files.extend([crt, keyf]);
    }
    Ok(Written { ca_created, files })
}

fn write_file(path: &Path, body: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(body.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second run reuses the CA: certificates from both runs chain to it.
    #[test]
    fn a_second_run_signs_with_the_same_ca() {
        let d = std::env::temp_dir().join(format!("wasmnode-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let first = write(&d, &["127.0.0.1".into()]).unwrap();
        assert!(first.ca_created);
        let second = write(&d, &["*.svc.example".into()]).unwrap();
        assert!(!second.ca_created);
        assert!(d.join("_.svc.example.crt").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(d.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        let files = |host: &str| crate::tls::TlsFiles {
            cert: d.join(format!("{host}.crt")),
            key: d.join(format!("{host}.key")),
            ca: d.join("ca.crt"),
            reload_interval: Duration::from_secs(1),
        };
        crate::tls::Tls::load(files("127.0.0.1"), "127.0.0.1").unwrap();
        // The wildcard covers one label, as TLS clients check it.
        crate::tls::Tls::load(files("_.svc.example"), "node-0.svc.example").unwrap();
        assert!(crate::tls::Tls::load(files("_.svc.example"), "a.node-0.svc.example").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
