//! The receiver's test PKI, generated per receiver with rcgen.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Identity};

/// The test PKI: a CA, a server certificate (`localhost`, `127.0.0.1`, `::1`)
/// and a client certificate (`hoptrace-agent`), all signed by the CA, written
/// as PEM files into one directory.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// `ca.pem`: the CA certificate (trust anchor for both sides).
    pub ca_file: PathBuf,
    /// `server.pem`.
    pub server_cert_file: PathBuf,
    /// `server.key` (PKCS#8).
    pub server_key_file: PathBuf,
    /// `client.pem`.
    pub client_cert_file: PathBuf,
    /// `client.key` (PKCS#8).
    pub client_key_file: PathBuf,
    /// PEM text of `ca.pem`.
    pub ca_pem: String,
    /// PEM text of `server.pem`.
    pub server_cert_pem: String,
    /// PEM text of `server.key`.
    pub server_key_pem: String,
    /// PEM text of `client.pem`.
    pub client_cert_pem: String,
    /// PEM text of `client.key`.
    pub client_key_pem: String,
}

impl TestPki {
    /// Generates a fresh PKI (ECDSA P-256) and writes it into `dir` (created
    /// if missing). `label` goes into the CA's common name.
    pub fn generate(dir: &Path, label: &str) -> Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("hoptrace test CA ({label})"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let leaf = |sans: Vec<String>,
                    cn: &str,
                    eku: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![eku];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            vec!["hoptrace-agent".into()],
            "hoptrace-agent",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            server_cert_file: dir.join("server.pem"),
            server_key_file: dir.join("server.key"),
            client_cert_file: dir.join("client.pem"),
            client_key_file: dir.join("client.key"),
            ca_pem: ca.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        };
        for (path, text) in [
            (&pki.ca_file, &pki.ca_pem),
            (&pki.server_cert_file, &pki.server_cert_pem),
            (&pki.server_key_file, &pki.server_key_pem),
            (&pki.client_cert_file, &pki.client_cert_pem),
            (&pki.client_key_file, &pki.client_key_pem),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(pki)
    }

    /// The client identity (certificate + key) for a tonic client.
    pub fn client_identity(&self) -> Identity {
        Identity::from_pem(&self.client_cert_pem, &self.client_key_pem)
    }

    /// The CA as a tonic certificate.
    pub fn ca_certificate(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }
}
