#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The JSON examples in docs/PROTOCOL.md section 5 decode with the real types, so the
//! document an agent author reads cannot drift from the code.

use wire_models::*;

#[test]
fn every_payload_example_in_the_protocol_document_decodes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/PROTOCOL.md")).unwrap();
    let mut section = String::new();
    let mut in_payloads = false;
    let mut block: Option<String> = None;
    let mut decoded = Vec::new();
    for line in doc.lines() {
        if let Some(body) = block.as_mut() {
            if line.trim_start().starts_with("```") {
                let json = block.take().unwrap();
                let result = match section.as_str() {
                    s if s.contains("Heartbeat") => decode::<Heartbeat>(json.as_bytes()).map(|_| ()),
                    s if s.contains("Event") => decode::<Event>(json.as_bytes()).map(|_| ()),
                    s if s.contains("InventoryReport") => {
                        decode::<InventoryReport>(json.as_bytes()).map(|_| ())
                    }
                    s if s.contains("RpcRequest") => decode::<RpcRequest>(json.as_bytes()).map(|_| ()),
                    s if s.contains("RpcReply") => decode::<RpcReply>(json.as_bytes()).map(|_| ()),
                    other => panic!("a JSON example under an unexpected heading: {other}"),
                };
                result.unwrap_or_else(|e| panic!("example under {section:?} does not decode: {e}\n{json}"));
                decoded.push(section.clone());
            } else {
                body.push_str(line);
                body.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            in_payloads = line.starts_with("## 5.");
        } else if line.starts_with("### ") {
            section = line.to_owned();
        } else if in_payloads && line.trim() == "```json" {
            block = Some(String::new());
        }
    }
    for kind in ["Heartbeat", "Event", "InventoryReport", "RpcRequest", "RpcReply"] {
        assert!(decoded.iter().any(|s| s.contains(kind)), "no decoded example for {kind}: {decoded:?}");
    }
}
