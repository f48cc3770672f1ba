//! Configuration parsing with one contract for every service: `--help` documents every
//! flag and its environment variable; a bad or missing value exits with code 64
//! (`EX_USAGE`) and one line naming the variable.

use std::fmt::Display;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;

/// `EX_USAGE` from sysexits.h: the configuration was wrong.
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process arguments and environment, exiting on error as described above.
pub fn parse<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
            _ => exit_config_error(one_line(&err)),
        },
    }
}

/// Parses from an explicit argument list (tests), returning the one-line error.
pub fn try_parse_from<T, I, S>(args: I) -> Result<T, String>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    T::try_parse_from(args).map_err(|e| one_line(&e))
}

/// Prints `config error: {message}` to stderr and exits with [`EXIT_CONFIG`].
pub fn exit_config_error(message: impl Display) -> ! {
    eprintln!("config error: {message}");
    std::process::exit(EXIT_CONFIG)
}

/// Flattens clap's multi-line rendering (error, hints, usage) into the error itself.
fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_owned()
}

/// Parses human durations (`500ms`, `5s`, `2m`) for clap arguments.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 500ms, 5s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long, env = "OPSPILOT_DEMO_PORT_UNSET_IN_TESTS")]
        db_port: u16,
    }

    #[test]
    fn errors_are_one_line_and_name_the_variable() {
        let err = try_parse_from::<Demo, _, _>(["demo", "--db-port", "nope"]).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("DB_PORT"), "{err}");
        let err = try_parse_from::<Demo, _, _>(["demo"]).unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("DB_PORT"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }
}
