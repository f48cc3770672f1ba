//! Everything one test needs from the outside world, isolated: a private nats-server
//! running with bus security on (a generated operator, account and credentials, as in
//! production; with TLS too, from [`Stack::start_tls`]), a fresh database, a Redis key
//! prefix, a subject root and stream names.

use std::path::{Path, PathBuf};

use natsbus::auth::{AuthSetup, Identity};

use crate::partition::Links;
use crate::{NatsServer, TestDb, TestPki};

pub struct Stack {
    /// The server (in a cluster, its first node).
    pub nats: NatsServer,
    /// The other nodes of a cluster ([`Stack::start_cluster`]); none otherwise.
    pub peers: Vec<NatsServer>,
    pub db: TestDb,
    pub topology: natsbus::Topology,
    pub redis_prefix: String,
    pub auth: StackAuth,
    /// The PKI of a TLS stack ([`Stack::start_tls`]): the server only speaks TLS and
    /// requires a client certificate from this CA.
    pub tls: Option<TestPki>,
    /// Files holding secrets for in-process configurations (`--…-file` flags).
    secrets: tempfile::TempDir,
    /// The proxies of a partitionable cluster ([`Stack::start_partitionable_cluster`]),
    /// alive as long as the stack.
    links: Option<Links>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        crate::forget_redis_prefix(&self.redis_prefix);
    }
}

/// The generated security setup (keys, server config, every identity's credentials).
pub struct StackAuth {
    dir: tempfile::TempDir,
    pub setup: AuthSetup,
}

impl StackAuth {
    fn generate(topology: &natsbus::Topology) -> Self {
        let dir = tempfile::tempdir().expect("creating the auth directory");
        let setup = AuthSetup::generate("OPSPILOT").expect("generating keys");
        std::fs::write(dir.path().join("keys.json"), serde_json::to_string(&setup).expect("keys as json"))
            .expect("writing keys.json");
        // Test stacks are development stacks: the superuser and the simulator's fleet
        // identity exist, and nothing expires within a test.
        let options = natsbus::auth::WriteOptions { dev: true, service_ttl: None, ..Default::default() };
        setup.write_all(dir.path(), topology, options).expect("writing the security setup");
        Self { dir, setup }
    }

    /// The directory `api-gateway nats-init` would have written (NATS_AUTH_DIR).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The credentials file of a backend identity.
    pub fn creds(&self, identity: &Identity) -> PathBuf {
        self.dir.path().join("creds").join(format!("{}.creds", identity.name()))
    }

    fn server_config(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-auth.conf")).expect("reading nats-auth.conf")
    }
}

fn secrets_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a directory for secret files")
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_single(None).await
    }

    /// A stack whose nats-server speaks only TLS (a certificate from a CA of the
    /// stack's own, [`Stack::tls`]) and requires a client certificate from that CA, as
    /// a managed NATS may. The harness's own connections present it; `env_for` hands
    /// it to service processes (`NATS_TLS_*`, `tls://` URLs).
    pub async fn start_tls() -> Self {
        Self::start_single(Some(TestPki::generate())).await
    }

    async fn start_single(tls: Option<TestPki>) -> Self {
        crate::init_tracing();
        let topology = crate::isolated_topology();
        let auth = StackAuth::generate(&topology);
        let security = auth.server_config();
        let tls_block = tls.as_ref().map(TestPki::nats_server_block).unwrap_or_default();
        let nats = NatsServer::start_with_config(move |port, store| {
            format!(
                "host: 127.0.0.1\nport: {port}\n{}\n{security}\n{tls_block}",
                crate::jetstream_config(store)
            )
        });
        let (nats, db) = tokio::join!(nats, TestDb::create());
        Self {
            nats,
            peers: Vec::new(),
            db,
            topology,
            redis_prefix: crate::redis_prefix(),
            auth,
            tls,
            secrets: secrets_dir(),
            links: None,
        }
    }

    /// A stack on a cluster of `size` nodes routed over loopback, in operator mode as
    /// [`Stack::start`], every stream and the bucket replicated on each node
    /// (`STREAM_REPLICAS` = `size`). Returns once JetStream has elected its leader and
    /// the topology exists.
    pub async fn start_cluster(size: usize) -> Self {
        Self::start_cluster_with(size, false).await
    }

    /// [`Stack::start_cluster`] with every route between two nodes and every client
    /// connection to a node going through a proxy of the test's own, so that
    /// [`Stack::partition`] can cut one node off from its peers and its clients while it
    /// keeps running, and [`Stack::heal`] can bring it back.
    pub async fn start_partitionable_cluster(size: usize) -> Self {
        Self::start_cluster_with(size, true).await
    }

    async fn start_cluster_with(size: usize, partitionable: bool) -> Self {
        crate::init_tracing();
        let mut topology = crate::isolated_topology();
        topology.replicas = size;
        let auth = StackAuth::generate(&topology);
        let security = auth.server_config();
        let shared_resolver = format!("dir: \"{}\"", auth.dir().join("resolver").display());
        assert!(security.contains(&shared_resolver), "the resolver directory moved: {security}");
        let ports: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let routes: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let links = if partitionable { Some(Links::start(&ports, &routes).await) } else { None };
        let nodes = futures::future::join_all(ports.iter().enumerate().map(|(index, port)| {
            let (security, shared_resolver, routes) =
                (security.clone(), shared_resolver.clone(), routes.clone());
            let partitionable = links.as_ref().map(|links| links.ports(index));
            NatsServer::start_on(*port, move |port, store| {
                // Each node keeps its own copy of the account JWTs.
                let own = format!("dir: \"{}\"", store.with_file_name("resolver").display());
                let security = security.replace(&shared_resolver, &own);
                match partitionable {
                    Some(ports) => {
                        crate::nats::partitionable_node_config(index, port, store, &ports, &security)
                    }
                    None => crate::cluster_node_config(index, port, store, &routes, &security),
                }
            })
        }));
        let (mut nodes, db) = tokio::join!(nodes, TestDb::create());
        let nats = nodes.remove(0);
        let stack = Self {
            nats,
            peers: nodes,
            db,
            topology,
            redis_prefix: crate::redis_prefix(),
            auth,
            tls: None,
            secrets: secrets_dir(),
            links,
        };
        stack.wait_for_jetstream().await;
        stack
    }

    /// Cuts node `index` of a partitionable cluster off: its routes to and from every
    /// other node and its clients' connections drop, and new ones are refused, while
    /// the node keeps running (its clients reconnect to the other nodes).
    pub fn partition(&self, index: usize) {
        self.links().cut(index);
    }

    /// Ends [`Stack::partition`] of node `index`: its routes (to nodes not cut off
    /// themselves) and its clients' port work again.
    pub fn heal(&self, index: usize) {
        self.links().restore(index);
    }

    /// The names of the nodes node `index` of a partitionable cluster has a route to
    /// right now, as it reports them (`/routez`), sorted.
    pub async fn route_peers(&self, index: usize) -> Vec<String> {
        let routez = self.monitor(index, "routez").await;
        let mut peers: Vec<String> = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|route| route["remote_name"].as_str().map(str::to_owned))
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Which node leads `stream` as node `index` of a partitionable cluster sees it
    /// (`/jsz`): a node cut off may still take itself for the leader. None when it
    /// knows of no leader.
    pub async fn stream_leader_seen_by(&self, index: usize, stream: &str) -> Option<String> {
        let jsz = self.monitor(index, "jsz?accounts=true&streams=true").await;
        jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find(|detail| detail["name"] == stream)?["cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    async fn monitor(&self, index: usize, path: &str) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/{path}", self.links().monitor_port(index));
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        response.json().await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn links(&self) -> &Links {
        self.links.as_ref().expect("a partitionable cluster (Stack::start_partitionable_cluster)")
    }

    /// Waits until JetStream answers and the topology (replicated as configured) exists:
    /// in a cluster, once the nodes have found each other and elected a leader.
    pub async fn wait_for_jetstream(&self) {
        let js = self.jetstream().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match natsbus::ensure_topology(&js, &self.topology).await {
                Ok(()) => return,
                Err(err) => {
                    assert!(std::time::Instant::now() < deadline, "JetStream not ready in 60 s: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Waits until every stream and the bucket have a leader and every other replica is
    /// current (a restarted node caught up), so that losing the next node leaves a
    /// quorum with everything.
    pub async fn wait_replicas_current(&self) {
        let js = self.jetstream().await;
        let streams = self.replicated_streams();
        let others = self.topology.replicas.saturating_sub(1);
        crate::eventually(std::time::Duration::from_secs(60), "every replica current", || {
            let (js, streams) = (js.clone(), &streams);
            async move {
                for name in streams {
                    let mut stream = js.get_stream(name).await.ok()?;
                    let info = stream.info().await.ok()?;
                    let cluster = info.cluster.clone()?;
                    let current = cluster.replicas.iter().filter(|r| r.current).count();
                    if cluster.leader.is_none() || current < others {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// The streams (the bucket's included) of which node `index` is neither the leader
    /// nor a current replica right now, as the nodes the harness reaches see it; a
    /// stream that does not answer counts as behind.
    pub async fn streams_behind_on(&self, index: usize) -> Vec<String> {
        let js = self.jetstream().await;
        let name = format!("n{index}");
        let mut behind = Vec::new();
        for stream in self.replicated_streams() {
            let cluster = match js.get_stream(&stream).await {
                Ok(mut handle) => handle.info().await.ok().and_then(|info| info.cluster.clone()),
                Err(_) => None,
            };
            let current = cluster.is_some_and(|cluster| {
                cluster.leader.as_deref() == Some(name.as_str())
                    || cluster.replicas.iter().any(|r| r.name == name && r.current)
            });
            if !current {
                behind.push(stream);
            }
        }
        behind
    }

    /// Every stream of the topology and the bucket's.
    fn replicated_streams(&self) -> [String; 5] {
        let t = &self.topology;
        [
            t.events_stream.clone(),
            t.inventory_stream.clone(),
            t.dlq_stream.clone(),
            t.incidents_stream.clone(),
            format!("KV_{}", t.agents_bucket),
        ]
    }

    /// Node `index` of the cluster (0 is [`Stack::nats`]).
    pub fn node(&mut self, index: usize) -> &mut NatsServer {
        if index == 0 { &mut self.nats } else { &mut self.peers[index - 1] }
    }

    /// Every node's client URL (`tls://` on a TLS stack; a partitionable cluster's
    /// proxies).
    fn node_urls(&self) -> Vec<String> {
        let nodes = std::iter::once(&self.nats).chain(&self.peers);
        let urls = nodes.enumerate().map(|(index, node)| match &self.links {
            Some(links) => format!("nats://127.0.0.1:{}", links.client_port(index)),
            None => node.url(),
        });
        match &self.tls {
            Some(_) => urls.map(|url| url.replacen("nats://", "tls://", 1)).collect(),
            None => urls.collect(),
        }
    }

    /// Every node's client URL, comma-separated, as `NATS_URLS` takes them.
    pub fn nats_urls(&self) -> String {
        self.node_urls().join(",")
    }

    /// The environment a service process needs to run against this stack as
    /// `identity` (its own credentials; the gateway also gets NATS_AUTH_DIR).
    pub fn env_for(&self, identity: &Identity) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("NATS_URLS", self.nats_urls()),
            ("NATS_CREDS", self.auth.creds(identity).display().to_string()),
            ("DATABASE_URL", self.db.url()),
            ("REDIS_URL", crate::redis_url()),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("SUBJECT_ROOT", self.topology.subjects.root().to_string()),
            ("EVENTS_STREAM", self.topology.events_stream.clone()),
            ("INVENTORY_STREAM", self.topology.inventory_stream.clone()),
            ("DLQ_STREAM", self.topology.dlq_stream.clone()),
            ("INCIDENTS_STREAM", self.topology.incidents_stream.clone()),
            ("AGENTS_BUCKET", self.topology.agents_bucket.clone()),
            ("EVENTS_MAX_BYTES", self.topology.max_bytes.events.to_string()),
            ("INVENTORY_MAX_BYTES", self.topology.max_bytes.inventory.to_string()),
            ("DLQ_MAX_BYTES", self.topology.max_bytes.dlq.to_string()),
            ("INCIDENTS_MAX_BYTES", self.topology.max_bytes.incidents.to_string()),
            ("AGENTS_BUCKET_MAX_BYTES", self.topology.max_bytes.agents_bucket.to_string()),
            ("STREAM_REPLICAS", self.topology.replicas.to_string()),
        ];
        if let Some(pki) = &self.tls {
            env.push(("NATS_TLS_CA", pki.ca().display().to_string()));
            env.push(("NATS_TLS_CERT", pki.client_cert().display().to_string()));
            env.push(("NATS_TLS_KEY", pki.client_key().display().to_string()));
        }
        if *identity == Identity::ApiGateway {
            env.push(("NATS_AUTH_DIR", self.auth.dir().display().to_string()));
            // Its admin port (metrics) on a free port, so gateways run side by side.
            env.push(("ADMIN_ADDR", "127.0.0.1:0".to_owned()));
        }
        env
    }

    /// NATS and Postgres settings as command-line flags for `identity`, for
    /// `service_kit::config::try_parse_from` in-process. Secrets are never flags: the
    /// database URL goes in a file (`--database-url-file`).
    pub fn args_for(&self, identity: &Identity) -> Vec<String> {
        self.env_for(identity)
            .into_iter()
            .filter(|(var, _)| !var.starts_with("REDIS_"))
            .flat_map(|(var, value)| match var {
                "DATABASE_URL" => {
                    ["--database-url-file".to_owned(), self.secret_file("database-url", &value)]
                }
                _ => [format!("--{}", flag_for(var)), value],
            })
            .collect()
    }

    /// Redis settings as command-line flags (the URL in a file, as a secret).
    pub fn redis_args(&self) -> Vec<String> {
        vec![
            "--redis-url-file".into(),
            self.secret_file("redis-url", &crate::redis_url()),
            "--redis-prefix".into(),
            self.redis_prefix.clone(),
        ]
    }

    /// The Redis settings of this stack (the shared Redis, this stack's prefix).
    pub fn redis_config(&self) -> storage::redis::RedisConfig {
        crate::redis_config(&crate::redis_url(), &self.redis_prefix)
    }

    /// Writes `value` into a file of this stack's own named `name` and returns its
    /// path, for a `--…-file` flag or a `NAME_FILE` variable. Written aside and renamed
    /// into place: a process started earlier may be reading the file being rewritten.
    pub fn secret_file(&self, name: &str, value: &str) -> String {
        let path = self.secrets.path().join(name);
        let aside = self.secrets.path().join(format!(".{name}.{}", crate::unique_token()));
        std::fs::write(&aside, value)
            .and_then(|()| std::fs::rename(&aside, &path))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.display().to_string()
    }

    /// A `jetstream` context on this stack's server, as the test harness (superuser).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Every message in the dead-letter stream when called, oldest first: (original
    /// subject, reason, payload), however many it holds.
    pub async fn dead_letters(&self) -> Vec<(String, String, Vec<u8>)> {
        use futures::StreamExt as _;
        let js = self.jetstream().await;
        let mut stream = js.get_stream(&self.topology.dlq_stream).await.expect("the dead-letter stream");
        let held = stream.info().await.expect("dead-letter stream info").state.messages;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
            .await
            .expect("an ephemeral dead-letter reader");
        let mut out = Vec::new();
        while (out.len() as u64) < held {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(std::time::Duration::from_millis(500))
                .messages()
                .await
                .expect("fetching dead letters");
            let before = out.len();
            while let Some(msg) = batch.next().await {
                let msg = msg.expect("a dead letter");
                let headers = msg.headers.clone().unwrap_or_default();
                let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
                out.push((
                    get(wire_models::HEADER_DLQ_SUBJECT),
                    get(wire_models::HEADER_DLQ_REASON),
                    msg.payload.to_vec(),
                ));
            }
            // Letters aged out (DiscardOld) between the count and the read.
            if out.len() == before {
                break;
            }
        }
        out
    }

    /// How many messages the dead-letter stream holds.
    pub async fn dead_letter_count(&self) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(&self.topology.dlq_stream).await.expect("the dead-letter stream");
        stream.info().await.expect("dead-letter stream info").state.messages
    }

    /// A client with every permission, for the test itself.
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(&Identity::Superuser).await
    }

    /// A client connected as a backend identity (to check what it may and may not do).
    pub async fn client_as(&self, identity: &Identity) -> async_nats::Client {
        let options = async_nats::ConnectOptions::with_credentials_file(self.auth.creds(identity))
            .await
            .expect("reading credentials");
        let options = match &self.tls {
            Some(pki) => pki.nats_options(options),
            None => options,
        };
        natsbus::connect_with(options, &self.node_urls(), &identity.name(), std::time::Duration::from_secs(5))
            .await
            .expect("connecting to the test nats-server")
    }
}

fn flag_for(var: &str) -> &'static str {
    match var {
        "NATS_URLS" => "nats-urls",
        "NATS_CREDS" => "nats-creds",
        "NATS_AUTH_DIR" => "nats-auth-dir",
        "ADMIN_ADDR" => "admin-addr",
        "NATS_TLS_CA" => "nats-tls-ca",
        "NATS_TLS_CERT" => "nats-tls-cert",
        "NATS_TLS_KEY" => "nats-tls-key",
        "REDIS_PREFIX" => "redis-prefix",
        "SUBJECT_ROOT" => "subject-root",
        "EVENTS_STREAM" => "events-stream",
        "INVENTORY_STREAM" => "inventory-stream",
        "DLQ_STREAM" => "dlq-stream",
        "INCIDENTS_STREAM" => "incidents-stream",
        "AGENTS_BUCKET" => "agents-bucket",
        "EVENTS_MAX_BYTES" => "events-max-bytes",
        "INVENTORY_MAX_BYTES" => "inventory-max-bytes",
        "DLQ_MAX_BYTES" => "dlq-max-bytes",
        "INCIDENTS_MAX_BYTES" => "incidents-max-bytes",
        "AGENTS_BUCKET_MAX_BYTES" => "agents-bucket-max-bytes",
        "STREAM_REPLICAS" => "stream-replicas",
        other => panic!("no flag known for {other}"),
    }
}
