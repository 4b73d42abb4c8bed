//! The bound on authentication-failure entries: a coalescing counter.
//!
//! Failures fall into buckets — one per (tenant, key prefix, reason) for
//! keys the store knows, and one per reason for all unknown or malformed
//! keys together (an attacker can invent prefixes without end, so those
//! must not get a bucket each). The first failure of a bucket opens a
//! window and is written at once; later ones within the window are only
//! counted; when the window has passed, one entry carries the count (and,
//! for unknown keys, up to [`MAX_SAMPLES`] of the prefixes tried). So each
//! bucket writes at most two entries per window per process, and the
//! buckets of known keys number at most [`MAX_BUCKETS`]; beyond that,
//! failures fold into the per-reason platform bucket.
//!
//! Invariants: nothing here holds a presented secret — only prefixes,
//! which are not secret.

use std::collections::HashMap;
use std::time::Duration;

use bulkhead_core::{KeyId, TenantId};
use time::OffsetDateTime;
use tokio::time::Instant;

/// Buckets of known keys tracked at once.
pub const MAX_BUCKETS: usize = 4096;
/// Prefixes of unknown keys kept per window, as examples.
pub const MAX_SAMPLES: usize = 5;

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailReason {
    /// Not shaped like a Bulkhead key.
    MalformedKey,
    /// No key has this prefix.
    UnknownKey,
    /// The prefix is known, the rest is wrong (or the key's kind is).
    InvalidSecret,
    Revoked,
    Expired,
    TenantSuspended,
}

impl AuthFailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailReason::MalformedKey => "malformed_key",
            AuthFailReason::UnknownKey => "unknown_key",
            AuthFailReason::InvalidSecret => "invalid_secret",
            AuthFailReason::Revoked => "revoked",
            AuthFailReason::Expired => "expired",
            AuthFailReason::TenantSuspended => "tenant_suspended",
        }
    }
}

/// A key the store knows, as far as the audit log needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownKey {
    pub id: KeyId,
    /// `None` for an operator key.
    pub tenant_id: Option<TenantId>,
}

/// One refused authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The presented key's visible prefix (`bh_tk_…`), when it had one.
    pub prefix: Option<String>,
    /// What the store holds for that prefix, if anything.
    pub key: Option<KnownKey>,
    pub reason: AuthFailReason,
}

impl AuthFailure {
    /// A failure of a key the store knows by `prefix`.
    pub fn known(prefix: &str, id: KeyId, tenant_id: Option<TenantId>, reason: AuthFailReason) -> Self {
        Self { prefix: Some(prefix.to_owned()), key: Some(KnownKey { id, tenant_id }), reason }
    }

    /// A key with an unknown prefix, or (`prefix: None`) no key shape at all.
    pub fn unknown(prefix: Option<&str>) -> Self {
        let reason = if prefix.is_some() { AuthFailReason::UnknownKey } else { AuthFailReason::MalformedKey };
        Self { prefix: prefix.map(str::to_owned), key: None, reason }
    }

    /// The chain the failure belongs to: the key's tenant, or the platform.
    pub(crate) fn tenant(&self) -> Option<TenantId> {
        self.key.and_then(|k| k.tenant_id)
    }

    pub(crate) fn target(&self) -> String {
        self.prefix.as_ref().map(|p| format!("key:{p}")).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BucketKey {
    tenant: Option<TenantId>,
    /// `None`: every unknown or malformed key (or an overflow) together.
    prefix: Option<String>,
    reason: AuthFailReason,
}

#[derive(Debug)]
struct Bucket {
    opened: Instant,
    opened_at: OffsetDateTime,
    /// Failures after the first in this window.
    suppressed: u64,
    key_id: Option<KeyId>,
    samples: Vec<String>,
}

/// The count of a closed window, to be written as one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub tenant: Option<TenantId>,
    pub target: String,
    pub reason: AuthFailReason,
    pub key_id: Option<KeyId>,
    pub count: u64,
    pub since: OffsetDateTime,
    pub window: Duration,
    pub prefixes: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Coalescer {
    window: Duration,
    buckets: HashMap<BucketKey, Bucket>,
    /// Counts of windows closed by a new failure, not yet written.
    pending: Vec<Summary>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Self { window, buckets: HashMap::new(), pending: Vec::new() }
    }

    /// Counts a failure; true when it opens a window and should be written now.
    pub fn hit(&mut self, failure: &AuthFailure, now: Instant, wall: OffsetDateTime) -> bool {
        let mut key = match failure.key {
            Some(k) => {
                BucketKey { tenant: k.tenant_id, prefix: failure.prefix.clone(), reason: failure.reason }
            }
            None => BucketKey { tenant: None, prefix: None, reason: failure.reason },
        };
        if key.prefix.is_some() && !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_BUCKETS {
            key = BucketKey { tenant: None, prefix: None, reason: failure.reason };
        }
        let sample = failure.prefix.clone().filter(|_| key.prefix.is_none());
        let open_window = self.buckets.get(&key).map(|b| now.duration_since(b.opened) < self.window);
        match open_window {
            Some(true) => {
                let b = self.buckets.get_mut(&key).expect("present");
                b.suppressed += 1;
                if let Some(p) = sample
                    && b.samples.len() < MAX_SAMPLES
                    && !b.samples.contains(&p)
                {
                    b.samples.push(p);
                }
                false
            }
            // A window that has passed but was not swept yet: its count is
            // written with the next `due`, and this failure opens a new one.
            Some(false) => {
                let stale = self.buckets.remove(&key).expect("present");
                self.pending.push(summary(&key, stale, self.window));
                self.open(key, failure, sample, now, wall);
                true
            }
            None => {
                self.open(key, failure, sample, now, wall);
                true
            }
        }
    }

    fn open(
        &mut self,
        key: BucketKey,
        failure: &AuthFailure,
        sample: Option<String>,
        now: Instant,
        wall: OffsetDateTime,
    ) {
        let bucket = Bucket {
            opened: now,
            opened_at: wall,
            suppressed: 0,
            key_id: failure.key.map(|k| k.id).filter(|_| key.prefix.is_some()),
            samples: sample.into_iter().collect(),
        };
        self.buckets.insert(key, bucket);
    }

    /// Counts of windows that `hit` closed, not yet written.
    pub fn take_pending(&mut self) -> Vec<Summary> {
        let mut out = std::mem::take(&mut self.pending);
        out.retain(|s| s.count > 0);
        out
    }

    /// Closes the windows that have passed by `now`: their counts (of
    /// windows with more than the first failure) to write, and their
    /// buckets dropped, so idle keys take no memory.
    pub fn due(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let closed: Vec<BucketKey> = self
            .buckets
            .iter()
            .filter(|(_, b)| now.duration_since(b.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = std::mem::take(&mut self.pending);
        for key in closed {
            let bucket = self.buckets.remove(&key).expect("listed above");
            out.push(summary(&key, bucket, window));
        }
        out.retain(|s| s.count > 0);
        out
    }
}

fn summary(key: &BucketKey, b: Bucket, window: Duration) -> Summary {
    Summary {
        tenant: key.tenant,
        target: key.prefix.as_ref().map(|p| format!("key:{p}")).unwrap_or_default(),
        reason: key.reason,
        key_id: b.key_id,
        count: b.suppressed,
        since: b.opened_at,
        window,
        prefixes: b.samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_flood_of_unknown_keys_writes_one_entry_per_window_and_then_its_count() {
        let mut c = Coalescer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..10_000 {
            let prefix = format!("bh_tk_{i:012x}");
            if c.hit(&AuthFailure::unknown(Some(&prefix)), t0 + Duration::from_millis(i % 1000), wall()) {
                written += 1;
            }
        }
        assert_eq!(written, 1, "one entry opens the window");
        assert!(c.due(t0 + Duration::from_secs(59)).is_empty(), "the window is still open");
        let due = c.due(t0 + Duration::from_secs(60));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 9_999);
        assert_eq!(due[0].tenant, None);
        assert_eq!(due[0].reason, AuthFailReason::UnknownKey);
        assert_eq!(due[0].prefixes.len(), MAX_SAMPLES);
        assert!(c.buckets.is_empty(), "closed windows take no memory");
        // A new window opens with the next failure.
        assert!(c.hit(
            &AuthFailure::unknown(Some("bh_tk_000000000001")),
            t0 + Duration::from_secs(61),
            wall()
        ));
    }

    #[test]
    fn known_keys_are_counted_apart_and_lone_failures_write_no_count() {
        let mut c = Coalescer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let tenant = TenantId::new();
        let a = AuthFailure::known("bh_tk_aaaaaaaaaaaa", KeyId::new(), Some(tenant), AuthFailReason::Revoked);
        let b = AuthFailure::known("bh_tk_bbbbbbbbbbbb", KeyId::new(), Some(tenant), AuthFailReason::Revoked);
        assert!(c.hit(&a, t0, wall()));
        assert!(c.hit(&b, t0, wall()), "another key opens its own window");
        for _ in 0..3 {
            assert!(!c.hit(&a, t0 + Duration::from_secs(1), wall()));
        }
        let due = c.due(t0 + Duration::from_secs(60));
        assert_eq!(due.len(), 1, "b failed once: nothing more to write");
        assert_eq!(
            (due[0].count, due[0].tenant, due[0].target.as_str()),
            (3, Some(tenant), "key:bh_tk_aaaaaaaaaaaa")
        );
        assert_eq!(due[0].key_id, a.key.map(|k| k.id));
    }

    #[test]
    fn a_window_that_passed_unswept_is_counted_when_the_next_one_opens() {
        let mut c = Coalescer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let f = AuthFailure::known("bh_op_cccccccccccc", KeyId::new(), None, AuthFailReason::Expired);
        assert!(c.hit(&f, t0, wall()));
        assert!(!c.hit(&f, t0 + Duration::from_secs(10), wall()));
        assert!(c.hit(&f, t0 + Duration::from_secs(70), wall()), "a new window");
        let closed = c.take_pending();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].count, 1);
        assert!(c.take_pending().is_empty(), "written once");
        assert!(c.due(t0 + Duration::from_secs(71)).is_empty(), "the new window is open and has no count");
    }

    #[test]
    fn known_key_buckets_are_capped() {
        let mut c = Coalescer::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS + 100) {
            let f = AuthFailure::known(
                &format!("bh_tk_{i:012x}"),
                KeyId::new(),
                None,
                AuthFailReason::InvalidSecret,
            );
            c.hit(&f, t0, wall());
        }
        assert_eq!(c.buckets.len(), MAX_BUCKETS + 1, "the rest fold into one platform bucket");
    }
}
