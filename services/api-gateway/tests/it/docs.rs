//! The README stays true: every variable a binary accepts, and every endpoint the API
//! serves, is documented there.

use test_support::otlp::binary;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

#[tokio::test]
async fn every_variable_of_every_binary_is_in_the_readme() {
    let readme = readme();
    let mut missing = Vec::new();
    for name in ["api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer", "agent-sim"] {
        let out = std::process::Command::new(binary(name)).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
        for var in help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()) {
            let var = var.trim();
            if !readme.contains(&format!("`{var}`")) && !readme.contains(&format!("{var}`")) {
                missing.push(format!("{name}: {var}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "undocumented in README.md: {missing:?}");
}

#[tokio::test]
async fn every_endpoint_is_in_the_readme() {
    let api = crate::helpers::start(&[]).await;
    let (_, doc) = api.call(reqwest::Method::GET, "/api/v1/openapi.json", None, None).await;
    let readme = readme();
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let line = format!("{} {path}", method.to_uppercase());
            if !readme.contains(&line) {
                missing.push(line);
            }
        }
    }
    assert!(missing.is_empty(), "undocumented in README.md: {missing:?}");
    api.stop().await;
}
