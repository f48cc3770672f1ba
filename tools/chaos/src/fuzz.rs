//! Fuzzing every wire-models parser on the stable toolchain.
//!
//! `cargo fuzz` needs nightly and libFuzzer's sanitizer build of the whole dependency
//! tree; `cargo-fuzz` is not installed here and a nightly sanitizer build of this
//! workspace costs a long rebuild on a 2-core machine, so `make chaos` uses this
//! stable equivalent instead: a mutation fuzzer over a seed corpus of valid messages
//! (built with the real types), with byte-level mutations (flips, interesting bytes
//! and tokens, deletions, duplications, truncations, splices) and JSON-aware ones
//! (any node replaced by a value of another type, extreme numbers, hostile strings,
//! deep nesting, keys added, removed, renamed or duplicated). Inputs some decoder
//! accepts join the corpus, so mutations build on valid shapes.
//!
//! Every target runs under `catch_unwind`; besides "no panic" it checks properties:
//! whatever `decode::<T>` accepts re-encodes and decodes to the same value, a parsed
//! subject or agent id rebuilds to the same string, an accepted command rebuilds from
//! its own name and params, and `canonical_json` is stable and parses back to the
//! same value. Reproducible with `--fuzz-seed`.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use wire_models::{
    AgentId, AnalyzeOutcome, AnalyzeReply, AnalyzeRequest, Command, Event, Heartbeat, IncidentCreated,
    InventoryReport, PROTOCOL_VERSION, PresenceChanged, PresenceState, RpcReply, RpcRequest, SubjectRoot,
    Subjects, WireMessage,
};

/// A parser, as the report names it.
const TARGETS: &[&str] = &[
    "decode::<Heartbeat>",
    "decode::<Event>",
    "decode::<InventoryReport>",
    "decode::<RpcRequest>",
    "decode::<RpcReply>",
    "decode::<IncidentCreated>",
    "decode::<PresenceChanged>",
    "decode::<AnalyzeRequest>",
    "decode::<AnalyzeReply>",
    "canonical_json",
    "Subjects::parse",
    "AgentId::parse",
    "Command::from_parts",
];

/// A failure: a panic, or a property that did not hold.
#[derive(Debug, Clone)]
pub struct Finding {
    pub target: &'static str,
    pub what: String,
    /// Where the input was saved, when a directory was given.
    pub input: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct FuzzReport {
    pub seed: u64,
    pub iterations: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    /// Per target: (inputs tried, inputs accepted).
    pub targets: BTreeMap<&'static str, (u64, u64)>,
    pub findings: Vec<Finding>,
}

impl FuzzReport {
    pub fn pass(&self) -> bool {
        self.findings.is_empty() && self.targets.values().all(|(tried, _)| *tried > 0)
    }

    /// One line per target.
    pub fn table(&self) -> String {
        let mut out = format!(
            "fuzz: {} iterations in {:.1}s (seed {}), corpus grew to {}\n",
            self.iterations,
            self.elapsed.as_secs_f64(),
            self.seed,
            self.corpus
        );
        for (target, (tried, accepted)) in &self.targets {
            out.push_str(&format!("  {target:<28} {tried:>10} inputs {accepted:>9} accepted\n"));
        }
        for finding in &self.findings {
            out.push_str(&format!("  FAIL {}: {}", finding.target, finding.what));
            if let Some(input) = &finding.input {
                out.push_str(&format!(" (input: {})", input.display()));
            }
            out.push('\n');
        }
        out
    }
}

/// Fuzzes for `budget`. Findings' inputs are written to `crash_dir` when given.
pub fn run(budget: Duration, seed: u64, crash_dir: Option<&Path>) -> FuzzReport {
    let mut fuzzer = Fuzzer::new(seed, crash_dir);
    let started = Instant::now();
    while started.elapsed() < budget {
        for _ in 0..64 {
            fuzzer.step();
        }
    }
    fuzzer.report.elapsed = started.elapsed();
    fuzzer.report.corpus = fuzzer.corpus.len();
    fuzzer.report
}

const MAX_CORPUS: usize = 2000;

struct Fuzzer {
    rng: StdRng,
    corpus: Vec<Vec<u8>>,
    subjects: Vec<String>,
    agent_ids: Vec<String>,
    commands: Vec<(String, Value)>,
    report: FuzzReport,
    crash_dir: Option<PathBuf>,
}

impl Fuzzer {
    fn new(seed: u64, crash_dir: Option<&Path>) -> Self {
        let report = FuzzReport {
            seed,
            targets: TARGETS.iter().map(|t| (*t, (0, 0))).collect(),
            ..FuzzReport::default()
        };
        Self {
            rng: StdRng::seed_from_u64(seed),
            corpus: seed_messages(),
            subjects: seed_subjects(),
            agent_ids: vec!["a1b2c3d4e5f6".into(), "000000000000".into(), "ffffffffffff".into()],
            commands: seed_commands(),
            report,
            crash_dir: crash_dir.map(Path::to_path_buf),
        }
    }

    fn step(&mut self) {
        self.report.iterations += 1;
        match self.rng.random_range(0..100) {
            0..60 => {
                let input = self.mutated_message();
                if self.messages(&input) && self.corpus.len() < MAX_CORPUS {
                    self.corpus.push(input);
                }
            }
            60..75 => {
                let subject = self.mutated_string(&self.subjects.clone());
                self.subject(&subject);
            }
            75..85 => {
                let id = self.mutated_string(&self.agent_ids.clone());
                self.agent_id(&id);
            }
            _ => {
                let (name, params) = self.mutated_command();
                self.command(&name, &params);
            }
        }
    }

    // --- targets ---------------------------------------------------------------------

    /// Runs every decoder (and canonical_json) on `input`; true when any accepted it.
    fn messages(&mut self, input: &[u8]) -> bool {
        let mut accepted = false;
        accepted |= self.decode::<Heartbeat>("decode::<Heartbeat>", input);
        accepted |= self.decode::<Event>("decode::<Event>", input);
        accepted |= self.decode::<InventoryReport>("decode::<InventoryReport>", input);
        accepted |= self.decode::<RpcRequest>("decode::<RpcRequest>", input);
        accepted |= self.decode::<RpcReply>("decode::<RpcReply>", input);
        accepted |= self.decode::<IncidentCreated>("decode::<IncidentCreated>", input);
        accepted |= self.decode::<PresenceChanged>("decode::<PresenceChanged>", input);
        accepted |= self.decode::<AnalyzeRequest>("decode::<AnalyzeRequest>", input);
        accepted |= self.decode::<AnalyzeReply>("decode::<AnalyzeReply>", input);
        if let Ok(value) = serde_json::from_slice::<Value>(input) {
            self.canonical(&value, input);
        }
        accepted
    }

    fn decode<T: WireMessage + PartialEq + std::fmt::Debug>(
        &mut self,
        target: &'static str,
        input: &[u8],
    ) -> bool {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            let Ok(msg) = wire_models::decode::<T>(input) else { return Ok(false) };
            let bytes =
                wire_models::encode(&msg).map_err(|e| format!("accepted but does not re-encode: {e}"))?;
            let again = wire_models::decode::<T>(&bytes)
                .map_err(|e| format!("accepted, re-encoded, then refused: {e}"))?;
            if again != msg {
                return Err("accepted, re-encoded, decoded to a different value".into());
            }
            Ok(true)
        }));
        self.record(target, input, outcome)
    }

    fn canonical(&mut self, value: &Value, input: &[u8]) {
        let shuffled = self.reordered(value);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            let canonical = wire_models::canonical_json(value);
            let back: Value =
                serde_json::from_str(&canonical).map_err(|e| format!("output is not valid JSON: {e}"))?;
            // serde_json parses floats best-effort (without its `float_roundtrip`
            // feature a long decimal can come back one ULP off), so numbers are compared
            // with that tolerance; everything else exactly.
            if !same_modulo_float_rounding(&back, value) {
                return Err("output parses to a different value".into());
            }
            if wire_models::canonical_json(&shuffled) != canonical {
                return Err(
                    "the same document with its keys in another order has another canonical form".into()
                );
            }
            Ok(true)
        }));
        self.record("canonical_json", input, outcome);
    }

    /// A copy of `value` with every object's keys inserted in reverse or shuffled order.
    fn reordered(&mut self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                if self.rng.random_bool(0.5) {
                    entries.reverse();
                } else {
                    rand::seq::SliceRandom::shuffle(entries.as_mut_slice(), &mut self.rng);
                }
                let mut out = Map::new();
                for (k, v) in entries {
                    let v = self.reordered(v);
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.reordered(v)).collect()),
            other => other.clone(),
        }
    }

    fn subject(&mut self, subject: &str) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            let mut accepted = false;
            for subjects in [Subjects::default(), custom_subjects()] {
                let Ok(parsed) = subjects.parse(subject) else { continue };
                let rebuilt = match &parsed {
                    wire_models::AgentSubject::Event { agent_id, kind } => subjects.event(agent_id, kind),
                    wire_models::AgentSubject::Inventory { agent_id } => subjects.inventory(agent_id),
                    wire_models::AgentSubject::Rpc { agent_id } => subjects.rpc(agent_id),
                };
                if rebuilt != subject {
                    return Err(format!("parsed {subject:?} rebuilds as {rebuilt:?}"));
                }
                accepted = true;
            }
            Ok(accepted)
        }));
        self.record("Subjects::parse", subject.as_bytes(), outcome);
    }

    fn agent_id(&mut self, id: &str) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            match AgentId::parse(id) {
                Ok(parsed) if parsed.as_str() != id => Err(format!("{id:?} parsed as {:?}", parsed.as_str())),
                Ok(_) if !(id.len() == 12 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) => {
                    Err(format!("{id:?} accepted but is not 12 lowercase hex digits"))
                }
                Ok(_) => Ok(true),
                Err(_) => Ok(false),
            }
        }));
        self.record("AgentId::parse", id.as_bytes(), outcome);
    }

    fn command(&mut self, name: &str, params: &Value) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            let Ok(command) = Command::from_parts(name, params) else { return Ok(false) };
            let again = Command::from_parts(command.name().as_str(), &command.params())
                .map_err(|e| format!("accepted, but its own name and params are refused: {e}"))?;
            if again != command {
                return Err("accepted, rebuilt from its name and params as another command".into());
            }
            Ok(true)
        }));
        let input = json!({"command": name, "params": params}).to_string();
        self.record("Command::from_parts", input.as_bytes(), outcome);
    }

    fn record(
        &mut self,
        target: &'static str,
        input: &[u8],
        outcome: std::thread::Result<Result<bool, String>>,
    ) -> bool {
        let counts = self.report.targets.entry(target).or_default();
        counts.0 += 1;
        let what = match outcome {
            Ok(Ok(accepted)) => {
                counts.1 += u64::from(accepted);
                return accepted;
            }
            Ok(Err(property)) => property,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                format!("panicked: {message}")
            }
        };
        // One finding per target and kind of failure is enough to act on.
        if self.report.findings.iter().any(|f| f.target == target && f.what == what) {
            return false;
        }
        let input = self.crash_dir.as_ref().and_then(|dir| {
            let path = dir.join(format!("finding-{}-{}.bin", self.report.findings.len(), sanitize(target)));
            std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)).ok().map(|()| path)
        });
        self.report.findings.push(Finding { target, what, input });
        false
    }

    // --- mutations -------------------------------------------------------------------

    fn mutated_message(&mut self) -> Vec<u8> {
        let base = self.corpus.choose(&mut self.rng).cloned().unwrap_or_default();
        let mut input = if self.rng.random_bool(0.5) {
            match serde_json::from_slice::<Value>(&base) {
                Ok(mut value) => {
                    for _ in 0..self.rng.random_range(1..=3) {
                        self.mutate_value(&mut value, 0);
                    }
                    let text = value.to_string();
                    if self.rng.random_bool(0.1) {
                        duplicate_a_key(&text, &mut self.rng)
                    } else {
                        text.into_bytes()
                    }
                }
                Err(_) => base,
            }
        } else {
            base
        };
        if input.is_empty() || self.rng.random_bool(0.5) {
            for _ in 0..self.rng.random_range(1..=4) {
                self.mutate_bytes(&mut input);
            }
        }
        input
    }

    fn mutated_string(&mut self, seeds: &[String]) -> String {
        let mut bytes = seeds.choose(&mut self.rng).cloned().unwrap_or_default().into_bytes();
        for _ in 0..self.rng.random_range(1..=3) {
            self.mutate_bytes(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn mutated_command(&mut self) -> (String, Value) {
        let (mut name, mut params) = self.commands.choose(&mut self.rng).cloned().unwrap_or_default();
        match self.rng.random_range(0..4) {
            0 => {
                let mut bytes = name.into_bytes();
                self.mutate_bytes(&mut bytes);
                name = String::from_utf8_lossy(&bytes).into_owned();
            }
            1 => params = self.random_value(0),
            _ => self.mutate_value(&mut params, 0),
        }
        (name, params)
    }

    fn mutate_bytes(&mut self, bytes: &mut Vec<u8>) {
        const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\xc0\xe2\"\\{}[],:0-+e.nt \n/";
        const TOKENS: &[&str] = &[
            "null",
            "true",
            "false",
            "-1",
            "0",
            "1e309",
            "-1e309",
            "18446744073709551616",
            "-9223372036854775809",
            "1.7976931348623157e308",
            "5e-324",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "\"\\udc00\\ud800\"",
            "[[[[[[[[[[",
            "]]]]",
            "{\"v\":1}",
            "\"v\":",
            "NaN",
            "\u{202e}",
            "\u{feff}",
            "..",
            ".>",
            ".*",
            "ops.",
            "a1b2c3d4e5f6",
        ];
        let len = bytes.len();
        match self.rng.random_range(0..8) {
            0 if len > 0 => {
                let i = self.rng.random_range(0..len);
                bytes[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = self.rng.random_range(0..len);
                bytes[i] = *INTERESTING.choose(&mut self.rng).unwrap_or(&0);
            }
            2 => {
                let i = self.rng.random_range(0..=len);
                let token = TOKENS.choose(&mut self.rng).unwrap_or(&"null").as_bytes();
                bytes.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=16)).min(len);
                bytes.drain(start..end);
            }
            4 if len > 0 => {
                let start = self.rng.random_range(0..len);
                let end = (start + self.rng.random_range(1..=64)).min(len);
                let chunk: Vec<u8> = bytes[start..end].to_vec();
                let at = self.rng.random_range(0..=len);
                bytes.splice(at..at, chunk);
            }
            5 if len > 0 => bytes.truncate(self.rng.random_range(0..len)),
            6 => {
                // Splice with another corpus entry.
                if let Some(other) = self.corpus.choose(&mut self.rng).cloned()
                    && !other.is_empty()
                {
                    let cut = self.rng.random_range(0..=len);
                    let from = self.rng.random_range(0..other.len());
                    bytes.truncate(cut);
                    bytes.extend_from_slice(&other[from..]);
                }
            }
            _ => {
                let i = self.rng.random_range(0..=len);
                let byte: u8 = self.rng.random();
                bytes.insert(i, byte);
            }
        }
    }

    /// Replaces, removes or adds something somewhere in `value`.
    fn mutate_value(&mut self, value: &mut Value, depth: usize) {
        let descend = depth < 6 && self.rng.random_bool(0.7);
        match value {
            Value::Object(map) if !map.is_empty() && descend => {
                let keys: Vec<String> = map.keys().cloned().collect();
                let key = keys.choose(&mut self.rng).cloned().unwrap_or_default();
                match self.rng.random_range(0..10) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        if let Some(v) = map.remove(&key) {
                            map.insert(self.random_string(), v);
                        }
                    }
                    2 => {
                        let v = self.random_value(depth + 1);
                        map.insert(self.random_string(), v);
                    }
                    _ => {
                        if let Some(child) = map.get_mut(&key) {
                            self.mutate_value(child, depth + 1);
                        }
                    }
                }
            }
            Value::Array(items) if !items.is_empty() && descend => {
                let i = self.rng.random_range(0..items.len());
                match self.rng.random_range(0..6) {
                    0 => {
                        items.remove(i);
                    }
                    1 => {
                        let copy = items[i].clone();
                        items.extend(std::iter::repeat_n(copy, self.rng.random_range(1..50)));
                    }
                    _ => self.mutate_value(&mut items[i], depth + 1),
                }
            }
            _ => *value = self.random_value(depth),
        }
    }

    fn random_value(&mut self, depth: usize) -> Value {
        match self.rng.random_range(0..12) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.random()),
            2 => json!(
                *[i64::MIN, -1, 0, 1, 2, 65_535, 65_536, i64::from(u32::MAX) + 1, i64::MAX]
                    .choose(&mut self.rng)
                    .unwrap_or(&0)
            ),
            3 => json!(u64::MAX),
            4 => json!(*[-0.0f64, 0.5, 1e308, -1e308, 5e-324, 1.0].choose(&mut self.rng).unwrap_or(&0.0)),
            5..=7 => Value::String(self.random_string()),
            8 => Value::Array(if depth < 4 {
                (0..self.rng.random_range(0..4)).map(|_| self.random_value(depth + 1)).collect()
            } else {
                Vec::new()
            }),
            9 => {
                let mut map = Map::new();
                if depth < 4 {
                    for _ in 0..self.rng.random_range(0..4) {
                        let v = self.random_value(depth + 1);
                        map.insert(self.random_string(), v);
                    }
                }
                Value::Object(map)
            }
            10 => {
                // Nested within serde_json's recursion limit of 128 and beyond it.
                let levels = self.rng.random_range(1..200);
                let mut v = Value::Null;
                for _ in 0..levels {
                    v = if self.rng.random_bool(0.5) { json!([v]) } else { json!({"x": v}) };
                }
                v
            }
            _ => json!(AgentId::random().to_string()),
        }
    }

    fn random_string(&mut self) -> String {
        const STRINGS: &[&str] = &[
            "",
            "v",
            "agent_id",
            "event_id",
            "kind",
            "severity",
            "critical",
            "oom",
            "A1B2C3D4E5F6",
            "a1b2c3d4e5f",
            "0192f0c4-9c2a-7cc0-8000-000000000001",
            "00000000-0000-0000-0000-000000000000",
            "2026-11-26T12:00:00Z",
            "9999-12-31T23:59:59Z",
            "+275760-09-13T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "1970-01-01T00:00:00+25:00",
            "\u{0}",
            "nul\u{0}inside",
            "\u{202e}evil",
            "🙂",
            "../../etc/passwd",
            "/var/log/../../etc/shadow",
            "nginx; reboot",
            "$(reboot)",
            "' OR '1'='1",
            "ops.>",
            "\r\nInjected: header",
        ];
        match self.rng.random_range(0..20) {
            0 => "x".repeat(self.rng.random_range(0..80_000)),
            1..5 => (0..self.rng.random_range(0..40))
                .map(|_| char::from(self.rng.random_range(0u8..128)))
                .collect(),
            _ => (*STRINGS.choose(&mut self.rng).unwrap_or(&"")).to_owned(),
        }
    }
}

/// Repeats one `"key":` of a serialized object with a different value.
fn duplicate_a_key(text: &str, rng: &mut StdRng) -> Vec<u8> {
    let keys: Vec<usize> = text.match_indices("\":").map(|(i, _)| i).collect();
    let Some(&at) = keys.choose(rng) else { return text.as_bytes().to_vec() };
    let Some(start) = text[..at].rfind('"') else { return text.as_bytes().to_vec() };
    let key = &text[start..at + 2];
    // Insert `"key":null,` right after the object's opening brace before this key.
    let Some(brace) = text[..start].rfind('{') else { return text.as_bytes().to_vec() };
    let mut out = String::with_capacity(text.len() + key.len() + 8);
    out.push_str(&text[..=brace]);
    out.push_str(key);
    out.push_str("null,");
    out.push_str(&text[brace + 1..]);
    out.into_bytes()
}

/// Equality where two numbers also count as equal when they are floats within a few
/// ULPs of each other.
fn same_modulo_float_rounding(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON,
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_modulo_float_rounding(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_modulo_float_rounding(v, w)))
        }
        _ => a == b,
    }
}

fn sanitize(target: &str) -> String {
    target.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn custom_subjects() -> Subjects {
    SubjectRoot::parse("t1a2b3.ops").map(Subjects::new).unwrap_or_default()
}

/// Valid messages of every type, built with the real types (so the corpus cannot drift
/// from the code), plus the protocol document's shapes.
fn seed_messages() -> Vec<Vec<u8>> {
    let agent = agent_sim::SimAgent::numbered("fuzz", 1);
    let mut rng = StdRng::seed_from_u64(7);
    let mut seeds = Vec::new();
    let mut push = |bytes: Result<Vec<u8>, wire_models::EncodeError>| {
        if let Ok(bytes) = bytes {
            seeds.push(bytes);
        }
    };
    push(wire_models::encode::<Heartbeat>(&agent.heartbeat(Duration::from_secs(10))));
    for _ in 0..7 {
        push(wire_models::encode::<Event>(&agent.random_event(&mut rng)));
    }
    push(wire_models::encode::<InventoryReport>(&agent.inventory(false)));
    push(wire_models::encode::<InventoryReport>(&agent.inventory(true)));
    let now = chrono::Utc::now();
    for (name, params) in seed_commands() {
        if let Ok(command) = Command::from_parts(&name, &params) {
            let request = RpcRequest {
                v: PROTOCOL_VERSION,
                request_id: uuid::Uuid::now_v7(),
                command,
                issued_at: now,
                timeout_ms: 5000,
            };
            push(wire_models::encode(&request));
            let reply = agent.answer(&request, false, Instant::now());
            push(wire_models::encode::<RpcReply>(&reply));
            let failed = agent.answer(&request, true, Instant::now());
            push(wire_models::encode::<RpcReply>(&failed));
        }
    }
    let kind = wire_models::EventKind::parse("oom").ok();
    if let Some(kind) = kind {
        push(wire_models::encode(&IncidentCreated {
            v: PROTOCOL_VERSION,
            incident_id: 42,
            agent_id: agent.id.clone(),
            kind,
            severity: wire_models::Severity::Critical,
            is_critical: true,
            fingerprint: wire_models::sha256_hex(b"fuzz"),
            created_at: now,
        }));
    }
    push(wire_models::encode(&PresenceChanged {
        v: PROTOCOL_VERSION,
        agent_id: agent.id.clone(),
        state: PresenceState::Offline,
        changed_at: now,
        last_seen_at: Some(now),
        threshold_secs: 30,
        reason: "timeout".into(),
    }));
    push(wire_models::encode(&AnalyzeRequest {
        v: PROTOCOL_VERSION,
        incident_id: 42,
        force: true,
        requested_by: Some("ops@example.com".into()),
    }));
    for outcome in [
        AnalyzeOutcome::Analyzed { analyzer: "rules".into(), model: None, cached: false },
        AnalyzeOutcome::Failed { reason: "timeout".into() },
        AnalyzeOutcome::NotFound,
    ] {
        push(wire_models::encode(&AnalyzeReply { v: PROTOCOL_VERSION, incident_id: 42, outcome }));
    }
    seeds
}

fn seed_subjects() -> Vec<String> {
    let id = AgentId::derive_from(b"fuzz");
    let mut out = Vec::new();
    for subjects in [Subjects::default(), custom_subjects()] {
        if let Ok(kind) = wire_models::EventKind::parse("disk_full") {
            out.push(subjects.event(&id, &kind));
        }
        out.push(subjects.inventory(&id));
        out.push(subjects.rpc(&id));
        out.push(subjects.all_events());
        out.push(subjects.analyze());
    }
    out
}

fn seed_commands() -> Vec<(String, Value)> {
    vec![
        ("ping".into(), Value::Null),
        ("collect_inventory".into(), json!({})),
        ("service_status".into(), json!({"service": "nginx"})),
        ("start_service".into(), json!({"service": "postgresql@15-main"})),
        ("stop_service".into(), json!({"service": "redis-server"})),
        ("restart_service".into(), json!({"service": "nginx.service"})),
        ("tail_log".into(), json!({"path": "/var/log/syslog", "lines": 10})),
        ("tail_log".into(), json!({"path": "/var/log/nginx/error.log"})),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted_by_some_decoder() {
        let mut fuzzer = Fuzzer::new(1, None);
        for seed in seed_messages() {
            assert!(fuzzer.messages(&seed), "{}", String::from_utf8_lossy(&seed));
        }
        assert!(fuzzer.report.findings.is_empty(), "{:?}", fuzzer.report.findings);
    }

    #[test]
    fn a_short_run_reaches_every_target_and_finds_nothing() {
        let report = run(Duration::from_secs(2), 12345, None);
        assert!(report.pass(), "{}", report.table());
        for (target, (tried, _)) in &report.targets {
            assert!(*tried > 0, "{target} never ran");
        }
        // Mutations keep producing inputs the decoders accept, not only garbage.
        let accepted: u64 =
            report.targets.iter().filter(|(t, _)| t.starts_with("decode")).map(|(_, c)| c.1).sum();
        assert!(accepted > 100, "{}", report.table());
    }

    #[test]
    fn float_rounding_is_tolerated_and_nothing_else() {
        let a: Value =
            serde_json::from_str(r#"{"x":[1844674407379551615379551615, 0.1, "s"]}"#).unwrap_or_default();
        let b: Value = serde_json::from_str(&wire_models::canonical_json(&a)).unwrap_or_default();
        assert!(same_modulo_float_rounding(&a, &b));
        assert!(!same_modulo_float_rounding(&a, &json!({"x": [1.0, 0.1, "s"]})));
        assert!(!same_modulo_float_rounding(&json!(1), &json!(2)));
    }

    #[test]
    fn duplicated_keys_stay_json_shaped() {
        let mut rng = StdRng::seed_from_u64(3);
        let out = duplicate_a_key(r#"{"a":1,"b":{"c":2}}"#, &mut rng);
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.matches("null").count() == 1, "{text}");
    }
}
