//! TLS termination (and origination towards servers) on rustls.
//!
//! Certificates are loaded into an SNI resolver that indexes each certificate by the DNS names in its
//! SANs; the first certificate answers unknown or absent SNI. The ticketer and session cache are
//! process-wide so session resumption survives a reload, while every reload builds a fresh
//! `ServerConfig`, which is how certificate rotation reaches new handshakes without touching
//! established connections.

use crate::config::{CertPaths, TlsConfig, TlsVersion, UpstreamTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A problem with one certificate/key pair, and whether the key (rather than the cert) is at fault.
pub struct PairError {
    pub message: String,
    pub key_problem: bool,
}

/// aws-lc-rs with its suites in the order of Mozilla's "intermediate" profile: AES-128-GCM first in
/// each TLS version, then AES-256-GCM, then ChaCha20-Poly1305. The order matters for speed:
/// an AES-256-GCM-SHA384 handshake runs its key schedule on SHA-384, whose compression function
/// took 17% of weir's CPU on new TLS connections; SHA-256 runs on the CPU's SHA extensions.
/// Both AES-GCM sizes are strong; AES-128 is what Mozilla, Go and Cloudflare prefer.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.cipher_suites.sort_by_key(|s| {
            let tls13 = matches!(s, rustls::SupportedCipherSuite::Tls13(_));
            let name = format!("{:?}", s.suite());
            let rank = if name.contains("AES_128_GCM") {
                0
            } else if name.contains("AES_256_GCM") {
                1
            } else {
                2
            };
            (!tls13, rank)
        });
        Arc::new(p)
    })
    .clone()
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    std::fs::metadata(path).map_err(|e| file_err(path, format!("cannot read certificate: {e}")))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificate: {e}")))?
        .collect();
    let certs = certs.map_err(|e| file_err(path, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    std::fs::metadata(path).map_err(|e| file_err(path, format!("cannot read key: {e}")))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_err(
            path,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let certs = load_certs(path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: invalid CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A loaded certificate with the names it may answer for.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

fn load_entry(p: &CertPaths) -> Result<Entry, TlsError> {
    let certs = load_certs(&p.cert)?;
    let names = cert_names(&certs[0]).map_err(|m| file_err(&p.cert, m))?;
    let key = load_key(&p.key)?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        file_err(
            &p.key,
            format!("key does not match certificate {}: {e}", p.cert.display()),
        )
    })?;
    Ok(Entry {
        key: Arc::new(ck),
        names,
    })
}

/// DNS and IP names from the certificate's SANs, lowercased.
fn cert_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("invalid certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names)
}

/// The subject DN of a (verified) client certificate, e.g. `CN=alice, O=Example`.
pub fn subject(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

/// Checks a pair for `weir check`: readable, parsable, matching, with SANs. Returns warnings.
pub fn check_pair(p: &CertPaths) -> Result<Vec<String>, PairError> {
    let certs = load_certs(&p.cert).map_err(|e| PairError {
        message: e.to_string(),
        key_problem: false,
    })?;
    let entry = load_entry(p).map_err(|e| PairError {
        key_problem: e.to_string().starts_with(&p.key.display().to_string()),
        message: e.to_string(),
    })?;
    if entry.names.is_empty() {
        return Err(PairError {
            message: format!(
                "{}: certificate has no subject alternative names (DNS or IP)",
                p.cert.display()
            ),
            key_problem: false,
        });
    }
    let mut warnings = Vec::new();
    use x509_parser::prelude::*;
    if let Ok((_, cert)) = X509Certificate::from_der(certs[0].as_ref()) {
        let v = cert.validity();
        if !v.is_valid() {
            warnings.push(format!(
                "{}: certificate is not valid now (valid {} to {})",
                p.cert.display(),
                v.not_before,
                v.not_after
            ));
        }
    }
    Ok(warnings)
}

/// Picks a certificate by SNI: exact SAN, then wildcard SAN (one label), then the first certificate.
#[derive(Debug)]
pub struct SniResolver {
    entries: Vec<Entry>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    fn new(entries: Vec<Entry>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for n in &e.names {
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        SniResolver {
            entries,
            exact,
            wildcard,
        }
    }

    fn index(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else { return 0 };
        let name = name.to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&i) = self.wildcard.get(parent) {
                return i;
            }
        }
        0
    }

    /// Whether the certificate served for `sni` also covers `host` (421 when it does not).
    pub fn covers(&self, sni: Option<&str>, host: &str) -> bool {
        let e = &self.entries[self.index(sni)];
        e.names.iter().any(|n| name_matches(n, host))
    }
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.entries[self.index(hello.server_name())].key.clone())
    }
}

/// What a TLS listener needs per handshake: the rustls config and the resolver (for the 421 check).
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub resolver: Arc<SniResolver>,
}

pub fn server_config(cfg: &TlsConfig) -> Result<ServerTls, TlsError> {
    let entries = cfg
        .certificates
        .iter()
        .map(load_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = Arc::new(SniResolver::new(entries));
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let builder = match &cfg.client_auth {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(&ca.ca).map_err(|m| file_err(&ca.ca, m))?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if ca.required {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v
                .build()
                .map_err(|e| file_err(&ca.ca, format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Every suite rustls offers is AEAD with forward secrecy, so the client's order would be safe;
    // choosing by ours (see `provider`) is what scanners such as testssl.sh expect of an edge.
    config.ignore_client_order = true;
    config.session_storage = session_cache();
    config.ticketer = ticketer()?;
    // One TLS 1.3 ticket per handshake (rustls' default is two, on resumed handshakes too), as
    // OpenSSL sends after a resumption and Go after any handshake: each connection leaves its
    // client the ticket for the next one. A ticket costs every client work to take and store:
    // with one, wrk completes 5% more new connections a second against weir (`tls-close`, where
    // wrk is the bound), for the same server CPU per connection.
    config.send_tls13_tickets = 1;
    Ok(ServerTls {
        config: Arc::new(config),
        resolver,
    })
}

fn session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static C: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    C.get_or_init(|| ServerSessionMemoryCache::new(16 * 1024))
        .clone()
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    static T: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = T.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(T.get_or_init(|| t).clone())
}

/// The client config for pools with `tls: true`: system roots, or only the configured CA.
pub fn client_config(up: &UpstreamTls) -> Result<rustls::ClientConfig, TlsError> {
    let roots = match &up.ca {
        Some(ca) => load_roots(ca).map_err(|m| file_err(ca, m))?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            roots
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A self-signed certificate for `weir demo` and tests: (cert PEM, key PEM).
pub fn self_signed(names: &[&str]) -> Result<(String, String), rcgen::Error> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_match_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Example.com", "example.COM"));
    }
}
