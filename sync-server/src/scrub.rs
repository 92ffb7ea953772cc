//! Scrubbing: reading every stored content back, checking it against its
//! hash, setting damaged content aside, and healing it with a good copy
//! fetched from a peer server (`Admin/ReadContent`) where one is known.
//!
//! Used by `sync-server scrub` (offline, on a stopped server's data folder)
//! and by the server's background scrub (`--scrub-interval`), which paces
//! its reads (`--scrub-rate`) so that it does not starve clients. A primary
//! with a replica also heals at once what any read finds damaged
//! ([`run_healer`]).

use std::time::{Duration, Instant};

use syncstore::{
    ContentHash,
    connect::{self, NoAnswer, Security},
    limits::MAX_MESSAGE,
    pb::{self, admin_client::AdminClient},
};
use tokio_util::sync::CancellationToken;

use crate::{
    ServerMetrics,
    error::{Error, Result},
    storage::{PAGE_SIZE, Store, Verdict},
};

/// Default pace of the background scrub: 32 MiB/s, a small share of a
/// disk's bandwidth; a TiB is read in about 9 hours.
pub const DEFAULT_SCRUB_RATE: u64 = 32 * 1024 * 1024;
/// Default time from the start of one background scrub pass to the next.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest a fetch from the peer may take to start answering.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server to fetch good copies from.
#[derive(Debug, Clone)]
pub struct Peer {
    pub url: String,
    /// Must carry an admin or a replication token on a server with tokens.
    pub security: Security,
}

/// How a scrub pass went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// Distinct contents read back.
    pub verified: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Contents found damaged (this pass, or set aside earlier).
    pub damaged: Vec<ContentHash>,
    /// Damaged contents replaced by a good copy from the peer.
    pub healed: Vec<ContentHash>,
    /// Damaged or missing contents no good copy could be had for: the files
    /// that refer to them are lost on this server ([`Store::paths_of`] lists them).
    pub lost: Vec<ContentHash>,
}

/// Reads back every content live files refer to; sets damaged ones aside,
/// fetches a good copy from `peer` if given, and reports. With `rate`
/// (bytes/s), sleeps between contents to keep to it. Stops early (with
/// what it did so far) when `shutdown` is cancelled.
pub async fn scrub(
    store: &Store,
    peer: Option<&Peer>,
    rate: Option<u64>,
    metrics: Option<&ServerMetrics>,
    shutdown: &CancellationToken,
) -> Result<ScrubReport> {
    let mut report = ScrubReport::default();
    let mut after: Option<ContentHash> = None;
    let started = Instant::now();
    loop {
        let page = store.referenced_blobs(after.as_ref(), PAGE_SIZE).await?;
        let done = page.len() < PAGE_SIZE;
        after = page.last().map(|(h, _)| *h);
        for (hash, size) in page {
            if shutdown.is_cancelled() {
                return Ok(report);
            }
            let verdict = store.verify_blob(&hash, size).await?;
            report.verified += 1;
            report.bytes += size;
            if let Some(m) = metrics {
                m.scrub_bytes.inc_by(size);
            }
            if verdict != Verdict::Good {
                if verdict == Verdict::Damaged || store.is_damaged(&hash).await? {
                    report.damaged.push(hash);
                }
                match heal(store, peer, hash, size).await {
                    Ok(true) => report.healed.push(hash),
                    Ok(false) => report.lost.push(hash),
                    Err(e) => {
                        tracing::warn!(%hash, error = %e, "could not fetch a good copy from the peer");
                        report.lost.push(hash);
                    }
                }
            }
            if let Some(rate) = rate.filter(|r| *r > 0) {
                // Keep the average to `rate` since the pass started.
                let due = Duration::from_secs_f64(report.bytes as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Ok(report),
                    }
                }
            }
        }
        if done {
            break;
        }
    }
    Ok(report)
}

/// Fetches content `hash` from `peer` and puts it in place (verified);
/// `false` without a peer.
async fn heal(store: &Store, peer: Option<&Peer>, hash: ContentHash, size: u64) -> Result<bool> {
    let Some(peer) = peer else { return Ok(false) };
    let channel = peer.security.endpoint(&peer.url).map_err(|e| Error::Config(format!("{e:#}")))?;
    let channel = channel
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| Error::Unavailable(format!("cannot reach {}: {e}", peer.url)))?;
    let credentials = peer.security.credentials().map_err(|e| Error::Config(format!("{e:#}")))?;
    let mut client =
        AdminClient::with_interceptor(channel, credentials).max_decoding_message_size(MAX_MESSAGE);
    let request = pb::ReadContentRequest { hash: hash.as_bytes().to_vec(), size };
    // Each answer within the call timeout: a frozen peer is named, not waited for.
    let answer = |e: NoAnswer| Error::Unavailable(e.to_string());
    let limit = peer.security.call_timeout;
    let call = client.read_content(request);
    let mut stream = match connect::answer(&peer.url, limit, call).await.map_err(answer)? {
        Ok(r) => r.into_inner(),
        Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::DataLoss) => {
            tracing::warn!(%hash, peer = %peer.url, reason = s.message(), "the peer has no good copy either");
            return Ok(false);
        }
        Err(s) => return Err(Error::Unavailable(format!("{}: {}", peer.url, s.message()))),
    };
    let mut writer = store.upload(size).await?;
    loop {
        let chunk = match connect::answer(&peer.url, limit, stream.message()).await.map_err(answer)? {
            Ok(Some(m)) => m.chunk,
            Ok(None) => break,
            Err(s) if s.code() == tonic::Code::DataLoss => return Ok(false),
            Err(s) => return Err(Error::Unavailable(format!("{}: {}", peer.url, s.message()))),
        };
        writer.write(chunk).await?;
    }
    store.restore_blob(writer.complete(hash, size).await?).await?;
    tracing::warn!(%hash, peer = %peer.url, "damaged content healed with the peer's copy");
    Ok(true)
}

/// Heals damaged content as soon as a read (a download, replication, a
/// header-only upload) finds it, by fetching it from `peer`, until
/// `shutdown`: the scrub's pass may be days away.
pub async fn run_healer(store: Store, peer: Peer, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = store.damage_found() => {}
            () = shutdown.cancelled() => return,
        }
        for (hash, size) in store.take_found_damaged() {
            match heal(&store, Some(&peer), hash, size).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(%hash, "damaged content is lost: the peer has no good copy either")
                }
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "could not heal damaged content; the next scrub tries again")
                }
            }
        }
    }
}

/// Runs a scrub pass every `interval` until `shutdown`, at `rate` bytes/s,
/// healing from `peer` where given. The first pass starts one interval
/// after the server does.
pub async fn run_background(
    store: Store,
    peer: Option<Peer>,
    interval: Duration,
    rate: u64,
    metrics: ServerMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let started = Instant::now();
        match scrub(&store, peer.as_ref(), Some(rate), Some(&metrics), &shutdown).await {
            Ok(r) if r.damaged.is_empty() && r.lost.is_empty() => {
                tracing::info!(contents = r.verified, bytes = r.bytes, took = ?started.elapsed(), "scrub: all content intact");
            }
            Ok(r) => tracing::error!(
                contents = r.verified,
                damaged = r.damaged.len(),
                healed = r.healed.len(),
                lost = r.lost.len(),
                "scrub: damaged content found (see the errors above; `sync-server scrub` lists the files)"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub pass failed; trying again next interval"),
        }
    }
}
