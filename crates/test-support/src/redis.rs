//! A private redis-server for tests that need one configured differently from the
//! shared one (a password, TLS): its own port, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::TestPki;

pub struct RedisServer {
    child: Child,
    port: u16,
    /// The PKI of [`RedisServer::with_tls`] (kept as long as the server runs).
    own_pki: Option<TestPki>,
}

impl RedisServer {
    /// A server that requires `password` (no TLS).
    pub async fn with_password(password: &str) -> Self {
        Self::start(password, None, None).await
    }

    /// A server that requires `password` and speaks only TLS, with a certificate for
    /// `localhost` and 127.0.0.1 from a CA of its own.
    pub async fn with_tls(password: &str) -> Self {
        let pki = TestPki::generate();
        let mut server = Self::start(password, Some((&pki, false)), None).await;
        server.own_pki = Some(pki);
        server
    }

    /// A server as a managed Redis runs it: only TLS, with `pki`'s server certificate,
    /// a client certificate from `pki`'s CA required, `password` required, and expired
    /// key events on (the tracker's fast offline path).
    pub async fn with_tls_from(password: &str, pki: &TestPki) -> Self {
        Self::start(password, Some((pki, true)), Some("Ex")).await
    }

    async fn start(password: &str, tls: Option<(&TestPki, bool)>, events: Option<&str>) -> Self {
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
        if let Some(events) = events {
            args.extend(["--notify-keyspace-events".to_owned(), events.to_owned()]);
        }
        match tls {
            Some((pki, client_auth)) => {
                let path = |p: std::path::PathBuf| p.to_str().expect("utf-8 path").to_owned();
                args.extend([
                    "--port".to_owned(),
                    "0".to_owned(),
                    "--tls-port".to_owned(),
                    port.to_string(),
                    "--tls-cert-file".to_owned(),
                    path(pki.server_cert()),
                    "--tls-key-file".to_owned(),
                    path(pki.server_key()),
                    "--tls-ca-cert-file".to_owned(),
                    path(pki.ca()),
                    "--tls-auth-clients".to_owned(),
                    if client_auth { "yes" } else { "no" }.to_owned(),
                ]);
            }
            None => args.extend(["--port".to_owned(), port.to_string()]),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (scripts/dev-services.sh --test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, port, own_pki: None }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA and certificates of a [`RedisServer::with_tls`] server.
    pub fn own_pki(&self) -> Option<&TestPki> {
        self.own_pki.as_ref()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
