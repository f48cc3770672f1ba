#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unused_crate_dependencies, unreachable_pub)]

mod fleet;
