//! Running a host program: never through a shell, with a clean environment, a
//! deadline and a cap on what is read from it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

/// What a finished program printed (each stream cut at the cap) and its exit code
/// (None when a signal ended it).
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("starting {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("waiting for {program}: {source}")]
    Wait { program: String, source: std::io::Error },
}

/// Runs `program` with `args`, each passed as one argument exactly as given.
pub async fn run(program: &Path, args: &[&str], timeout: Duration, cap: usize) -> Result<Output, ExecError> {
    let name = program.display().to_string();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // English, so what the agent reports reads the same on every host.
        .env("LC_ALL", "C")
        .env("SYSTEMD_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn { program: name.clone(), source })?;
    let limit = u64::try_from(cap).unwrap_or(u64::MAX);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
            let mut buf = Vec::new();
            if let Some(pipe) = pipe {
                // Past the cap the pipe is dropped: the program gets EPIPE instead of
                // filling the agent's memory.
                let _ = pipe.take(limit).read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).into_owned()
        };
        let (out, err) = tokio::join!(
            read(stdout.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
            read(stderr.map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>)),
        );
        let status =
            child.wait().await.map_err(|source| ExecError::Wait { program: name.clone(), source })?;
        Ok(Output { stdout: out, stderr: err, exit_code: status.code() })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => Err(ExecError::Timeout { program: name, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_are_never_shell_text() {
        let out =
            run(Path::new("/bin/echo"), &["$(id)", "a;b", "*"], Duration::from_secs(5), 1024).await.unwrap();
        assert_eq!(out.stdout, "$(id) a;b *\n");
        assert_eq!(out.exit_code, Some(0));
    }

    #[tokio::test]
    async fn output_is_capped_and_slow_programs_time_out() {
        let out = run(Path::new("/usr/bin/yes"), &[], Duration::from_secs(5), 1000).await.unwrap();
        assert_eq!(out.stdout.len(), 1000);
        let err = run(Path::new("/bin/sleep"), &["5"], Duration::from_millis(100), 10).await.unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    }
}
