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
/// `--version` prints the version and the git revision ([`crate::version::FULL`]).
pub fn parse<T: Parser>() -> T {
    match parse_from::<T, _, _>(std::env::args_os()) {
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
    parse_from::<T, _, _>(args).map_err(|e| one_line(&e))
}

/// `T::try_parse_from` with the revision in the version: set here, once, rather than in
/// every service's `#[command(version = ...)]`, so no binary can leave it out.
fn parse_from<T, I, S>(args: I) -> Result<T, clap::Error>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let command = || T::command().version(crate::version::FULL);
    let mut matches = command().try_get_matches_from(args)?;
    T::from_arg_matches_mut(&mut matches).map_err(|err| err.format(&mut command()))
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

/// Secret values shipped in this repository as examples (the local run script, the
/// README). With anything starting with `REPLACE-ME`, a service refuses them outside
/// development mode: a copied example must never become a production secret.
pub const EXAMPLE_SECRETS: &[&str] = &[
    "opspilot-local-development-secret-0123456789",
    "opspilot-local-admin",
    "opspilot-local-bootstrap",
    "change_me",
    "changeme",
    "secret",
    "...",
];

/// Refuses a placeholder or example secret unless `dev` (OPSPILOT_DEV) is set. The
/// value itself is never echoed.
pub fn check_secret(variable: &str, value: &str, dev: bool) -> Result<(), String> {
    let trimmed = value.trim();
    let placeholder = trimmed.len() >= 10 && trimmed[..10].eq_ignore_ascii_case("REPLACE-ME");
    if dev || !(placeholder || EXAMPLE_SECRETS.contains(&trimmed)) {
        return Ok(());
    }
    Err(format!(
        "{variable}: a placeholder or example value from the documentation; set a real secret \
         (OPSPILOT_DEV=true accepts it, for local development only)"
    ))
}

/// The password inside a URL (`scheme://user:password@host`), percent-decoded.
pub fn url_password(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let password = parsed.password()?;
    Some(
        url::form_urlencoded::parse(format!("p={password}").as_bytes())
            .next()
            .map_or_else(|| password.to_owned(), |(_, v)| v.into_owned()),
    )
}

/// Development mode, shared by every service: accepts example secrets (and, in the
/// api-gateway, a short JWT secret and bus security off). Never in production.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DevArgs {
    /// Development mode: accept example and placeholder secrets. Never in production.
    #[arg(id = "dev", long = "dev", env = "OPSPILOT_DEV", value_name = "OPSPILOT_DEV", global = true)]
    pub dev: bool,
}

/// Parses a secret argument into a [`secrecy::SecretString`] (never logged).
pub fn secret(s: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(s.to_owned()))
}

/// Parses sizes (`512MiB`, `4GiB`, `1000000`) for clap arguments; at least 1 KiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize =
        s.trim().parse().map_err(|e| format!("invalid size {s:?}: {e} (e.g. 512MiB, 4GiB)"))?;
    if size.as_u64() < 1024 {
        return Err(format!("size {s:?} is below 1KiB"));
    }
    Ok(size.as_u64())
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
    fn version_names_the_git_revision_without_asking_each_command() {
        let err = parse_from::<Demo, _, _>(["demo", "--version"]).expect_err("--version stops parsing");
        assert_eq!(err.kind(), ErrorKind::DisplayVersion);
        let printed = err.render().to_string();
        assert!(printed.trim_end().ends_with(crate::version::FULL), "{printed}");
    }

    #[test]
    fn placeholder_secrets_are_refused_outside_development() {
        for value in
            ["REPLACE-ME", "replace-me-with-at-least-32-random-bytes", "opspilot-local-admin", " changeme "]
        {
            let err = check_secret("JWT_SECRET", value, false).unwrap_err();
            assert!(err.starts_with("JWT_SECRET:"), "{err}");
            assert!(!err.contains(value.trim()), "the value must not be echoed: {err}");
            assert!(check_secret("JWT_SECRET", value, true).is_ok());
        }
        assert!(check_secret("JWT_SECRET", "k3Jq9-a-real-looking-secret-value-0123456789", false).is_ok());
        assert_eq!(url_password("redis://:REPLACE-ME%2Fx@redis:6379").as_deref(), Some("REPLACE-ME/x"));
        assert_eq!(url_password("postgres://u@h/db"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 * 1024 * 1024 * 1024);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_bytes("2048").unwrap(), 2048);
        assert!(parse_bytes("12").is_err());
        assert!(parse_bytes("lots").is_err());
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
