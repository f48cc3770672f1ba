//! The state directory: the agent's NKey seed, its enrollment and its NATS credentials.
//! Every file is written atomically (a private temporary file, synced, renamed over
//! the old one, the directory synced) with mode 0600, so a crash or a power cut leaves
//! either the old or the new file, never half of one, and no other user can read them.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use natsbus::auth::KeyPair;
use serde::{Deserialize, Serialize};
use wire_models::AgentId;

const SEED_FILE: &str = "identity.seed";
const ENROLLMENT_FILE: &str = "enrollment.json";
const CREDS_FILE: &str = "nats.creds";

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// What enrollment gave the agent, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    pub agent_id: AgentId,
    pub api: String,
    pub machine_fingerprint: String,
    pub hostname: String,
    pub nats_urls: Vec<String>,
    pub subject_root: String,
    pub heartbeat_bucket: String,
    pub heartbeat_interval_secs: u32,
    /// When the NATS credentials expire (None: the bus runs without security).
    pub creds_expires_at: Option<DateTime<Utc>>,
    pub enrolled_at: DateTime<Utc>,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the unacknowledged events are kept.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    pub fn creds_path(&self) -> PathBuf {
        self.dir.join(CREDS_FILE)
    }

    /// Creates the directory (mode 0700) if needed.
    pub fn ensure(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io { path: self.dir.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
    }

    /// The agent's key, if it has one.
    pub fn key(&self) -> Result<Option<KeyPair>, StateError> {
        let path = self.dir.join(SEED_FILE);
        let Some(seed) = read_optional(&path)? else { return Ok(None) };
        let key = KeyPair::from_seed(seed.trim())
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        Ok(Some(key))
    }

    /// Stores the agent's key. Written before the public key is sent anywhere: a crash
    /// after the backend recorded the key still leaves the agent able to prove it.
    pub fn save_key(&self, key: &KeyPair) -> Result<(), StateError> {
        let path = self.dir.join(SEED_FILE);
        let seed =
            key.seed().map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        write_private(&path, seed.as_bytes())
    }

    pub fn enrollment(&self) -> Result<Option<Enrollment>, StateError> {
        let path = self.dir.join(ENROLLMENT_FILE);
        let Some(text) = read_optional(&path)? else { return Ok(None) };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })
    }

    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<(), StateError> {
        let path = self.dir.join(ENROLLMENT_FILE);
        let text = serde_json::to_vec_pretty(enrollment)
            .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        write_private(&path, &text)
    }

    /// Stores the NATS credentials (JWT and seed as a `.creds` file), or removes a stale
    /// file when the backend issued none.
    pub fn save_creds(&self, creds: Option<&str>) -> Result<(), StateError> {
        let path = self.creds_path();
        match creds {
            Some(creds) => write_private(&path, creds.as_bytes()),
            None => match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    Err(StateError::Io { path, source: err })
                }
                _ => Ok(()),
            },
        }
    }

    pub fn has_creds(&self) -> bool {
        self.creds_path().is_file()
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path: path.to_owned(), source }),
    }
}

/// Writes `bytes` to `path` atomically with mode 0600, owned by the directory's owner
/// when root writes into a directory that another user owns (see [`owner_for`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let owner = path
        .parent()
        .and_then(|dir| std::fs::metadata(dir).ok())
        .and_then(|dir| owner_for(rustix::process::geteuid().is_root(), dir.uid(), dir.gid()));
    agent_client::files::write_private_as(path, bytes, owner)
        .map_err(|source| StateError::Io { path: path.to_owned(), source })
}

/// Who should own a file written into a directory owned by `dir_uid`:`dir_gid`.
/// Root writing into a directory another user owns (`sudo opspilot-agent enroll` into
/// the packaged state directory) gives the file to that user, since the service runs as
/// it and could not read a file root kept. Anyone else keeps what they write.
pub fn owner_for(writer_is_root: bool, dir_uid: u32, dir_gid: u32) -> Option<(u32, u32)> {
    (writer_is_root && dir_uid != 0).then_some((dir_uid, dir_gid))
}

/// Creates `dir` (and its parents) with mode 0700, giving it to its parent's owner as
/// [`write_private`] does for files.
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io { path: dir.to_owned(), source };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let parent = dir.parent().and_then(|p| std::fs::metadata(p).ok());
    if let Some((uid, gid)) =
        parent.and_then(|p| owner_for(rustix::process::geteuid().is_root(), p.uid(), p.gid()))
    {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io)?;
    }
    Ok(())
}

/// The machine fingerprint: the OS machine id, or the DMI product UUID where there is
/// none (some minimal images ship an empty `/etc/machine-id`).
pub fn machine_fingerprint(machine_id: &Path, product_uuid: &Path) -> Result<String, String> {
    for path in [machine_id, product_uuid] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let id = text.trim();
            if (8..=512).contains(&id.len()) && id.chars().all(|c| c.is_ascii_graphic()) {
                return Ok(id.to_owned());
            }
        }
    }
    Err(format!(
        "no machine id: neither {} nor {} holds one (run `systemd-machine-id-setup`)",
        machine_id.display(),
        product_uuid.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("state"));
        state.ensure().unwrap();
        let key = KeyPair::new_user();
        state.save_key(&key).unwrap();
        state.save_key(&key).unwrap();
        assert_eq!(state.key().unwrap().unwrap().public_key(), key.public_key());
        state.save_creds(Some("creds")).unwrap();
        for entry in std::fs::read_dir(state.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            assert!(!name.ends_with(".tmp"), "no temporary file is left: {name}");
            assert_eq!(entry.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{name}");
        }
        let mode = std::fs::metadata(state.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        state.save_creds(None).unwrap();
        assert!(!state.has_creds());
    }

    #[test]
    fn root_gives_what_it_writes_to_the_owner_of_the_directory() {
        assert_eq!(owner_for(true, 998, 997), Some((998, 997)), "sudo enroll into the service's directory");
        assert_eq!(owner_for(true, 0, 0), None, "root's own directory");
        assert_eq!(owner_for(false, 998, 997), None, "the service's user, or anyone else");
        assert_eq!(owner_for(false, 1000, 1000), None);
    }

    #[test]
    fn files_root_writes_into_another_users_directory_are_that_users() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: giving files away is covered by the decision test only");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::os::unix::fs::chown(&state_dir, Some(65534), Some(65534)).unwrap();
        let state = StateDir::new(&state_dir);
        state.ensure().unwrap();
        state.save_key(&KeyPair::new_user()).unwrap();
        create_private_dir(&state.spool_dir()).unwrap();
        for path in [state_dir.join(SEED_FILE), state.spool_dir()] {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{}", path.display());
        }
        // Root's own directory: root's files.
        let own = StateDir::new(&dir.path().join("own"));
        own.ensure().unwrap();
        own.save_creds(Some("creds")).unwrap();
        assert_eq!(std::fs::metadata(own.creds_path()).unwrap().uid(), 0);
    }

    #[test]
    fn a_corrupt_seed_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::write(dir.path().join(SEED_FILE), "not a seed").unwrap();
        assert!(matches!(state.key(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn the_fingerprint_falls_back_to_the_dmi_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let (machine_id, uuid) = (dir.path().join("machine-id"), dir.path().join("product_uuid"));
        std::fs::write(&uuid, "4c4c4544-0042-3510-8051-b7c04f4e3732\n").unwrap();
        assert_eq!(machine_fingerprint(&machine_id, &uuid).unwrap(), "4c4c4544-0042-3510-8051-b7c04f4e3732");
        std::fs::write(&machine_id, "\n").unwrap();
        assert_eq!(machine_fingerprint(&machine_id, &uuid).unwrap(), "4c4c4544-0042-3510-8051-b7c04f4e3732");
        std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(machine_fingerprint(&machine_id, &uuid).unwrap(), "0123456789abcdef0123456789abcdef");
        std::fs::remove_file(&machine_id).unwrap();
        std::fs::remove_file(&uuid).unwrap();
        assert!(machine_fingerprint(&machine_id, &uuid).is_err());
    }
}
