//! The host-side temporary directory of one execution: the request's code and
//! input files, written before the sandbox starts, removed when the execution
//! ends (on drop, also when it is cancelled).
//!
//! Invariants: the directory is fresh per execution, created `0700` by root
//! under the system temp dir (never under a data dir), so no sandbox and no
//! other execution can reach it; names inside come from validated requests
//! ([`crate::SandboxPolicy::check`]) and are never interpreted by a shell.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::error::SandboxError;
use crate::host::SandboxUser;
use crate::request::ExecRequest;

/// One file to place in the sandbox's work dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StagedFile {
    /// Where its bytes are on the host.
    pub host: PathBuf,
    /// Its path relative to the work dir.
    pub name: String,
}

#[derive(Debug)]
pub(crate) struct Staging {
    dir: TempDir,
}

impl Staging {
    pub(crate) fn create(root: Option<&Path>) -> Result<Self, SandboxError> {
        let root = root.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-sbx-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&root)
            .map_err(SandboxError::io("creating the staging dir"))?;
        Ok(Self { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the code and input files under flat host names (`in/0`, `in/1`…)
    /// for a backend that copies each into the sandbox. Returns the files (the
    /// code first) and the directories to create, parents before children.
    pub(crate) fn stage_flat(
        &self,
        req: &ExecRequest,
    ) -> Result<(Vec<StagedFile>, Vec<String>), SandboxError> {
        let inputs = self.path().join("in");
        std::fs::create_dir(&inputs).map_err(SandboxError::io("creating the staging dir"))?;
        let mut files = Vec::with_capacity(req.files.len() + 1);
        let entries = std::iter::once((req.language.entry_file(), req.code.as_bytes()))
            .chain(req.files.iter().map(|f| (f.name.as_str(), f.content.as_slice())));
        for (i, (name, bytes)) in entries.enumerate() {
            let host = inputs.join(i.to_string());
            std::fs::write(&host, bytes).map_err(SandboxError::io("staging an input file"))?;
            files.push(StagedFile { host, name: name.to_string() });
        }
        Ok((files, parent_dirs(req)))
    }

    /// Writes the code and input files as a tree under `work/`, owned by the
    /// sandbox user, for a backend that mounts the tree (copy-on-write) as the
    /// work dir. Returns the tree's path.
    pub(crate) fn stage_tree(&self, req: &ExecRequest, owner: SandboxUser) -> Result<PathBuf, SandboxError> {
        let work = self.path().join("work");
        let chown = |p: &Path| {
            nix::unistd::chown(
                p,
                Some(nix::unistd::Uid::from_raw(owner.uid)),
                Some(nix::unistd::Gid::from_raw(owner.gid)),
            )
            .map_err(|e| SandboxError::Internal(format!("chown {}: {e}", p.display())))
        };
        std::fs::create_dir(&work).map_err(SandboxError::io("creating the staging dir"))?;
        chown(&work)?;
        for dir in parent_dirs(req) {
            let p = work.join(dir);
            std::fs::create_dir(&p).map_err(SandboxError::io("staging an input dir"))?;
            chown(&p)?;
        }
        let entries = std::iter::once((req.language.entry_file(), req.code.as_bytes()))
            .chain(req.files.iter().map(|f| (f.name.as_str(), f.content.as_slice())));
        for (name, bytes) in entries {
            let p = work.join(name);
            std::fs::write(&p, bytes).map_err(SandboxError::io("staging an input file"))?;
            chown(&p)?;
        }
        Ok(work)
    }
}

/// Every directory that input files need, parents first.
fn parent_dirs(req: &ExecRequest) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    for f in &req.files {
        let parts: Vec<&str> = f.name.split('/').collect();
        for i in 1..parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    // A parent's path is a prefix of its children's, so fewer parts sorts it first.
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| d.matches('/').count());
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stages_code_and_files_and_removes_them() {
        let req = ExecRequest::python("print(1)").with_file("b/c/d.txt", "d").with_file("a.txt", "a");
        let staging = Staging::create(None).unwrap();
        let path = staging.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        let (files, dirs) = staging.stage_flat(&req).unwrap();
        assert_eq!(files[0].name, "main.py");
        assert_eq!(std::fs::read(&files[0].host).unwrap(), b"print(1)");
        assert_eq!(files[1].name, "b/c/d.txt");
        assert_eq!(std::fs::read(&files[2].host).unwrap(), b"a");
        assert_eq!(dirs, vec!["b".to_string(), "b/c".to_string()]);
        drop(staging);
        assert!(!path.exists());
    }

    #[test]
    fn stages_a_tree_owned_by_the_sandbox_user() {
        let req = ExecRequest::bash("ls").with_file("x/y.txt", "y");
        let staging = Staging::create(None).unwrap();
        let owner = SandboxUser { uid: 64_010, gid: 64_011 };
        let work = staging.stage_tree(&req, owner).unwrap();
        use std::os::unix::fs::MetadataExt;
        for p in [work.clone(), work.join("x"), work.join("x/y.txt"), work.join("main.sh")] {
            let m = std::fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (64_010, 64_011), "{}", p.display());
        }
        assert_eq!(std::fs::read(work.join("main.sh")).unwrap(), b"ls");
    }
}
