//! What a caller asks the sandbox to run ([`ExecRequest`]) and what comes back
//! ([`ExecOutcome`]). The HTTP layer owns the JSON shapes; these are plain
//! Rust types.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A language the sandbox can run. Each maps to an interpreter under `/usr`
/// and a fixed entry file in the work dir that holds the request's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Python,
    Bash,
    /// POSIX `sh` (Debian's dash).
    Sh,
    Perl,
}

impl Language {
    pub const ALL: &'static [Language] = &[Language::Python, Language::Bash, Language::Sh, Language::Perl];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Bash => "bash",
            Language::Sh => "sh",
            Language::Perl => "perl",
        }
    }

    /// The file in the work dir that holds the code; input files may not use it.
    pub fn entry_file(self) -> &'static str {
        match self {
            Language::Python => "main.py",
            Language::Bash | Language::Sh => "main.sh",
            Language::Perl => "main.pl",
        }
    }

    /// The interpreter and its flags, without the entry file. Paths are under
    /// `/usr` so they resolve the same on the host and in the sandbox.
    pub(crate) fn interpreter(self) -> &'static [&'static str] {
        match self {
            // -B: no .pyc next to the code; -E: ignore PYTHON* variables;
            // -s: no user site-packages; -u: unbuffered, so output written
            // before a kill is not lost in a buffer.
            Language::Python => &["/usr/bin/python3", "-B", "-E", "-s", "-u"],
            Language::Bash => &["/usr/bin/bash"],
            Language::Sh => &["/usr/bin/sh"],
            Language::Perl => &["/usr/bin/perl"],
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Language::ALL
            .iter()
            .copied()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown language `{s}`; use python, bash, sh or perl"))
    }
}

/// A file placed in the work dir before the code runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative path inside the work dir, e.g. `data/input.csv`.
    pub name: String,
    pub content: Vec<u8>,
}

impl InputFile {
    pub fn new(name: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        Self { name: name.into(), content: content.into() }
    }
}

/// One request to run code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub language: Language,
    pub code: String,
    pub stdin: Vec<u8>,
    pub files: Vec<InputFile>,
    /// Wall-clock limit; `None` takes the policy's default.
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    pub fn new(language: Language, code: impl Into<String>) -> Self {
        Self { language, code: code.into(), stdin: Vec::new(), files: Vec::new(), timeout: None }
    }

    pub fn python(code: impl Into<String>) -> Self {
        Self::new(Language::Python, code)
    }

    pub fn bash(code: impl Into<String>) -> Self {
        Self::new(Language::Bash, code)
    }

    pub fn with_stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = stdin.into();
        self
    }

    pub fn with_file(mut self, name: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        self.files.push(InputFile::new(name, content));
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Which limit ended (or shaped) an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The wall-clock timeout; the sandbox was killed from outside.
    WallTime,
    /// CPU seconds: the rlimit (SIGXCPU) or the cgroup's total across processes.
    CpuTime,
    /// The memory cgroup's OOM killer.
    Memory,
    /// stdout or stderr reached its cap; the sandbox was killed.
    Output,
    /// The file-size rlimit (SIGXFSZ).
    FileSize,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::WallTime => "wall_time",
            LimitKind::CpuTime => "cpu_time",
            LimitKind::Memory => "memory",
            LimitKind::Output => "output",
            LimitKind::FileSize => "file_size",
        }
    }
}

/// What an execution produced. The code's own failure (a traceback, a
/// non-zero exit, a limit) is an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// At most the policy's `max_output_bytes`.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Set when the program exited on its own (also when it called exit after
    /// catching an error such as `MemoryError`).
    pub exit_code: Option<i32>,
    /// Set when the program was ended by a signal (ours or the kernel's). The
    /// sandbox reports a child killed by signal N as status 128+N, as shells
    /// do, so a program that itself exits with 129–192 reads as a signal.
    pub signal: Option<i32>,
    /// The wall-clock limit expired and the sandbox was killed.
    pub timed_out: bool,
    /// The limit that ended the run, when one did.
    pub limit_exceeded: Option<LimitKind>,
    /// CPU time of every process of the run: exact from the cgroup; without
    /// cgroups, the rusage of processes that were reaped (a lower bound when
    /// the sandbox was killed).
    pub cpu_time: Duration,
    pub wall_time: Duration,
    /// Peak memory of the whole run, from the memory cgroup (`None` without one;
    /// for gVisor it includes the user-space kernel's own memory).
    pub peak_memory_bytes: Option<u64>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// `bubblewrap` or `gvisor`.
    pub backend: &'static str,
}

impl ExecOutcome {
    /// The program ran to completion and exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.limit_exceeded.is_none()
    }

    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}
