//! Verification of a chain: every entry's hash recomputed, every link to
//! its predecessor checked, seqs without gaps, and the head row agreeing
//! with the last entry.
//!
//! The walk streams the chain page by page and keeps O(1) state; only when
//! it finds an entry whose hash does not match does a second pass look for
//! where that entry belongs (to tell an entry moved within the chain from
//! one altered in place).
//!
//! What it cannot see: someone with write access to the tables who
//! recomputes every later hash and the head (the hashes are not keyed).
//! Against that, record `head_hash` of a report somewhere else and compare
//! later — the chain up to it cannot change without changing it.

use bulkhead_core::Error;
use bulkhead_store::audit::GENESIS_HASH;
use bulkhead_store::{AuditChain, AuditEntry, AuditQuery, DynStore};

/// Entries read per page while verifying.
const PAGE: i64 = 500;

/// What is wrong at the first bad place in a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// An entry's content no longer gives its hash, or its link is broken.
    Altered,
    /// An entry is missing: a gap in the seqs, or the head names a later
    /// seq than the chain holds (its last entries were removed).
    Removed,
    /// An intact entry sits at another place than the one it was written at.
    Reordered,
    /// The head row disagrees with the last entry (or is missing).
    HeadMismatch,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Altered => "altered",
            ProblemKind::Removed => "removed",
            ProblemKind::Reordered => "reordered",
            ProblemKind::HeadMismatch => "head_mismatch",
        }
    }
}

/// The first problem found: its seq and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub seq: i64,
    pub kind: ProblemKind,
}

/// The outcome of [`crate::Audit::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The tenant id, or `platform`.
    pub chain: String,
    /// Entries found intact before the first problem (all of them when ok).
    pub entries_checked: u64,
    pub ok: bool,
    /// The head as verified: last seq and hash (record the hash elsewhere
    /// to detect a rewrite of the whole chain later).
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    pub first_problem: Option<Problem>,
}

pub(crate) async fn verify(store: &DynStore, chain: AuditChain<'_>) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport {
        chain: chain.name(),
        entries_checked: 0,
        ok: false,
        head_seq: None,
        head_hash: None,
        first_problem: None,
    };
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut last_seq = 0i64;
    let problem = 'walk: loop {
        let page = page_after(store, chain, last_seq).await?;
        if page.is_empty() {
            // The head is read after the entries: an append that commits
            // meanwhile moves both, so a head ahead of the walk means more
            // entries to read — unless there are none (removed at the end).
            let head = store.audit_head(chain).await?;
            match head {
                None if last_seq == 0 => break None,
                None => break Some(Problem { seq: last_seq, kind: ProblemKind::HeadMismatch }),
                Some(h) if h.last_seq > last_seq => {
                    if page_after(store, chain, last_seq).await?.is_empty() {
                        break Some(Problem { seq: last_seq + 1, kind: ProblemKind::Removed });
                    }
                    continue;
                }
                Some(h) if h.last_seq < last_seq || h.last_hash != prev_hash => {
                    report.head_seq = Some(h.last_seq);
                    break Some(Problem { seq: h.last_seq.min(last_seq), kind: ProblemKind::HeadMismatch });
                }
                Some(h) => {
                    report.head_seq = Some(h.last_seq);
                    report.head_hash = Some(h.last_hash);
                    break None;
                }
            }
        }
        for entry in page {
            let expected = last_seq + 1;
            if entry.seq != expected {
                break 'walk Some(Problem { seq: expected, kind: ProblemKind::Removed });
            }
            if entry.computed_hash() != entry.hash {
                let kind = if moved_here(store, chain, &entry).await? {
                    ProblemKind::Reordered
                } else {
                    ProblemKind::Altered
                };
                break 'walk Some(Problem { seq: entry.seq, kind });
            }
            if entry.prev_hash != prev_hash {
                // Self-consistent but not linked to its predecessor: the
                // predecessor was replaced, or this entry was forged.
                break 'walk Some(Problem { seq: entry.seq, kind: ProblemKind::Altered });
            }
            report.entries_checked += 1;
            prev_hash = entry.hash;
            last_seq = entry.seq;
        }
    };
    report.ok = problem.is_none();
    report.first_problem = problem;
    Ok(report)
}

async fn page_after(store: &DynStore, chain: AuditChain<'_>, after: i64) -> Result<Vec<AuditEntry>, Error> {
    let query = AuditQuery { after, limit: PAGE, ..Default::default() };
    Ok(store.list_audit(chain, &query).await?)
}

/// Whether `entry` (whose hash does not match at its seq) is an intact entry
/// written at another seq: where its successor's link, or the head, says
/// its hash belongs, its content gives that hash.
async fn moved_here(store: &DynStore, chain: AuditChain<'_>, entry: &AuditEntry) -> Result<bool, Error> {
    let mut origins = Vec::new();
    if let Some(head) = store.audit_head(chain).await?
        && head.last_hash == entry.hash
    {
        origins.push(head.last_seq);
    }
    let mut after = 0;
    loop {
        let page = page_after(store, chain, after).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        origins.extend(page.iter().filter(|e| e.prev_hash == entry.hash).map(|e| e.seq - 1));
    }
    Ok(origins.into_iter().any(|seq| seq != entry.seq && seq > 0 && entry.hash_at(seq) == entry.hash))
}
