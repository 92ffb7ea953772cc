//! Moving whole files: streaming a local file up (`Upload`) and a server
//! file down (`Download`) into a temp file that is verified, fsynced and
//! renamed into place. Neither side ever holds a whole file in memory. A
//! download leaves blocks of zeros as holes, so a sparse file stays sparse.

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use syncstore::{
    ContentHash, Entry, RelPath,
    limits::{MAX_CHUNK, MAX_PATH_BYTES},
};
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    fsmeta::{Kind, Meta},
    fsroot::{Dir, Root, TempFile},
    plan::Local,
    remote::{Body, ByteStream, Remote, Upload},
};

/// Chunks read ahead of the network.
const PIPELINE: usize = 4;
/// A downloaded block of this many bytes (aligned to it in the file) that
/// is all zeros is left as a hole rather than written, so a sparse file
/// stays sparse: a file-system block, the smallest unit a hole saves.
const HOLE_BLOCK: usize = 4096;

tokio::task_local! {
    /// The content bytes the transfer running in this task has moved so
    /// far (an upload: handed to the wire; a download: received), for a
    /// caller that shows it (the large lane, for the live status). Set with
    /// `PROGRESS.scope`; a transfer outside a scope counts nothing.
    pub static PROGRESS: Arc<AtomicU64>;
}

/// Adds `n` bytes to `progress`, if the transfer is watched.
fn count(progress: Option<&Arc<AtomicU64>>, n: usize) {
    if let Some(p) = progress {
        p.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What an upload is based on.
#[derive(Debug, Clone, Copy)]
pub struct UploadBase {
    /// The version the change is based on (0 for a new file).
    pub version: u64,
    /// The token of this client's lock on the path (0 for none).
    pub lock_token: u64,
    /// First ask the server to reuse content it already holds under the
    /// file's hash (a rename or copy), without sending it.
    pub reuse: bool,
}

/// Uploads `path` as `expected` (what it hashed to), based on `base`.
/// Returns the new entry, and whether the content was sent (not when the
/// server reused content it held).
///
/// The end marker goes out only once the whole file was read and found as
/// `expected`; a file that changed meanwhile cancels the call, so the
/// server stores nothing. Once the server answered OK, its entry is
/// returned whatever the reader found afterwards: the server checked the
/// content against the header, so what it stored is `expected`.
pub async fn upload(
    remote: &dyn Remote,
    root: &Root,
    path: &RelPath,
    expected: Local,
    base: UploadBase,
) -> Result<(Entry, bool)> {
    let UploadBase { version: base_version, lock_token, reuse } = base;
    let upload = Upload { path: path.clone(), content: expected, base_version, lock_token };
    if reuse
        && expected.size > 0
        && let Some(entry) = remote.upload_reusing(&upload).await?
    {
        return Ok((entry, false));
    }

    let (tx, rx) = mpsc::channel(PIPELINE);
    let dir = root.parent(path)?;
    let name = path.file_name().to_owned();
    let progress = PROGRESS.try_with(Arc::clone).ok();
    let mut reader = tokio::task::spawn_blocking(move || send_file(&dir, &name, expected, tx, progress));
    let mut call = remote.upload(&upload, rx);
    let read = tokio::select! {
        read = &mut reader => read,
        // An answer before the reader is done: a refusal (nothing is
        // committed before the end marker, which the reader sends last),
        // or an OK that raced the reader's return.
        response = &mut call => return settle(response, reader.await),
    };
    match read {
        Ok(Ok(())) => settle(call.await, read),
        failed => {
            // Cancel the call: the server sees a broken stream and stores
            // nothing. (The body never ends normally without the end
            // marker, so the cut cannot pass for a complete file.)
            drop(call);
            failed??;
            unreachable!("the reader failed")
        }
    }
}

/// An upload's outcome from the server's answer and the reader's verdict.
/// The server's OK stands (the content it stored is what the header
/// announced); a refusal is explained by the reader's error first, since a
/// file that changed while it was sent was cut short on purpose.
fn settle(
    response: Result<Entry>,
    read: std::result::Result<Result<()>, tokio::task::JoinError>,
) -> Result<(Entry, bool)> {
    match response {
        Ok(entry) => {
            if let Ok(Err(e)) | Err(e) = read.map_err(Error::from) {
                tracing::debug!(error = %e, "the reader stopped after the server stored the upload");
            }
            Ok((entry, true))
        }
        Err(refused) => {
            read??;
            Err(refused)
        }
    }
}

/// Reads the file in chunks into `tx`, then sends the end marker only if
/// the whole file hashed to what the header announced. If it did not, the
/// error says so and no end marker goes: the caller cancels the call and
/// the server discards the upload.
/// The file is opened through its folder's handle, so a link above it or
/// at it is not followed.
fn send_file(
    dir: &Dir,
    name: &str,
    expected: Local,
    tx: mpsc::Sender<Body>,
    progress: Option<Arc<AtomicU64>>,
) -> Result<()> {
    if expected.folder {
        // A folder has no content.
        let _ = tx.blocking_send(Body::End);
        return Ok(());
    }
    if expected.symlink {
        // A link is never followed: its target is the content.
        let target = dir.read_link(name)?;
        if target.len() as u64 != expected.size || ContentHash::of(&target) != expected.hash {
            return Err(Error::ChangedWhileReading);
        }
        if tx.blocking_send(Body::Chunk(target)).is_ok() {
            let _ = tx.blocking_send(Body::End);
        }
        return Ok(());
    }
    let mut file = dir.open_read(name)?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let chunk = read_chunk(&mut file)?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        total += chunk.len() as u64;
        if total > expected.size {
            return Err(Error::ChangedWhileReading);
        }
        let n = chunk.len();
        if tx.blocking_send(Body::Chunk(chunk)).is_err() {
            return Ok(()); // The call failed; its status says why.
        }
        count(progress.as_ref(), n);
    }
    if total != expected.size || ContentHash::from(hasher.finalize()) != expected.hash {
        return Err(Error::ChangedWhileReading);
    }
    let _ = tx.blocking_send(Body::End);
    Ok(())
}

/// Reads up to one full chunk (short only at the end of the file).
fn read_chunk(file: &mut fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(MAX_CHUNK);
    file.take(MAX_CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Downloads `entry` (that exact version) to its path in `root`, staged
/// in `tmp`, provided the local file still is `expected` (its size and
/// mtime, or missing) when the download is ready to be put into place.
/// Returns the new local file's metadata.
///
/// What the server sends is checked as it comes: a chunk larger than
/// [`MAX_CHUNK`] or more bytes than the entry's size end the download at
/// once; the temp file is then removed and nothing is put in place.
pub async fn download(
    remote: &dyn Remote,
    root: &Root,
    tmp: &Dir,
    entry: &Entry,
    expected: Option<Meta>,
) -> Result<Meta> {
    let content = entry.content.ok_or_else(|| Error::Protocol("download of a tombstone".into()))?;
    if root.through_symlink(&entry.path) {
        return Err(Error::Config(format!(
            "a folder above {} is a symbolic link here; not writing through it",
            entry.path
        )));
    }
    if content.symlink && content.size > MAX_PATH_BYTES as u64 {
        return Err(Error::Protocol(format!("{} is a link with a {}-byte target", entry.path, content.size)));
    }
    let mut stream = remote.download(entry).await?;

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PIPELINE);
    let staging = tmp.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<_> {
        let tmp = staging.create_temp("download-")?;
        let mut hasher = blake3::Hasher::new();
        let mut offset = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            write_sparse(tmp.file(), offset, &chunk)?;
            offset += chunk.len() as u64;
        }
        // Trailing zeros were skipped: the length says where the file ends.
        tmp.file().set_len(offset)?;
        Ok((tmp, ContentHash::from(hasher.finalize())))
    });
    let received = receive_chunks(&mut stream, &tx, &entry.path, content.size).await;
    drop(tx);
    // The writer is awaited even after a refusal, so that its temp file is
    // gone when this returns.
    let written = writer.await?;
    let size = received?;
    let (tmp, hash) = written?;
    if hash != content.hash || size != content.size {
        return Err(Error::Protocol(format!("the content of {} did not match its hash", entry.path)));
    }

    let (root, path) = (root.clone(), entry.path.clone());
    if content.symlink {
        return tokio::task::spawn_blocking(move || install_symlink(tmp, &root, &path, size, expected))
            .await?;
    }
    let mtime_ns = content.mtime_ns;
    let executable = content.executable;
    tokio::task::spawn_blocking(move || install(tmp, &root, &path, mtime_ns, executable, expected)).await?
}

/// Writes `data` at `offset` of the (new, empty) file `file`, skipping the
/// [`HOLE_BLOCK`]s that are all zeros: they stay holes, which read as zeros.
fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut pos = 0;
    // The start of the run of data blocks not yet written.
    let mut run = 0;
    while pos < data.len() {
        // Blocks are aligned to the file, not to the chunk.
        let into_block = ((offset + pos as u64) % HOLE_BLOCK as u64) as usize;
        let end = (pos + HOLE_BLOCK - into_block).min(data.len());
        if data[pos..end].iter().all(|&b| b == 0) {
            file.write_all_at(&data[run..pos], offset + run as u64)?;
            run = end;
        }
        pos = end;
    }
    file.write_all_at(&data[run..], offset + run as u64)
}

/// Passes a download's chunks to the writer; returns how many bytes came.
/// Refuses content beyond `declared` bytes.
async fn receive_chunks(
    stream: &mut ByteStream,
    tx: &mpsc::Sender<Vec<u8>>,
    path: &RelPath,
    declared: u64,
) -> Result<u64> {
    let progress = PROGRESS.try_with(Arc::clone).ok();
    let mut size = 0u64;
    while let Some(c) = stream.next().await {
        let c = c?;
        let n = c.len();
        size += n as u64;
        if size > declared {
            return Err(Error::Protocol(format!(
                "download of {path}: more than the {declared} bytes its entry declares"
            )));
        }
        if tx.send(c).await.is_err() {
            break; // The writer failed; its error is reported by the caller.
        }
        count(progress.as_ref(), n);
    }
    Ok(size)
}

/// Creates the symbolic link whose target is the `size` bytes in `tmp` (a
/// target received from the server) at `path`, under the same rules as
/// [`install`]. The link is never followed; a target no link can have
/// (empty, with a NUL, not UTF-8: [`syncstore::limits::check_link_target`],
/// the server's own check) is refused.
fn install_symlink(
    tmp: TempFile,
    root: &Root,
    path: &RelPath,
    size: u64,
    expected: Option<Meta>,
) -> Result<Meta> {
    use std::os::unix::fs::FileExt;
    let mut link = vec![0u8; size as usize];
    tmp.file().read_exact_at(&mut link, 0)?;
    if let Err(why) = syncstore::limits::check_link_target(&link) {
        return Err(Error::Protocol(format!("{path} is a link whose target {why}")));
    }
    let parent = root.create_parent(path)?;
    let name = path.file_name();
    let aside = move_aside_checked(&parent, name, &tmp, expected)?;
    place(&parent, name, aside, || parent.symlink(&link, name))?;
    match parent.kind(name)? {
        Kind::File(m) if m.symlink => Ok(m),
        _ => Err(Error::ChangedWhileReading),
    }
}

/// A file moved aside into the temp folder, under `name`.
#[derive(Debug)]
struct Aside<'a> {
    tmp: &'a Dir,
    name: String,
}

/// Creates the new file `name` in `parent` with `create`, which must never
/// replace anything (a link does not). On success what was moved `aside`
/// goes and the folder is made durable (fsynced through its handle); if
/// the name was taken meanwhile, the newcomer stays (what was moved aside
/// is the version the plan saw, which the server has); on another failure
/// what was moved aside comes back.
fn place(
    parent: &Dir,
    name: &str,
    aside: Option<Aside<'_>>,
    create: impl FnOnce() -> std::io::Result<()>,
) -> Result<()> {
    match create() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Some(aside) = aside {
                aside.tmp.unlink(&aside.name)?;
            }
            return Err(Error::ChangedWhileReading);
        }
        Err(e) => {
            if let Some(aside) = &aside {
                put_back(aside.tmp, &aside.name, parent, name)?;
            }
            return Err(e.into());
        }
    }
    if let Some(aside) = aside {
        aside.tmp.unlink(&aside.name)?;
    }
    parent.sync()?;
    Ok(())
}

/// Moves the file `name` in `parent` into the temp folder (beside the temp
/// file `tmp`) and checks it is still what the plan saw (`expected`;
/// `None`: nothing was there). A file that changed is put back and the
/// error says to plan again.
fn move_aside_checked<'a>(
    parent: &Dir,
    name: &str,
    tmp: &'a TempFile,
    expected: Option<Meta>,
) -> Result<Option<Aside<'a>>> {
    let Some(planned) = expected else { return Ok(None) };
    let aside = Aside { tmp: tmp.dir(), name: format!("{}.aside", tmp.name()) };
    match parent.rename(name, aside.tmp, &aside.name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::ChangedWhileReading),
        Err(e) => return Err(e.into()),
    }
    if !matches!(aside.tmp.kind(&aside.name)?, Kind::File(m) if m.same_as_moved(&planned)) {
        put_back(aside.tmp, &aside.name, parent, name)?;
        return Err(Error::ChangedWhileReading);
    }
    Ok(Some(aside))
}

/// Gives the temp file its mode and mtime, makes it durable, and puts it
/// at `path` if what is there is still what the caller planned on.
///
/// No check-then-rename window: the current file is first moved aside
/// (atomically) and checked there; the new file is then linked into place
/// only if nothing took the name meanwhile (a link never replaces). A file
/// found changed is put back; the caller plans again.
fn install(
    tmp: TempFile,
    root: &Root,
    path: &RelPath,
    mtime_ns: i64,
    executable: bool,
    expected: Option<Meta>,
) -> Result<Meta> {
    let file = tmp.file();
    let mode = if executable { 0o755 } else { 0o644 };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    let mtime = filetime::FileTime::from_unix_time(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(file, None, Some(mtime))?;
    file.sync_all()?;

    let parent = root.create_parent(path)?;
    let name = path.file_name();
    let aside = move_aside_checked(&parent, name, &tmp, expected)?;
    place(&parent, name, aside, || parent.link_from(tmp.dir(), tmp.name(), name))?;
    drop(tmp); // Removes the temp name; the file stays linked at `path`.
    match parent.kind(name)? {
        Kind::File(m) => Ok(m),
        _ => Err(Error::ChangedWhileReading),
    }
}

/// Returns a file moved aside (`aside` in `tmp`) to `name` in `parent`,
/// or, if something took that name meanwhile, next to it under a name that
/// says so: never lost.
pub(crate) fn put_back(tmp: &Dir, aside: &str, parent: &Dir, name: &str) -> Result<()> {
    match parent.link_from(tmp, aside, name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let keep = format!("{name} (kept {})", std::process::id());
            tracing::warn!(path = %keep.escape_debug(), "a file changed while it was being replaced; kept beside it");
            tmp.rename(aside, parent, &keep)?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    tmp.unlink(aside)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn blocks_of_zeros_become_holes_and_the_content_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = fs::File::create_new(&path).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[5000] = 1;
        data[(1 << 20) - 1] = 2;
        // Chunks that do not start on a block boundary, then trailing zeros.
        write_sparse(&file, 0, &data[..3000]).unwrap();
        write_sparse(&file, 3000, &data[3000..]).unwrap();
        write_sparse(&file, 1 << 20, &vec![0u8; 1 << 20]).unwrap();
        file.set_len(2 << 20).unwrap();
        data.resize(2 << 20, 0);
        assert!(fs::read(&path).unwrap() == data, "the content reads back as sent");
        // Two blocks hold data; the rest are holes.
        let allocated = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes allocated for 2 MiB with 2 non-zero blocks");
    }
}
