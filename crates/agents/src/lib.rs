//! Agents: definitions (versioned specs with prompt templates), the agent
//! loop over threads (conversation memory), run events, workers with fair
//! scheduling over the durable run queue.
//!
//! Invariants: a run executes only with the `TenantCtx` of the run's tenant;
//! a model context is assembled only from items bound to that tenant
//! (`runner::assemble`); every model call is admitted and settled through
//! metering with the run's and agent's ids.

pub mod calls;
pub mod code;
pub mod events;
pub mod knowledge_tool;
pub mod runner;
pub mod scheduler;
pub mod spec;
pub mod tenant_tools;
pub mod tools;

pub use code::{Caller, CodeRunner, RunCode};
pub use events::{EventHub, RunEvent};
pub use knowledge_tool::KnowledgeSearch;
pub use runner::{Outcome, Runner};
pub use scheduler::{Scheduler, SchedulerConfig};
pub use spec::AgentSpec;
pub use tenant_tools::{RunTools, TenantTools};
pub use tools::{Tool, ToolCtx, ToolOutcome, ToolRegistry};
