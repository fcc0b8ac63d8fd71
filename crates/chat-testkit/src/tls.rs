//! A throwaway certificate authority for the TLS tests: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and a client certificate, written as PEM files into a folder
//! (the layout `scripts/services` expects from `SERVICES_TLS_DIR`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The files of one authority: `ca.pem`, `server.pem` + `server.key`, `client.pem` +
/// `client.key`.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub dir: PathBuf,
}

impl TestPki {
    /// Makes a new CA named `name` and its two certificates under `dir` (created).
    pub fn create(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("pki folder");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("ca key"))
            .expect("self-signed ca");

        let leaf = |names: Vec<String>, common_name: &str, usage| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = params.signed_by(&key, &ca).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(vec![], "chat", ExtendedKeyUsagePurpose::ClientAuth);
        for (file, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(dir.join(file), pem).expect("write pem");
        }
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The path of one of the files (`"ca.pem"`, `"server.key"`, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
