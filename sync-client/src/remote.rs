//! The server, as the client sees it: a lazily connecting gRPC channel and
//! typed calls that return domain values.

use std::{collections::HashMap, time::Duration};

use syncstore::{
    Entry, RelPath,
    limits::MAX_MESSAGE,
    pb::{self, file_sync_client::FileSyncClient},
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};

use crate::error::{Error, Result};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a dead server on an idle subscription.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one server's `FileSync`; cheap to clone.
#[derive(Debug, Clone)]
pub struct Remote {
    client: FileSyncClient<Channel>,
    client_id: String,
}

impl Remote {
    /// Prepares a connection to `url` (`http://host:port`); it is made on
    /// the first call and remade after a failure.
    pub fn new(url: &str, client_id: String) -> Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Config(format!("bad server address {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let client = FileSyncClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Self { client, client_id })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The raw generated client, for streaming calls.
    pub fn raw(&self) -> FileSyncClient<Channel> {
        self.client.clone()
    }

    pub async fn info(&self) -> Result<pb::ServerInfoResponse> {
        Ok(self.raw().server_info(pb::ServerInfoRequest {}).await?.into_inner())
    }

    /// The path's entry, `None` if the server never had it.
    pub async fn stat(&self, path: &RelPath) -> Result<Option<Entry>> {
        match self.raw().stat(pb::StatRequest { path: path.to_string() }).await {
            Ok(r) => Ok(Some(Entry::try_from(r.into_inner())?)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// The whole manifest, tombstones included.
    pub async fn manifest(&self) -> Result<HashMap<RelPath, Entry>> {
        let mut stream = self
            .raw()
            .list(pb::ListRequest { prefix: String::new(), include_deleted: true })
            .await?
            .into_inner();
        let mut out = HashMap::new();
        while let Some(e) = stream.message().await? {
            let e = Entry::try_from(e)?;
            out.insert(e.path.clone(), e);
        }
        Ok(out)
    }

    pub async fn delete(&self, path: &RelPath, base_version: u64) -> Result<Entry> {
        let resp = self
            .raw()
            .delete(pb::DeleteRequest {
                path: path.to_string(),
                base_version,
                client_id: self.client_id.clone(),
            })
            .await?
            .into_inner();
        Ok(Entry::try_from(resp.entry.ok_or_else(|| Error::Protocol("delete without entry".into()))?)?)
    }

    pub async fn subscribe(&self, after_seq: u64) -> Result<tonic::Streaming<pb::ChangeEvent>> {
        Ok(self
            .raw()
            .subscribe(pb::SubscribeRequest { after_seq, client_id: self.client_id.clone() })
            .await?
            .into_inner())
    }
}
