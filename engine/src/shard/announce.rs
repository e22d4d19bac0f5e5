//! A blob's announcer: announces to the blob's tracker at the interval the tracker returns
//! (at once when the blob completes, so that it is handed out as a seeder), and forwards the
//! peers it learns to every shard that owns stripes of the blob.

use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select;

use super::{Command, Shard};
use crate::engine::BlobShared;
use crate::tracker::Announce;

/// First wait after a failed announce; doubles per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Runs until the blob stops (removed, failed, engine shut down).
pub(crate) async fn run(shard: Rc<Shard>, shared: Arc<BlobShared>) {
    let engine = Arc::clone(&shard.engine);
    let mut retry = RETRY_FIRST;
    loop {
        if shared.is_stopped() {
            return;
        }
        let listener = shared.changed.listen();
        let announce = Announce {
            digest: shared.digest,
            info_hash: shared.info_hash,
            peer_id: engine.peer_id,
            port: engine.listen_addr.port(),
            is_origin: engine.config.is_origin,
            is_complete: shared.is_complete(),
        };
        let wait = match engine.tracker.announce(&announce).await {
            Ok(response) => {
                retry = RETRY_FIRST;
                tracing::debug!(digest = %shared.digest, peers = response.peers.len(), "announced");
                let peers: Arc<[_]> = response.peers.into();
                for owner in engine.shards_of_blob(&shared.metainfo) {
                    if owner == shard.id {
                        shard.peers(shared.info_hash, &peers);
                    } else {
                        let command = Command::Peers {
                            info_hash: shared.info_hash,
                            peers: Arc::clone(&peers),
                        };
                        // A full queue drops this batch; the next announce repeats it.
                        let _ = engine.senders[owner].try_send(command);
                    }
                }
                response.interval
            }
            Err(error) => {
                tracing::warn!(digest = %shared.digest, %error, "announce failed");
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            }
        };
        if shared.is_stopped() {
            return;
        }
        let sleep = compio::runtime::time::sleep(wait);
        select(pin!(sleep), listener).await;
    }
}
