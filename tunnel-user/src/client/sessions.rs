//! Session cookies kept on disk (`sessions.json` in tunneld's state directory, 0600), so that
//! a tunneld restart, or a reboot within the session's lifetime, resumes a connection without
//! asking anyone: the gateway takes the cookie back as the session it issued.
//!
//! ```text
//!  cookie received (session up)          ─▶ kept, to resume at the next start
//!  user disconnects                      ─▶ kept, not resumed at start (used at the next connect)
//!  signed out / gateway ended or refused ─▶ removed
//!  tunneld stops or dies                 ─▶ kept as it was: the next start resumes it
//! ```
//!
//! A file that cannot be read is set aside (`sessions.json.corrupt`) and the start goes on
//! with none: a cookie is a shortcut, never the only way in.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// One connection's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    cookie: String,
    /// Resume it when tunneld starts: it was up, and no user disconnected it.
    resume: bool,
}

/// The kept sessions, by connection name.
pub(crate) struct Sessions {
    path: PathBuf,
    kept: BTreeMap<String, Kept>,
}

impl Sessions {
    pub(crate) fn open(path: PathBuf) -> Sessions {
        let kept = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "kept sessions unreadable: set aside");
                let _ = fs::rename(&path, path.with_extension("json.corrupt"));
                BTreeMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "kept sessions unreadable");
                BTreeMap::new()
            }
        };
        Sessions { path, kept }
    }

    /// The cookie kept for `connection`.
    pub(crate) fn cookie(&self, connection: &str) -> Option<&str> {
        self.kept.get(connection).map(|k| k.cookie.as_str())
    }

    /// The connections to resume at start.
    pub(crate) fn to_resume(&self) -> Vec<String> {
        self.kept
            .iter()
            .filter(|(_, k)| k.resume)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A cookie the connection got (Some), or lost (None).
    pub(crate) fn set(&mut self, connection: &str, cookie: Option<&str>) {
        let changed = match cookie {
            Some(c) => {
                let kept = Kept {
                    cookie: c.to_string(),
                    resume: true,
                };
                self.kept.insert(connection.to_string(), kept.clone()) != Some(kept)
            }
            None => self.kept.remove(connection).is_some(),
        };
        if changed {
            self.save();
        }
    }

    /// A user disconnected `connection`: its cookie stays for their next connect, but the
    /// next start does not resume it.
    pub(crate) fn hold(&mut self, connection: &str) {
        if let Some(k) = self.kept.get_mut(connection)
            && k.resume
        {
            k.resume = false;
            self.save();
        }
    }

    fn save(&self) {
        let text = serde_json::to_vec_pretty(&self.kept).unwrap_or_default();
        if let Err(e) = write_private(&self.path, &text) {
            warn!(file = %self.path.display(), error = %e, "keeping the session cookies");
        }
    }
}

/// Replaces `path` with `bytes` whole (a new file, 0600, synced, renamed over it).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunnel-sessions-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn cookies_are_kept_held_and_dropped_across_opens() {
        let d = dir("life");
        let path = d.join("sessions.json");
        let mut s = Sessions::open(path.clone());
        s.set("corp", Some("DSID=1"));
        s.set("lab", Some("DSID=2"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut s = Sessions::open(path.clone());
        assert_eq!(s.cookie("corp"), Some("DSID=1"));
        assert_eq!(s.to_resume(), ["corp", "lab"]);
        s.hold("lab");
        s.set("corp", None);
        let s = Sessions::open(path);
        assert_eq!(s.cookie("corp"), None);
        assert_eq!(s.cookie("lab"), Some("DSID=2"));
        assert!(s.to_resume().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_nothing_resumes() {
        let d = dir("corrupt");
        let path = d.join("sessions.json");
        fs::write(&path, "{not json").unwrap();
        let s = Sessions::open(path.clone());
        assert!(s.to_resume().is_empty());
        assert!(d.join("sessions.json.corrupt").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
