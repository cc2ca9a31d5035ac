//! A body that the host's HTTP servers (admin, ingest) refuse as too large
//! is still read to its end, and thrown away, before the 413 goes out.
//!
//! Answered at once, the connection closes with the client still sending:
//! the kernel then resets it, and a client that was writing its body
//! sees a broken pipe or a reset instead of the 413 that says why (seen
//! with a 17 MiB upload to the admin server). Reading the rest costs
//! nothing in memory (no chunk is kept), and is bounded in size and
//! time so that a client cannot hold a connection open with an endless
//! body: past either bound the connection closes as before.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt as _;

/// At most this much of a refused body is read.
const DISCARD_AT_MOST: u64 = 64 << 20;
/// And for at most this long.
const DISCARD_FOR: Duration = Duration::from_secs(10);

/// The body's length as its `Content-Length` declares it, if it does.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse().ok())
}

/// Reads `body` to its end (within the bounds above) and drops it.
pub async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(DISCARD_FOR, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DISCARD_AT_MOST {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_endless_body_is_given_up_on_after_its_time() {
        let endless =
            futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x"))).then(
                |chunk| async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    chunk
                },
            );
        let started = tokio::time::Instant::now();
        discard(Body::from_stream(endless)).await;
        assert_eq!(started.elapsed(), DISCARD_FOR);
    }

    #[tokio::test]
    async fn a_huge_body_is_read_only_up_to_the_bound() {
        let chunk = axum::body::Bytes::from(vec![0u8; 1 << 20]);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let huge = futures_util::stream::repeat(chunk).take(1024).map(move |chunk| {
            counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk)
        });
        discard(Body::from_stream(huge)).await;
        let read = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read > DISCARD_AT_MOST && read <= DISCARD_AT_MOST + (1 << 20),
            "read {read} bytes"
        );
    }
}
