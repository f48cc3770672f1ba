/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("invalid nats configuration: {0}")]
    Config(String),
    #[error("connecting to nats: {0}")]
    Connect(String),
    #[error(
        "nats-server {found} is too old: OpsPilot needs {required} or newer (JetStream KV and multi-filter consumers)"
    )]
    ServerTooOld { found: String, required: &'static str },
    #[error("setting up stream {name}: {detail}")]
    Stream { name: String, detail: String },
    #[error("setting up key-value bucket {name}: {detail}")]
    KeyValue { name: String, detail: String },
    #[error("publishing: {0}")]
    Publish(String),
    #[error(transparent)]
    Encode(#[from] wire_models::EncodeError),
}
