//! Everything one test needs from the outside world, isolated: a private nats-server,
//! a fresh database, a Redis key prefix, a subject root and stream names.

use std::net::TcpListener;

use crate::{NatsServer, TestDb};

pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    pub topology: natsbus::Topology,
    pub redis_prefix: String,
}

impl Stack {
    pub async fn start() -> Self {
        crate::init_tracing();
        let (nats, db) = tokio::join!(NatsServer::start(), TestDb::create());
        Self { nats, db, topology: crate::isolated_topology(), redis_prefix: crate::redis_prefix() }
    }

    /// The environment a service process needs to run against this stack.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URLS", self.nats.url()),
            ("DATABASE_URL", self.db.url()),
            ("REDIS_URL", crate::redis_url()),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("SUBJECT_ROOT", self.topology.subjects.root().to_string()),
            ("EVENTS_STREAM", self.topology.events_stream.clone()),
            ("INVENTORY_STREAM", self.topology.inventory_stream.clone()),
            ("DLQ_STREAM", self.topology.dlq_stream.clone()),
            ("INCIDENTS_STREAM", self.topology.incidents_stream.clone()),
            ("AGENTS_BUCKET", self.topology.agents_bucket.clone()),
        ]
    }

    /// NATS and Postgres settings as command-line flags, for `Config::try_parse_from`.
    pub fn args(&self) -> Vec<String> {
        self.env()
            .into_iter()
            .filter(|(var, _)| !var.starts_with("REDIS_"))
            .flat_map(|(var, value)| [format!("--{}", flag_for(var)), value])
            .collect()
    }

    /// Redis settings as command-line flags.
    pub fn redis_args(&self) -> Vec<String> {
        vec!["--redis-url".into(), crate::redis_url(), "--redis-prefix".into(), self.redis_prefix.clone()]
    }

    /// A `jetstream` context on this stack's server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.nats.url()).await.expect("connecting to the test nats-server")
    }
}

fn flag_for(var: &str) -> &'static str {
    match var {
        "NATS_URLS" => "nats-urls",
        "DATABASE_URL" => "database-url",
        "REDIS_URL" => "redis-url",
        "REDIS_PREFIX" => "redis-prefix",
        "SUBJECT_ROOT" => "subject-root",
        "EVENTS_STREAM" => "events-stream",
        "INVENTORY_STREAM" => "inventory-stream",
        "DLQ_STREAM" => "dlq-stream",
        "INCIDENTS_STREAM" => "incidents-stream",
        "AGENTS_BUCKET" => "agents-bucket",
        other => panic!("no flag known for {other}"),
    }
}

/// A free TCP port on loopback (for services started as processes).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
