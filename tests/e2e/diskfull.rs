//! A server whose disk is full: every write is refused with
//! RESOURCE_EXHAUSTED (reason `disk-full`) and leaves nothing behind, reads
//! go on, a restart works, and writes work again once space is freed. On a
//! small tmpfs the test mounts itself (skipped where mounting is not
//! permitted).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use syncstore::{Reason, pb};
use tonic::Code;

use crate::harness::{
    Rpc, TestServer, count_files, download, random_bytes, upload, upload_end, upload_header,
};

/// A tmpfs mounted on a temp folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m"), or says why not and returns
    /// `None`.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file there: detach it now, freed when
            // released.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Fills the file system of `path` to the last byte (the file `path`).
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for block in [64 * 1024, 4096, 512, 1] {
        let buf = vec![7u8; block];
        while file.write_all(&buf).is_ok() {}
    }
    let _ = file.sync_all();
}

/// Asserts that a write was refused because the disk is full.
#[track_caller]
fn refused_full<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert_eq!(Reason::of(&status), Some(Reason::DiskFull), "{what}: {status:?}");
    assert!(status.message().contains("disk is full"), "{what}: {status:?}");
}

async fn header_only(rpc: &mut Rpc, path: &str, data: &[u8]) -> Result<pb::FileEntry, tonic::Status> {
    let msgs = vec![upload_header(path, data, 0), upload_end()];
    Ok(rpc.upload(tokio_stream::iter(msgs)).await?.into_inner().entry.unwrap())
}

async fn delete(rpc: &mut Rpc, path: &str, base_version: u64) -> Result<pb::DeleteResponse, tonic::Status> {
    let req = pb::DeleteRequest { path: path.into(), base_version, client_id: "test".into(), lock_token: 0 };
    Ok(rpc.delete(req).await?.into_inner())
}

/// Every write answers RESOURCE_EXHAUSTED with nothing written.
async fn every_write_is_refused(rpc: &mut Rpc, kept: &[u8], doomed_version: u64) {
    refused_full("a 4 MiB upload", upload(rpc, "big.bin", &random_bytes(4 << 20, 2), 0).await);
    refused_full("a 1 KB upload", upload(rpc, "small.txt", &random_bytes(1000, 3), 0).await);
    refused_full("a header-only upload", header_only(rpc, "copy.txt", kept).await);
    refused_full("an empty file", upload(rpc, "empty.txt", b"", 0).await);
    refused_full("a delete", delete(rpc, "doomed.txt", doomed_version).await);
}

#[tokio::test]
async fn a_full_disk_refuses_every_write_with_resource_exhausted_and_recovers() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let data_dir: PathBuf = fs.path().join("data");
    let dir = data_dir.clone();
    let server = TestServer::start_with(move |c| c.data_dir = dir).await;
    let mut rpc = server.rpc().await;
    let kept = random_bytes(1000, 1);
    upload(&mut rpc, "kept.txt", &kept, 0).await.unwrap();
    let doomed = upload(&mut rpc, "doomed.txt", b"delete me", 0).await.unwrap();
    let head = server.status().await.head_seq;
    let stored = server.stored_blobs().await;

    let filler = fs.path().join("filler");
    fill(&filler);
    every_write_is_refused(&mut rpc, &kept, doomed.version).await;

    // Reads go on; nothing was written, nothing half-written is left.
    let check_untouched = async |server: &TestServer| {
        assert_eq!(count_files(&data_dir.join("tmp")), 0, "no temp file is left");
        assert_eq!(server.stored_blobs().await, stored, "no blob was added");
    };
    assert_eq!(download(&mut rpc, "kept.txt").await.unwrap(), kept);
    assert_eq!(download(&mut rpc, "doomed.txt").await.unwrap(), b"delete me");
    assert_eq!(server.status().await.head_seq, head);
    check_untouched(&server).await;

    // A restart with 0 bytes free works, and so do reads.
    let server = server.restart().await;
    let mut rpc = server.rpc().await;
    assert_eq!(download(&mut rpc, "kept.txt").await.unwrap(), kept);
    assert_eq!(server.status().await.head_seq, head);
    every_write_is_refused(&mut rpc, &kept, doomed.version).await;
    check_untouched(&server).await;

    // Space freed: every write works again.
    std::fs::remove_file(&filler).unwrap();
    let big = random_bytes(4 << 20, 2);
    upload(&mut rpc, "big.bin", &big, 0).await.unwrap();
    upload(&mut rpc, "small.txt", &random_bytes(1000, 3), 0).await.unwrap();
    header_only(&mut rpc, "copy.txt", &kept).await.unwrap();
    upload(&mut rpc, "empty.txt", b"", 0).await.unwrap();
    delete(&mut rpc, "doomed.txt", doomed.version).await.unwrap();
    assert_eq!(download(&mut rpc, "big.bin").await.unwrap(), big);
    assert_eq!(download(&mut rpc, "copy.txt").await.unwrap(), kept);
    server.stop().await;
    drop(fs);
}
