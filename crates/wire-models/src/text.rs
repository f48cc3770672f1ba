//! Small validators for free-text fields: bounded length, no control characters
//! where the text ends up in logs or UI labels.

pub(crate) fn bounded(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.len();
    if len < min || len > max {
        return Err(format!("{field}: length must be between {min} and {max} bytes, got {len}"));
    }
    // Postgres text and jsonb cannot hold U+0000; refuse it here rather than at the
    // database.
    if value.contains('\0') {
        return Err(format!("{field}: the NUL character is not allowed"));
    }
    Ok(())
}

/// Free-form JSON from a host: no NUL characters anywhere (keys or strings).
pub(crate) fn json_without_nul(field: &str, value: &serde_json::Value) -> Result<(), String> {
    let bad = match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => return items.iter().try_for_each(|v| json_without_nul(field, v)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k.contains('\0') {
                    return Err(format!("{field}: the NUL character is not allowed"));
                }
                json_without_nul(field, v)?;
            }
            false
        }
        _ => false,
    };
    if bad { Err(format!("{field}: the NUL character is not allowed")) } else { Ok(()) }
}

/// `null` where a default (empty collection) is allowed: agents in languages that
/// marshal empty maps and lists as `null` (Go) are not refused for it.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A short label (hostname, source, agent version): bounded and free of control
/// characters, so it cannot forge log lines or break a UI.
pub(crate) fn label(field: &str, value: &str, max: usize) -> Result<(), String> {
    bounded(field, value, 1, max)?;
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: control characters are not allowed"));
    }
    Ok(())
}

pub(crate) fn optional_label(field: &str, value: Option<&str>, max: usize) -> Result<(), String> {
    value.map_or(Ok(()), |v| label(field, v, max))
}
