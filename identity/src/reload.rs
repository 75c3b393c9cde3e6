//! Files that change under a running process: polled, not watched. Kubernetes updates a
//! mounted Secret or ConfigMap by writing a fresh `..<timestamp>` directory and atomically
//! renaming a new `..data` symlink over the old one; the file names the process opened
//! (`issuer.crt` → `..data/issuer.crt`) never change, so inotify on them sees nothing.
//! Each poll resolves every path through its symlinks and compares the resolved paths and
//! the contents with the last poll.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    io,
    path::{Path, PathBuf},
};

/// A consistent read of a set of files: their contents, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub contents: Vec<Vec<u8>>,
    fingerprint: u64,
}

/// Polls a set of files that must be read together (a certificate and its key).
#[derive(Debug)]
pub struct FileSet {
    paths: Vec<PathBuf>,
    last: Option<u64>,
}

impl FileSet {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self { paths, last: None }
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Reads every file; when a symlink swap happens between the reads, reads again, so that
    /// a certificate and its key always come from the same generation.
    pub fn read(&self) -> io::Result<Snapshot> {
        let mut last_err = None;
        for _ in 0..5 {
            match self.try_read() {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => continue,
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("files kept changing while being read")))
    }

    fn try_read(&self) -> io::Result<Option<Snapshot>> {
        let resolved = self.resolve()?;
        let contents = self
            .paths
            .iter()
            .map(|p| std::fs::read(p).map_err(|e| with_path(p, e)))
            .collect::<io::Result<Vec<_>>>()?;
        if self.resolve()? != resolved {
            return Ok(None);
        }
        let mut h = DefaultHasher::new();
        resolved.hash(&mut h);
        contents.hash(&mut h);
        Ok(Some(Snapshot { contents, fingerprint: h.finish() }))
    }

    fn resolve(&self) -> io::Result<Vec<PathBuf>> {
        self.paths.iter().map(|p| p.canonicalize().map_err(|e| with_path(p, e))).collect()
    }

    /// Marks a snapshot as seen (the one loaded at start).
    pub fn mark_seen(&mut self, s: &Snapshot) {
        self.last = Some(s.fingerprint);
    }

    /// The files' contents when they differ from the last poll, else `None`. A read error is
    /// returned once per distinct error state, not on every poll.
    pub fn poll(&mut self) -> io::Result<Option<Snapshot>> {
        match self.read() {
            Ok(s) if Some(s.fingerprint) == self.last => Ok(None),
            Ok(s) => {
                self.last = Some(s.fingerprint);
                Ok(Some(s))
            }
            Err(e) => {
                // 0 is "unreadable"; a later good read always differs.
                if self.last == Some(0) {
                    return Ok(None);
                }
                self.last = Some(0);
                Err(e)
            }
        }
    }
}

fn with_path(p: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Lays files out as the kubelet does: `dir/..<gen>/<name>`, `dir/..data -> ..<gen>`,
    /// `dir/<name> -> ..data/<name>`.
    fn kubelet_write(dir: &Path, generation: &str, files: &[(&str, &[u8])]) {
        let gen_dir = dir.join(format!("..{generation}"));
        std::fs::create_dir_all(&gen_dir).unwrap();
        for (name, data) in files {
            std::fs::write(gen_dir.join(name), data).unwrap();
        }
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = dir.join(name);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }

    #[test]
    fn sees_a_kubelet_symlink_swap() {
        let dir = std::env::temp_dir().join(format!("weft-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        kubelet_write(&dir, "2026_01_01", &[("a", b"one"), ("b", b"uno")]);
        let mut set = FileSet::new(vec![dir.join("a"), dir.join("b")]);
        let s = set.poll().unwrap().unwrap();
        assert_eq!(s.contents, vec![b"one".to_vec(), b"uno".to_vec()]);
        assert_eq!(set.poll().unwrap(), None);
        kubelet_write(&dir, "2026_01_02", &[("a", b"two"), ("b", b"dos")]);
        let s = set.poll().unwrap().unwrap();
        assert_eq!(s.contents, vec![b"two".to_vec(), b"dos".to_vec()]);
        assert_eq!(set.poll().unwrap(), None);
        // Same contents in a new generation: the resolved paths differ, so it is reported
        // (a reload of identical material is harmless).
        kubelet_write(&dir, "2026_01_03", &[("a", b"two"), ("b", b"dos")]);
        assert!(set.poll().unwrap().is_some());
        // A file that disappears is an error once, then quiet until it is back.
        std::fs::remove_file(dir.join("..data")).unwrap();
        assert!(set.poll().is_err());
        assert_eq!(set.poll().unwrap(), None);
        kubelet_write(&dir, "2026_01_04", &[("a", b"three"), ("b", b"tres")]);
        assert_eq!(set.poll().unwrap().unwrap().contents[0], b"three");
        // A plain file rewritten in place is seen too.
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mut set = FileSet::new(vec![plain.clone()]);
        assert!(set.poll().unwrap().is_some());
        std::fs::write(&plain, b"y").unwrap();
        assert!(set.poll().unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
