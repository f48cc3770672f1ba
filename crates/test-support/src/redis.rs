//! A private redis-server for tests that need one configured differently from the
//! shared one (a password, TLS): its own port, killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
    /// Where the TLS files live (kept as long as the server runs).
    _dir: tempfile::TempDir,
    /// The CA that signed the server certificate (PEM), when TLS is on.
    pub ca_pem: Option<String>,
}

impl RedisServer {
    /// A server that requires `password` (no TLS).
    pub async fn with_password(password: &str) -> Self {
        Self::start(password, false).await
    }

    /// A server that requires `password` and speaks only TLS, with a certificate for
    /// `localhost` and 127.0.0.1 from a CA of its own.
    pub async fn with_tls(password: &str) -> Self {
        Self::start(password, true).await
    }

    async fn start(password: &str, tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a directory for redis");
        let port = crate::free_port();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        let mut ca_pem = None;
        if tls {
            let (ca, cert, key) = certificates();
            let path = |name: &str| -> PathBuf { dir.path().join(name) };
            std::fs::write(path("ca.pem"), &ca).expect("writing the CA");
            std::fs::write(path("cert.pem"), &cert).expect("writing the certificate");
            std::fs::write(path("key.pem"), &key).expect("writing the key");
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    path("cert.pem").to_str().expect("utf-8 path"),
                    "--tls-key-file",
                    path("key.pem").to_str().expect("utf-8 path"),
                    "--tls-ca-cert-file",
                    path("ca.pem").to_str().expect("utf-8 path"),
                    "--tls-auth-clients",
                    "no",
                ]
                .map(str::to_owned),
            );
            ca_pem = Some(ca);
        } else {
            args.extend(["--port".to_owned(), port.to_string()]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port, _dir: dir, ca_pem }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA, and a server certificate and key it signed (PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("a server key");
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("the server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}
