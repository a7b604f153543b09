//! A throwaway CA and a `localhost`/`127.0.0.1` server certificate, and rustls clients trusting it.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A server certificate signed by its own test CA, written as PEM files in a directory.
pub struct TestCert {
    pub cert_path: String,
    pub key_path: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub fn new(dir: &Path) -> TestCert {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).expect("self-sign CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("sign");
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, leaf.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        TestCert {
            cert_path: cert_path.to_string_lossy().into_owned(),
            key_path: key_path.to_string_lossy().into_owned(),
            ca_der: ca.der().clone(),
        }
    }

    /// `    tls:` block for a listener (4-space indent).
    pub fn listener_tls(&self) -> String {
        format!(
            "    tls:\n      certificates:\n        - cert: \"{}\"\n          key: \"{}\"\n",
            self.cert_path, self.key_path
        )
    }

    /// A rustls client trusting the test CA and offering `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// A TLS connection to `addr` with SNI `localhost`.
    pub async fn connect(&self, addr: std::net::SocketAddr, alpn: &[&str]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(self.client_config(alpn));
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake")
    }
}
