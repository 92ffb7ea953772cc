//! The content model both sides share: a file's content is named by its
//! whole BLAKE3 hash and size (its identity, on the wire and in every
//! manifest) and is cut into an ordered list of chunks ([`ChunkRef`]: the
//! BLAKE3 hash and length of each piece).
//!
//! Content of at most [`WHOLE_MAX`] bytes is one chunk, whose hash is the
//! content's hash: small files cost nothing extra. Larger content is cut by
//! FastCDC (the 2020 algorithm, normalization level 1) with chunks of
//! [`CDC_MIN`] to [`CDC_MAX`] bytes, [`CDC_AVG`] on average: boundaries
//! depend on the bytes around them, so an insert or a delete moves only the
//! chunks it touches and every other chunk keeps its hash. Both sides cut
//! the same bytes into the same chunks, so a chunk list computed by a
//! client equals the one the server stores.
//!
//! A chunk list is sent as [`Run`]s against a base list both sides know
//! (the previous version of the file): a run either names a stretch of the
//! base's chunks by index or introduces a new chunk whose bytes follow. An
//! edit in the middle of a 1 GiB file is then a handful of runs, not the
//! 16,000 entries of its whole list.

use std::{collections::HashMap, io::Read};

use crate::{ContentHash, pb};

/// Content of at most this many bytes is a single chunk.
pub const WHOLE_MAX: u64 = 1024 * 1024;

/// Smallest chunk FastCDC cuts (the last chunk of content may be smaller).
pub const CDC_MIN: usize = 16 * 1024;

/// The average chunk FastCDC aims for.
pub const CDC_AVG: usize = 64 * 1024;

/// Largest chunk FastCDC cuts.
pub const CDC_MAX: usize = 256 * 1024;

/// Most runs in one message: a runs message stays far below the message
/// limit (a run is at most about 45 bytes on the wire).
pub const MAX_RUNS_PER_MESSAGE: usize = 1024;

/// One chunk of content: the BLAKE3 hash of its bytes and their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub hash: ContentHash,
    /// Its length in bytes (at most [`CDC_MAX`], or [`WHOLE_MAX`] for the
    /// single chunk of small content).
    pub size: u32,
}

/// A chunk cut from content, with its bytes.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Its hash and length.
    pub chunk: ChunkRef,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Cuts content pushed in pieces of any size into chunks, and hashes the
/// whole: one pass over the bytes. Feed it with [`Chunker::push`], take the
/// chunks ready so far with [`Chunker::next_chunk`], and after
/// [`Chunker::finish`] take the rest. Holds at most about [`CDC_MAX`] bytes
/// beyond the last piece pushed (or, for content announced as at most
/// [`WHOLE_MAX`], the whole of it).
#[derive(Debug)]
pub struct Chunker {
    buf: Vec<u8>,
    start: usize,
    single: bool,
    finished: bool,
    whole: blake3::Hasher,
    len: u64,
}

impl Chunker {
    /// A chunker for content announced as `size` bytes. The announcement
    /// only decides whether the content is one chunk; a content that turns
    /// out of another size hashes differently anyway.
    pub fn new(size: u64) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            single: size <= WHOLE_MAX,
            finished: false,
            whole: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// Adds the next piece of content.
    pub fn push(&mut self, data: &[u8]) {
        debug_assert!(!self.finished, "push after finish");
        self.whole.update(data);
        self.len += data.len() as u64;
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Marks the end of the content: [`Chunker::next_chunk`] then hands out
    /// what is left.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The next complete chunk, if one is ready.
    pub fn next_chunk(&mut self) -> Option<Chunk> {
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return None;
        }
        let len = if self.single {
            if !self.finished {
                return None;
            }
            pending.len()
        } else {
            if !self.finished && pending.len() < CDC_MAX {
                return None;
            }
            cut(pending)
        };
        let data = pending[..len].to_vec();
        self.start += len;
        let chunk = ChunkRef {
            hash: ContentHash::of(&data),
            size: u32::try_from(len).expect("a chunk is far below 4 GiB"),
        };
        Some(Chunk { chunk, data })
    }

    /// The hash and length of everything pushed so far.
    pub fn content(&self) -> (ContentHash, u64) {
        (self.whole.finalize().into(), self.len)
    }
}

/// Where the first chunk of `data` ends (all of it if it is no longer than
/// the smallest chunk).
fn cut(data: &[u8]) -> usize {
    let window = &data[..data.len().min(CDC_MAX)];
    fastcdc::v2020::FastCDC::new(window, CDC_MIN, CDC_AVG, CDC_MAX).next().map_or(window.len(), |c| c.length)
}

/// Reads `reader` to its end and returns the content's hash, its length and
/// its chunk list. `size` is the length the caller expects (see
/// [`Chunker::new`]).
pub fn chunk_list(mut reader: impl Read, size: u64) -> std::io::Result<(ContentHash, u64, Vec<ChunkRef>)> {
    let mut chunker = Chunker::new(size);
    let mut list = Vec::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        chunker.push(&buf[..n]);
        while let Some(c) = chunker.next_chunk() {
            list.push(c.chunk);
        }
    }
    chunker.finish();
    while let Some(c) = chunker.next_chunk() {
        list.push(c.chunk);
    }
    let (hash, len) = chunker.content();
    Ok((hash, len, list))
}

/// One step of a chunk list sent against a base list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// The base's chunks `first .. first + count`, in order.
    Base {
        /// Index of the first of them in the base list.
        first: u32,
        /// How many (at least one).
        count: u32,
    },
    /// A chunk the base does not have; its bytes travel with the runs.
    New(ChunkRef),
}

/// A list of runs that does not fit its base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunsError {
    /// A run names chunks past the end of the base list (or none).
    #[error("a run names base chunks {first}..{end} of a base of {base_len}")]
    OutOfBase {
        /// The run's first index.
        first: u32,
        /// One past its last index.
        end: u64,
        /// The base list's length.
        base_len: usize,
    },
    /// A new chunk is empty or larger than any chunk may be.
    #[error("a chunk of {0} bytes (chunks are 1 to {max} bytes)", max = WHOLE_MAX)]
    BadChunkSize(u32),
    /// A run is missing its chunk or hash.
    #[error("a run without its chunk: {0}")]
    Malformed(&'static str),
}

/// Describes `new` as runs against `base`: every chunk of `new` that the
/// base has is a [`Run::Base`] (consecutive base chunks in one run), every
/// other a [`Run::New`].
pub fn diff(base: &[ChunkRef], new: &[ChunkRef]) -> Vec<Run> {
    let mut index: HashMap<&ChunkRef, u32> = HashMap::with_capacity(base.len());
    for (i, c) in base.iter().enumerate() {
        index.entry(c).or_insert(i as u32);
    }
    let mut runs: Vec<Run> = Vec::new();
    for (i, c) in new.iter().enumerate() {
        // Prefer continuing the current run: repeated chunks (zeros) then
        // stay one run.
        if let Some(Run::Base { first, count }) = runs.last_mut() {
            let next = (*first + *count) as usize;
            if base.get(next) == Some(c) && i > 0 {
                *count += 1;
                continue;
            }
        }
        match index.get(c) {
            Some(&at) => runs.push(Run::Base { first: at, count: 1 }),
            None => runs.push(Run::New(*c)),
        }
    }
    runs
}

/// Rebuilds the chunk list `runs` describe against `base`.
pub fn apply(base: &[ChunkRef], runs: &[Run]) -> Result<Vec<ChunkRef>, RunsError> {
    let mut out = Vec::new();
    for run in runs {
        match *run {
            Run::Base { first, count } => out.extend_from_slice(base_slice(base, first, count)?),
            Run::New(c) => out.push(check_chunk(c)?),
        }
    }
    Ok(out)
}

/// The base chunks a [`Run::Base`] names, checked against the base's
/// length.
pub fn base_slice(base: &[ChunkRef], first: u32, count: u32) -> Result<&[ChunkRef], RunsError> {
    let end = u64::from(first) + u64::from(count);
    if count == 0 || end > base.len() as u64 {
        return Err(RunsError::OutOfBase { first, end, base_len: base.len() });
    }
    Ok(&base[first as usize..end as usize])
}

fn check_chunk(c: ChunkRef) -> Result<ChunkRef, RunsError> {
    if c.size == 0 || u64::from(c.size) > WHOLE_MAX {
        return Err(RunsError::BadChunkSize(c.size));
    }
    Ok(c)
}

/// Bytes per entry of a packed chunk list: the hash, then the length as
/// four little-endian bytes.
const PACKED_ENTRY: usize = 36;

/// A chunk list as bytes, for storing it.
pub fn pack_list(list: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * PACKED_ENTRY);
    for c in list {
        out.extend_from_slice(c.hash.as_bytes());
        out.extend_from_slice(&c.size.to_le_bytes());
    }
    out
}

/// A chunk list from [`pack_list`]'s bytes; `None` if they are not one.
pub fn unpack_list(bytes: &[u8]) -> Option<Vec<ChunkRef>> {
    if !bytes.len().is_multiple_of(PACKED_ENTRY) {
        return None;
    }
    bytes
        .chunks_exact(PACKED_ENTRY)
        .map(|e| {
            let hash = ContentHash::try_from(&e[..32]).ok()?;
            let size = u32::from_le_bytes(e[32..].try_into().ok()?);
            Some(ChunkRef { hash, size })
        })
        .collect()
}

/// Runs as bytes, for storing them: a tag byte, then the base run's two
/// little-endian `u32`s or the new chunk's packed entry.
pub fn pack_runs(runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::new();
    for run in runs {
        match run {
            Run::Base { first, count } => {
                out.push(0);
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            Run::New(c) => {
                out.push(1);
                out.extend_from_slice(&pack_list(std::slice::from_ref(c)));
            }
        }
    }
    out
}

/// Runs from [`pack_runs`]'s bytes; `None` if they are not runs.
pub fn unpack_runs(mut bytes: &[u8]) -> Option<Vec<Run>> {
    let mut runs = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        match tag {
            0 if rest.len() >= 8 => {
                let first = u32::from_le_bytes(rest[..4].try_into().ok()?);
                let count = u32::from_le_bytes(rest[4..8].try_into().ok()?);
                runs.push(Run::Base { first, count });
                bytes = &rest[8..];
            }
            1 if rest.len() >= PACKED_ENTRY => {
                runs.push(Run::New(unpack_list(&rest[..PACKED_ENTRY])?[0]));
                bytes = &rest[PACKED_ENTRY..];
            }
            _ => return None,
        }
    }
    Some(runs)
}

impl From<ChunkRef> for pb::ChunkRef {
    fn from(c: ChunkRef) -> Self {
        Self { hash: c.hash.as_bytes().to_vec(), size: c.size }
    }
}

impl TryFrom<pb::ChunkRef> for ChunkRef {
    type Error = RunsError;

    fn try_from(c: pb::ChunkRef) -> Result<Self, RunsError> {
        let hash = ContentHash::try_from(c.hash.as_slice()).map_err(|_| RunsError::Malformed("hash"))?;
        check_chunk(ChunkRef { hash, size: c.size })
    }
}

impl From<Run> for pb::ChunkRun {
    fn from(run: Run) -> Self {
        let run = match run {
            Run::Base { first, count } => pb::chunk_run::Run::Base(pb::BaseChunks { first, count }),
            Run::New(c) => pb::chunk_run::Run::New(c.into()),
        };
        Self { run: Some(run) }
    }
}

impl TryFrom<pb::ChunkRun> for Run {
    type Error = RunsError;

    fn try_from(run: pb::ChunkRun) -> Result<Self, RunsError> {
        match run.run.ok_or(RunsError::Malformed("empty run"))? {
            pb::chunk_run::Run::Base(b) if b.count > 0 => Ok(Run::Base { first: b.first, count: b.count }),
            pb::chunk_run::Run::Base(_) => Err(RunsError::Malformed("a base run of no chunks")),
            pb::chunk_run::Run::New(c) => c.try_into().map(Run::New),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0; n];
        StdRng::seed_from_u64(seed).fill(&mut data[..]);
        data
    }

    fn list_of(data: &[u8]) -> Vec<ChunkRef> {
        chunk_list(data, data.len() as u64).unwrap().2
    }

    #[test]
    fn small_content_is_one_chunk_named_by_its_hash() {
        for n in [0, 1, 4096, WHOLE_MAX as usize] {
            let data = random(n, 1);
            let (hash, len, list) = chunk_list(&data[..], n as u64).unwrap();
            assert_eq!((hash, len), (ContentHash::of(&data), n as u64));
            if n == 0 {
                assert!(list.is_empty());
            } else {
                assert_eq!(list, vec![ChunkRef { hash, size: n as u32 }]);
            }
        }
    }

    #[test]
    fn large_content_is_cut_within_bounds_whatever_the_pieces_pushed() {
        let data = random(5 * 1024 * 1024 + 12345, 2);
        let list = list_of(&data);
        assert!(list.len() > 20, "{} chunks", list.len());
        assert_eq!(list.iter().map(|c| u64::from(c.size)).sum::<u64>(), data.len() as u64);
        for c in &list[..list.len() - 1] {
            assert!((CDC_MIN..=CDC_MAX).contains(&(c.size as usize)), "{}", c.size);
        }
        // Pushing in odd pieces cuts the same chunks.
        let mut chunker = Chunker::new(data.len() as u64);
        let mut again = Vec::new();
        for piece in data.chunks(7777) {
            chunker.push(piece);
            while let Some(c) = chunker.next_chunk() {
                assert_eq!(ContentHash::of(&c.data), c.chunk.hash);
                again.push(c.chunk);
            }
        }
        chunker.finish();
        while let Some(c) = chunker.next_chunk() {
            again.push(c.chunk);
        }
        assert_eq!(again, list);
        assert_eq!(chunker.content(), (ContentHash::of(&data), data.len() as u64));
    }

    #[test]
    fn an_insert_changes_only_the_chunks_around_it() {
        let data = random(8 * 1024 * 1024, 3);
        let mut edited = data.clone();
        edited.insert(4 * 1024 * 1024 + 12345, 0x5a);
        let (base, new) = (list_of(&data), list_of(&edited));
        let runs = diff(&base, &new);
        let fresh = runs.iter().filter(|r| matches!(r, Run::New(_))).count();
        assert!(fresh <= 2, "{fresh} new chunks");
        assert!(runs.len() <= 4, "{runs:?}");
        assert_eq!(apply(&base, &runs).unwrap(), new);
    }

    #[test]
    fn runs_round_trip_through_bytes_and_the_wire() {
        let data = random(3 * 1024 * 1024, 4);
        let mut edited = data.clone();
        edited.extend_from_slice(&random(100_000, 5));
        let (base, new) = (list_of(&data), list_of(&edited));
        let runs = diff(&base, &new);
        assert_eq!(unpack_runs(&pack_runs(&runs)).unwrap(), runs);
        assert_eq!(unpack_list(&pack_list(&new)).unwrap(), new);
        let wire: Vec<Run> = runs.iter().map(|r| pb::ChunkRun::from(*r).try_into().unwrap()).collect();
        assert_eq!(wire, runs);
        assert!(unpack_runs(&[0, 1, 2]).is_none());
        assert!(unpack_list(&[0; 35]).is_none());
    }

    #[test]
    fn runs_outside_their_base_are_refused() {
        let base = list_of(&random(2 * 1024 * 1024, 6));
        let past = [Run::Base { first: base.len() as u32 - 1, count: 2 }];
        assert!(matches!(apply(&base, &past), Err(RunsError::OutOfBase { .. })));
        let none = [Run::Base { first: 0, count: 0 }];
        assert!(matches!(apply(&base, &none), Err(RunsError::OutOfBase { .. })));
        let empty = [Run::New(ChunkRef { hash: ContentHash::empty(), size: 0 })];
        assert_eq!(apply(&base, &empty), Err(RunsError::BadChunkSize(0)));
    }
}
