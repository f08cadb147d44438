//! The optional metrics socket (`[metrics] socket`): each connection gets
//! the Prometheus text exposition and is closed.

use crate::broker::Broker;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Connections of the metrics socket served at once; more are closed
/// unanswered (a scraper asks once in a while, not in a flood).
const MAX_METRICS_CONNECTIONS: usize = 16;

/// How long one metrics connection may take in all.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics socket (`[metrics] socket`): while it lives, each connection
/// gets the exposition text and is closed. Dropping it stops serving and
/// removes the socket file.
pub struct MetricsSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MetricsSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the metrics socket of `broker`'s configuration, if it has one,
/// and serves it on the current tokio runtime.
pub fn listen(broker: &Arc<Broker>) -> Result<Option<MetricsSocket>, String> {
    let config = broker.config();
    let Some(path) = config.metrics.socket.clone() else {
        return Ok(None);
    };
    let listener = bind(&path, config.metrics.socket_mode)?;
    tracing::info!(socket = %path.display(), mode = format!("{:04o}", config.metrics.socket_mode), "serving metrics");
    let task = tokio::spawn(serve(listener, broker.clone()));
    Ok(Some(MetricsSocket { path, task }))
}

/// Creates the SOCK_STREAM socket at `path` (parent directory included),
/// replacing a stale one but not a live one, with permission bits `mode`.
fn bind(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, String> {
    super::socket::bind_unix(
        path,
        mode,
        &super::socket::Role {
            name: "metrics socket",
            busy: "something already serves on the metrics socket {}: stop it, or choose another [metrics] socket",
            elsewhere: "choose another [metrics] socket",
        },
        |p| std::os::unix::net::UnixStream::connect(p).is_ok(),
        |p| tokio::net::UnixListener::bind(p),
    )
}

async fn serve(listener: tokio::net::UnixListener, broker: Arc<Broker>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Over the limit: the stream is dropped, i.e. closed.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let broker = broker.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let text = broker.metrics_text();
                    let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, answer(stream, text))
                        .await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Writes `text`, ends the write side, and reads whatever the peer sent
/// until it closes (closing with its bytes unread would reset the
/// connection under a peer still reading, e.g. `curl --http0.9`).
async fn answer(mut stream: tokio::net::UnixStream, text: String) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 512];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}
