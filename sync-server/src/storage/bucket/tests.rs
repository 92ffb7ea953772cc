//! The bucket content store against a real s3s-fs and a real PostgreSQL.

use std::{
    sync::{OnceLock, atomic::AtomicUsize},
    time::Duration,
};

use super::*;
use crate::testing::{postgres::Postgres, s3::S3};
use syncstore::chunks::ChunkRef;

/// The s3s-fs of this test process, for tests that need no server of
/// their own (the watcher stops it when the process ends).
fn server() -> &'static S3 {
    static SERVER: OnceLock<S3> = OnceLock::new();
    SERVER.get_or_init(S3::start)
}

/// A store over a fresh bucket of this process's s3s-fs, with its inline
/// content in `pool`'s database (which has the `contents` table).
pub(crate) async fn open_fresh_bucket(pool: Pool) -> BucketContent {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let s3 = server();
    let url = s3.create_bucket(&format!("bucket-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let (key, secret) = s3.credentials();
    let builder = AmazonS3Builder::new().with_access_key_id(key).with_secret_access_key(secret);
    BucketContent::open_with(builder, &url, pool).await.unwrap()
}

/// The bucket every test uses.
const BUCKET: &str = "content";

/// A PostgreSQL cluster and an s3s-fs of one test, with the `contents`
/// table and a bucket.
struct Fixture {
    pg: Postgres,
    s3: S3,
    pool: Pool,
}

impl Fixture {
    async fn new() -> Fixture {
        let pg = Postgres::start();
        let url = pg.create_database("syncstore");
        let pool = deadpool_postgres::Config { url: Some(url), ..Default::default() }
            .create_pool(Some(deadpool_postgres::Runtime::Tokio1), tokio_postgres::NoTls)
            .unwrap();
        pool.get().await.unwrap().batch_execute(SCHEMA).await.unwrap();
        pool.get().await.unwrap().batch_execute(PACKS_SCHEMA).await.unwrap();
        let s3 = S3::start();
        s3.create_bucket(BUCKET);
        Fixture { pg, s3, pool }
    }

    /// A store over the fixture's bucket and database (another process's,
    /// when opened twice).
    async fn open(&self) -> BucketContent {
        let (key, secret) = self.s3.credentials();
        let builder = AmazonS3Builder::new().with_access_key_id(key).with_secret_access_key(secret);
        BucketContent::open_with(builder, &self.s3.url(BUCKET), self.pool.clone()).await.unwrap()
    }

    /// The file s3s-fs keeps content `hash`'s object in (stored whole, as
    /// earlier releases did).
    fn object_file(&self, hash: &ContentHash) -> std::path::PathBuf {
        self.s3.object_file(BUCKET, object(hash).as_ref())
    }

    /// The file s3s-fs keeps the pack of content `hash` in, and where in
    /// it the content starts.
    async fn packed_at(&self, hash: &ContentHash) -> (std::path::PathBuf, usize) {
        let row = self
            .pool
            .get()
            .await
            .unwrap()
            .query_one(
                "SELECT pack, pack_offset FROM contents WHERE hash = $1",
                &[&hash.as_bytes().as_slice()],
            )
            .await
            .unwrap();
        let (pack, offset): (String, i64) = (row.get(0), row.get(1));
        (self.s3.object_file(BUCKET, pack::pack_object(&pack).as_ref()), usize::try_from(offset).unwrap())
    }

    /// Stores `data` as earlier releases did: one object, and a row that
    /// points into no pack.
    async fn store_whole(&self, store: &BucketContent, data: &[u8]) -> ContentHash {
        let hash = ContentHash::of(data);
        store.inner.bucket.put(&object(&hash), data.to_vec().into()).await.unwrap();
        self.pool
            .get()
            .await
            .unwrap()
            .execute(
                "INSERT INTO contents (hash, size, data, stored, touched) VALUES ($1, $2, NULL, true, now())",
                &[&hash.as_bytes().as_slice(), &(data.len() as i64)],
            )
            .await
            .unwrap();
        hash
    }

    /// Every pack in the bucket.
    fn packs(&self) -> Vec<std::path::PathBuf> {
        walk(&self.s3.object_file(BUCKET, "packs"))
    }

    fn damaged_file(&self, hash: &ContentHash) -> std::path::PathBuf {
        self.s3.object_file(BUCKET, damaged_object(hash).as_ref())
    }

    async fn sql(&self, sql: &str, hash: &ContentHash) -> u64 {
        self.pool.get().await.unwrap().execute(sql, &[&hash.as_bytes().as_slice()]).await.unwrap()
    }
}

/// `n` bytes that look random, different for each `seed`.
fn noise(n: usize, seed: &str) -> Vec<u8> {
    let mut data = vec![0; n];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut data);
    data
}

/// Uploads `data` in pieces, places it and makes it durable.
async fn put(store: &BucketContent, data: &[u8]) -> ContentHash {
    let hash = ContentHash::of(data);
    let mut upload = store.upload().await.unwrap();
    for piece in data.chunks(7000) {
        upload.write(piece.to_vec()).await.unwrap();
    }
    let staged = upload.complete(hash, data.len() as u64).await.unwrap();
    if staged.place().await.unwrap() == Durability::Pending {
        store.ensure_durable(&[hash]).await.unwrap();
    }
    hash
}

/// Reads content back in pieces of at most `max` bytes: what was handed
/// out, and how the read ended.
async fn read(store: &BucketContent, hash: &ContentHash, size: u64, max: usize) -> (Vec<u8>, Result<()>) {
    let mut reader = match store.get(hash, size).await {
        Ok(Some(reader)) => reader,
        Ok(None) => return (Vec::new(), Err(Error::NotFound("not stored".into()))),
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut out = Vec::new();
    loop {
        match reader.next_chunk(max).await {
            Ok(Some(piece)) => {
                assert!(piece.len() <= max, "a piece of {} bytes", piece.len());
                out.extend_from_slice(&piece);
            }
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// Flips one byte of a file in place.
fn flip(file: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test]
async fn small_content_is_inline_and_larger_content_packed_all_read_back_whole() {
    let f = Fixture::new().await;
    let store = f.open().await;
    let small = noise(INLINE_MAX as usize, "small");
    let large = noise(INLINE_MAX as usize + 1, "large");
    let chunk = noise(300 * 1024, "chunk");
    let s = put(&store, &small).await;
    let c = ContentHash::of(&chunk);
    let l = ContentHash::of(&large);
    // Appended to the open pack: pending, and not stored until it is made
    // durable; then both are in the same pack, one after the other.
    assert_eq!(store.put_whole(l, large.clone()).await.unwrap(), Some(Durability::Pending));
    assert_eq!(store.put_whole(c, chunk.clone()).await.unwrap(), Some(Durability::Pending));
    assert_eq!(store.head(&c).await.unwrap(), None, "stored before its pack was written");
    assert!(f.packs().is_empty());
    store.ensure_durable(&[c]).await.unwrap();
    assert_eq!(f.packs().len(), 1, "one pack for both");
    let ((pack, at_l), (pack_c, at_c)) = (f.packed_at(&l).await, f.packed_at(&c).await);
    assert_eq!(pack, pack_c);
    assert_eq!((at_l, at_c), (0, large.len()));
    assert_eq!(std::fs::read(&pack).unwrap(), [large.as_slice(), chunk.as_slice()].concat());
    assert!(!f.object_file(&s).exists() && !f.object_file(&l).exists(), "no object per content");
    for (hash, data) in [(s, &small), (l, &large), (c, &chunk)] {
        let (got, end) = read(&store, &hash, data.len() as u64, 4096).await;
        end.unwrap();
        assert_eq!(&got, data);
        assert_eq!(store.head(&hash).await.unwrap(), Some(data.len() as u64));
        assert_eq!(store.verify(&hash, data.len() as u64).await.unwrap(), Verdict::Good);
        assert_eq!(store.verified_size(&hash).await.unwrap(), Some(data.len() as u64));
        assert_eq!(store.read_whole(&hash, data.len() as u64).await.unwrap().as_ref(), Some(data));
    }
    let mut listed = store.list().await.unwrap();
    listed.sort();
    let mut want = vec![s, l, c];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(store.usage().await.unwrap(), (3, (small.len() + large.len() + chunk.len()) as u64));

    // Stored good already: nothing is written again.
    assert_eq!(store.put_whole(c, chunk.clone()).await.unwrap(), None);
    assert_eq!(store.put_whole(s, small.clone()).await.unwrap(), None);
    // Not stored: nothing to read.
    let absent = ContentHash::of(b"absent");
    assert!(store.get(&absent, 6).await.unwrap().is_none());
    assert_eq!(store.head(&absent).await.unwrap(), None);
    assert_eq!(store.verify(&absent, 6).await.unwrap(), Verdict::Missing);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn damaged_packed_content_is_never_read_is_set_aside_and_healed_by_a_good_copy() {
    let f = Fixture::new().await;
    let store = f.open().await;
    let data = noise(200 * 1024, "damaged");
    let neighbour = noise(100 * 1024, "neighbour");
    let hash = ContentHash::of(&data);
    let _ = store.put_whole(hash, data.clone()).await.unwrap();
    let n = put(&store, &neighbour).await;
    let (pack, at) = f.packed_at(&hash).await;
    flip(&pack, at + data.len() - 5);

    let (got, end) = read(&store, &hash, data.len() as u64, 64 * 1024).await;
    assert!(matches!(end, Err(Error::DataLoss(_))), "{end:?}");
    assert!(got.is_empty(), "nothing of damaged content was handed out");
    assert!(store.is_damaged(&hash).await.unwrap());
    assert_eq!(
        read(&store, &n, neighbour.len() as u64, 64 * 1024).await.0,
        neighbour,
        "its neighbour is fine"
    );
    assert_eq!(store.damage_counts(), (1, 1));
    assert_eq!(f.open().await.damage_counts(), (1, 0), "another process counts it at open");
    assert_eq!(store.take_found(), vec![(hash, data.len() as u64)]);
    // From now on DATA_LOSS at once; a whole-read finds nothing stored.
    assert!(matches!(store.get(&hash, data.len() as u64).await, Err(Error::DataLoss(_))));
    assert_eq!(store.verify(&hash, data.len() as u64).await.unwrap(), Verdict::Missing);
    assert_eq!(store.head(&hash).await.unwrap(), None);
    assert_eq!(store.verified_size(&hash).await.unwrap(), None);
    assert!(store.list().await.unwrap().contains(&hash), "a sweep still sees it");

    // A good copy heals it, in another pack.
    put(&store, &data).await;
    assert!(!store.is_damaged(&hash).await.unwrap());
    assert_eq!(store.damage_counts(), (0, 1));
    assert_eq!(read(&store, &hash, data.len() as u64, 64 * 1024).await.0, data);
    assert_ne!(f.packed_at(&hash).await.0, pack);

    // Damage nobody has read yet is found by a verify, and an upload of
    // the same content replaces it.
    let (pack, at) = f.packed_at(&hash).await;
    flip(&pack, at + 3);
    assert_eq!(store.verify(&hash, data.len() as u64).await.unwrap(), Verdict::Damaged);
    put(&store, &data).await;
    let (pack, at) = f.packed_at(&hash).await;
    flip(&pack, at + 3);
    assert_eq!(store.put_whole(hash, data.clone()).await.unwrap(), Some(Durability::Pending));
    store.ensure_durable(&[hash]).await.unwrap();
    assert_eq!(store.verify(&hash, data.len() as u64).await.unwrap(), Verdict::Good);

    // A pack that ends early damages what it no longer holds.
    let (pack, at) = f.packed_at(&hash).await;
    std::fs::write(&pack, &std::fs::read(&pack).unwrap()[..at + data.len() - 1]).unwrap();
    assert!(matches!(store.get(&hash, data.len() as u64).await, Err(Error::DataLoss(_))));

    // So is an inline copy whose bytes changed in the database.
    let small = put(&store, b"inline and then damaged").await;
    f.sql("UPDATE contents SET data = 'x' || data WHERE hash = $1", &small).await;
    assert!(matches!(store.get(&small, 23).await, Err(Error::DataLoss(_))));
    assert!(store.is_damaged(&small).await.unwrap());
    put(&store, b"inline and then damaged").await;
    assert_eq!(read(&store, &small, 23, 10).await.0, b"inline and then damaged");
}

#[tokio::test]
async fn removal_waits_for_the_grace_after_the_last_placing() {
    let f = Fixture::new().await;
    let store = f.open().await;
    let (large, small) = (noise(100 * 1024, "grace"), b"small".to_vec());
    let hashes = [put(&store, &large).await, put(&store, &small).await];
    let age = "UPDATE contents SET touched = now() - interval '61 minutes' WHERE hash = $1";
    for hash in &hashes {
        // Placed a moment ago (by this or any process): kept.
        store.delete(hash).await.unwrap();
        assert!(store.head(hash).await.unwrap().is_some(), "content placed within the grace was removed");
        // Older than the grace: removed, object and row.
        f.sql(age, hash).await;
        // Another process places it again before the removal runs.
        let other = f.open().await;
        put(&other, if *hash == hashes[0] { &large } else { &small }).await;
        store.delete(hash).await.unwrap();
        assert!(store.head(hash).await.unwrap().is_some(), "content placed again was removed");
        f.sql(age, hash).await;
        store.delete(hash).await.unwrap();
        assert_eq!(store.head(hash).await.unwrap(), None);
        assert!(!store.list().await.unwrap().contains(hash));
    }
    // Its packs go once nothing points into them and they are older than
    // the grace; a young one stays.
    let (young, _) = f.packed_at(&put(&store, &noise(50 * 1024, "young")).await).await;
    assert_eq!(f.packs().len(), 2, "the large content's and the young one's");
    assert_eq!(store.collect_packs().await.unwrap(), 0, "packs within their grace were removed");
    f.pool
        .get()
        .await
        .unwrap()
        .execute("UPDATE packs SET created = now() - interval '61 minutes'", &[])
        .await
        .unwrap();
    assert_eq!(store.collect_packs().await.unwrap(), 1);
    assert_eq!(f.packs(), vec![young], "a pack something points into was removed");
    // Absent content is fine.
    store.delete(&ContentHash::of(b"never")).await.unwrap();

    // A placing waits for a removal that holds the row, and then puts the
    // content back.
    let hash = put(&store, &large).await;
    f.sql(age, &hash).await;
    let mut holder = f.pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM contents WHERE hash = $1 FOR UPDATE", &[&hash.as_bytes().as_slice()])
        .await
        .unwrap();
    let placing = tokio::spawn({
        let (store, large) = (store.clone(), large.clone());
        async move { put(&store, &large).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!placing.is_finished(), "the placing did not wait for the row lock");
    // The removal (here by hand, as delete does under the lock) ...
    tx.execute("DELETE FROM contents WHERE hash = $1", &[&hash.as_bytes().as_slice()]).await.unwrap();
    tx.commit().await.unwrap();
    // ... is followed by the placing's own copy.
    tokio::time::timeout(Duration::from_secs(20), placing).await.unwrap().unwrap();
    assert_eq!(read(&store, &hash, large.len() as u64, 64 * 1024).await.0, large);
}

#[tokio::test]
async fn content_stored_whole_by_an_earlier_release_is_read_checked_and_removed() {
    let f = Fixture::new().await;
    let store = f.open().await.with_grace(Duration::ZERO);
    let data = noise(100 * 1024, "stored whole");
    let hash = f.store_whole(&store, &data).await;
    assert_eq!(read(&store, &hash, data.len() as u64, 64 * 1024).await.0, data);
    assert_eq!(store.put_whole(hash, data.clone()).await.unwrap(), None, "a good copy is kept");

    flip(&f.object_file(&hash), 7);
    assert!(matches!(read(&store, &hash, data.len() as u64, 64 * 1024).await.1, Err(Error::DataLoss(_))));
    assert!(!f.object_file(&hash).exists() && f.damaged_file(&hash).exists(), "the object was moved aside");
    // Healed into a pack; the damaged copy goes.
    put(&store, &data).await;
    assert!(!f.damaged_file(&hash).exists());
    assert_eq!(read(&store, &hash, data.len() as u64, 64 * 1024).await.0, data);

    // Removed: the row, then (with no grace) its pack.
    let other = noise(100 * 1024, "whole, then removed");
    let old = f.store_whole(&store, &other).await;
    store.delete(&old).await.unwrap();
    assert!(!f.object_file(&old).exists(), "the object went with its row");
    store.delete(&hash).await.unwrap();
    store.collect_garbage().await.unwrap();
    assert!(f.packs().is_empty(), "{:?}", f.packs());
}

#[tokio::test]
async fn a_burst_of_chunks_is_a_few_packs_each_written_once_full() {
    let f = Fixture::new().await;
    let store = f.open().await;
    // 40 MiB of 256 KiB chunks: two full packs are written as they fill,
    // the rest when it is made durable.
    let chunks: Vec<Vec<u8>> = (0..160).map(|i| noise(256 * 1024, &format!("burst {i}"))).collect();
    let hashes: Vec<ContentHash> = chunks.iter().map(|c| ContentHash::of(c)).collect();
    for (hash, chunk) in hashes.iter().zip(&chunks) {
        assert_eq!(store.put_whole(*hash, chunk.clone()).await.unwrap(), Some(Durability::Pending));
    }
    store.ensure_durable(&hashes).await.unwrap();
    assert_eq!(f.packs().len(), 3, "{} chunks", chunks.len());
    for (hash, chunk) in hashes.iter().zip(&chunks).step_by(17) {
        assert_eq!(store.read_whole(hash, chunk.len() as u64).await.unwrap().as_ref(), Some(chunk));
    }
    // Placed again while on its way or stored: nothing more is written.
    assert_eq!(store.put_whole(hashes[0], chunks[0].clone()).await.unwrap(), None);
    assert_eq!(f.packs().len(), 3);
    assert_eq!(store.usage().await.unwrap(), (160, 160 * 256 * 1024));

    // Read back as runs of neighbours (across a pack's end too), with a
    // chunk that is not stored in the middle.
    let refs = |range: std::ops::Range<usize>| -> Vec<ChunkRef> {
        range.map(|i| ChunkRef { hash: hashes[i], size: chunks[i].len() as u32 }).collect()
    };
    let mut asked = refs(50..80);
    asked.insert(7, ChunkRef { hash: ContentHash::of(b"absent"), size: 6 });
    let got = store.read_chunks(&asked).await.unwrap();
    assert_eq!(got.len(), asked.len());
    assert_eq!(got[7], None);
    for (c, got) in asked.iter().zip(&got).filter(|(c, _)| c.size > 6) {
        assert_eq!(got.as_deref().map(ContentHash::of), Some(c.hash));
    }
    // A damaged chunk inside a run is never handed out: it is set aside
    // and the read fails; its neighbours still read.
    let (pack, at) = f.packed_at(&hashes[60]).await;
    flip(&pack, at + 10);
    let read = store.read_chunks(&refs(55..65)).await;
    assert!(matches!(read, Err(Error::DataLoss(_))), "{read:?}");
    assert!(store.is_damaged(&hashes[60]).await.unwrap());
    let got = store.read_chunks(&refs(61..70)).await.unwrap();
    assert!(got.iter().zip(61..70).all(|(g, i)| g.as_ref() == Some(&chunks[i])));
}

#[tokio::test]
async fn chunks_close_together_in_a_pack_are_read_with_one_get_in_any_order() {
    let f = Fixture::new().await;
    let store = f.open().await;
    // A content's chunks appended as their placings finished: each pair
    // swapped, a small content of another upload in between, then a large
    // one (more than a read drops) before the last four.
    let chunks: Vec<Vec<u8>> = (0..32).map(|i| noise(20 * 1024 + i * 1000, &format!("order {i}"))).collect();
    let hashes: Vec<ContentHash> = chunks.iter().map(|c| ContentHash::of(c)).collect();
    for pair in (0..32).collect::<Vec<usize>>().chunks(2) {
        for &i in pair.iter().rev() {
            assert_eq!(
                store.put_whole(hashes[i], chunks[i].clone()).await.unwrap(),
                Some(Durability::Pending)
            );
        }
        let between = match pair[0] {
            10 => noise(30 * 1024, "small between"),
            26 => noise(200 * 1024, "large between"),
            _ => continue,
        };
        store.put_whole(ContentHash::of(&between), between).await.unwrap();
    }
    store.ensure_durable(&hashes).await.unwrap();
    assert_eq!(f.packs().len(), 1);
    let refs: Vec<ChunkRef> =
        hashes.iter().zip(&chunks).map(|(hash, c)| ChunkRef { hash: *hash, size: c.len() as u32 }).collect();

    let gets = || store.inner.pack_reads.load(Ordering::Relaxed);
    let before = gets();
    let got = store.read_chunks(&refs).await.unwrap();
    assert_eq!(got.len(), chunks.len());
    assert!(got.iter().zip(&chunks).all(|(g, c)| g.as_ref() == Some(c)), "read back other bytes");
    assert_eq!(gets() - before, 2, "one GET for the chunks before the large content, one after it");

    // Asked for twice, and out of order: each copy is handed out.
    let mut asked = vec![refs[5], refs[3], refs[5], refs[4]];
    asked.push(refs[31]);
    let before = gets();
    let got = store.read_chunks(&asked).await.unwrap();
    let want = [&chunks[5], &chunks[3], &chunks[5], &chunks[4], &chunks[31]];
    assert!(got.iter().zip(want).all(|(g, c)| g.as_ref() == Some(c)), "read back other bytes");
    assert_eq!(gets() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_placing_the_same_content_at_once_all_succeed_and_it_reads_back() {
    let f = Fixture::new().await;
    let stores = [f.open().await, f.open().await, f.open().await];
    for data in [noise(300 * 1024, "together"), noise(1000, "small together")] {
        let placings: Vec<_> = stores
            .iter()
            .map(|store| {
                let (store, data) = (store.clone(), data.clone());
                tokio::spawn(async move { put(&store, &data).await })
            })
            .collect();
        for placing in placings {
            placing.await.unwrap();
        }
        let hash = ContentHash::of(&data);
        for store in &stores {
            assert_eq!(read(store, &hash, data.len() as u64, 64 * 1024).await.0, data);
        }
    }
    assert_eq!(stores[0].list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_upload_dropped_or_refused_leaves_nothing() {
    let f = Fixture::new().await;
    let store = f.open().await;
    let data = noise(100 * 1024, "dropped");
    let mut upload = store.upload().await.unwrap();
    upload.write(data.clone()).await.unwrap();
    drop(upload);
    let mut upload = store.upload().await.unwrap();
    upload.write(data.clone()).await.unwrap();
    let refused = upload.complete(ContentHash::of(b"other"), data.len() as u64).await;
    assert!(matches!(refused, Err(Error::ContentMismatch(_))), "{refused:?}");
    let mut upload = store.upload().await.unwrap();
    upload.write(data.clone()).await.unwrap();
    assert!(matches!(upload.complete(ContentHash::of(&data), 5).await, Err(Error::ContentMismatch(_))));
    // Staged and dropped before it was placed.
    let mut upload = store.upload().await.unwrap();
    upload.write(data.clone()).await.unwrap();
    drop(upload.complete(ContentHash::of(&data), data.len() as u64).await.unwrap());
    // More than one chunk's worth is refused as it comes.
    let mut upload = store.upload().await.unwrap();
    upload.write(vec![1; UPLOAD_MAX as usize]).await.unwrap();
    assert!(matches!(upload.write(vec![1]).await, Err(Error::ContentMismatch(_))));

    assert!(store.list().await.unwrap().is_empty());
    let bucket = f.s3.object_file(BUCKET, "");
    let objects: Vec<_> = walk(&bucket);
    assert!(objects.is_empty(), "objects left in the bucket: {objects:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[tokio::test]
async fn an_unreachable_bucket_or_database_is_unavailable_and_never_damage() {
    let mut f = Fixture::new().await;
    let store = f.open().await;
    let data = noise(100 * 1024, "reach");
    let hash = put(&store, &data).await;
    store.ping().await.unwrap();

    f.s3.stop();
    let ping = store.ping().await;
    assert!(
        matches!(&ping, Err(Error::Unavailable(m)) if m.contains(&format!("the bucket {BUCKET} cannot be reached"))),
        "{ping:?}"
    );
    let got = store.get(&hash, data.len() as u64).await;
    assert!(matches!(got, Err(Error::Unavailable(_))), "{got:?}");
    assert!(matches!(store.verify(&hash, data.len() as u64).await, Err(Error::Unavailable(_))));
    let other = noise(50 * 1024, "while away");
    let o = ContentHash::of(&other);
    assert_eq!(store.put_whole(o, other.clone()).await.unwrap(), Some(Durability::Pending));
    let put_away = store.ensure_durable(&[o]).await;
    assert!(matches!(put_away, Err(Error::Unavailable(_))), "{put_away:?}");
    // Whoever else counted on it hears so too, and placing it again tries
    // anew.
    assert!(matches!(store.ensure_durable(&[o]).await, Err(Error::Unavailable(_))));
    assert!(!store.is_damaged(&hash).await.unwrap(), "an unreachable bucket is not damage");

    // The same store works again once the bucket is back.
    f.s3.start_again();
    store.ping().await.unwrap();
    assert_eq!(read(&store, &hash, data.len() as u64, 64 * 1024).await.0, data);
    assert_eq!(store.head(&o).await.unwrap(), None, "a failed PUT is not stored");
    assert_eq!(store.put_whole(o, other.clone()).await.unwrap(), Some(Durability::Pending));
    store.ensure_durable(&[o]).await.unwrap();
    assert_eq!(read(&store, &o, other.len() as u64, 64 * 1024).await.0, other);

    f.pg.stop();
    let head = store.head(&hash).await;
    assert!(matches!(&head, Err(Error::Unavailable(m)) if m.contains("database")), "{head:?}");
    f.pg.start_again();
    assert_eq!(store.head(&hash).await.unwrap(), Some(data.len() as u64));
}

/// Waits until a statement of this database waits for a lock (a batch of
/// rows behind the test's `LOCK TABLE`).
async fn until_a_write_waits(pool: &Pool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let db = pool.get().await.unwrap();
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no batch of rows started its write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Uploads and places small content, as an upload does: pending, into
/// the open batch of rows, with no statement of its own.
async fn place_small(store: &BucketContent, data: &[u8]) -> ContentHash {
    let hash = ContentHash::of(data);
    let mut upload = store.upload().await.unwrap();
    upload.write(data.to_vec()).await.unwrap();
    let staged = upload.complete(hash, data.len() as u64).await.unwrap();
    assert_eq!(staged.place().await.unwrap(), Durability::Pending);
    hash
}

#[tokio::test]
async fn small_contents_placed_while_a_batch_is_written_gather_into_the_next_one() {
    let f = Fixture::new().await;
    let store = f.open().await;
    // Inserts into `contents` wait while another transaction holds this
    // lock: the first batch's write waits, and what is placed meanwhile
    // gathers.
    let mut blocker = f.pool.get().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE contents IN SHARE ROW EXCLUSIVE MODE").await.unwrap();
    let first = place_small(&store, b"the first small content").await;
    until_a_write_waits(&f.pool).await;
    let mut all = vec![first];
    for i in 0..50 {
        all.push(place_small(&store, format!("small content {i}").as_bytes()).await);
    }
    let count = |sql: &'static str| {
        let pool = f.pool.clone();
        async move { pool.get().await.unwrap().query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM contents").await, 0, "pending content is in no row yet");
    let durable = tokio::spawn({
        let (store, all) = (store.clone(), all.clone());
        async move { store.ensure_durable(&all).await }
    });
    lock.commit().await.unwrap();
    durable.await.unwrap().unwrap();
    // Rows written by one transaction share its id (xmin): the first
    // content's batch, then one for the fifty gathered meanwhile.
    assert_eq!(count("SELECT count(*) FROM contents WHERE stored AND data IS NOT NULL").await, 51);
    assert_eq!(count("SELECT count(DISTINCT xmin::text) FROM contents").await, 2);
    for (i, hash) in all.iter().enumerate().skip(1).step_by(7) {
        let data = format!("small content {}", i - 1);
        assert_eq!(read(&store, hash, data.len() as u64, 4096).await.0, data.as_bytes());
    }
}

#[tokio::test]
async fn a_batch_of_rows_that_failed_fails_everyone_in_it_and_placing_again_works() {
    let f = Fixture::new().await;
    let store = f.open().await;
    let db = f.pool.get().await.unwrap();
    // A constraint the database checks at the batch's write: content of
    // 13 bytes cannot be written, and with it the rest of its batch.
    db.batch_execute("ALTER TABLE contents ADD CONSTRAINT refuse_13 CHECK (size <> 13)").await.unwrap();
    let mut blocker = f.pool.get().await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE contents IN SHARE ROW EXCLUSIVE MODE").await.unwrap();
    let first = place_small(&store, b"goes alone").await;
    until_a_write_waits(&f.pool).await;
    let refused = place_small(&store, b"thirteen byte").await;
    let beside = place_small(&store, b"placed beside it").await;
    lock.commit().await.unwrap();
    store.ensure_durable(&[first]).await.unwrap();
    for hash in [refused, beside] {
        assert!(store.ensure_durable(&[hash]).await.is_err(), "its batch was not written");
        assert_eq!(store.head(&hash).await.unwrap(), None);
    }
    // Placed again, each goes into a new batch.
    db.batch_execute("ALTER TABLE contents DROP CONSTRAINT refuse_13").await.unwrap();
    for (hash, data) in [(refused, &b"thirteen byte"[..]), (beside, &b"placed beside it"[..])] {
        assert_eq!(place_small(&store, data).await, hash);
        store.ensure_durable(&[hash]).await.unwrap();
        assert_eq!(read(&store, &hash, data.len() as u64, 4096).await.0, data);
    }
}

#[test]
fn content_urls_name_a_bucket_an_endpoint_and_a_region() {
    assert_eq!(
        parse_url("s3://b?endpoint=http://127.0.0.1:9000&region=garage").unwrap(),
        Target {
            bucket: "b".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("garage".into())
        }
    );
    assert_eq!(parse_url("s3://b").unwrap(), Target { bucket: "b".into(), endpoint: None, region: None });
    for bad in ["b", "s3://", "s3://b/key", "s3://b?x=1", "s3://b?region", "s3://b?region=a&region=b"] {
        assert!(matches!(parse_url(bad), Err(Error::Config(_))), "{bad}");
    }
}
