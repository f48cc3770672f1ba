use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private nats-server for one test: its own port and JetStream directory. It can be
/// stopped and restarted on the same port and directory, as a real server restarts.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
}

/// Finds a nats-server new enough for async-nats (>= 2.10): `OPSPILOT_NATS_SERVER`,
/// then `.stack/bin/nats-server` in the workspace, then `nats-server` on PATH.
pub fn nats_server_binary() -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(path) = std::env::var("OPSPILOT_NATS_SERVER") {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(crate::workspace_root().join(".stack/bin/nats-server"));
    candidates.push(PathBuf::from("nats-server"));
    for candidate in &candidates {
        if let Some(version) = server_version(candidate)
            && natsbus::check_server_version(&version).is_ok()
        {
            return candidate.clone();
        }
    }
    panic!(
        "no nats-server >= 2.10 found (tried {candidates:?}); run `scripts/dev-services.sh` \
         or set OPSPILOT_NATS_SERVER"
    );
}

fn server_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.15.1"
    text.split_whitespace().last().map(|v| v.trim_start_matches('v').to_owned())
}

/// The `jetstream` block of a test server's configuration. Its storage bounds are
/// explicit, as `deploy/nats/nats-server.conf`'s are: left unset, a standalone server
/// sizes its store at 75% of the free disk when it starts and refuses JetStream to an
/// account whose limits (32 GiB by default) do not fit, so the tests would pass or fail
/// with how full the disk is.
pub fn jetstream_config(store: &Path) -> String {
    format!("jetstream {{ store_dir: \"{}\", max_file_store: 40G, max_memory_store: 2G }}", store.display())
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    pub async fn start() -> Self {
        Self::start_inner(None::<fn(u16, &Path) -> String>).await
    }

    /// Starts a server from a generated configuration file; `config` gets the port and
    /// the JetStream store directory and returns the file's text.
    pub async fn start_with_config(config: impl FnOnce(u16, &Path) -> String) -> Self {
        Self::start_inner(Some(config)).await
    }

    /// [`NatsServer::start_with_config`] on a port chosen beforehand (a cluster's nodes
    /// name each other's ports in their configuration).
    pub async fn start_on(port: u16, config: impl FnOnce(u16, &Path) -> String) -> Self {
        Self::start_inner_on(port, Some(config)).await
    }

    async fn start_inner(config: Option<impl FnOnce(u16, &Path) -> String>) -> Self {
        Self::start_inner_on(crate::free_port(), config).await
    }

    async fn start_inner_on(port: u16, config: Option<impl FnOnce(u16, &Path) -> String>) -> Self {
        let dir = tempfile::tempdir().expect("creating a jetstream directory");
        let config = config.map(|make| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, make(port, &dir.path().join("jetstream"))).expect("writing nats config");
            path
        });
        let mut server = Self { binary: nats_server_binary(), port, dir, config, child: None };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running server's process id (for CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's data directory (the generated config lives there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(&self.binary);
        match &self.config {
            Some(config) => {
                cmd.arg("-c").arg(config);
            }
            None => {
                cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
                    .arg(self.dir.path().join("jetstream"));
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats-server.log"))
            .expect("opening nats log");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default();
                panic!("nats-server exited with {status}:\n{log}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                // Listening comes after JetStream is initialised, so the server is ready.
                return;
            }
            assert!(Instant::now() < deadline, "nats-server did not start listening on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server abruptly (SIGKILL), keeping its data directory.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to exit,
    /// keeping its data directory.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }

    /// Starts a stopped server again on the same port with the same data.
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// The server's log so far (for assertions on permission violations and failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Sends SIGHUP so the server reloads its configuration file.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status();
        }
    }
}

/// The configuration of node `index` of a loopback cluster whose nodes route on
/// `route_ports`: its name, client port, routes to every node, JetStream in `store`
/// (replicated by the streams' `num_replicas`), and `security` (the operator-mode block,
/// its resolver in `resolver_dir`, which no two nodes may share).
pub fn cluster_node_config(
    index: usize,
    port: u16,
    store: &Path,
    route_ports: &[u16],
    security: &str,
) -> String {
    let cluster =
        format!("listen: \"127.0.0.1:{}\", routes: [{}]", route_ports[index], route_urls(route_ports));
    node_config(index, port, store, "", &cluster, security)
}

/// Where a node of a partitionable cluster listens and whom it calls.
#[derive(Debug, Clone)]
pub(crate) struct PartitionablePorts {
    /// The node's own route port, which no peer dials directly.
    pub(crate) listen: u16,
    /// A port per peer (a proxy of the test's own) through which this node calls it.
    pub(crate) peers: Vec<u16>,
    /// An address nothing listens on, advertised as the node's route address.
    pub(crate) nowhere: u16,
    /// The monitoring port (`/routez`, `/jsz`).
    pub(crate) monitor: u16,
}

/// [`cluster_node_config`] for a partitionable cluster: node `index` calls each peer
/// through a proxy, so cutting the proxies cuts the node off. A node still tells the
/// others where it listens, and a peer that hears of it by gossip before its own
/// proxied route is up dials that address directly, round every proxy; so each node
/// advertises an address that refuses connections, and with `no_advertise` the nodes
/// keep their real client ports from clients too, who reach them through proxies only.
pub(crate) fn partitionable_node_config(
    index: usize,
    port: u16,
    store: &Path,
    ports: &PartitionablePorts,
    security: &str,
) -> String {
    let cluster = format!(
        "listen: \"127.0.0.1:{listen}\", routes: [{routes}], advertise: \"127.0.0.1:{nowhere}\", \
         no_advertise: true",
        listen = ports.listen,
        routes = route_urls(&ports.peers),
        nowhere = ports.nowhere,
    );
    let monitor = format!("http: \"127.0.0.1:{}\"\n", ports.monitor);
    node_config(index, port, store, &monitor, &cluster, security)
}

fn route_urls(ports: &[u16]) -> String {
    let urls: Vec<String> = ports.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
    urls.join(", ")
}

fn node_config(index: usize, port: u16, store: &Path, extra: &str, cluster: &str, security: &str) -> String {
    format!(
        "server_name: n{index}\nhost: 127.0.0.1\nport: {port}\n{extra}\
         cluster {{ name: opspilot-test, {cluster} }}\n{js}\n{security}",
        js = jetstream_config(store),
    )
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
