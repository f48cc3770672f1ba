//! Files an agent keeps to itself: its NKey seed, its credentials, its enrollment.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Writes `bytes` to `path` atomically with mode 0600: a private temporary file beside
/// it, synced, renamed over the old one, then the directory synced. A crash leaves the
/// old file or the new one, never half of either.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_private_as(path, bytes, None)
}

/// [`write_private`], the file given to `owner` (uid, gid) before it replaces the old
/// one, so no reader ever finds a file it cannot open. Giving a file away takes root.
pub fn write_private_as(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        // create_new: never follow or reuse something another user planted there.
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|err| {
                std::io::Error::new(err.kind(), format!("giving it to uid {uid} gid {gid}: {err}"))
            })?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_file_is_replaced_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed");
        write_private(&path, b"first").unwrap();
        write_private(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("seed")], "no temporary file is left behind");
        assert!(write_private(Path::new("/"), b"x").is_err());
    }

    #[test]
    fn a_file_given_away_is_replaced_only_once_it_belongs_to_its_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enrollment.json");
        write_private(&path, b"old").unwrap();
        // nobody:nogroup, whoever runs the test.
        let result = write_private_as(&path, b"new", Some((65534, 65534)));
        let meta = std::fs::metadata(&path).unwrap();
        // The test's own directory tells who runs it.
        if std::fs::metadata(dir.path()).unwrap().uid() == 0 {
            result.unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
        } else {
            let err = result.unwrap_err();
            assert!(err.to_string().contains("giving it to uid 65534"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), b"old", "the old file stays whole");
        }
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 1, "no temporary file is left behind");
    }
}
