//! Validating what a model answered.
//!
//! The answer must be one JSON object (a Markdown code fence around it is tolerated):
//!
//! ```json
//! {"analysis": "text", "critical": true,
//!  "suggested_action": {"command": "restart_service", "params": {"service": "nginx"}}}
//! ```
//!
//! `analysis` (a non-empty string, cut at [`MAX_ANALYSIS_CHARS`]) and `critical` (a
//! boolean; `is_critical` is accepted too) are required: without them the answer is
//! malformed and the analysis fails. `suggested_action` is optional (`null`, absent);
//! an action that [`Command::from_parts`] refuses, or more than one, is dropped and the
//! drop recorded with its reason, while the analysis itself is kept.

use serde_json::{Map, Value};
use wire_models::Command;

use crate::analyzer::DroppedAction;
use crate::text::truncate_chars;

/// Longest analysis text kept, in characters.
pub(crate) const MAX_ANALYSIS_CHARS: usize = 2000;
/// Largest dropped command or params kept, as JSON bytes.
const MAX_DROPPED_BYTES: usize = 1024;

/// A validated answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) text: String,
    pub(crate) is_critical: bool,
    pub(crate) action: Option<Command>,
    pub(crate) dropped: Option<DroppedAction>,
}

/// Parses and validates a model's answer; the error says what is wrong with it.
pub(crate) fn parse(content: &str) -> Result<Answer, String> {
    let body = strip_code_fence(content.trim());
    if body.is_empty() {
        return Err("the answer is empty".into());
    }
    let value: Value = serde_json::from_str(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let Value::Object(map) = value else {
        return Err("the answer is not a JSON object".into());
    };
    let text = match map.get("analysis") {
        Some(Value::String(s)) if !s.trim().is_empty() => clean_text(s.trim()),
        Some(Value::String(_)) => return Err("\"analysis\" is empty".into()),
        Some(_) => return Err("\"analysis\" is not a string".into()),
        None => return Err("\"analysis\" is missing".into()),
    };
    let is_critical = match map.get("critical").or_else(|| map.get("is_critical")) {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"critical\" is not a boolean".into()),
        None => return Err("\"critical\" is missing".into()),
    };
    let (action, dropped) = match map.get("suggested_action").or_else(|| map.get("action")) {
        None | Some(Value::Null) => (None, None),
        Some(raw) => match validate_action(raw) {
            Ok(command) => (Some(command), None),
            Err(dropped) => (None, Some(dropped)),
        },
    };
    Ok(Answer { text, is_critical, action, dropped })
}

/// An allow-listed command, or the drop record saying why not.
fn validate_action(raw: &Value) -> Result<Command, DroppedAction> {
    let drop = |command: &Value, params: &Value, reason: String| DroppedAction {
        command: bounded_json(command),
        params: bounded_json(params),
        reason,
    };
    match raw {
        Value::Object(action) => {
            let command = action.get("command").unwrap_or(&Value::Null);
            let params = action.get("params").unwrap_or(&Value::Null);
            let Value::String(name) = command else {
                return Err(drop(command, params, "\"command\" is missing or not a string".into()));
            };
            Command::from_parts(name, params).map_err(|e| drop(command, params, e.to_string()))
        }
        Value::Array(items) if items.len() == 1 => validate_action(&items[0]),
        Value::Array(items) => Err(drop(
            raw,
            &Value::Null,
            format!("{} actions were suggested; at most one is allowed", items.len()),
        )),
        other => Err(drop(other, &Value::Null, "the suggested action is not an object".into())),
    }
}

/// Models sometimes wrap JSON in a Markdown fence even when asked not to.
fn strip_code_fence(s: &str) -> &str {
    let Some(rest) = s.strip_prefix("```") else { return s };
    let rest = rest.strip_prefix("json").or_else(|| rest.strip_prefix("JSON")).unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// Bounded and storable: Postgres text cannot hold U+0000.
fn clean_text(s: &str) -> String {
    let cleaned: String = s.chars().filter(|c| *c != '\0').collect();
    if cleaned.chars().count() > MAX_ANALYSIS_CHARS {
        let mut cut = truncate_chars(&cleaned, MAX_ANALYSIS_CHARS - 1);
        cut.push('…');
        cut
    } else {
        cleaned
    }
}

/// What the model sent, made storable (no U+0000, which jsonb refuses) and bounded.
fn bounded_json(value: &Value) -> Value {
    let clean = without_nul(value);
    let text = clean.to_string();
    if text.len() <= MAX_DROPPED_BYTES {
        clean
    } else {
        Value::String(format!("{}…", truncate_chars(&text, MAX_DROPPED_BYTES)))
    }
}

fn without_nul(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| (k.replace('\0', ""), without_nul(v))).collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wire_models::ServiceName;

    use super::*;

    #[test]
    fn a_good_answer_with_an_allowed_action() {
        let a = parse(
            r#"{"analysis": "nginx crashed.", "critical": true,
                "suggested_action": {"command": "restart_service", "params": {"service": "nginx"}}}"#,
        )
        .unwrap();
        assert_eq!(a.text, "nginx crashed.");
        assert!(a.is_critical);
        assert_eq!(a.action, Some(Command::RestartService { service: ServiceName::parse("nginx").unwrap() }));
        assert_eq!(a.dropped, None);
    }

    #[test]
    fn no_action_is_fine() {
        for body in [
            r#"{"analysis": "a", "critical": false}"#,
            r#"{"analysis": "a", "critical": false, "suggested_action": null}"#,
            "```json\n{\"analysis\": \"a\", \"is_critical\": false}\n```",
        ] {
            let a = parse(body).unwrap();
            assert_eq!((a.action, a.dropped, a.is_critical), (None, None, false), "{body}");
        }
    }

    #[test]
    fn refused_actions_are_dropped_with_the_reason() {
        let cases = [
            (json!({"command": "rm_rf", "params": {"path": "/"}}), "not on the allow-list"),
            (json!({"command": "restart_service", "params": {"service": "nginx; reboot"}}), "params.service"),
            (
                json!({"command": "restart_service", "params": {"service": "nginx", "force": true}}),
                "params.force",
            ),
            (json!({"command": 42}), "not a string"),
            (json!("restart nginx"), "not an object"),
            (
                json!([{"command": "ping"}, {"command": "restart_service", "params": {"service": "a"}}]),
                "at most one",
            ),
        ];
        for (action, reason) in cases {
            let body = json!({"analysis": "x", "critical": true, "suggested_action": action}).to_string();
            let a = parse(&body).unwrap();
            assert_eq!(a.action, None, "{body}");
            let dropped = a.dropped.unwrap();
            assert!(dropped.reason.contains(reason), "{body}: {}", dropped.reason);
            assert_eq!(a.text, "x");
        }
        let a = parse(&json!({"analysis": "x", "critical": true, "suggested_action": {"command": "rm_rf", "params": {"path": "/"}}}).to_string()).unwrap();
        assert_eq!(
            a.dropped.unwrap().to_json(),
            json!({"command": "rm_rf", "params": {"path": "/"}, "reason": "command \"rm_rf\" is not on the allow-list"})
        );
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        for (body, expected) in [
            ("", "empty"),
            ("I think nginx crashed.", "not JSON"),
            ("[1, 2]", "not a JSON object"),
            (r#"{"critical": true}"#, "\"analysis\" is missing"),
            (r#"{"analysis": "  ", "critical": true}"#, "\"analysis\" is empty"),
            (r#"{"analysis": 5, "critical": true}"#, "\"analysis\" is not a string"),
            (r#"{"analysis": "a"}"#, "\"critical\" is missing"),
            (r#"{"analysis": "a", "critical": "yes"}"#, "\"critical\" is not a boolean"),
        ] {
            let err = parse(body).unwrap_err();
            assert!(err.contains(expected), "{body:?}: {err}");
        }
    }

    #[test]
    fn text_is_bounded_and_storable() {
        let long = "é".repeat(MAX_ANALYSIS_CHARS * 2);
        let a = parse(&json!({"analysis": long, "critical": false}).to_string()).unwrap();
        assert_eq!(a.text.chars().count(), MAX_ANALYSIS_CHARS);
        let a = parse(
            &json!({"analysis": "a\u{0}b", "critical": false,
            "suggested_action": {"command": "x\u{0}", "params": {"k\u{0}": "v".repeat(5000)}}})
            .to_string(),
        )
        .unwrap();
        assert_eq!(a.text, "ab");
        let dropped = a.dropped.unwrap();
        assert_eq!(dropped.command, json!("x"));
        assert!(dropped.params.as_str().unwrap().len() <= MAX_DROPPED_BYTES + 3);
        assert!(!dropped.to_json().to_string().contains("\\u0000"));
    }
}
