//! Agent labels and label selectors, with Kubernetes' rules: a key is an optional DNS
//! subdomain prefix and `/` before a name of up to 63 characters, a value up to 63
//! characters of the same alphabet (or empty), and a selector is requirements joined
//! by commas, all of which must hold:
//!
//! ```text
//! env=prod, tier==web, zone!=eu-1, role in (web, lb), region notin (us), canary, !legacy
//! ```
//!
//! `!=` and `notin` also match an agent without the key, as in Kubernetes.

use std::collections::BTreeMap;
use std::fmt;

/// Longest selector accepted, in bytes: a bound on the work parsing and querying do.
pub(crate) const MAX_SELECTOR_LEN: usize = 4096;
/// Most requirements in one selector.
pub(crate) const MAX_REQUIREMENTS: usize = 32;
/// Most values in one `in` / `notin` set.
pub(crate) const MAX_SET_VALUES: usize = 64;
/// Most labels an operator may set on one agent.
pub const MAX_LABELS: usize = 64;

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

/// Why a label or a selector was refused: said so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(String);

fn err(message: impl Into<String>) -> LabelError {
    LabelError(message.into())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Lowercase DNS labels joined by dots, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_PREFIX
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Checks a label key.
pub fn check_key(key: &str) -> Result<(), LabelError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(err(format!(
                    "label key {}: the prefix before '/' must be a lowercase DNS name of at most 253 characters",
                    shown(key)
                )));
            }
            name
        }
        None => key,
    };
    if is_name(name) {
        Ok(())
    } else {
        Err(err(format!(
            "label key {}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            shown(key)
        )))
    }
}

/// Checks a label value (empty is allowed).
pub fn check_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(err(format!(
            "label value {}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            shown(value)
        )))
    }
}

/// A piece of input as an error message may quote it: short, and with anything
/// unprintable escaped, so an error never carries control characters back.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).flat_map(char::escape_debug).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: the key is absent or has another value.
    NotEquals(String, String),
    /// `key in (a, b)`.
    In(String, Vec<String>),
    /// `key notin (a, b)`: the key is absent or has none of the values.
    NotIn(String, Vec<String>),
    /// `key`: the key is present.
    Exists(String),
    /// `!key`: the key is absent.
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether labels `labels` meet this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        match self {
            Requirement::Equals(_, v) => value == Some(v),
            Requirement::NotEquals(_, v) => value != Some(v),
            Requirement::In(_, vs) => value.is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(_, vs) => !value.is_some_and(|x| vs.contains(x)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
        }
    }
}

/// A parsed label selector: every requirement must hold. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, LabelError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(err(format!("a selector is at most {MAX_SELECTOR_LEN} bytes")));
        }
        if let Some(c) = input.chars().find(|c| c.is_control() && !matches!(c, ' ' | '\t')) {
            return Err(err(format!("a selector cannot contain the control character {:?}", c)));
        }
        let mut parser = Parser { rest: input };
        let mut requirements = Vec::new();
        parser.skip_space();
        if parser.rest.is_empty() {
            return Ok(Self { requirements });
        }
        loop {
            if requirements.len() == MAX_REQUIREMENTS {
                return Err(err(format!("a selector has at most {MAX_REQUIREMENTS} requirements")));
            }
            requirements.push(parser.requirement()?);
            parser.skip_space();
            if parser.rest.is_empty() {
                break;
            }
            parser.expect(',', "',' between requirements")?;
        }
        Ok(Self { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical form: the same selector always prints the same, whatever spacing
    /// or `==` it was written with (a cache key, a stored target).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => f.write_str(k)?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), LabelError> {
        self.skip_space();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => Err(self.unexpected(what)),
        }
    }

    fn unexpected(&self, what: &str) -> LabelError {
        if self.rest.is_empty() {
            err(format!("selector ends where {what} was expected"))
        } else {
            err(format!("expected {what} at {}", shown(self.rest)))
        }
    }

    /// The longest run of characters a key or value may have (checked afterwards).
    fn word(&mut self) -> &str {
        self.skip_space();
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        word
    }

    fn key(&mut self) -> Result<String, LabelError> {
        let key = self.word();
        if key.is_empty() {
            return Err(self.unexpected("a label key"));
        }
        check_key(key)?;
        Ok(key.to_owned())
    }

    fn value(&mut self) -> Result<String, LabelError> {
        let value = self.word();
        check_value(value)?;
        Ok(value.to_owned())
    }

    fn requirement(&mut self) -> Result<Requirement, LabelError> {
        self.skip_space();
        if let Some(rest) = self.rest.strip_prefix('!') {
            self.rest = rest;
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.skip_space();
        for (op, negated) in [("==", false), ("!=", true), ("=", false)] {
            if let Some(rest) = self.rest.strip_prefix(op) {
                self.rest = rest;
                let value = self.value()?;
                return Ok(if negated {
                    Requirement::NotEquals(key, value)
                } else {
                    Requirement::Equals(key, value)
                });
            }
        }
        let before = self.rest;
        match self.word() {
            "in" => Ok(Requirement::In(key, self.set()?)),
            "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            "" => Ok(Requirement::Exists(key)),
            _ => {
                self.rest = before;
                Err(self.unexpected("'=', '==', '!=', 'in', 'notin', ',' or the end"))
            }
        }
    }

    fn set(&mut self) -> Result<Vec<String>, LabelError> {
        self.expect('(', "'(' opening the set of values")?;
        let mut values = Vec::new();
        loop {
            if values.len() == MAX_SET_VALUES {
                return Err(err(format!("a set has at most {MAX_SET_VALUES} values")));
            }
            let value = self.value()?;
            if value.is_empty() && values.is_empty() {
                self.skip_space();
                if self.rest.starts_with(')') {
                    return Err(err("a set of values cannot be empty"));
                }
            }
            values.push(value);
            self.skip_space();
            if let Some(rest) = self.rest.strip_prefix(')') {
                self.rest = rest;
                break;
            }
            self.expect(',', "',' or ')' in the set of values")?;
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}

/// Labels as an agent carries them: its latest inventory's `meta` entries that are
/// valid labels (strings, numbers and booleans as text), overridden by the labels an
/// operator set, which win on conflict.
pub fn effective_labels(
    meta: &serde_json::Map<String, serde_json::Value>,
    operator: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = meta
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            (check_key(k).is_ok() && check_value(&v).is_ok()).then(|| (k.clone(), v))
        })
        .collect();
    labels.extend(operator.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse(
            " env=prod, tier==web,zone!=eu-1 , role in (web, lb,web), region notin (us),canary, !legacy ",
        )
        .unwrap();
        assert_eq!(
            s.requirements,
            vec![
                Requirement::Equals("env".into(), "prod".into()),
                Requirement::Equals("tier".into(), "web".into()),
                Requirement::NotEquals("zone".into(), "eu-1".into()),
                Requirement::In("role".into(), vec!["lb".into(), "web".into()]),
                Requirement::NotIn("region".into(), vec!["us".into()]),
                Requirement::Exists("canary".into()),
                Requirement::DoesNotExist("legacy".into()),
            ]
        );
        assert_eq!(
            s.to_string(),
            "env=prod,tier=web,zone!=eu-1,role in (lb,web),region notin (us),canary,!legacy"
        );
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s, "the canonical form parses back");
        assert!(LabelSelector::parse("").unwrap().is_empty());
        assert!(LabelSelector::parse("   ").unwrap().is_empty());
        let prefixed = LabelSelector::parse("example.com/team=a.b_c-d,app=").unwrap();
        assert_eq!(
            prefixed.requirements[0],
            Requirement::Equals("example.com/team".into(), "a.b_c-d".into())
        );
        assert_eq!(prefixed.requirements[1], Requirement::Equals("app".into(), String::new()));
        // An empty value is a value, as in Kubernetes.
        assert_eq!(
            LabelSelector::parse("env==").unwrap().requirements[0],
            Requirement::Equals("env".into(), String::new())
        );
        // `in` and `notin` are keys too where a key is expected.
        assert_eq!(
            LabelSelector::parse("in=notin").unwrap().requirements[0],
            Requirement::Equals("in".into(), "notin".into())
        );
    }

    #[test]
    fn matches_like_kubernetes() {
        let agent = labels(&[("env", "prod"), ("role", "web"), ("zone", "eu-1")]);
        let cases = [
            ("env=prod", true),
            ("env=dev", false),
            ("env!=dev", true),
            ("missing!=x", true),
            ("role in (web,lb)", true),
            ("role in (db)", false),
            ("missing in (x)", false),
            ("role notin (db)", true),
            ("role notin (web)", false),
            ("missing notin (x)", true),
            ("zone", true),
            ("missing", false),
            ("!missing", true),
            ("!zone", false),
            ("env=prod,role in (web),!legacy", true),
            ("env=prod,role=db", false),
            ("", true),
        ];
        for (selector, want) in cases {
            assert_eq!(LabelSelector::parse(selector).unwrap().matches(&agent), want, "{selector}");
        }
    }

    #[test]
    fn refuses_hostile_and_malformed_input_with_a_reason() {
        let long_key = "k".repeat(64);
        let long_value = format!("k={}", "v".repeat(64));
        let many = vec!["a=b"; MAX_REQUIREMENTS + 1].join(",");
        let big_set =
            format!("k in ({})", (0..=MAX_SET_VALUES).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        let huge = "a".repeat(MAX_SELECTOR_LEN + 1);
        let bad = [
            "=",
            "env=prod,",
            ",env=prod",
            "env=prod,,x",
            "env prod",
            "env in",
            "env in ()",
            "env in (a",
            "env in (a b)",
            "env in a,b",
            "env notin (",
            "!",
            "!!env",
            "!env=x",
            "env=pr od",
            "env=-prod",
            "env=prod-",
            "-env=prod",
            "env/=x",
            "/env=x",
            "Example.com/env=x",
            "a..b/c=d",
            "env=pröd",
            "énv=x",
            "env=x\u{0}",
            "env=x\ny",
            "env=x;DROP TABLE agents",
            "env='x'",
            "env=\"x\"",
            "env>x",
            "env~=x",
            "(env=x)",
            "env=x)",
            "env=%",
            "env=*",
            "env=a/b",
            &long_key,
            &long_value,
            &many,
            &big_set,
            &huge,
        ];
        for input in bad {
            let e = LabelSelector::parse(input).expect_err(input);
            assert!(!e.to_string().is_empty());
            assert!(!e.to_string().chars().any(|c| c.is_control()), "{input:?}: {e}");
            assert!(e.to_string().len() < 300, "{input:?}: the message stays short");
        }
    }

    #[test]
    fn keys_and_values() {
        for ok in ["a", "A-b_c.d", "example.com/a", "a.b-c/x", &"k".repeat(63)] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b/c", "EXAMPLE.com/a", "a_b.com/x", "/a", "a/", &"k".repeat(64)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_value("").is_ok());
        assert!(check_value("a/b").is_err());
    }

    #[test]
    fn operator_labels_win_over_inventory_meta() {
        let meta: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "env": "dev", "role": "web", "cores": 8, "spot": false,
            "tags": ["a"], "nested": {"x": 1}, "bad key": "x", "note": "not a label value",
        }))
        .unwrap();
        let operator = labels(&[("env", "prod")]);
        assert_eq!(
            effective_labels(&meta, &operator),
            labels(&[("cores", "8"), ("env", "prod"), ("role", "web"), ("spot", "false")])
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_canonical_forms_parse_back(input in "\\PC{0,80}") {
            if let Ok(selector) = LabelSelector::parse(&input) {
                let canonical = selector.to_string();
                proptest::prop_assert_eq!(LabelSelector::parse(&canonical).unwrap(), selector);
            }
        }

        #[test]
        fn selector_alphabet_never_panics(input in "[a-z=!(), .in/-]{0,60}") {
            let _ = LabelSelector::parse(&input);
        }
    }
}
