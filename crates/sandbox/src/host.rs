//! What the sandbox needs from the host: helper programs and the unprivileged
//! user sandboxed code runs as.
//!
//! Programs are looked up in fixed system directories, never through the
//! server's `PATH`, so an environment cannot swap the binary that builds the
//! sandbox. The sandbox user is never root: as root the process-count rlimit
//! does not stop a fork bomb, and a mistake elsewhere would hand out root.

use std::path::{Path, PathBuf};

use crate::error::SandboxError;

/// The directories searched for a program named without a `/`.
const SYSTEM_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Resolves `program` (a path, or a name searched in the system directories).
pub(crate) fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return is_executable(program).then(|| program.to_path_buf());
    }
    SYSTEM_DIRS.iter().map(|d| Path::new(d).join(program)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Resolves a required program or explains how to get it.
pub(crate) fn require_program(program: &Path, what: &str) -> Result<PathBuf, SandboxError> {
    find_program(program).ok_or_else(|| {
        SandboxError::Unavailable(format!(
            "{what} (`{}`) was not found; run scripts/sandbox.sh to install the sandbox's requirements",
            program.display()
        ))
    })
}

/// The host identity of sandboxed processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
}

impl SandboxUser {
    /// `spec` is a user name (looked up in the host's user database) or
    /// `UID:GID` in numbers (a uid with no account, e.g. one per worker).
    pub(crate) fn resolve(spec: &str) -> Result<Self, SandboxError> {
        let user = if let Some((uid, gid)) = spec.split_once(':') {
            let parse = |s: &str| {
                s.parse::<u32>().map_err(|_| {
                    SandboxError::Config(format!("sandbox user `{spec}`: expected NAME or UID:GID"))
                })
            };
            SandboxUser { uid: parse(uid)?, gid: parse(gid)? }
        } else {
            let found = nix::unistd::User::from_name(spec)
                .map_err(|e| SandboxError::Unavailable(format!("looking up the sandbox user `{spec}`: {e}")))?
                .ok_or_else(|| {
                    SandboxError::Unavailable(format!(
                        "the sandbox user `{spec}` does not exist; run scripts/sandbox.sh to create it"
                    ))
                })?;
            SandboxUser { uid: found.uid.as_raw(), gid: found.gid.as_raw() }
        };
        if user.uid == 0 || user.gid == 0 {
            return Err(SandboxError::Config(format!(
                "the sandbox user `{spec}` is root (uid/gid 0); sandboxed code must never run as root"
            )));
        }
        Ok(user)
    }
}

/// How the host's top-level runtime directories appear in a sandbox: merged-/usr
/// systems have `/bin → usr/bin` and the like; older layouts have real
/// directories that are bound read-only instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuntimeLink {
    Symlink { path: &'static str, target: PathBuf },
    Dir { path: &'static str },
}

pub(crate) fn runtime_links() -> Vec<RuntimeLink> {
    ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(path).ok()?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).ok()?;
                // Only links into /usr: anything else would expose more of the host.
                let resolved = Path::new("/").join(&target);
                let into_usr = target.starts_with("usr/") || resolved.starts_with("/usr/");
                into_usr.then_some(RuntimeLink::Symlink { path, target })
            } else if meta.is_dir() {
                Some(RuntimeLink::Dir { path })
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_by_name_and_path() {
        assert_eq!(find_program(Path::new("sh")).unwrap().file_name().unwrap(), "sh");
        assert!(find_program(Path::new("/usr/bin/env")).is_some());
        assert!(find_program(Path::new("no-such-program-bulkhead")).is_none());
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        assert!(find_program(&plain).is_none(), "not executable");
        let err = require_program(Path::new("no-such-program-bulkhead"), "the thing").unwrap_err();
        assert!(err.to_string().contains("scripts/sandbox.sh"), "{err}");
    }

    #[test]
    fn users_resolve_and_root_is_refused() {
        assert_eq!(SandboxUser::resolve("64001:64002").unwrap(), SandboxUser { uid: 64001, gid: 64002 });
        assert!(matches!(SandboxUser::resolve("root"), Err(SandboxError::Config(_))));
        assert!(matches!(SandboxUser::resolve("0:5"), Err(SandboxError::Config(_))));
        assert!(matches!(SandboxUser::resolve("x:y"), Err(SandboxError::Config(_))));
        assert!(matches!(SandboxUser::resolve("no-such-user-bulkhead"), Err(SandboxError::Unavailable(_))));
    }

    #[test]
    fn runtime_links_stay_inside_usr() {
        for link in runtime_links() {
            if let RuntimeLink::Symlink { target, .. } = link {
                assert!(Path::new("/").join(target).starts_with("/usr"));
            }
        }
    }
}
