//! Outputs appear complete or not at all: everything is written under a temporary name beside
//! the target (`.<name>.tmp-<pid>`) and renamed into place at the end. On any error, or a panic,
//! the temporary is removed and an existing output is left untouched. A directory that already
//! exists is replaced only once the new one is complete: the old one is renamed away
//! (`.<name>.old-<pid>`), the new one renamed in, then the old one deleted.
//!
//! Inputs are never opened for writing: a model memory-mapped from the target keeps its bytes,
//! since renaming and unlinking leave the mapped inode alone.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{ExportError, Result};

/// A temporary file or directory that becomes `target` on [`Staged::commit`].
#[derive(Debug)]
pub struct Staged {
    target: PathBuf,
    tmp: PathBuf,
    dir: bool,
    committed: bool,
}

fn io_err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    let what = what.into();
    move |source| ExportError::Io { path, what, source }
}

/// The parent directory and file name of an output path, with the parent checked to exist.
fn split(target: &Path) -> Result<(PathBuf, String)> {
    let bad = |message: &str| ExportError::Io {
        path: target.to_path_buf(),
        what: "output path".into(),
        source: io::Error::new(io::ErrorKind::InvalidInput, message.to_string()),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("does not end in a (UTF-8) file name"))?
        .to_string();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("its parent is not a directory")),
        Err(e) => {
            return Err(ExportError::Io {
                path: target.to_path_buf(),
                what: format!("parent directory {}", parent.display()),
                source: e,
            })
        }
    }
    Ok((parent, name))
}

/// Removes a file or directory tree if it exists.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Staged {
    /// A temporary file beside `target` (created empty).
    pub fn file(target: &Path) -> Result<Staged> {
        let (parent, name) = split(target)?;
        if target.is_dir() {
            return Err(ExportError::Io {
                path: target.to_path_buf(),
                what: "output file".into(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "is a directory; refusing to replace it with a file",
                ),
            });
        }
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        // A leftover of an earlier process with the same id: ours to replace.
        remove_any(&tmp).map_err(io_err(target, format!("removing stale {}", tmp.display())))?;
        File::create(&tmp).map_err(io_err(target, format!("creating {}", tmp.display())))?;
        Ok(Staged {
            target: target.to_path_buf(),
            tmp,
            dir: false,
            committed: false,
        })
    }

    /// A temporary directory beside `target` (created empty).
    pub fn dir(target: &Path) -> Result<Staged> {
        let (parent, name) = split(target)?;
        if let Ok(m) = fs::metadata(target) {
            if !m.is_dir() {
                return Err(ExportError::Io {
                    path: target.to_path_buf(),
                    what: "output directory".into(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory; refusing to replace it",
                    ),
                });
            }
        }
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        remove_any(&tmp).map_err(io_err(target, format!("removing stale {}", tmp.display())))?;
        fs::create_dir(&tmp).map_err(io_err(target, format!("creating {}", tmp.display())))?;
        Ok(Staged {
            target: target.to_path_buf(),
            tmp,
            dir: true,
            committed: false,
        })
    }

    /// Where to write: the temporary file, or the temporary directory.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the finished temporary into place.
    pub fn commit(mut self) -> Result<()> {
        let target = self.target.clone();
        if self.dir {
            sync_dir_files(&self.tmp).map_err(io_err(&target, "syncing the new files"))?;
        } else {
            File::open(&self.tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&target, format!("syncing {}", self.tmp.display())))?;
        }
        let exists = fs::symlink_metadata(&target).is_ok();
        if self.dir && exists {
            let (parent, name) = split(&target)?;
            let old = parent.join(format!(".{name}.old-{}", std::process::id()));
            remove_any(&old)
                .map_err(io_err(&target, format!("removing stale {}", old.display())))?;
            fs::rename(&target, &old).map_err(io_err(
                &target,
                format!("moving the old directory away to {}", old.display()),
            ))?;
            if let Err(e) = fs::rename(&self.tmp, &target) {
                // Put the old output back; the new one is removed by Drop.
                let _ = fs::rename(&old, &target);
                return Err(io_err(
                    &target,
                    format!("renaming {} into place", self.tmp.display()),
                )(e));
            }
            self.committed = true;
            fs::remove_dir_all(&old).map_err(io_err(
                &target,
                format!("removing the old directory {}", old.display()),
            ))?;
        } else {
            fs::rename(&self.tmp, &target).map_err(io_err(
                &target,
                format!("renaming {} into place", self.tmp.display()),
            ))?;
            self.committed = true;
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: make the rename durable.
            let _ = File::open(parent).and_then(|f| f.sync_all());
        }
        Ok(())
    }
}

fn sync_dir_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_any(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Scratch;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn file_dropped_without_commit_leaves_nothing() {
        let s = Scratch::new("atomic-file-drop");
        let target = s.path().join("out.gguf");
        fs::write(&target, b"old").unwrap();
        {
            let st = Staged::file(&target).unwrap();
            fs::write(st.path(), b"new, half written").unwrap();
            assert_eq!(entries(s.path()).len(), 2);
        }
        assert_eq!(entries(s.path()), vec!["out.gguf"]);
        assert_eq!(fs::read(&target).unwrap(), b"old");
    }

    #[test]
    fn file_commit_replaces() {
        let s = Scratch::new("atomic-file-commit");
        let target = s.path().join("out.gguf");
        fs::write(&target, b"old").unwrap();
        let st = Staged::file(&target).unwrap();
        fs::write(st.path(), b"new").unwrap();
        st.commit().unwrap();
        assert_eq!(entries(s.path()), vec!["out.gguf"]);
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn dir_commit_replaces_existing_dir_and_drop_keeps_it() {
        let s = Scratch::new("atomic-dir");
        let target = s.path().join("model");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("stale.txt"), b"old").unwrap();
        {
            let st = Staged::dir(&target).unwrap();
            fs::write(st.path().join("config.json"), b"{}").unwrap();
        }
        assert_eq!(entries(s.path()), vec!["model"]);
        assert_eq!(entries(&target), vec!["stale.txt"]);
        let st = Staged::dir(&target).unwrap();
        fs::write(st.path().join("config.json"), b"{}").unwrap();
        st.commit().unwrap();
        assert_eq!(entries(s.path()), vec!["model"]);
        assert_eq!(entries(&target), vec!["config.json"]);
    }

    #[test]
    fn missing_parent_and_wrong_kinds_fail_cleanly() {
        let s = Scratch::new("atomic-bad");
        let e = Staged::file(&s.path().join("no/such/out.gguf")).unwrap_err();
        assert!(e.to_string().contains("parent directory"), "{e}");
        let e = Staged::dir(&s.path().join("no/model")).unwrap_err();
        assert!(e.to_string().contains("parent directory"), "{e}");
        fs::write(s.path().join("file"), b"x").unwrap();
        let e = Staged::dir(&s.path().join("file")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        fs::create_dir(s.path().join("d")).unwrap();
        let e = Staged::file(&s.path().join("d")).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert_eq!(entries(s.path()), vec!["d", "file"]);
    }
}
