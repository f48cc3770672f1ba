// `sqlx::migrate!` embeds the migrations at compile time but cannot tell Cargo to watch
// them on stable Rust: without this, a new migration is missing from an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
