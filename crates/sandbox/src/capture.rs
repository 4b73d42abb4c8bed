//! Bounded reading of a sandbox's stdout and stderr.
//!
//! Invariant: a stream never holds more than its cap in memory. The reader
//! stops at the cap, drops the pipe (so the writer gets `EPIPE`) and raises the
//! overflow signal, on which the supervisor kills the sandbox.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One captured stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    /// More than the cap was written; `bytes` holds the first `cap` bytes.
    pub truncated: bool,
}

/// Reads `reader` until end of file, `stop`, or more than `cap` bytes. On
/// overflow it keeps the first `cap` bytes and notifies `overflow`.
pub(crate) async fn capture<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
    overflow: Arc<Notify>,
    stop: CancellationToken,
) -> Captured {
    let mut out = Captured { bytes: Vec::with_capacity(cap.min(16 * 1024)), truncated: false };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            // Output already in the pipe is worth more than a prompt stop, so
            // reads win ties; `stop` only ends a reader whose pipe stays open.
            biased;
            read = reader.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return out,
                Ok(n) => n,
            },
            () = stop.cancelled() => return out,
        };
        let room = cap - out.bytes.len();
        if n > room {
            out.bytes.extend_from_slice(&chunk[..room]);
            out.truncated = true;
            overflow.notify_one();
            return out;
        }
        out.bytes.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn keeps_everything_up_to_the_cap() {
        let (mut w, r) = tokio::io::duplex(1024);
        let overflow = Arc::new(Notify::new());
        let task = tokio::spawn(capture(r, 10, overflow.clone(), CancellationToken::new()));
        w.write_all(b"0123456789").await.unwrap();
        drop(w);
        let got = task.await.unwrap();
        assert_eq!(got.bytes, b"0123456789");
        assert!(!got.truncated);
    }

    #[tokio::test]
    async fn stops_at_the_cap_and_signals_overflow() {
        let (mut w, r) = tokio::io::duplex(1024);
        let overflow = Arc::new(Notify::new());
        let task = tokio::spawn(capture(r, 10, overflow.clone(), CancellationToken::new()));
        // The writer would go on forever; the reader must hang up on it.
        let writer = tokio::spawn(async move {
            let mut written = 0usize;
            while w.write_all(&[b'x'; 100]).await.is_ok() {
                written += 100;
            }
            written
        });
        overflow.notified().await;
        let got = task.await.unwrap();
        assert_eq!(got.bytes, vec![b'x'; 10]);
        assert!(got.truncated);
        assert!(writer.await.unwrap() < 10_000, "the writer got a broken pipe soon after the cap");
    }

    #[tokio::test]
    async fn stop_returns_what_was_read() {
        let (mut w, r) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let task = tokio::spawn(capture(r, 100, Arc::new(Notify::new()), stop.clone()));
        w.write_all(b"partial").await.unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stop.cancel();
        let got = task.await.unwrap();
        assert_eq!(got.bytes, b"partial");
        drop(w);
    }
}
