//! Bandwidth limits: `--max-upload-rate` and `--max-download-rate` as one
//! token bucket per direction, shared by every transfer of the client.
//!
//! What is counted is file content as it goes on the wire (an upload's
//! chunks just before they are handed to the connection, a download's as
//! they are read off it); headers, listings and events are not, they are
//! small. Without a limit nothing is wrapped: no bucket, no wait.
//!
//! Small changes still go first. The bucket holds little (at most
//! [`MAX_PIECE`], a quarter of a second's worth at lower rates) and a
//! transfer takes it a piece at a time, so no transfer holds it for long;
//! the bucket (a GCRA, `governor`) lets a request through as soon as
//! enough has refilled for it, and a small file needs only a few bytes
//! where a large transfer's next piece needs [`MAX_PIECE`]. Nothing
//! bypasses the limit: a first sync of many small files respects it too.
//! Uploads are also sent in pieces of that size, so that the server, which
//! ends an upload silent for its idle timeout, hears from a limited one
//! often.

use std::{fmt, num::NonZeroU32, str::FromStr, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use governor::{DefaultDirectRateLimiter, Quota, clock::Clock};

use crate::remote::{Body, Piece, PieceStream};

/// The largest piece a transfer takes from its bucket at once, and the
/// bucket's capacity (its burst): 128 KiB, some 6 ms at 20 MiB/s, so the
/// average holds over any second and a small file waits behind a large
/// one for at most a piece per transfer running.
pub const MAX_PIECE: u32 = 128 * 1024;
/// The shortest wait for the bucket to refill, so that a taker that keeps
/// losing the race to others never spins.
const MIN_WAIT: Duration = Duration::from_micros(100);
/// The slowest accepted rate: twice the minimum pace below which the
/// server (by default) ends an upload once its grace is over, so that an
/// upload alone under the limit is never cut for being too slow.
pub const MIN_RATE: u64 = 64 * 1024;
/// The fastest accepted rate (a bucket counts bytes in 32 bits); any
/// faster link needs no limit.
pub const MAX_RATE: u64 = u32::MAX as u64;

/// The HTTP/2 receive window of each call (a download's chunks the server
/// may send before the client reads them): 2 MiB, the usual default,
/// stated here because [`CONNECTION_WINDOW`] is reckoned from it.
pub const STREAM_WINDOW: u32 = 2 << 20;
/// The HTTP/2 receive window of a whole connection, shared by its calls:
/// room for the stream windows of every transfer at once (up to 16 in a
/// full sync, and 4 in the large lane) and the rest. A download held back
/// by the limit leaves its stream window full and unread; were these to
/// fill the connection's window, as they did at the 5 MiB default with
/// three or four limited downloads, the subscription and every other
/// answer would stall behind them. Its cost: what the server may have sent
/// unread, at most 48 MiB.
pub const CONNECTION_WINDOW: u32 = 48 << 20;

/// A transfer rate in bytes a second, as given to `--max-upload-rate` or
/// `--max-download-rate`: `5MiB/s`, `500KiB/s`, `2MB/s`, `1048576`
/// (bytes a second). Binary (`KiB`, `MiB`, `GiB`) and decimal (`kB`, `KB`,
/// `MB`, `GB`) units of bytes; `/s` is optional. Bits (`Mb`, `Mbit`) are
/// refused rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(NonZeroU32);

impl Rate {
    /// The rate in bytes a second.
    pub fn bytes_per_second(self) -> u64 {
        u64::from(self.0.get())
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let text = s.trim();
        let text = text.strip_suffix("/s").unwrap_or(text).trim_end();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim_start());
        let value: f64 = match number.parse() {
            Ok(v) if f64::is_finite(v) => v,
            _ => return Err(format!("{s:?} is not a rate: use bytes a second, like 5MiB/s or 1048576")),
        };
        let unit_bytes: u64 = match unit {
            "" | "B" => 1,
            "kB" | "KB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?}: use bytes a second, like 5MiB/s, 500KiB/s, 2MB/s or 1048576"
                ));
            }
        };
        let bytes = value * unit_bytes as f64;
        if bytes < 1.0 {
            return Err("must be above zero (leave the option out for no limit)".into());
        }
        if bytes < MIN_RATE as f64 {
            return Err(format!(
                "{s} is below the slowest accepted rate, 64KiB/s (the server ends slower uploads)"
            ));
        }
        if bytes > MAX_RATE as f64 {
            return Err(format!("{s} is above the fastest accepted rate, 4GiB/s (leave the option out)"));
        }
        let bytes = NonZeroU32::new(bytes as u32).expect("checked above the minimum");
        Ok(Self(bytes))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes_per_second();
        match b {
            _ if b.is_multiple_of(1 << 30) => write!(f, "{}GiB/s", b >> 30),
            _ if b.is_multiple_of(1 << 20) => write!(f, "{}MiB/s", b >> 20),
            _ if b.is_multiple_of(1 << 10) => write!(f, "{}KiB/s", b >> 10),
            _ => write!(f, "{b}B/s"),
        }
    }
}

/// The client's two buckets (either may be absent: no limit that way).
/// Cheap to clone; clones share the buckets.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    upload: Option<Limiter>,
    download: Option<Limiter>,
}

impl Limits {
    /// Buckets for the given rates.
    pub fn new(upload: Option<Rate>, download: Option<Rate>) -> Self {
        Self { upload: upload.map(Limiter::new), download: download.map(Limiter::new) }
    }

    /// An upload's body, paced by the upload bucket: each chunk is sent in
    /// pieces, each once the bucket allows it. Unchanged without a limit.
    pub fn pace_upload(&self, body: BoxStream<'static, Body>) -> BoxStream<'static, Body> {
        let Some(limiter) = self.upload.clone() else { return body };
        let splitter = limiter.clone();
        body.flat_map(move |b| futures::stream::iter(splitter.split(b)))
            .then(move |b| {
                let limiter = limiter.clone();
                async move {
                    if let Body::Chunk(piece) = &b {
                        limiter.take(piece.len()).await;
                    }
                    b
                }
            })
            .boxed()
    }

    /// A download's pieces, each chunk let through once the download
    /// bucket allows its bytes (the connection's flow control then holds
    /// the server back). Unchanged without a limit.
    pub fn pace_download(&self, chunks: PieceStream) -> PieceStream {
        let Some(limiter) = self.download.clone() else { return chunks };
        chunks
            .then(move |c| {
                let limiter = limiter.clone();
                async move {
                    if let Ok(Piece::Chunk(chunk)) = &c {
                        limiter.take(chunk.len()).await;
                    }
                    c
                }
            })
            .boxed()
    }
}

/// One direction's bucket. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Limiter {
    bucket: Arc<DefaultDirectRateLimiter>,
    /// The most taken at once (the bucket's capacity).
    piece: u32,
    rate: Rate,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("rate", &self.rate.to_string()).field("piece", &self.piece).finish()
    }
}

impl Limiter {
    /// A full bucket refilling at `rate`, holding [`MAX_PIECE`] or a
    /// quarter of a second's worth, whichever is less.
    pub fn new(rate: Rate) -> Self {
        let piece = (rate.0.get() / 4).clamp(1, MAX_PIECE);
        let piece_nz = NonZeroU32::new(piece).expect("at least 1");
        let bucket = DefaultDirectRateLimiter::direct(Quota::per_second(rate.0).allow_burst(piece_nz));
        Self { bucket: Arc::new(bucket), piece, rate }
    }

    /// Waits (asynchronously) until `bytes` may go, a piece at a time.
    pub async fn take(&self, bytes: usize) {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(self.piece as usize);
            left -= n;
            let cells = NonZeroU32::new(n as u32).expect("n > 0");
            loop {
                match self.bucket.check_n(cells) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(self.bucket.clock().now());
                        // Another taker may be served first; then wait again
                        // (never a busy loop: at least a short sleep).
                        tokio::time::sleep(wait.max(MIN_WAIT)).await;
                    }
                    Err(_) => unreachable!("a piece never exceeds the bucket's capacity"),
                }
            }
        }
    }

    /// `body` in pieces the bucket can pass at once.
    fn split(&self, body: Body) -> Vec<Body> {
        match body {
            Body::Chunk(data) if data.len() > self.piece as usize => {
                data.chunks(self.piece as usize).map(|p| Body::Chunk(p.to_vec())).collect()
            }
            other => vec![other],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn rate(s: &str) -> std::result::Result<u64, String> {
        s.parse::<Rate>().map(Rate::bytes_per_second)
    }

    #[test]
    fn rates_parse_in_bytes_a_second() {
        assert_eq!(rate("5MiB/s"), Ok(5 << 20));
        assert_eq!(rate("500KiB/s"), Ok(500 << 10));
        assert_eq!(rate("2MB/s"), Ok(2_000_000));
        assert_eq!(rate("1048576"), Ok(1 << 20));
        assert_eq!(rate("1.5 MiB/s"), Ok(3 << 19));
        assert_eq!(rate("100kB"), Ok(100_000));
        assert_eq!(rate("1GiB/s"), Ok(1 << 30));
        assert_eq!("20MiB/s".parse::<Rate>().unwrap().to_string(), "20MiB/s");
    }

    #[test]
    fn zero_garbage_bits_and_out_of_range_rates_are_refused() {
        for bad in
            ["0", "0MiB/s", "-5MiB/s", "", "fast", "5 MiB/h", "10Mb/s", "10mbit", "1e400", "NaN", "1KiB/s"]
        {
            assert!(rate(bad).is_err(), "{bad:?} was accepted as {:?}", rate(bad));
        }
        assert!(rate("0").unwrap_err().contains("above zero"));
        assert!(rate("5GiB/s").unwrap_err().contains("fastest"));
        assert!(rate("10Mb/s").unwrap_err().contains("unknown unit"));
    }

    #[tokio::test]
    async fn takers_share_the_bucket_and_hold_its_rate() {
        let limiter = Limiter::new("1MiB/s".parse().unwrap());
        let started = Instant::now();
        // Two transfers of 384 KiB each: 768 KiB, of which one piece (the
        // full bucket) goes at once, the rest at 1 MiB/s.
        let (a, b) = (limiter.clone(), limiter.clone());
        tokio::join!(a.take(384 << 10), b.take(384 << 10));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600), "768 KiB at 1 MiB/s took {took:?}");
        assert!(took < Duration::from_secs(3), "768 KiB at 1 MiB/s took {took:?}");
    }

    #[tokio::test]
    async fn a_small_take_passes_a_large_one_waiting() {
        let limiter = Limiter::new("1MiB/s".parse().unwrap());
        let large = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.take(2 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        limiter.take(200).await;
        let small = started.elapsed();
        assert!(!large.is_finished(), "the large take was still waiting");
        assert!(small < Duration::from_millis(300), "200 bytes waited {small:?} behind 2 MiB at 1 MiB/s");
        large.abort();
    }

    #[tokio::test]
    async fn an_upload_body_goes_in_pieces_the_bucket_passes() {
        let limits = Limits::new(Some("1MiB/s".parse().unwrap()), None);
        let body = futures::stream::iter([Body::Chunk(vec![7; 600 << 10]), Body::End]).boxed();
        let out: Vec<Body> = limits.pace_upload(body).collect().await;
        let sizes: Vec<usize> =
            out.iter().filter_map(|b| if let Body::Chunk(d) = b { Some(d.len()) } else { None }).collect();
        assert!(sizes.iter().all(|&n| n <= MAX_PIECE as usize), "pieces of {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 600 << 10);
        assert!(out.last() == Some(&Body::End), "the end marker comes last");
        assert!(
            out.iter()
                .filter_map(|b| if let Body::Chunk(d) = b { Some(d) } else { None })
                .flatten()
                .all(|&b| b == 7)
        );
    }
}
