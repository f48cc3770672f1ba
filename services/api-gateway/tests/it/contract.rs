//! The OpenAPI document is the contract generated clients and contract testers
//! (schemathesis) trust. This test reads the document the gateway serves and, for every
//! operation in it, sends
//!
//! - requests the document allows, built from it: each enumeration member, the
//!   shortest and the longest string, the bounds of each range, the examples (a string
//!   with a pattern gets its values from `examples`), one parameter or property at a
//!   time and all of them together. The API must not refuse one as invalid (400, 422)
//!   or as unauthorised (the test is an admin), nor fail (500);
//! - requests the document forbids: a value outside an enumeration, too short, too
//!   long, out of range, of the wrong type, breaking a pattern; a required field or
//!   parameter missing; an unknown field where unknown fields are refused. The API
//!   must answer a 4xx with a problem document: never 2xx, never 5xx;
//!
//! and checks every answer's status is one the operation documents. No endpoint is
//! named here except to give the document's examples something to point at (an agent
//! and an incident with the example ids, a live ticket for the stream): a new
//! operation, parameter or rule is covered as soon as it is in the document, and a
//! rule a handler enforces that the document does not state fails here.
//!
//! Nothing is skipped: every operation's side effects stay inside this test's own
//! database, bus and Redis prefix. Deletions run last, so they do not take the
//! example agent away from the other operations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::helpers::*;

/// Requests in flight at once.
const CONCURRENCY: usize = 8;

#[tokio::test]
async fn the_api_accepts_what_its_document_allows_and_refuses_what_it_forbids() {
    let started = Instant::now();
    let api =
        start(&["--rate-limit-login", "0", "--rate-limit-login-account", "0", "--rate-limit-enroll", "0"])
            .await;
    let (status, doc) = api.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let schemas = Schemas::new(&doc);
    schemas.check_document();
    prepare_examples(&api, &doc).await;

    let operations = operations(&doc);
    let mut jobs = Vec::new();
    let mut failures = Vec::new();
    for op in &operations {
        match plan(&schemas, op) {
            Ok(mut planned) => jobs.append(&mut planned),
            Err(why) => failures.push(format!("{} {}: {why}", op.method, op.path)),
        }
    }
    // Deletions last: they may remove what the examples of other operations name.
    let (last, first): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.op.method == Method::DELETE);
    let counts = (first.len() + last.len(), operations.len());
    for phase in [first, last] {
        let results: Vec<Option<String>> = futures::stream::iter(phase.iter().map(|job| job.run(&api)))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        failures.extend(results.into_iter().flatten());
    }
    api.stop().await;
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} requests broke the contract:\n{}",
        failures.len(),
        counts.0,
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!("{} requests to {} operations in {:?}", counts.0, counts.1, started.elapsed());
}

// --- the document ---------------------------------------------------------------------

struct Operation {
    method: Method,
    path: String,
    parameters: Vec<Value>,
    body: Option<Value>,
    body_required: bool,
    /// Bearer authentication; an operation without it takes its credentials in the
    /// request (login, enrollment), and answers 401 or 403 about those.
    secured: bool,
    documented: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            out.push(Operation {
                method,
                path: path.clone(),
                parameters: op["parameters"].as_array().cloned().unwrap_or_default(),
                body: (!body.is_null()).then(|| body.clone()),
                body_required: op["requestBody"]["required"] == true,
                secured: op["security"].as_array().is_some_and(|s| !s.is_empty()),
                documented: op["responses"]
                    .as_object()
                    .map(|r| r.keys().cloned().collect())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

/// Gives the examples of ids in paths something to find: an agent with the example
/// agent id, online, and an incident of it with the example incident id. Without
/// them the operations on one agent or incident would only ever answer 404.
async fn prepare_examples(api: &Api, doc: &Value) {
    let example = |path: &str| -> Value {
        let parameters = doc["paths"][path]["get"]["parameters"].as_array().expect("parameters");
        let id = parameters.iter().find(|p| p["name"] == "id").expect("an id parameter");
        id["example"]
            .as_str()
            .map(Value::from)
            .or_else(|| id["example"].as_i64().map(Value::from))
            .unwrap_or_else(|| id["schema"]["examples"][0].clone())
    };
    let agent = example("/api/v1/agents/{id}");
    let agent = wire_models::AgentId::parse(agent.as_str().expect("a string")).expect("an agent id");
    storage::agents::register_many(&api.stack.db.pool, &[(agent.clone(), "contract-host".to_owned())])
        .await
        .unwrap();
    sqlx::query(
        "UPDATE agents SET status = 'online', status_changed_at = now(), last_seen_at = now() WHERE id = $1",
    )
    .bind(agent.as_str())
    .execute(&api.stack.db.pool)
    .await
    .unwrap();
    let incident = example("/api/v1/incidents/{id}").as_i64().expect("an integer id");
    let inserted = api.incident(agent.as_str(), "service_down", "nginx.service: failed").await;
    sqlx::query("UPDATE incidents SET id = $1 WHERE id = $2")
        .bind(incident)
        .bind(inserted)
        .execute(&api.stack.db.pool)
        .await
        .unwrap();
}

// --- schemas: validation and generation -------------------------------------------------

/// What the test understands of JSON Schema 2020-12: the keywords the document uses.
struct Schemas<'a> {
    doc: &'a Value,
    patterns: RefCell<HashMap<String, Option<regex::Regex>>>,
}

fn repeat(n: u64) -> String {
    "a".repeat(usize::try_from(n).unwrap_or(0))
}

impl<'a> Schemas<'a> {
    fn new(doc: &'a Value) -> Self {
        Self { doc, patterns: RefCell::new(HashMap::new()) }
    }

    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema["$ref"].as_str() {
            let name = reference.strip_prefix("#/components/schemas/").expect("a component reference");
            schema = &self.doc["components"]["schemas"][name];
        }
        schema
    }

    fn regex(&self, pattern: &str) -> Option<regex::Regex> {
        self.patterns
            .borrow_mut()
            .entry(pattern.to_owned())
            .or_insert_with(|| regex::Regex::new(pattern).ok())
            .clone()
    }

    /// The document's own consistency: every pattern is one every regex engine reads
    /// alike (the `regex` crate has no look-around or back-references), and every
    /// example is valid by its schema.
    fn check_document(&self) {
        let mut problems = Vec::new();
        self.walk(self.doc, "#", &mut problems);
        assert!(problems.is_empty(), "the document contradicts itself:\n{}", problems.join("\n"));
    }

    fn walk(&self, value: &'a Value, at: &str, problems: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(pattern) = map.get("pattern").and_then(Value::as_str)
                    && self.regex(pattern).is_none()
                {
                    problems.push(format!("{at}: pattern {pattern:?} does not compile"));
                }
                let is_schema = map.contains_key("type") || map.contains_key("enum");
                for example in map.get("examples").and_then(Value::as_array).into_iter().flatten() {
                    if is_schema && !self.valid(value, example) {
                        problems.push(format!("{at}: example {example} is not valid by its own schema"));
                    }
                }
                for (key, inner) in map {
                    self.walk(inner, &format!("{at}/{key}"), problems);
                }
            }
            Value::Array(items) => {
                for (i, inner) in items.iter().enumerate() {
                    self.walk(inner, &format!("{at}/{i}"), problems);
                }
            }
            _ => {}
        }
    }

    fn valid(&self, schema: &Value, value: &Value) -> bool {
        let schema = self.resolve(schema);
        let Some(s) = schema.as_object() else { return schema != &Value::Bool(false) };
        let all = |key: &str| s.get(key).and_then(Value::as_array).into_iter().flatten();
        if !all("allOf").all(|part| self.valid(part, value)) {
            return false;
        }
        if s.contains_key("oneOf") && all("oneOf").filter(|part| self.valid(part, value)).count() != 1 {
            return false;
        }
        if s.contains_key("anyOf") && !all("anyOf").any(|part| self.valid(part, value)) {
            return false;
        }
        if let Some(members) = s.get("enum").and_then(Value::as_array)
            && !members.contains(value)
        {
            return false;
        }
        if s.get("const").is_some_and(|c| c != value) {
            return false;
        }
        if let Some(types) = s.get("type")
            && !types_of(types).iter().any(|t| has_type(t, value))
        {
            return false;
        }
        let number = |key: &str| s.get(key).and_then(Value::as_f64);
        let count = |key: &str| s.get(key).and_then(Value::as_u64);
        match value {
            Value::String(text) => {
                let length = text.chars().count() as u64;
                if count("minLength").is_some_and(|m| length < m)
                    || count("maxLength").is_some_and(|m| length > m)
                {
                    return false;
                }
                if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                    && self.regex(pattern).is_some_and(|re| !re.is_match(text))
                {
                    return false;
                }
                match s.get("format").and_then(Value::as_str) {
                    Some("uuid") => uuid::Uuid::parse_str(text).is_ok(),
                    Some("date-time") => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                    _ => true,
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                !(number("minimum").is_some_and(|m| x < m)
                    || number("maximum").is_some_and(|m| x > m)
                    || number("exclusiveMinimum").is_some_and(|m| x <= m)
                    || number("exclusiveMaximum").is_some_and(|m| x >= m))
            }
            Value::Array(items) => {
                let n = items.len() as u64;
                !(count("minItems").is_some_and(|m| n < m)
                    || count("maxItems").is_some_and(|m| n > m)
                    || s.get("items").is_some_and(|item| !items.iter().all(|v| self.valid(item, v))))
            }
            Value::Object(map) => {
                let properties = s.get("properties").and_then(Value::as_object);
                let n = map.len() as u64;
                if count("minProperties").is_some_and(|m| n < m)
                    || count("maxProperties").is_some_and(|m| n > m)
                {
                    return false;
                }
                if all("required").any(|r| !map.contains_key(r.as_str().unwrap_or_default())) {
                    return false;
                }
                map.iter().all(|(key, v)| {
                    let named = properties.and_then(|p| p.get(key));
                    let key_ok = s.get("propertyNames").is_none_or(|names| self.valid(names, &json!(key)));
                    key_ok
                        && match (named, s.get("additionalProperties")) {
                            (Some(property), _) => self.valid(property, v),
                            (None, Some(extra)) => self.valid(extra, v),
                            (None, None) => true,
                        }
                })
            }
            _ => true,
        }
    }

    /// The schema as a list of plain schemas (no `allOf`, `oneOf`, `anyOf` left), one per
    /// way of satisfying it; a value valid by one of them may still break a rule of
    /// the whole, so what is generated from them is checked against the whole.
    fn alternatives(&self, schema: &Value) -> Vec<Map<String, Value>> {
        let schema = self.resolve(schema);
        let Some(s) = schema.as_object() else { return vec![Map::new()] };
        let mut base = s.clone();
        let all = base.remove("allOf");
        let choices = [base.remove("oneOf"), base.remove("anyOf")];
        let mut out = vec![base];
        for part in all.iter().flat_map(|a| a.as_array().into_iter().flatten()) {
            out = self.combine(&out, &self.alternatives(part));
        }
        for choice in choices.iter().flatten() {
            let options: Vec<_> =
                choice.as_array().into_iter().flatten().flat_map(|c| self.alternatives(c)).collect();
            out = self.combine(&out, &options);
        }
        out
    }

    fn combine(&self, left: &[Map<String, Value>], right: &[Map<String, Value>]) -> Vec<Map<String, Value>> {
        left.iter().flat_map(|l| right.iter().filter_map(move |r| self.merge(l, r))).collect()
    }

    /// Both schemas at once, as far as generation needs it; `None` when no value can
    /// have both types.
    fn merge(&self, left: &Map<String, Value>, right: &Map<String, Value>) -> Option<Map<String, Value>> {
        let mut out = left.clone();
        for (key, value) in right {
            match key.as_str() {
                "type" => {
                    let types = match left.get("type") {
                        Some(mine) => {
                            let theirs = types_of(value);
                            types_of(mine).into_iter().filter(|t| theirs.contains(t)).collect()
                        }
                        None => types_of(value),
                    };
                    if types.is_empty() {
                        return None;
                    }
                    out.insert(key.clone(), json!(types));
                }
                "required" => {
                    let mut required = left.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
                    required.extend(value.as_array().into_iter().flatten().cloned());
                    out.insert(key.clone(), Value::Array(required));
                }
                "properties" => {
                    let mut properties =
                        left.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
                    for (name, property) in value.as_object().into_iter().flatten() {
                        let merged = match properties.get(name) {
                            Some(mine) => json!({"allOf": [mine, property]}),
                            None => property.clone(),
                        };
                        properties.insert(name.clone(), merged);
                    }
                    out.insert(key.clone(), Value::Object(properties));
                }
                _ => {
                    out.insert(key.clone(), value.clone());
                }
            }
        }
        Some(out)
    }

    /// A value the schema allows, an example if it has a valid one.
    fn first(&self, schema: &Value) -> Option<Value> {
        let resolved = self.resolve(schema);
        let mut examples =
            resolved["examples"].as_array().into_iter().flatten().chain(resolved.get("example"));
        examples
            .find(|e| self.valid(schema, e))
            .cloned()
            .or_else(|| self.positives(schema).into_iter().next())
    }

    /// Values the schema allows: each enumeration member, the bounds, the examples.
    fn positives(&self, schema: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        for alternative in self.alternatives(schema) {
            out.extend(self.plain_positives(&alternative));
        }
        out.retain(|v| self.valid(schema, v));
        dedup(&mut out);
        out
    }

    fn plain_positives(&self, s: &Map<String, Value>) -> Vec<Value> {
        let mut out: Vec<Value> = s
            .get("examples")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .chain(s.get("example").cloned())
            .collect();
        if let Some(members) = s.get("enum").and_then(Value::as_array) {
            out.extend(members.iter().cloned());
            return out;
        }
        if let Some(value) = s.get("const") {
            out.push(value.clone());
            return out;
        }
        let count = |key: &str| s.get(key).and_then(Value::as_u64);
        for t in s.get("type").map(types_of).unwrap_or_else(|| implied_types(s)) {
            match t.as_str() {
                "null" => out.push(Value::Null),
                "boolean" => out.extend([json!(true), json!(false)]),
                "integer" | "number" => {
                    let low = s.get("minimum").cloned().unwrap_or(json!(-1));
                    let high = s.get("maximum").cloned().unwrap_or(json!(i32::MAX));
                    out.extend([low, high]);
                }
                "string" => match s.get("format").and_then(Value::as_str) {
                    Some("uuid") => out.push(json!("00000000-0000-4000-8000-000000000000")),
                    Some("date-time") => out.push(json!("2026-01-01T00:00:00Z")),
                    _ => {
                        let min = count("minLength").unwrap_or(0);
                        // No stated maximum means none: a long value must pass too.
                        let max = count("maxLength").unwrap_or(1000);
                        out.extend([repeat(min), repeat(min.max(1)), repeat(max)].map(Value::String));
                    }
                },
                "array" => {
                    let item = s.get("items").cloned().unwrap_or(json!({}));
                    let items = self.positives(&item);
                    let (min, max) = (count("minItems").unwrap_or(0), count("maxItems"));
                    out.push(json!([]));
                    out.extend(items.iter().map(|v| json!([v])));
                    for n in [Some(min), max.filter(|m| *m <= 100)].into_iter().flatten().filter(|n| *n > 1) {
                        out.push(Value::Array(items.iter().cycle().take(n as usize).cloned().collect()));
                    }
                }
                "object" => out.extend(self.object_positives(s)),
                _ => {}
            }
        }
        out
    }

    /// The least object (its required properties), then each property's values one
    /// at a time, then every property.
    fn minimal(&self, s: &Map<String, Value>) -> Option<Map<String, Value>> {
        let properties = s.get("properties").and_then(Value::as_object);
        let mut object = Map::new();
        for name in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str()?;
            let property = properties.and_then(|p| p.get(name)).cloned().unwrap_or(json!({}));
            object.insert(name.to_owned(), self.first(&property)?);
        }
        Some(object)
    }

    fn object_positives(&self, s: &Map<String, Value>) -> Vec<Value> {
        let Some(minimal) = self.minimal(s) else { return Vec::new() };
        let mut out = vec![Value::Object(minimal.clone())];
        let properties = s.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut full = minimal.clone();
        for (name, property) in &properties {
            for value in self.positives(property) {
                let mut one = minimal.clone();
                one.insert(name.clone(), value);
                out.push(Value::Object(one));
            }
            if !full.contains_key(name)
                && let Some(value) = self.first(property)
            {
                full.insert(name.clone(), value);
            }
        }
        out.push(Value::Object(full));
        if let Some(extra) = s.get("additionalProperties").filter(|e| e.is_object()) {
            let key = s
                .get("propertyNames")
                .and_then(|n| self.first(n))
                .and_then(|k| k.as_str().map(str::to_owned));
            let key = key.unwrap_or_else(|| "k".to_owned());
            for value in self.positives(extra) {
                out.push(json!({ key.clone(): value }));
            }
            if let (Some(max), Some(value)) =
                (s.get("maxProperties").and_then(Value::as_u64), self.first(extra))
                && max <= 100
            {
                out.push(Value::Object((0..max).map(|i| (format!("k{i}"), value.clone())).collect()));
            }
        }
        out
    }

    /// Values the schema forbids. `text` is for a parameter, whose value is text:
    /// there a wrong type is only a number or a boolean that does not parse, and
    /// `null` cannot be said at all.
    fn negatives(&self, schema: &Value, text: bool) -> Vec<Value> {
        let mut out = Vec::new();
        for alternative in self.alternatives(schema) {
            out.extend(self.plain_negatives(&alternative, text));
        }
        out.retain(|v| !self.valid(schema, v));
        dedup(&mut out);
        out
    }

    fn plain_negatives(&self, s: &Map<String, Value>, text: bool) -> Vec<Value> {
        let mut out = Vec::new();
        let types = s.get("type").map(types_of).unwrap_or_else(|| implied_types(s));
        if s.contains_key("enum") {
            out.push(json!("zz-not-a-member"));
        }
        if !text && !types.is_empty() && !types.iter().any(|t| t == "null") {
            out.push(Value::Null);
        }
        let count = |key: &str| s.get(key).and_then(Value::as_u64);
        let number = |key: &str| s.get(key).and_then(Value::as_i64);
        for t in &types {
            match t.as_str() {
                "null" => out.push(json!("not-null")),
                "boolean" => out.push(json!("maybe")),
                "integer" | "number" => {
                    out.extend(number("minimum").map(|m| json!(m - 1)));
                    out.extend(number("maximum").map(|m| json!(m.saturating_add(1))));
                    if t == "integer" {
                        out.push(json!(1.5));
                    }
                    out.push(json!("x1"));
                }
                "string" => {
                    out.extend(count("minLength").filter(|m| *m > 0).map(|m| json!(repeat(m - 1))));
                    out.extend(count("maxLength").map(|m| json!(repeat(m + 1))));
                    if s.contains_key("pattern")
                        && let Some(Value::String(valid)) = self.first(&Value::Object(s.clone()))
                    {
                        // A control character in place of the first: refused by every
                        // pattern here, and by every check behind them.
                        out.push(json!(format!("\u{1}{}", valid.chars().skip(1).collect::<String>())));
                    }
                    match s.get("format").and_then(Value::as_str) {
                        Some("uuid") => out.push(json!("not-a-uuid")),
                        Some("date-time") => out.push(json!("not-a-date")),
                        _ => {}
                    }
                    if !text {
                        out.push(json!(12345));
                    }
                }
                "array" => {
                    let item = s.get("items").cloned().unwrap_or(json!({}));
                    if count("minItems").is_some_and(|m| m >= 1) {
                        out.push(json!([]));
                    }
                    if let (Some(max), Some(value)) =
                        (count("maxItems").filter(|m| *m <= 200), self.first(&item))
                    {
                        out.push(Value::Array(vec![value; max as usize + 1]));
                    }
                    out.extend(self.negatives(&item, text).into_iter().take(6).map(|v| json!([v])));
                    if !text {
                        out.push(json!("not-an-array"));
                    }
                }
                "object" if !text => {
                    out.push(json!("not-an-object"));
                    out.extend(self.object_negatives(s));
                }
                _ => {}
            }
        }
        out
    }

    fn object_negatives(&self, s: &Map<String, Value>) -> Vec<Value> {
        let Some(minimal) = self.minimal(s) else { return Vec::new() };
        let mut out = Vec::new();
        for name in minimal.keys() {
            let mut without = minimal.clone();
            without.remove(name);
            out.push(Value::Object(without));
        }
        if s.get("additionalProperties") == Some(&Value::Bool(false)) {
            let mut extra = minimal.clone();
            extra.insert("zz_unknown_field".into(), json!(1));
            out.push(Value::Object(extra));
        }
        for (name, property) in s.get("properties").and_then(Value::as_object).into_iter().flatten() {
            for value in self.negatives(property, false) {
                let mut one = minimal.clone();
                one.insert(name.clone(), value);
                out.push(Value::Object(one));
            }
        }
        if let Some(extra) = s.get("additionalProperties").filter(|e| e.is_object()) {
            let value = self.first(extra).unwrap_or(Value::Null);
            if s.get("minProperties").and_then(Value::as_u64).is_some_and(|m| m >= 1) {
                out.push(json!({}));
            }
            if let Some(max) = s.get("maxProperties").and_then(Value::as_u64).filter(|m| *m <= 100) {
                out.push(Value::Object((0..=max).map(|i| (format!("k{i}"), value.clone())).collect()));
            }
            for bad in self.negatives(extra, false).into_iter().take(6) {
                out.push(json!({ "k": bad }));
            }
            if s.contains_key("propertyNames") {
                out.push(json!({ "\u{1}k": value }));
            }
        }
        out
    }
}

fn types_of(types: &Value) -> Vec<String> {
    match types {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// The type a schema without `type` describes, as far as its keywords say.
fn implied_types(s: &Map<String, Value>) -> Vec<String> {
    if s.contains_key("properties") || s.contains_key("required") {
        vec!["object".into()]
    } else {
        Vec::new()
    }
}

fn has_type(t: &str, value: &Value) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn dedup(values: &mut Vec<Value>) {
    let mut seen = Vec::new();
    values.retain(|v| {
        let fresh = !seen.contains(v);
        if fresh {
            seen.push(v.clone());
        }
        fresh
    });
}

// --- requests ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// Schema-valid: not refused as invalid or unauthorised, no 500.
    Accepted,
    /// Schema-invalid: a 4xx problem.
    Refused,
    /// Without a token: a 401 problem.
    Unauthenticated,
}

struct Job<'o> {
    op: &'o Operation,
    expect: Expect,
    /// Parameter values by index into `op.parameters`.
    values: Vec<(usize, Value)>,
    body: Option<Value>,
    what: String,
}

/// Every request for one operation.
fn plan<'o>(schemas: &Schemas<'_>, op: &'o Operation) -> Result<Vec<Job<'o>>, String> {
    let schema_of = |p: &Value| p["schema"].clone();
    let first_of = |p: &Value| -> Option<Value> {
        let example = p.get("example").cloned().filter(|e| schemas.valid(&schema_of(p), e));
        example.or_else(|| schemas.first(&schema_of(p)))
    };
    let mut base = Vec::new();
    for (i, p) in op.parameters.iter().enumerate() {
        if p["required"] == true {
            let value = first_of(p)
                .ok_or_else(|| format!("no valid value for parameter {}: add an example", p["name"]))?;
            base.push((i, value));
        }
    }
    let base_body = match &op.body {
        Some(schema) if op.body_required => {
            Some(schemas.first(schema).ok_or("no valid request body: add examples to its schema")?)
        }
        _ => None,
    };
    // A body property the document ties to a path parameter repeats its value in an
    // allowed request (a rule between path and body, stated by an extension).
    let ties = op.body.as_ref().map(|b| ties(schemas, b)).unwrap_or_default();
    let tie = |mut body: Value| {
        for (property, parameter) in &ties {
            let path_value = base.iter().find(|(i, _)| op.parameters[*i]["name"] == parameter.as_str());
            if let (Some(slot), Some((_, value))) = (body.get_mut(property.as_str()), path_value)
                && !slot.is_null()
            {
                *slot = value.clone();
            }
        }
        body
    };
    let base_body = base_body.map(&tie);
    let job = |expect, values: Vec<(usize, Value)>, body: Option<Value>, what: String| Job {
        op,
        expect,
        values,
        body,
        what,
    };
    let with = |i: usize, value: Value| {
        let mut values: Vec<_> = base.iter().filter(|(j, _)| *j != i).cloned().collect();
        values.push((i, value));
        values
    };

    let mut jobs = vec![job(Expect::Accepted, base.clone(), base_body.clone(), "the least request".into())];
    if op.secured {
        jobs.push(job(Expect::Unauthenticated, base.clone(), base_body.clone(), "no token".into()));
    }
    let mut everything = base.clone();
    for (i, p) in op.parameters.iter().enumerate() {
        let name = p["name"].as_str().unwrap_or_default();
        let mut values = schemas.positives(&schema_of(p));
        values.extend(p.get("example").cloned().filter(|e| schemas.valid(&schema_of(p), e)));
        dedup(&mut values);
        for value in values {
            jobs.push(job(
                Expect::Accepted,
                with(i, value.clone()),
                base_body.clone(),
                format!("{name}={value}"),
            ));
        }
        if p["required"] != true
            && let Some(value) = first_of(p)
        {
            everything.push((i, value));
        }
        for value in schemas.negatives(&schema_of(p), true) {
            jobs.push(job(
                Expect::Refused,
                with(i, value.clone()),
                base_body.clone(),
                format!("{name}={value}"),
            ));
        }
        if p["required"] == true && p["in"] != "path" {
            let without = base.iter().filter(|(j, _)| *j != i).cloned().collect();
            jobs.push(job(Expect::Refused, without, base_body.clone(), format!("without {name}")));
        }
    }
    jobs.push(job(Expect::Accepted, everything, base_body.clone(), "every parameter".into()));
    if let Some(schema) = &op.body {
        for body in schemas.positives(schema) {
            let body = tie(body);
            let what = format!("body {body}");
            jobs.push(job(Expect::Accepted, base.clone(), Some(body), what));
        }
        for body in schemas.negatives(schema, false) {
            let what = format!("body {body}");
            jobs.push(job(Expect::Refused, base.clone(), Some(body), what));
        }
        if op.body_required {
            jobs.push(job(Expect::Refused, base.clone(), None, "no body".into()));
        }
    }
    Ok(jobs)
}

/// Body properties the document ties to a path parameter: (property, parameter).
fn ties(schemas: &Schemas<'_>, body: &Value) -> Vec<(String, String)> {
    fn tied(value: &Value) -> Option<String> {
        match value {
            Value::Object(map) => map
                .get("x-equals-path-parameter")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| map.values().find_map(tied)),
            Value::Array(items) => items.iter().find_map(tied),
            _ => None,
        }
    }
    let mut out = Vec::new();
    for alternative in schemas.alternatives(body) {
        for (name, property) in alternative.get("properties").and_then(Value::as_object).into_iter().flatten()
        {
            if let Some(parameter) = tied(property)
                && !out.contains(&(name.clone(), parameter.clone()))
            {
                out.push((name.clone(), parameter));
            }
        }
    }
    out
}

/// A parameter's value as it is written in a path, a query or a header.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

impl Job<'_> {
    /// Sends the request; a description of how it broke the contract, if it did.
    async fn run(&self, api: &Api) -> Option<String> {
        let op = self.op;
        let mut url = url::Url::parse(&api.base).unwrap();
        let mut query = Vec::new();
        let mut headers = Vec::new();
        let mut segments = Vec::new();
        for segment in op.path.split('/').filter(|s| !s.is_empty()) {
            let name = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            let value = name.and_then(|name| {
                self.values.iter().find(|(i, _)| op.parameters[*i]["name"] == name).map(|(_, v)| text(v))
            });
            segments.push(value.unwrap_or_else(|| segment.to_owned()));
        }
        url.path_segments_mut().unwrap().clear().extend(&segments);
        for (i, value) in &self.values {
            let p = &op.parameters[*i];
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let mut value = value.clone();
            // The example ticket is no live one; an allowed request gets a real ticket.
            if name == "ticket" && self.expect == Expect::Accepted {
                let (_, minted) = api.post("/api/v1/stream/tickets", &api.admin, json!({})).await;
                value = minted["ticket"].clone();
            }
            match p["in"].as_str() {
                Some("query") if p["explode"] != false && value.is_array() => {
                    query.extend(value.as_array().into_iter().flatten().map(|v| (name.clone(), text(v))));
                }
                Some("query") => query.push((name, text(&value))),
                Some("header") => headers.push((name, text(&value))),
                _ => {}
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(&query);
        }
        let mut request = api.http.request(op.method.clone(), url.clone()).timeout(Duration::from_secs(20));
        for (name, value) in headers {
            // A value HTTP cannot carry is not a request anyone can send.
            let Ok(value) = reqwest::header::HeaderValue::from_str(&value) else { return None };
            request = request.header(name, value);
        }
        if self.expect != Expect::Unauthenticated {
            request = request.bearer_auth(&api.admin);
        }
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        let what = format!("{} {} ({}) {:?}", op.method, url, self.what, self.expect_name());
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Some(format!("{what}: no answer: {err}")),
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // An event stream does not end; its status and type are the answer.
        let body: Value = if content_type.starts_with("text/event-stream") {
            Value::Null
        } else {
            let text = response.text().await.unwrap_or_default();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        let code = status.as_u16();
        let failed = |why: &str| Some(format!("{what}: {why}: {code} {body}"));
        if !op.documented.iter().any(|d| d == &code.to_string() || d == "default") {
            return failed("a status the operation does not document");
        }
        match self.expect {
            Expect::Accepted => {
                let refused = matches!(code, 400 | 413 | 415 | 422)
                    || (op.secured && matches!(code, 401 | 403))
                    || (code >= 500 && !matches!(code, 502..=504));
                if refused { failed("a request the document allows was refused") } else { None }
            }
            Expect::Refused if !status.is_client_error() => {
                failed("a request the document forbids was not refused")
            }
            Expect::Unauthenticated if code != 401 => {
                failed("a request without a token was not refused as such")
            }
            Expect::Refused | Expect::Unauthenticated => {
                let problem = content_type.starts_with("application/problem+json")
                    && body["type"].as_str().is_some_and(|t| t.starts_with("urn:opspilot:problem:"))
                    && body["title"].is_string()
                    && body["detail"].is_string()
                    && body["status"] == code;
                if problem { None } else { failed("a refusal without a problem document") }
            }
        }
    }

    fn expect_name(&self) -> &'static str {
        match self.expect {
            Expect::Accepted => "allowed",
            Expect::Refused => "forbidden",
            Expect::Unauthenticated => "unauthenticated",
        }
    }
}
