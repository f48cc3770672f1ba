//! Small validators for free-text fields: bounded length, no control characters
//! where the text ends up in logs or UI labels.

pub(crate) fn bounded(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.len();
    if len < min || len > max {
        return Err(format!("{field}: length must be between {min} and {max} bytes, got {len}"));
    }
    Ok(())
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
