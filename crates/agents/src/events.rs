//! Run events for streaming: an in-process hub of broadcast channels, one
//! per active run. Subscribers that lag lose old events (bounded memory);
//! the run's state in the store stays the truth.

use std::collections::HashMap;
use std::sync::Mutex;

use bulkhead_core::RunId;
use serde_json::Value;
use tokio::sync::broadcast;

/// One event: a name (`run.created`, `run.step`, `message.delta`,
/// `tool.call`, `tool.result`, `run.completed`, `run.failed`,
/// `run.cancelled`, `run.expired`) and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub name: &'static str,
    pub data: Value,
}

impl RunEvent {
    pub fn is_terminal(&self) -> bool {
        matches!(self.name, "run.completed" | "run.failed" | "run.cancelled" | "run.expired")
    }
}

const CAPACITY: usize = 256;

#[derive(Default)]
pub struct EventHub {
    runs: Mutex<HashMap<RunId, broadcast::Sender<RunEvent>>>,
}

impl EventHub {
    pub fn subscribe(&self, run: RunId) -> broadcast::Receiver<RunEvent> {
        let mut runs = self.runs.lock().expect("event hub");
        runs.entry(run).or_insert_with(|| broadcast::channel(CAPACITY).0).subscribe()
    }

    pub fn publish(&self, run: RunId, event: RunEvent) {
        let terminal = event.is_terminal();
        let mut runs = self.runs.lock().expect("event hub");
        if let Some(tx) = runs.get(&run) {
            let _ = tx.send(event);
        }
        if terminal {
            runs.remove(&run);
        }
    }

    /// Runs with open channels (for tests and metrics).
    pub fn open(&self) -> usize {
        self.runs.lock().expect("event hub").len()
    }
}
