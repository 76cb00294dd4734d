//! Pointing `/etc/resolv.conf` at the forwarder, and putting back what was there.
//!
//! ```text
//!  point:   read what is there (a file, or a symlink and its target's text)
//!           ─▶ keep it in <state>/resolv.conf.saved (0600, synced) ─▶ write ours:
//!              a plain file or a symlink: a new file renamed over it
//!              a bind mount (rename: EBUSY): written in place
//!  restore: the saved text written back the same way, a symlink made again ─▶ saved removed
//!  start:   a saved file left over means tunneld died while DNS pointed here: restore first
//! ```
//!
//! The saved file is written before `/etc/resolv.conf` is touched and removed only after it
//! is back, so the original is never lost; pointing twice keeps the first original.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::client::sessions::write_private;

/// What `/etc/resolv.conf` was before tunneld pointed it at the forwarder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Original {
    /// Where a symlink pointed; None for a file (or a bind mount).
    pub(crate) symlink: Option<PathBuf>,
    /// Its text (a symlink's target's, when it could be read).
    pub(crate) text: String,
}

impl Original {
    /// The `nameserver` addresses of the original text.
    pub(crate) fn nameservers(&self) -> Vec<std::net::IpAddr> {
        self.text
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("nameserver"))
                    .then(|| words.next()?.split('%').next()?.parse().ok())
                    .flatten()
            })
            .collect()
    }

    /// The `search` domains of the original text.
    pub(crate) fn search(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("search"))
            .flat_map(|rest| rest.split_whitespace().map(str::to_string))
            .collect()
    }
}

/// `/etc/resolv.conf` (or a stand-in) and where its original is kept.
#[derive(Clone, Debug)]
pub(crate) struct ResolvConf {
    pub(crate) path: PathBuf,
    pub(crate) saved: PathBuf,
}

impl ResolvConf {
    /// The original: the one kept aside while ours is in place, else what is there now.
    pub(crate) fn original(&self) -> io::Result<Original> {
        match fs::read_to_string(&self.saved) {
            Ok(text) => serde_json::from_str(&text).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.read_current(),
            Err(e) => Err(e),
        }
    }

    fn read_current(&self) -> io::Result<Original> {
        let symlink = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => Some(fs::read_link(&self.path)?),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            // A dangling symlink, or no file: nothing to resolve with.
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(Original { symlink, text })
    }

    /// Keeps the original aside (unless it already is) and writes `text` in its place.
    pub(crate) fn point(&self, text: &str) -> io::Result<()> {
        if !self.saved.exists() {
            let original = self.read_current()?;
            write_private(
                &self.saved,
                &serde_json::to_vec(&original).map_err(io::Error::other)?,
            )?;
        }
        replace(&self.path, text)
    }

    /// Puts the original back and forgets it; nothing kept, nothing done.
    pub(crate) fn restore(&self) -> io::Result<bool> {
        let original = match fs::read_to_string(&self.saved) {
            Ok(text) => serde_json::from_str::<Original>(&text).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match &original.symlink {
            Some(target) => {
                let tmp = temp_beside(&self.path);
                let _ = fs::remove_file(&tmp);
                symlink(target, &tmp)?;
                if let Err(e) = fs::rename(&tmp, &self.path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            None => replace(&self.path, &original.text)?,
        }
        fs::remove_file(&self.saved)?;
        Ok(true)
    }
}

/// The new file made beside `path` before it is renamed over it: named by this process, so
/// that two writers (two tunnelds on one /etc, each with its own mount of the file) never
/// take or remove each other's.
fn temp_beside(path: &Path) -> PathBuf {
    path.with_extension(format!("tunnel-new-{}", std::process::id()))
}

/// Replaces the file at `path` with `text`: a new file renamed over it (a symlink is
/// replaced, not followed), or, where the path is a mount point (a bind mount: `EBUSY`),
/// the text written in place.
fn replace(path: &Path, text: &str) -> io::Result<()> {
    let tmp = temp_beside(path);
    fs::write(&tmp, text)?;
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    match fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let _ = fs::remove_file(&tmp);
            fs::write(path, text)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunnel-resolv-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    const ORIGINAL: &str =
        "# the LAN's\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\nsearch home.arpa lan\n";

    #[test]
    fn a_plain_file_is_kept_replaced_and_restored_byte_for_byte() {
        let d = dir("file");
        let rc = ResolvConf {
            path: d.join("resolv.conf"),
            saved: d.join("saved"),
        };
        fs::write(&rc.path, ORIGINAL).unwrap();
        rc.point("nameserver 127.0.77.53\n").unwrap();
        rc.point("nameserver 127.0.77.53\nsearch corp.example\n")
            .unwrap();
        assert_eq!(
            fs::read_to_string(&rc.path).unwrap(),
            "nameserver 127.0.77.53\nsearch corp.example\n"
        );
        let o = rc.original().unwrap();
        assert_eq!(o.text, ORIGINAL, "the first original stays kept");
        assert_eq!(
            o.nameservers(),
            [
                "192.168.1.1".parse::<std::net::IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(o.search(), ["home.arpa", "lan"]);
        assert!(rc.restore().unwrap());
        assert_eq!(fs::read_to_string(&rc.path).unwrap(), ORIGINAL);
        assert!(!rc.saved.exists());
        assert!(!rc.restore().unwrap(), "nothing kept: nothing done");
        fs::remove_dir_all(&d).unwrap();
    }

    /// Another tunneld writing the same file through its own mount (the tests run several
    /// at once) has its new file beside it; neither may take or remove the other's.
    #[test]
    fn another_writers_new_file_is_left_alone() {
        let d = dir("other");
        let rc = ResolvConf {
            path: d.join("resolv.conf"),
            saved: d.join("saved"),
        };
        fs::write(&rc.path, ORIGINAL).unwrap();
        let theirs = d.join("resolv.tunnel-new");
        fs::write(&theirs, "nameserver 10.9.9.9\n").unwrap();
        rc.point("nameserver 127.0.77.53\n").unwrap();
        assert!(rc.restore().unwrap());
        assert_eq!(fs::read_to_string(&rc.path).unwrap(), ORIGINAL);
        assert_eq!(
            fs::read_to_string(&theirs).unwrap(),
            "nameserver 10.9.9.9\n",
            "the other writer's file is as it left it"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_replaced_and_made_again() {
        let d = dir("link");
        let target = d.join("stub-resolv.conf");
        fs::write(&target, ORIGINAL).unwrap();
        let rc = ResolvConf {
            path: d.join("resolv.conf"),
            saved: d.join("saved"),
        };
        symlink(&target, &rc.path).unwrap();
        rc.point("nameserver 127.0.77.53\n").unwrap();
        assert!(
            !fs::symlink_metadata(&rc.path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            ORIGINAL,
            "the target is untouched"
        );
        assert!(rc.restore().unwrap());
        assert_eq!(fs::read_link(&rc.path).unwrap(), target);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_crash_leaves_the_original_to_restore_at_the_next_start() {
        let d = dir("crash");
        let rc = ResolvConf {
            path: d.join("resolv.conf"),
            saved: d.join("saved"),
        };
        fs::write(&rc.path, ORIGINAL).unwrap();
        rc.point("nameserver 127.0.77.53\n").unwrap();
        // A new process: only the files remain.
        let again = ResolvConf {
            path: rc.path.clone(),
            saved: rc.saved.clone(),
        };
        assert!(again.restore().unwrap());
        assert_eq!(fs::read_to_string(&rc.path).unwrap(), ORIGINAL);
        fs::remove_dir_all(&d).unwrap();
    }
}
