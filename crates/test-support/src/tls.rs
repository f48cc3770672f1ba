//! A private PKI for tests of TLS: a CA, a server certificate for `localhost` and
//! 127.0.0.1, and a client certificate, as PEM files in a directory of their own, the
//! way an operator hands them to nats-server, redis-server and the services.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// The files of one test PKI; removed when dropped.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA with a server and a client certificate signed by it.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the test PKI");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "opspilot test CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("certificate params");
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) =
            leaf(Vec::new(), "opspilot-test-client", ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Self { dir };
        for (path, pem) in [
            (pki.ca(), ca.pem()),
            (pki.server_cert(), server),
            (pki.server_key(), server_key),
            (pki.client_cert(), client),
            (pki.client_key(), client_key),
        ] {
            std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        pki
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (what clients and servers trust).
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.file("server-key.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.file("client-key.pem")
    }

    /// Async-nats options trusting this CA and presenting the client certificate.
    pub fn nats_options(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        options
            .require_tls(true)
            .add_root_certificates(self.ca())
            .add_client_certificate(self.client_cert(), self.client_key())
    }

    /// The `tls` block of a nats-server configuration: TLS for every client, and a
    /// client certificate from this CA required (`verify`).
    pub fn nats_server_block(&self) -> String {
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 5 }}",
            self.server_cert().display(),
            self.server_key().display(),
            self.ca().display(),
        )
    }
}
