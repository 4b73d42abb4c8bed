//! The per-tenant sandbox policy: what a tenant may run and with which limits.
//!
//! A policy is a JSON document from the tenant's settings; [`SandboxPolicy::from_json`]
//! fills missing fields with defaults and validates the result against hard
//! bounds, so a bad document fails when it is read, not when code runs.
//! [`SandboxPolicy::check`] is the only gate between a request and a backend:
//! it either refuses (and nothing runs) or yields the [`Limits`] of that run.
//! Refusal codes are part of the public API: never rename one.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use bulkhead_core::{Code, Error};
use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
use crate::request::{ExecRequest, Language};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A tenant's sandbox policy. Missing fields take the defaults shown on
/// [`SandboxPolicy::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxPolicy {
    /// Off unless the operator turns it on for the tenant.
    pub enabled: bool,
    pub languages: Vec<Language>,
    pub max_code_bytes: u64,
    pub max_stdin_bytes: u64,
    pub max_files: u32,
    /// Sum of the input files' sizes.
    pub max_file_bytes: u64,
    /// Used when a request names no timeout.
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Memory of the whole run (cgroup) and address space of each process (rlimit).
    pub memory_bytes: u64,
    /// CPU seconds of each process (rlimit) and of the whole run (cgroup).
    pub cpu_seconds: u64,
    /// Processes and threads of the run.
    pub max_processes: u32,
    /// Cap of stdout and of stderr, each; output beyond it kills the run.
    pub max_output_bytes: u64,
    /// Size of the writable work dir and of `/tmp` (each), and the largest file.
    pub disk_bytes: u64,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            languages: vec![Language::Python, Language::Bash],
            max_code_bytes: 64 * KIB,
            max_stdin_bytes: MIB,
            max_files: 16,
            max_file_bytes: 8 * MIB,
            default_timeout_ms: 10_000,
            max_timeout_ms: 30_000,
            memory_bytes: 256 * MIB,
            cpu_seconds: 10,
            max_processes: 64,
            max_output_bytes: MIB,
            disk_bytes: 64 * MIB,
        }
    }
}

/// Hard bounds a policy must stay within, whatever the settings say.
mod bounds {
    use super::{GIB, KIB, MIB};
    pub const CODE_BYTES: u64 = 4 * MIB;
    pub const STDIN_BYTES: u64 = 64 * MIB;
    // Each input file is an open descriptor while the sandbox is built.
    pub const FILES: u32 = 256;
    pub const FILE_BYTES: u64 = 256 * MIB;
    pub const TIMEOUT_MS: u64 = 3_600_000;
    pub const MEMORY_MIN: u64 = 32 * MIB;
    pub const MEMORY_MAX: u64 = 64 * GIB;
    pub const CPU_SECONDS: u64 = 3_600;
    pub const PROCESSES_MIN: u32 = 4;
    pub const PROCESSES_MAX: u32 = 4_096;
    pub const OUTPUT_MIN: u64 = KIB;
    pub const OUTPUT_MAX: u64 = 256 * MIB;
    pub const DISK_MIN: u64 = MIB;
    pub const DISK_MAX: u64 = 64 * GIB;
}

/// Longest accepted input-file path, and deepest directory nesting.
const MAX_FILE_NAME_BYTES: usize = 512;
const MAX_FILE_DEPTH: usize = 8;

impl SandboxPolicy {
    /// A policy that allows every language with the default limits (for tests
    /// and operators who opt a tenant in).
    pub fn enabled() -> Self {
        Self { enabled: true, languages: Language::ALL.to_vec(), ..Self::default() }
    }

    /// Reads a policy document; missing fields take defaults; then validates.
    pub fn from_json(json: &str) -> Result<Self, SandboxError> {
        let policy: Self =
            serde_json::from_str(json).map_err(|e| SandboxError::Config(format!("sandbox policy: {e}")))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every number against the hard bounds and the timeouts against each other.
    pub fn validate(&self) -> Result<(), SandboxError> {
        fn within<T: PartialOrd + fmt::Display>(
            name: &str,
            v: T,
            min: T,
            max: T,
        ) -> Result<(), SandboxError> {
            if v < min || v > max {
                return Err(SandboxError::Config(format!(
                    "sandbox policy: `{name}` is {v}; it must be between {min} and {max}"
                )));
            }
            Ok(())
        }
        within("max_code_bytes", self.max_code_bytes, 1, bounds::CODE_BYTES)?;
        within("max_stdin_bytes", self.max_stdin_bytes, 0, bounds::STDIN_BYTES)?;
        within("max_files", self.max_files, 0, bounds::FILES)?;
        within("max_file_bytes", self.max_file_bytes, 0, bounds::FILE_BYTES)?;
        within("max_timeout_ms", self.max_timeout_ms, 100, bounds::TIMEOUT_MS)?;
        within("default_timeout_ms", self.default_timeout_ms, 100, self.max_timeout_ms)?;
        within("memory_bytes", self.memory_bytes, bounds::MEMORY_MIN, bounds::MEMORY_MAX)?;
        within("cpu_seconds", self.cpu_seconds, 1, bounds::CPU_SECONDS)?;
        within("max_processes", self.max_processes, bounds::PROCESSES_MIN, bounds::PROCESSES_MAX)?;
        within("max_output_bytes", self.max_output_bytes, bounds::OUTPUT_MIN, bounds::OUTPUT_MAX)?;
        within("disk_bytes", self.disk_bytes, bounds::DISK_MIN, bounds::DISK_MAX)?;
        // The input files are copied into the work dir, so they must fit in it.
        if self.max_file_bytes.saturating_add(self.max_code_bytes) > self.disk_bytes {
            return Err(SandboxError::Config(format!(
                "sandbox policy: `max_file_bytes` + `max_code_bytes` ({}) must fit in `disk_bytes` ({})",
                self.max_file_bytes + self.max_code_bytes,
                self.disk_bytes
            )));
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = self.languages.iter().find(|l| !seen.insert(l.as_str())) {
            return Err(SandboxError::Config(format!("sandbox policy: language `{dup}` is listed twice")));
        }
        Ok(())
    }

    /// Decides whether `req` may run, and with which limits. A refusal runs
    /// nothing; the order of checks is cheap first.
    pub fn check(&self, req: &ExecRequest) -> Result<Limits, Refusal> {
        if !self.enabled {
            return Err(Refusal::new(
                RefusalCode::SandboxDisabled,
                "code execution is not enabled for this tenant; ask the operator to enable it",
            ));
        }
        if !self.languages.contains(&req.language) {
            let allowed: Vec<&str> = self.languages.iter().map(|l| l.as_str()).collect();
            return Err(Refusal::new(
                RefusalCode::LanguageNotAllowed,
                format!("language `{}` is not allowed; allowed: {}", req.language, allowed.join(", ")),
            ));
        }
        if req.code.trim().is_empty() {
            return Err(Refusal::new(RefusalCode::EmptyCode, "the code is empty"));
        }
        too_large(RefusalCode::CodeTooLarge, "the code", req.code.len(), self.max_code_bytes)?;
        too_large(RefusalCode::StdinTooLarge, "stdin", req.stdin.len(), self.max_stdin_bytes)?;
        if req.files.len() as u64 > u64::from(self.max_files) {
            return Err(Refusal::new(
                RefusalCode::TooManyFiles,
                format!("{} input files; at most {} are allowed", req.files.len(), self.max_files),
            ));
        }
        let total: usize = req.files.iter().map(|f| f.content.len()).sum();
        too_large(RefusalCode::FilesTooLarge, "the input files", total, self.max_file_bytes)?;
        check_file_names(req)?;

        let timeout = match req.timeout {
            None => Duration::from_millis(self.default_timeout_ms),
            Some(t) if t.is_zero() => {
                return Err(Refusal::new(RefusalCode::InvalidTimeout, "the timeout must be positive"));
            }
            Some(t) if t > Duration::from_millis(self.max_timeout_ms) => {
                return Err(Refusal::new(
                    RefusalCode::TimeoutTooLong,
                    format!(
                        "a timeout of {} ms is longer than the allowed {} ms",
                        t.as_millis(),
                        self.max_timeout_ms
                    ),
                ));
            }
            Some(t) => t,
        };
        Ok(Limits {
            wall_time: timeout,
            cpu_time: Duration::from_secs(self.cpu_seconds),
            memory_bytes: self.memory_bytes,
            max_processes: self.max_processes,
            max_output_bytes: self.max_output_bytes,
            disk_bytes: self.disk_bytes,
        })
    }
}

fn too_large(code: RefusalCode, what: &str, len: usize, max: u64) -> Result<(), Refusal> {
    if len as u64 > max {
        return Err(Refusal::new(code, format!("{what} is {len} bytes; at most {max} are allowed")));
    }
    Ok(())
}

/// Input-file names: relative, `/`-separated, each part of ASCII letters,
/// digits, `.`, `_` or `-`, never `.` or `..`; no duplicates, no file that is
/// also another's directory, and not the language's entry file.
fn check_file_names(req: &ExecRequest) -> Result<(), Refusal> {
    let bad = |name: &str, why: &str| {
        Refusal::new(RefusalCode::BadFileName, format!("input file name `{}`: {why}", name.escape_debug()))
    };
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for f in &req.files {
        let name = f.name.as_str();
        if name.is_empty() || name.len() > MAX_FILE_NAME_BYTES {
            return Err(bad(name, "must be 1 to 512 bytes long"));
        }
        if name.starts_with('/') {
            return Err(bad(name, "must be relative to the work dir"));
        }
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() > MAX_FILE_DEPTH {
            return Err(bad(name, "is nested too deeply"));
        }
        for part in &parts {
            if part.is_empty() || *part == "." || *part == ".." {
                return Err(bad(name, "has an empty, `.` or `..` part"));
            }
            if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
                return Err(bad(name, "may use only letters, digits, `.`, `_`, `-` and `/`"));
            }
        }
        if name == req.language.entry_file() {
            return Err(bad(name, "is where the code goes; pick another name"));
        }
        if !files.insert(name) {
            return Err(bad(name, "is given twice"));
        }
        for i in 1..parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    if let Some(clash) = files.iter().find(|f| dirs.contains(**f)) {
        return Err(bad(clash, "is both a file and a directory"));
    }
    Ok(())
}

/// The effective limits of one execution, derived from the policy and the
/// request by [`SandboxPolicy::check`]; every backend enforces all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub wall_time: Duration,
    pub cpu_time: Duration,
    pub memory_bytes: u64,
    pub max_processes: u32,
    pub max_output_bytes: u64,
    pub disk_bytes: u64,
}

impl Default for Limits {
    /// The limits of the default policy with its default timeout.
    fn default() -> Self {
        let p = SandboxPolicy::default();
        Limits {
            wall_time: Duration::from_millis(p.default_timeout_ms),
            cpu_time: Duration::from_secs(p.cpu_seconds),
            memory_bytes: p.memory_bytes,
            max_processes: p.max_processes,
            max_output_bytes: p.max_output_bytes,
            disk_bytes: p.disk_bytes,
        }
    }
}

/// Stable machine codes of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    SandboxDisabled,
    LanguageNotAllowed,
    EmptyCode,
    CodeTooLarge,
    StdinTooLarge,
    TooManyFiles,
    FilesTooLarge,
    BadFileName,
    InvalidTimeout,
    TimeoutTooLong,
    /// The tenant already runs as many executions as it may at once.
    TenantBusy,
    /// The server runs as many executions as it may and none freed up in time.
    SandboxBusy,
}

impl RefusalCode {
    pub const ALL: &'static [RefusalCode] = &[
        RefusalCode::SandboxDisabled,
        RefusalCode::LanguageNotAllowed,
        RefusalCode::EmptyCode,
        RefusalCode::CodeTooLarge,
        RefusalCode::StdinTooLarge,
        RefusalCode::TooManyFiles,
        RefusalCode::FilesTooLarge,
        RefusalCode::BadFileName,
        RefusalCode::InvalidTimeout,
        RefusalCode::TimeoutTooLong,
        RefusalCode::TenantBusy,
        RefusalCode::SandboxBusy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::SandboxDisabled => "sandbox_disabled",
            RefusalCode::LanguageNotAllowed => "language_not_allowed",
            RefusalCode::EmptyCode => "empty_code",
            RefusalCode::CodeTooLarge => "code_too_large",
            RefusalCode::StdinTooLarge => "stdin_too_large",
            RefusalCode::TooManyFiles => "too_many_files",
            RefusalCode::FilesTooLarge => "files_too_large",
            RefusalCode::BadFileName => "bad_file_name",
            RefusalCode::InvalidTimeout => "invalid_timeout",
            RefusalCode::TimeoutTooLong => "timeout_too_long",
            RefusalCode::TenantBusy => "tenant_busy",
            RefusalCode::SandboxBusy => "sandbox_busy",
        }
    }

    /// The platform error code (and so the HTTP status) a refusal maps to.
    pub fn platform_code(self) -> Code {
        match self {
            RefusalCode::SandboxDisabled | RefusalCode::LanguageNotAllowed => Code::Forbidden,
            RefusalCode::CodeTooLarge
            | RefusalCode::StdinTooLarge
            | RefusalCode::TooManyFiles
            | RefusalCode::FilesTooLarge => Code::PayloadTooLarge,
            RefusalCode::EmptyCode
            | RefusalCode::BadFileName
            | RefusalCode::InvalidTimeout
            | RefusalCode::TimeoutTooLong => Code::InvalidRequest,
            RefusalCode::TenantBusy => Code::RateLimited,
            RefusalCode::SandboxBusy => Code::Unavailable,
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy's "no": a stable code and a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Error {
    /// The refusal's code travels in `details.refusal`, so clients can tell
    /// `code_too_large` from any other payload limit.
    fn from(r: Refusal) -> Self {
        Error::new(r.code.platform_code(), r.reason)
            .with_details(serde_json::json!({ "refusal": r.code.as_str() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::InputFile;

    fn refusal(policy: &SandboxPolicy, req: &ExecRequest) -> RefusalCode {
        policy.check(req).expect_err("should be refused").code
    }

    #[test]
    fn default_policy_is_valid_and_disabled() {
        let p = SandboxPolicy::default();
        p.validate().unwrap();
        assert_eq!(refusal(&p, &ExecRequest::python("print(1)")), RefusalCode::SandboxDisabled);
        SandboxPolicy::enabled().validate().unwrap();
    }

    #[test]
    fn json_fills_defaults_and_rejects_unknown_or_out_of_bounds_fields() {
        let p = SandboxPolicy::from_json(
            r#"{"enabled": true, "languages": ["python"], "memory_bytes": 134217728}"#,
        )
        .unwrap();
        assert!(p.enabled);
        assert_eq!(p.languages, vec![Language::Python]);
        assert_eq!(p.memory_bytes, 128 * MIB);
        assert_eq!(p.cpu_seconds, SandboxPolicy::default().cpu_seconds);

        for bad in [
            r#"{"enabeld": true}"#,
            r#"{"languages": ["cobol"]}"#,
            r#"{"memory_bytes": 1024}"#,
            r#"{"max_processes": 0}"#,
            r#"{"default_timeout_ms": 60000, "max_timeout_ms": 30000}"#,
            r#"{"disk_bytes": 1048576, "max_file_bytes": 8388608}"#,
            r#"{"languages": ["bash", "bash"]}"#,
            r#"not json"#,
        ] {
            let err = SandboxPolicy::from_json(bad).expect_err(bad);
            assert!(matches!(err, SandboxError::Config(_)), "{bad}: {err}");
            let platform: Error = err.into();
            assert_eq!(platform.code, Code::InvalidRequest);
        }
    }

    #[test]
    fn check_refuses_each_limit_with_its_code() {
        let p = SandboxPolicy { languages: vec![Language::Python], ..SandboxPolicy::enabled() };
        let ok = ExecRequest::python("print(1)");
        let limits = p.check(&ok).unwrap();
        assert_eq!(limits.wall_time, Duration::from_millis(p.default_timeout_ms));
        assert_eq!(limits.memory_bytes, p.memory_bytes);

        assert_eq!(refusal(&p, &ExecRequest::bash("echo")), RefusalCode::LanguageNotAllowed);
        assert_eq!(refusal(&p, &ExecRequest::python("  \n")), RefusalCode::EmptyCode);
        let big = "#".repeat(p.max_code_bytes as usize + 1);
        assert_eq!(refusal(&p, &ExecRequest::python(big)), RefusalCode::CodeTooLarge);
        let stdin = vec![0u8; p.max_stdin_bytes as usize + 1];
        assert_eq!(refusal(&p, &ok.clone().with_stdin(stdin)), RefusalCode::StdinTooLarge);
        let mut many = ok.clone();
        many.files = (0..=p.max_files).map(|i| InputFile::new(format!("f{i}"), "x")).collect();
        assert_eq!(refusal(&p, &many), RefusalCode::TooManyFiles);
        let huge = ok.clone().with_file("a", vec![0u8; p.max_file_bytes as usize + 1]);
        assert_eq!(refusal(&p, &huge), RefusalCode::FilesTooLarge);
        let long = ok.clone().with_timeout(Duration::from_millis(p.max_timeout_ms + 1));
        assert_eq!(refusal(&p, &long), RefusalCode::TimeoutTooLong);
        assert_eq!(refusal(&p, &ok.clone().with_timeout(Duration::ZERO)), RefusalCode::InvalidTimeout);
        let exact = ok.clone().with_timeout(Duration::from_millis(p.max_timeout_ms));
        assert_eq!(p.check(&exact).unwrap().wall_time, Duration::from_millis(p.max_timeout_ms));
    }

    #[test]
    fn file_names_are_relative_plain_and_unique() {
        let p = SandboxPolicy::enabled();
        let with = |names: &[&str]| {
            let mut r = ExecRequest::python("print(1)");
            for n in names {
                r = r.with_file(*n, "x");
            }
            p.check(&r).map(|_| ()).map_err(|r| r.code)
        };
        assert_eq!(with(&["a.txt", "data/in.csv", "data/more/x-1_2.json", ".hidden"]), Ok(()));
        for bad in [
            &["/etc/passwd"][..],
            &["../x"],
            &["a/../../x"],
            &["a//b"],
            &["./a"],
            &["a/"],
            &[""],
            &["with space"],
            &["semi;colon"],
            &["tab\tname"],
            &["ünï"],
            &["main.py"],
            &["a", "a"],
            &["a", "a/b"],
            &["1/2/3/4/5/6/7/8/9"],
        ] {
            assert_eq!(with(bad), Err(RefusalCode::BadFileName), "{bad:?}");
        }
        // The entry file is reserved per language only.
        let r = ExecRequest::bash("cat main.py").with_file("main.py", "x");
        assert!(p.check(&r).is_ok());
    }

    #[test]
    fn refusal_codes_are_stable_and_map_to_platform_codes() {
        let mut names = BTreeSet::new();
        for code in RefusalCode::ALL {
            assert!(names.insert(code.as_str()), "duplicate {code}");
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let e: Error = Refusal::new(RefusalCode::CodeTooLarge, "too big").into();
        assert_eq!(e.code, Code::PayloadTooLarge);
        assert_eq!(e.details.unwrap()["refusal"], "code_too_large");
        let e: Error = Refusal::new(RefusalCode::TenantBusy, "busy").into();
        assert_eq!(e.status(), 429);
    }
}
