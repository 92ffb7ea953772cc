//! The upload's move hint (`UploadHeader.moved_from`): a file moved with the
//! same content keeps its history under its new name; a wrong hint is a
//! plain write; an invalid one is refused with `invalid-path` and nothing
//! is written.

use sync_server::storage::{Store, StoreOptions, VersionKind};
use syncstore::{Reason, RelPath, pb, pb::upload_request};
use tonic::Code;

use crate::harness::*;

/// An upload of `path` (with its content) that says it was `from`.
async fn upload_moved(
    rpc: &mut Rpc,
    from: &str,
    path: &str,
    data: &[u8],
) -> Result<pb::FileEntry, tonic::Status> {
    let mut header = upload_header(path, data, 0);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.moved_from = from.into();
    }
    let chunk = pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data.to_vec())) };
    let resp = rpc.upload(tokio_stream::iter([header, chunk, upload_end()])).await?.into_inner();
    Ok(resp.entry.expect("an upload answers with its entry"))
}

#[tokio::test]
async fn a_move_hint_keeps_the_history_a_wrong_one_is_a_write_and_an_invalid_one_is_refused() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let v1 = upload(&mut rpc, "draft.txt", b"one", 0).await.unwrap().version;
    let v2 = upload(&mut rpc, "draft.txt", b"two", v1).await.unwrap().version;
    let head = server.status().await.head_seq;
    for bad in ["../outside", "/abs", "a//b"] {
        let refused = upload_moved(&mut rpc, bad, "final.txt", b"two").await.unwrap_err();
        assert_eq!(
            (refused.code(), Reason::of(&refused)),
            (Code::InvalidArgument, Some(Reason::InvalidPath)),
            "{bad}"
        );
    }
    assert_eq!(server.status().await.head_seq, head, "nothing was written");
    let moved = upload_moved(&mut rpc, "draft.txt", "final.txt", b"two").await.unwrap().version;
    rpc.delete(pb::DeleteRequest {
        path: "draft.txt".into(),
        base_version: v2,
        client_id: "t".into(),
        lock_token: 0,
    })
    .await
    .unwrap();
    let wrong = upload_moved(&mut rpc, "final.txt", "other.txt", b"not the same").await.unwrap().version;
    let (config, _data, _) = server.stop().await;

    let store = Store::open(&config.data_dir, StoreOptions::default()).await.unwrap();
    let history = |p: &'static str| {
        let store = store.clone();
        async move {
            let versions = store.versions("default", &RelPath::new(p).unwrap(), 0).await.unwrap();
            versions.into_iter().map(|v| (v.seq(), v.note.kind)).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        history("final.txt").await,
        [(moved, VersionKind::Move), (v2, VersionKind::Write), (v1, VersionKind::Write)]
    );
    assert_eq!(history("other.txt").await, [(wrong, VersionKind::Write)]);
    let draft = history("draft.txt").await;
    assert_eq!(draft[0].1, VersionKind::MovedAway, "the old name's deletion ended the move");
}
