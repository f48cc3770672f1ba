//! Configuration parsing with one contract for every service: `--help` documents every
//! flag and its environment variable; a bad or missing value exits with code 64
//! (`EX_USAGE`) and one line naming the variable.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use secrecy::SecretString;

/// `EX_USAGE` from sysexits.h: the configuration was wrong.
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process arguments and environment, then reads the secrets (see
/// [`SecretEnv`]), exiting on error as described above. `--version` prints the version
/// and the git revision ([`crate::version::FULL`]).
pub fn parse<T: Parser + LoadSecrets>() -> T {
    let mut config = match parse_from::<T, _, _>(std::env::args_os()) {
        Ok(config) => config,
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => err.exit(),
            _ => exit_config_error(one_line(&err)),
        },
    };
    if let Err(message) = config.load_secrets(&SecretEnv::process()) {
        exit_config_error(message);
    }
    config
}

/// Parses from an explicit argument list (tests), secrets from the process environment
/// and the `--…-file` flags; returns the one-line error.
pub fn try_parse_from<T, I, S>(args: I) -> Result<T, String>
where
    T: Parser + LoadSecrets,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    try_parse_with_secrets(args, SecretEnv::process())
}

/// Parses from an explicit argument list with the secrets from `secrets` instead of
/// the process environment (tests cannot set variables: `set_var` races under tokio).
pub fn try_parse_with_secrets<T, I, S>(args: I, secrets: SecretEnv<'_>) -> Result<T, String>
where
    T: Parser + LoadSecrets,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let mut config = parse_from::<T, _, _>(args).map_err(|e| one_line(&e))?;
    config.load_secrets(&secrets)?;
    Ok(config)
}

/// A configuration that holds secrets. They are never clap arguments: a command line
/// is visible to every user of the host (`ps`, `/proc/*/cmdline`), so each secret is
/// read from its variable or from a file ([`SecretEnv::secret`]) once the flags are
/// parsed.
pub trait LoadSecrets {
    /// Reads every secret of this configuration (and of the ones flattened into it).
    fn load_secrets(&mut self, env: &SecretEnv<'_>) -> Result<(), String>;
}

/// Where secrets are read from: the process environment, or a fixed list (tests).
///
/// A secret `NAME` comes from the variable `NAME`, or from the file named by
/// `NAME_FILE` (or by the `--name-file` flag, which overrides the variables as every
/// flag does), as Docker and Kubernetes mount secrets. Setting both variables is an
/// error; a trailing newline in the file is not part of the secret.
#[derive(Debug, Clone, Copy)]
pub struct SecretEnv<'a> {
    fixed: Option<&'a [(&'a str, &'a str)]>,
}

impl SecretEnv<'static> {
    /// The process environment.
    pub fn process() -> Self {
        Self { fixed: None }
    }
}

impl<'a> SecretEnv<'a> {
    /// Exactly these variables, the process environment ignored.
    pub fn fixed(vars: &'a [(&'a str, &'a str)]) -> Self {
        Self { fixed: Some(vars) }
    }

    /// A variable's value; unset and empty are the same (compose sets `NAME=` for a
    /// variable it has no value for).
    fn var(&self, name: &str) -> Result<Option<String>, String> {
        let value = match self.fixed {
            Some(vars) => vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()),
            None => match std::env::var(name) {
                Ok(value) => Some(value),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{name}: not valid UTF-8")),
            },
        };
        Ok(value.filter(|v| !v.is_empty()))
    }

    /// The secret `name`: the file `file` (the `--…-file` flag or `{name}_FILE`, as
    /// clap parsed it) when given, else the variable `name`. The value is never part of
    /// an error.
    pub fn secret(&self, name: &str, file: Option<&Path>) -> Result<Option<SecretString>, String> {
        let file_var = format!("{name}_FILE");
        let value = self.var(name)?;
        if value.is_some() && self.var(&file_var)?.is_some() {
            return Err(format!("{name} and {file_var} are both set; set only one of them"));
        }
        match (file, value) {
            (Some(path), _) => read_secret_file(&file_var, path).map(Some),
            (None, Some(value)) => Ok(Some(SecretString::from(value))),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a secret from `path` (named by `variable`), without its trailing newline: an
/// `echo`ed file or a Kubernetes Secret written from one ends with one.
pub fn read_secret_file(variable: &str, path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{variable}: cannot read {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{variable}: {} is empty", path.display()));
    }
    Ok(SecretString::from(value.to_owned()))
}

/// What a PEM file given for TLS holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    /// One or more certificates (a CA bundle, or a certificate and its chain).
    Certificates,
    /// One private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Checks that `path` (named by `variable`) holds what `kind` says, so that a wrong or
/// unreadable file is a configuration error at start instead of a handshake failing
/// later, over and over. Returns the file's bytes. A key's content is never echoed.
pub fn read_pem(variable: &str, path: &Path, kind: Pem) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes =
        std::fs::read(path).map_err(|e| format!("{variable}: cannot read {}: {e}", path.display()))?;
    let ok = match kind {
        Pem::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            certs.is_ok_and(|certs| !certs.is_empty())
        }
        Pem::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !ok {
        let what = match kind {
            Pem::Certificates => "PEM certificates",
            Pem::PrivateKey => "a PEM private key",
        };
        return Err(format!("{variable}: {} does not hold {what}", path.display()));
    }
    Ok(bytes)
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
#[command(next_help_heading = "Development")]
pub struct DevArgs {
    /// Development mode: accept example and placeholder secrets. Never in production.
    #[arg(id = "dev", long = "dev", env = "OPSPILOT_DEV", value_name = "OPSPILOT_DEV", global = true)]
    pub dev: bool,
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

    impl LoadSecrets for Demo {
        fn load_secrets(&mut self, _: &SecretEnv<'_>) -> Result<(), String> {
            Ok(())
        }
    }

    /// A configuration with one secret, as the services declare theirs.
    #[derive(Parser, Debug)]
    struct WithSecret {
        /// The demo token: OPSPILOT_DEMO_TOKEN, or this file.
        #[arg(long = "demo-token-file", env = "OPSPILOT_DEMO_TOKEN_FILE_UNSET_IN_TESTS")]
        token_file: Option<std::path::PathBuf>,
        #[arg(skip)]
        token: Option<SecretString>,
    }

    impl LoadSecrets for WithSecret {
        fn load_secrets(&mut self, env: &SecretEnv<'_>) -> Result<(), String> {
            self.token = env.secret("OPSPILOT_DEMO_TOKEN", self.token_file.as_deref())?;
            Ok(())
        }
    }

    fn exposed(secret: Option<SecretString>) -> Option<String> {
        use secrecy::ExposeSecret as _;
        secret.map(|s| s.expose_secret().to_owned())
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file_without_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let env = SecretEnv::fixed(&[("NAME", "s3cret-from-env")]);
        assert_eq!(exposed(env.secret("NAME", None).unwrap()).as_deref(), Some("s3cret-from-env"));
        let none = SecretEnv::fixed(&[("NAME", "")]);
        assert_eq!(exposed(none.secret("NAME", None).unwrap()), None, "empty is unset");
        let from_file = SecretEnv::fixed(&[]);
        assert_eq!(
            exposed(from_file.secret("NAME", Some(&file)).unwrap()).as_deref(),
            Some("s3cret-from-file")
        );
        std::fs::write(&file, "windows\r\n").unwrap();
        assert_eq!(exposed(from_file.secret("NAME", Some(&file)).unwrap()).as_deref(), Some("windows"));
        // Inner whitespace is the secret's own.
        std::fs::write(&file, " two words \n").unwrap();
        assert_eq!(exposed(from_file.secret("NAME", Some(&file)).unwrap()).as_deref(), Some(" two words "));
    }

    #[test]
    fn a_secret_set_twice_or_unreadable_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-from-file").unwrap();
        let path = file.to_str().unwrap();
        let vars = [("NAME", "s3cret-from-env"), ("NAME_FILE", path)];
        let err = SecretEnv::fixed(&vars).secret("NAME", Some(&file)).unwrap_err();
        assert!(err.contains("NAME and NAME_FILE"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");

        let missing = dir.path().join("missing");
        let err = SecretEnv::fixed(&[]).secret("NAME", Some(&missing)).unwrap_err();
        assert!(err.starts_with("NAME_FILE:") && err.contains(missing.to_str().unwrap()), "{err}");
        std::fs::write(&file, "\n").unwrap();
        let err = SecretEnv::fixed(&[]).secret("NAME", Some(&file)).unwrap_err();
        assert!(err.starts_with("NAME_FILE:") && err.contains("empty"), "{err}");
    }

    #[test]
    fn secrets_are_loaded_after_the_flags_and_are_no_flags_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let vars = [("OPSPILOT_DEMO_TOKEN", "s3cret-from-env")];
        let config: WithSecret = try_parse_with_secrets(["demo"], SecretEnv::fixed(&vars)).unwrap();
        assert_eq!(exposed(config.token).as_deref(), Some("s3cret-from-env"));
        // The flag names a file, and overrides the variable as any flag does.
        let args = ["demo", "--demo-token-file", file.to_str().unwrap()];
        let config: WithSecret = try_parse_with_secrets(args, SecretEnv::fixed(&vars)).unwrap();
        assert_eq!(exposed(config.token).as_deref(), Some("s3cret-from-file"));
        let err =
            try_parse_with_secrets::<WithSecret, _, _>(["demo", "--demo-token", "x"], SecretEnv::fixed(&[]))
                .unwrap_err();
        assert!(err.contains("unexpected argument '--demo-token'"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn pem_files_are_checked_for_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        read_pem("CA", &cert_path, Pem::Certificates).unwrap();
        read_pem("KEY", &key_path, Pem::PrivateKey).unwrap();
        let err = read_pem("CA", &key_path, Pem::Certificates).unwrap_err();
        assert!(err.starts_with("CA:") && err.contains("PEM certificates"), "{err}");
        let err = read_pem("KEY", &cert_path, Pem::PrivateKey).unwrap_err();
        assert!(err.starts_with("KEY:") && err.contains("private key"), "{err}");
        let err = read_pem("CA", &dir.path().join("nope.pem"), Pem::Certificates).unwrap_err();
        assert!(err.starts_with("CA: cannot read"), "{err}");
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
