//! The size-rotating log file: the seed's "when a current log file reaches 10MB, a new one is
//! created and the oldest log file is deleted", keeping one old file at `<path>.1`.
//!
//! This module owns the file and its one predecessor; it neither formats lines (see
//! [`crate::EventLog`]) nor decides what is logged.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// The seed's rotation size.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Logs can name users and servers: owner-only, like the store.
const LOG_MODE: u32 = 0o600;

/// Why the log could not be opened, rotated or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("cannot open log file {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot rotate log file {} to {}: {source}", path.display(), to.display())]
    Rotate {
        path: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot write log file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("a log file limit of {max_bytes} bytes is too small to hold anything")]
    LimitTooSmall { max_bytes: u64 },
}

impl From<LogError> for io::Error {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Open { source, .. }
            | LogError::Rotate { source, .. }
            | LogError::Write { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

/// An append-only log file that moves itself to `<path>.1` (replacing the previous one) when
/// the next write would take it past `max_bytes`.
///
/// Each write (a [`RotatingLog::write_line`] call, or one `write` call through [`io::Write`])
/// lands whole in one file, never split across the rotation. A single write larger than the
/// limit goes, whole, into a fresh file: cutting a line would lose the part that explains
/// the problem. The rename is atomic, so a reader sees either the old file or the new one
/// under `<path>.1`. One writer per path (the daemon).
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    old: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
}

impl RotatingLog {
    /// Opens (or creates, mode 0600) the log at `path`, appending to what is there.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, LogError> {
        let path = path.into();
        if max_bytes == 0 {
            return Err(LogError::LimitTooSmall { max_bytes });
        }
        let file = open_append(&path)?;
        let len = file
            .metadata()
            .map_err(|source| LogError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let mut old = path.clone().into_os_string();
        old.push(".1");
        Ok(RotatingLog {
            path,
            old: old.into(),
            file,
            len,
            max_bytes,
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The previous file, `<path>.1`.
    pub fn old_path(&self) -> &Path {
        &self.old
    }

    /// Bytes in the current file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `line` (a newline is added if it has none), rotating first if needed.
    pub fn write_line(&mut self, line: &str) -> Result<(), LogError> {
        if line.ends_with('\n') {
            self.append(line.as_bytes())
        } else {
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            self.append(&buf)
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        let incoming = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if self.len > 0 && self.len.saturating_add(incoming) > self.max_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(bytes)
            .map_err(|source| LogError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.len = self.len.saturating_add(incoming);
        Ok(())
    }

    /// Moves the current file to `<path>.1` and starts an empty one. If someone else already
    /// moved the file away (logrotate, an admin), a fresh file is started all the same.
    pub fn rotate(&mut self) -> Result<(), LogError> {
        match fs::rename(&self.path, &self.old) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LogError::Rotate {
                    path: self.path.clone(),
                    to: self.old.clone(),
                    source,
                });
            }
        }
        self.file = open_append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_path_buf(),
            source,
        })
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn rotates_when_a_write_would_pass_the_limit_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel.log");
        let mut log = RotatingLog::open(&path, 20).unwrap();
        log.write_line("aaaaaaaaa").unwrap(); // 10 bytes
        log.write_line("bbbbbbbbb").unwrap(); // 20: exactly at the limit, no rotation
        assert_eq!(read(&path), "aaaaaaaaa\nbbbbbbbbb\n");
        assert!(!log.old_path().exists());
        log.write_line("ccc").unwrap(); // would make 24
        assert_eq!(read(&path), "ccc\n");
        assert_eq!(read(log.old_path()), "aaaaaaaaa\nbbbbbbbbb\n");
        assert_eq!(log.len(), 4);
        log.write_line("ddddddddddddddd").unwrap(); // 4 + 16 = 20, fits
        log.write_line("e").unwrap();
        // The second rotation replaced the first old file: only one is kept.
        assert_eq!(read(log.old_path()), "ccc\nddddddddddddddd\n");
        assert_eq!(read(&path), "e\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_oversized_line_goes_whole_into_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let mut log = RotatingLog::open(&path, 8).unwrap();
        log.write_line("ab").unwrap();
        log.write_line("0123456789abcdef").unwrap();
        assert_eq!(read(&path), "0123456789abcdef\n");
        assert_eq!(read(log.old_path()), "ab\n");
        // Into an empty file it is written without a pointless rotation.
        let path2 = dir.path().join("m");
        let mut log2 = RotatingLog::open(&path2, 4).unwrap();
        log2.write_line("long line").unwrap();
        assert!(!log2.old_path().exists());
    }

    #[test]
    fn reopening_appends_and_counts_existing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        fs::write(&path, "0123456789").unwrap();
        let mut log = RotatingLog::open(&path, 12).unwrap();
        assert_eq!(log.len(), 10);
        log.write_line("x").unwrap();
        assert_eq!(read(&path), "0123456789x\n");
        log.write_line("y").unwrap();
        assert_eq!(read(&path), "y\n");
    }

    #[test]
    fn new_files_are_owner_only_and_the_io_write_path_rotates_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let mut log = RotatingLog::open(&path, 6).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        log.write_all(b"abcd\n").unwrap();
        log.write_all(b"efgh\n").unwrap();
        log.flush().unwrap();
        assert_eq!(read(&path), "efgh\n");
        assert_eq!(read(log.old_path()), "abcd\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn errors_name_the_path() {
        assert!(matches!(
            RotatingLog::open("/x", 0),
            Err(LogError::LimitTooSmall { max_bytes: 0 })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("l");
        let err = RotatingLog::open(&path, 10).unwrap_err();
        assert!(err.to_string().contains("missing-dir/l"), "{err}");
        // Rotation onto a path that cannot be replaced (a directory) names both paths.
        let path = dir.path().join("l");
        fs::create_dir(dir.path().join("l.1")).unwrap();
        fs::write(dir.path().join("l.1").join("keep"), "x").unwrap();
        let mut log = RotatingLog::open(&path, 4).unwrap();
        log.write_line("abc").unwrap();
        let err = log.write_line("def").unwrap_err();
        assert!(matches!(err, LogError::Rotate { .. }), "{err}");
        assert!(err.to_string().contains("l.1"), "{err}");
    }

    #[test]
    fn a_file_moved_away_by_someone_else_is_started_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let mut log = RotatingLog::open(&path, 4).unwrap();
        log.write_line("abc").unwrap();
        fs::remove_file(&path).unwrap();
        log.write_line("def").unwrap();
        assert_eq!(read(&path), "def\n");
        assert!(!log.old_path().exists());
    }
}
