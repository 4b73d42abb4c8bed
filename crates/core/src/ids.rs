//! Typed identifiers. Every id is a UUIDv7, so ids sort by creation time and
//! double as pagination cursors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// Identifies a tenant.
    TenantId
);
id_type!(
    /// Identifies an API key (operator or tenant).
    KeyId
);
id_type!(
    /// Identifies an agent.
    AgentId
);
id_type!(
    /// Identifies a conversation thread.
    ThreadId
);
id_type!(
    /// Identifies a message in a thread.
    MessageId
);
id_type!(
    /// Identifies a run of an agent on a thread.
    RunId
);
id_type!(
    /// Identifies a knowledge base.
    KbId
);
id_type!(
    /// Identifies a document in a knowledge base.
    DocId
);
id_type!(
    /// Identifies a tenant-defined tool.
    ToolId
);
id_type!(
    /// Identifies a tenant's registered MCP server.
    McpServerId
);
