//! Untrusted code execution for agents and apps: a tenant's code runs in an
//! ephemeral sandbox with no network, a read-only runtime, an empty writable
//! work dir and hard limits on CPU, memory, time, processes, disk and output.
//!
//! The flow, and the types that carry it:
//!
//! 1. [`SandboxPolicy`] — the tenant's settings (a JSON document, validated);
//!    [`SandboxPolicy::check`] turns an [`ExecRequest`] into a [`Refusal`] (a
//!    stable machine code and a human reason) or into the [`Limits`] of one run.
//!    A refused request runs nothing.
//! 2. [`Sandbox`] — the facade the server calls: policy check, a per-tenant and a
//!    global concurrency cap, then the configured [`Backend`].
//! 3. A [`Backend`] runs one request: [`BubblewrapBackend`] (Linux namespaces,
//!    rlimits, cgroups; the default) or [`GvisorBackend`] (`runsc`, a user-space
//!    kernel). Both return an [`ExecOutcome`]: bounded stdout/stderr, exit code or
//!    signal, which limit was hit, CPU and wall time, peak memory.
//!
//! Invariants, as absences:
//! - No sandboxed process runs as root, with capabilities, with a network
//!   interface other than its own loopback, or with a host path other than
//!   the read-only `/usr` runtime visible.
//! - No output is buffered beyond [`Limits::max_output_bytes`] per stream: the
//!   reader stops at the cap and the sandbox is killed.
//! - No sandbox outlives its execution: wall-clock expiry kills it from outside
//!   (its process tree and its cgroup); every process of it is dead and its work
//!   dir and staging dir are gone before the outcome is returned (its empty
//!   cgroup is removed right after, in the background).
//! - Nothing here accepts a tenant id from a caller: executions take
//!   `&TenantCtx`.
#![forbid(unsafe_code)]

mod backend;
mod bubblewrap;
mod capture;
mod cgroup;
mod error;
mod gvisor;
mod host;
mod policy;
mod request;
mod sandbox;
mod staging;
mod supervisor;

pub use backend::{Backend, BackendKind};
pub use bubblewrap::{BubblewrapBackend, BubblewrapConfig};
pub use cgroup::CgroupMode;
pub use error::SandboxError;
pub use gvisor::{GvisorBackend, GvisorConfig};
pub use policy::{Limits, Refusal, RefusalCode, SandboxPolicy};
pub use request::{ExecOutcome, ExecRequest, InputFile, Language, LimitKind};
pub use sandbox::{Sandbox, SandboxConfig};
