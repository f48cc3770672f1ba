//! What every OpsPilot service shares: configuration parsing with the exit code
//! contract, telemetry (logs, traces, panics), the shutdown signal, the admin HTTP
//! endpoints (`/healthz`, `/readyz`, `/metrics`), the Prometheus recorder with build and
//! process metrics, the build's version and revision, and the TLS crypto provider.

#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod admin;
pub mod backoff;
pub mod config;
pub mod metrics;
pub mod runtime;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod version;

/// Several crates enable different rustls crypto providers (ring via async-nats and
/// sqlx, none via reqwest); rustls refuses to pick one by itself, so every service
/// installs ring explicitly at startup. Calling it again is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
