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

/// Every test docs/SECURITY.md cites as the proof of a mitigation exists: the threat
/// model cannot point at a test that was renamed or removed.
#[test]
fn every_test_the_security_document_cites_exists() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let doc = std::fs::read_to_string(root.join("docs/SECURITY.md")).unwrap();
    let mut sources = String::new();
    let mut dirs = vec![root.join("crates"), root.join("services"), root.join("tools")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut cited = 0;
    let mut missing = Vec::new();
    for span in doc.split('`').skip(1).step_by(2) {
        // `crate::it module::test`, `crate module::tests::test`, `binary test`: the
        // last word is the test function's name.
        let Some(name) = span.rsplit([':', ' ']).next() else { continue };
        let snake = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !span.contains("::") || !snake || name.len() < 12 {
            continue;
        }
        cited += 1;
        if !sources.contains(&format!("fn {name}(")) {
            missing.push(span.to_owned());
        }
    }
    assert!(cited >= 20, "only {cited} test names found; did the document's format change?");
    assert!(missing.is_empty(), "docs/SECURITY.md cites tests that do not exist: {missing:?}");
}
