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
//!
//! [`read_within`] is the one way both servers read a body under a
//! limit: a declared length over it is refused before anything is kept,
//! and a body sent without one (chunked), only known to be too large once
//! it passes the limit, is read up to there; either way the rest is
//! discarded as above.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures_util::StreamExt as _;

/// At most this much of a refused body is read.
const DISCARD_AT_MOST: u64 = 64 << 20;
/// And for at most this long.
const DISCARD_FOR: Duration = Duration::from_secs(10);

/// The body's length as its `Content-Length` declares it, if it does.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse().ok())
}

/// Why [`read_within`] gave no body.
#[derive(Debug, PartialEq)]
pub enum Unread {
    /// It is over the limit (by its declared length, if it had one); it
    /// was read to its end and thrown away.
    TooLarge { declared: Option<u64> },
    /// The client's body broke off: "reading the body: " and the reader's error.
    Failed(String),
}

/// The whole body if it is at most `limit` bytes long. A body declared
/// longer is discarded unread; one that passes `limit` while it is read
/// keeps nothing more, and the rest is discarded.
pub async fn read_within(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, Unread> {
    let declared = declared_length(headers);
    if declared.is_some_and(|length| length > limit) {
        discard(body).await;
        return Err(Unread::TooLarge { declared });
    }
    let mut stream = body.into_data_stream();
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Unread::Failed(format!("reading the body: {e}")))?;
        if (read.len() + chunk.len()) as u64 > limit {
            discard(Body::from_stream(stream)).await;
            return Err(Unread::TooLarge { declared: None });
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.into())
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

    /// A body of `chunks` chunks of `size` bytes, counting what is read of it.
    fn counted_body(chunks: usize, size: usize) -> (Body, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        let chunk = Bytes::from(vec![0u8; size]);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let stream = futures_util::stream::repeat(chunk).take(chunks).map(move |chunk| {
            counted.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::io::Error>(chunk)
        });
        (Body::from_stream(stream), sent)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_and_one_past_it_to_its_end() {
        let no_length = HeaderMap::new();
        let (within, _) = counted_body(4, 1000);
        assert_eq!(
            read_within(&no_length, within, 4000).await.map(|body| body.len()),
            Ok(4000)
        );
        let (past, read) = counted_body(5, 1000);
        assert_eq!(
            read_within(&no_length, past, 4000).await,
            Err(Unread::TooLarge { declared: None })
        );
        assert_eq!(
            read.load(std::sync::atomic::Ordering::Relaxed),
            5000,
            "the rest is read, not left unread"
        );
    }

    #[tokio::test]
    async fn a_huge_body_is_read_only_up_to_the_bound() {
        let (huge, sent) = counted_body(1024, 1 << 20);
        discard(huge).await;
        let read = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            read > DISCARD_AT_MOST && read <= DISCARD_AT_MOST + (1 << 20),
            "read {read} bytes"
        );
    }
}
