//! The ledger writer: usage leaves the request path through a bounded queue
//! and reaches the store in batches (group commit).
//!
//! **When an event counts as acknowledged:** [`Ledger::write`] returns `Ok`
//! only after the transaction holding the event has committed in the store
//! (SQLite in WAL mode with `synchronous=NORMAL`, which survives a process
//! crash; PostgreSQL with its configured durability). A caller that got `Ok`
//! may forget the event: a `kill -9` of the server does not lose it. A
//! caller that got an error (or nothing, because it died) retries with the
//! same idempotency key; the ledger records each (tenant, id) once.
//!
//! The writer takes whatever is queued — up to `max_batch` — as soon as the
//! previous batch has committed, so under load batches grow and the cost per
//! event falls, while a lone event is written at once (no linger). The queue
//! is bounded: when the store falls behind, callers wait (backpressure)
//! instead of memory growing.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::Error;
use bulkhead_store::{UsageStore, UsageWrite};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How the ledger batches.
#[derive(Debug, Clone, Copy)]
pub struct LedgerConfig {
    /// Writes waiting for the store before callers are made to wait.
    pub queue_capacity: usize,
    /// Largest batch in one transaction.
    pub max_batch: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self { queue_capacity: 16_384, max_batch: 2_000 }
    }
}

struct Job {
    write: UsageWrite,
    done: oneshot::Sender<Result<bool, Error>>,
}

/// A handle to the ledger writer; cheap to clone. The writer stops after the
/// last handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Ledger {
    queue: mpsc::Sender<Job>,
}

impl Ledger {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn UsageStore>, config: LedgerConfig) -> (Ledger, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(config.queue_capacity.max(1));
        let task = tokio::spawn(run(store, rx, config.max_batch.max(1)));
        (Ledger { queue }, task)
    }

    /// Queues a write and waits until it is durable. Returns whether the
    /// event was new (`false`: its id was already recorded).
    pub async fn write(&self, write: UsageWrite) -> Result<bool, Error> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Job { write, done })
            .await
            .map_err(|_| Error::internal("the ledger writer has stopped"))?;
        wait.await.map_err(|_| Error::internal("the ledger writer dropped a write"))?
    }
}

async fn run(store: Arc<dyn UsageStore>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let batch: Vec<UsageWrite> = jobs.iter().map(|j| j.write.clone()).collect();
        match write_with_retry(store.as_ref(), &batch).await {
            Ok(inserted) => {
                for (job, new) in jobs.drain(..).zip(inserted) {
                    let _ = job.done.send(Ok(new));
                }
            }
            Err(err) => {
                // One bad write (say, for a tenant deleted meanwhile) must not
                // fail its neighbours: retry each alone and report each outcome.
                tracing::warn!(error = %err, size = batch.len(), "ledger batch failed; writing one by one");
                for job in jobs.drain(..) {
                    let outcome = store
                        .write_usage(std::slice::from_ref(&job.write), OffsetDateTime::now_utc())
                        .await
                        .map(|v| v[0])
                        .map_err(Error::from);
                    let _ = job.done.send(outcome);
                }
            }
        }
    }
}

/// Writes a batch; transient failures (SQLite busy, a dropped connection)
/// are retried a few times with backoff before the batch is given up.
async fn write_with_retry(
    store: &dyn UsageStore,
    batch: &[UsageWrite],
) -> Result<Vec<bool>, bulkhead_store::StoreError> {
    let mut delay = Duration::from_millis(5);
    let mut attempt = 0;
    loop {
        match store.write_usage(batch, OffsetDateTime::now_utc()).await {
            Ok(v) => return Ok(v),
            Err(bulkhead_store::StoreError::Db(e)) if attempt < 3 && is_transient(&e) => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "ledger write retried");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        || e.as_database_error().is_some_and(|d| {
            let code = d.code().unwrap_or_default();
            // SQLite busy/locked; PostgreSQL serialization failure and deadlock.
            matches!(code.as_ref(), "5" | "6" | "517" | "40001" | "40P01")
        })
}
