//! The control plane's keys and certificates (rcgen, ECDSA P-256), written as PEM
//! files: a CA, the API server's serving certificate (`127.0.0.1`, `localhost`,
//! `kubernetes.default.svc`, and any further address asked for), an admin client certificate (group `system:masters`)
//! and the service-account token signing key pair.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Paths of the PEM files.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA certificate (clients verify the API server with it; client
    /// certificates are verified against it).
    pub ca: PathBuf,
    /// The API server's serving certificate and key.
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The admin client certificate (`CN=hoptrace-test-admin, O=system:masters`).
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
    /// The service-account token signing key (private).
    pub sa_key: PathBuf,
    /// Its public key (token verification).
    pub sa_pub: PathBuf,
}

impl Certs {
    /// Generates everything into `dir`; the serving certificate also names `extra_ips`
    /// (the address the API server listens on when it is not loopback).
    pub fn generate(dir: &Path, extra_ips: &[std::net::IpAddr]) -> Result<Certs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hoptrace test Kubernetes CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |sans: &[&str],
                    cn: &str,
                    org: Option<&str>,
                    eku: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![eku];
            let cert = params.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let mut sans: Vec<String> = [
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default.svc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sans.extend(extra_ips.iter().map(|ip| ip.to_string()));
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let (serving_cert, serving_key) = leaf(
            &sans,
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (admin_cert, admin_key) = leaf(
            &[],
            "hoptrace-test-admin",
            Some("system:masters"),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let sa = KeyPair::generate()?;
        let certs = Certs {
            ca: dir.join("ca.pem"),
            serving_cert: dir.join("apiserver.pem"),
            serving_key: dir.join("apiserver-key.pem"),
            admin_cert: dir.join("admin.pem"),
            admin_key: dir.join("admin-key.pem"),
            sa_key: dir.join("sa-key.pem"),
            sa_pub: dir.join("sa.pub"),
        };
        for (path, pem) in [
            (&certs.ca, ca.pem()),
            (&certs.serving_cert, serving_cert),
            (&certs.serving_key, serving_key),
            (&certs.admin_cert, admin_cert),
            (&certs.admin_key, admin_key),
            (&certs.sa_key, sa.serialize_pem()),
            (&certs.sa_pub, sa.public_key_pem()),
        ] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(certs)
    }
}
