//! The structural difference between two inventory snapshots.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::views::InventoryChange;

/// Structural diff; lists of objects with a `name` are compared by name.
pub(crate) fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<InventoryChange>) {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                match (x.get(key), y.get(key)) {
                    (Some(va), Some(vb)) => diff_values(&join(key), va, vb, out),
                    (Some(va), None) => out.push(change(join(key), "removed", Some(va.clone()), None)),
                    (None, Some(vb)) => out.push(change(join(key), "added", None, Some(vb.clone()))),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if by_name(x).is_some() && by_name(y).is_some() => {
            let (x, y) = (by_name(x).unwrap_or_default(), by_name(y).unwrap_or_default());
            let names: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for name in names {
                match (x.get(name), y.get(name)) {
                    (Some(va), Some(vb)) => diff_values(&join(name), va, vb, out),
                    (Some(va), None) => out.push(change(join(name), "removed", Some((*va).clone()), None)),
                    (None, Some(vb)) => out.push(change(join(name), "added", None, Some((*vb).clone()))),
                    (None, None) => {}
                }
            }
        }
        (x, y) if x != y => out.push(change(path.to_owned(), "changed", Some(x.clone()), Some(y.clone()))),
        _ => {}
    }
}

fn by_name(items: &[Value]) -> Option<BTreeMap<String, &Value>> {
    let mut map = BTreeMap::new();
    for item in items {
        let name = item.get("name")?.as_str()?;
        if map.insert(name.to_owned(), item).is_some() {
            return None;
        }
    }
    Some(map)
}

fn change(path: String, op: &str, from: Option<Value>, to: Option<Value>) -> InventoryChange {
    InventoryChange { path, op: op.to_owned(), from, to }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::diff_values;

    #[test]
    fn diffs_compare_named_items_by_name() {
        let a = json!({"hostname": "h", "services": [{"name": "nginx", "state": "running"}, {"name": "cron", "state": "running"}],
                       "packages": [{"name": "openssl", "version": "3.0.1"}], "meta": {"env": "prod"}});
        let b = json!({"hostname": "h", "services": [{"name": "nginx", "state": "failed"}, {"name": "sshd", "state": "running"}],
                       "packages": [{"name": "openssl", "version": "3.0.2"}], "meta": {"env": "prod", "team": "web"}});
        let mut changes = Vec::new();
        diff_values("", &a, &b, &mut changes);
        let summary: Vec<(String, String)> = changes.iter().map(|c| (c.path.clone(), c.op.clone())).collect();
        assert_eq!(
            summary,
            vec![
                ("meta.team".to_owned(), "added".to_owned()),
                ("packages.openssl.version".to_owned(), "changed".to_owned()),
                ("services.cron".to_owned(), "removed".to_owned()),
                ("services.nginx.state".to_owned(), "changed".to_owned()),
                ("services.sshd".to_owned(), "added".to_owned()),
            ]
        );
    }
}
