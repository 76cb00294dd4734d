//! The diagnostics bundle of `tunnel logs save FILE`: what it holds, and how it reaches disk.
//!
//! ```text
//!  tunnel (the caller, its own credentials)                 tunneld (root)
//!   create FILE: O_CREAT|O_EXCL|O_NOFOLLOW, 0600 ──▶ fails: exit 1, nothing asked
//!   ask ──────────────── {"op":"diagnostics"} ──────────────▶ builds the bundle (no path)
//!   write + fsync ◀──────────── the bundle as the response's data
//!   (no answer or a failed write: the new file is removed)
//! ```
//!
//! The file is written by the process that names it, never by the daemon: a root daemon that
//! writes wherever a request points is a confused deputy (it would follow a link an
//! unprivileged user planted, write through its own mount namespace and sandbox instead of
//! the caller's, and leave a root-owned file wherever it was asked). The caller creates the
//! file exclusively, so an existing file is never overwritten and a symbolic link at the path
//! is never followed (links in the directories above it are the caller's own business: it
//! opens the path with its own rights), and with mode 0600, because the bundle names users and
//! gateways.
//!
//! The bundle holds no secrets: connections carry their passwords, cookies, client keys and
//! pins only in memory, and the bundle is built from what is stored (the store, the machine
//! settings), the live state and the event log, none of which holds them
//! (`tests/netns_client.rs` checks it against a connection that used all four).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use nix::{errno::Errno, fcntl::OFlag};

/// The bundle's file mode: it names users, gateways and addresses.
pub const BUNDLE_MODE: u32 = 0o600;

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// Something (a file, a directory, a symbolic link) is already at the path.
    #[error(
        "{}: something is already there; the bundle goes to a new file only (it neither overwrites nor follows a link)",
        path.display()
    )]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// A bundle file that has been created but not yet written; removed when dropped unless
/// [`NewFile::write`] succeeded.
#[derive(Debug)]
pub struct NewFile {
    path: PathBuf,
    file: File,
    written: bool,
}

impl NewFile {
    /// Creates `path` exclusively with mode 0600, never following a symbolic link there.
    pub fn create(path: &Path) -> Result<NewFile, SaveError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(BUNDLE_MODE)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(path)
            .map_err(|source| match source.raw_os_error().map(Errno::from_raw) {
                // O_EXCL reports any name that exists, a link included (even a dangling
                // one); ELOOP is O_NOFOLLOW's word for a link.
                Some(Errno::EEXIST | Errno::ELOOP) => SaveError::Exists {
                    path: path.to_path_buf(),
                },
                _ => SaveError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let new = NewFile {
            path: path.to_path_buf(),
            file,
            written: false,
        };
        // The mode given to open(2) is masked by the umask; a umask such as 0277 would leave
        // the owner unable to read the bundle back.
        new.file
            .set_permissions(std::fs::Permissions::from_mode(BUNDLE_MODE))
            .map_err(|source| new.io(source))?;
        Ok(new)
    }

    fn io(&self, source: io::Error) -> SaveError {
        SaveError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes the whole bundle and flushes it to disk.
    pub fn write(mut self, contents: &[u8]) -> Result<(), SaveError> {
        let mut file = &self.file;
        file.write_all(contents)
            .and_then(|()| file.sync_all())
            .map_err(|source| self.io(source))?;
        self.written = true;
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.written {
            // Not written: nothing half-made stays behind.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn a_new_file_is_written_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diag.json");
        NewFile::create(&path).unwrap().write(b"{}").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn an_existing_file_is_neither_overwritten_nor_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, "keep me").unwrap();
        let err = NewFile::create(&path).unwrap_err();
        assert!(matches!(err, SaveError::Exists { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn a_symbolic_link_is_not_followed_even_a_dangling_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "root's file").unwrap();
        let link = dir.path().join("diag.json");
        symlink(&target, &link).unwrap();
        let err = NewFile::create(&link).unwrap_err();
        assert!(matches!(err, SaveError::Exists { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's file");
        // A link to a name that does not exist yet would otherwise create it.
        let dangling = dir.path().join("dangling");
        let created_there = dir.path().join("not-yet");
        symlink(&created_there, &dangling).unwrap();
        let err = NewFile::create(&dangling).unwrap_err();
        assert!(matches!(err, SaveError::Exists { .. }), "{err:?}");
        assert!(!created_there.exists());
    }

    #[test]
    fn a_file_never_written_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diag.json");
        drop(NewFile::create(&path).unwrap());
        assert!(!path.exists());
    }
}
