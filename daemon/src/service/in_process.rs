//! A daemon on a thread of its own (`barkeep demo` and the tests), and the
//! device opening every launcher shares.

use crate::backend::{self, Device};
use crate::broker::Broker;
use crate::config::{Config, ConfigSource, DeviceKind};

use crate::server;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Opens every configured device, in config order. A device that cannot be
/// used is still returned (with its problem set) so status can say why.
pub fn open_devices(config: &Config) -> Vec<Box<dyn Device>> {
    config
        .devices
        .iter()
        .map(|d| match &d.kind {
            DeviceKind::Sim(sim) => {
                Box::new(backend::sim::SimDevice::new(&d.name, sim)) as Box<dyn Device>
            }
            DeviceKind::Pci(opts) => backend::vfio::open(&d.name, opts),
        })
        .collect()
}

pub(crate) fn log_devices(broker: &Broker) {
    for (i, d) in broker.devices().iter().enumerate() {
        let c = d.capabilities;
        let bars: Vec<String> = d
            .bars
            .iter()
            .map(|b| format!("bar{}={:#x}", b.index, b.size))
            .collect();
        match &d.problem {
            None => tracing::info!(
                device = %d.name,
                backend = %d.backend,
                pci = d.pci.as_deref().unwrap_or("-"),
                bars = %bars.join(","),
                "ready: export={} mmap={} revoke={} wc={} device_revoke={}",
                c.export, c.mmap, c.revoke, c.write_combining, c.device_revoke
            ),
            Some(p) => tracing::warn!(device = %d.name, backend = %d.backend, "unusable: {p}"),
        }
        for note in broker.notes(i) {
            tracing::info!(device = %d.name, "{note}");
        }
    }
}

fn start(
    config: Config,
    source: Option<ConfigSource>,
    devices: Vec<Box<dyn Device>>,
) -> Result<
    (
        tokio_seqpacket::UnixSeqpacketListener,
        Arc<Broker>,
        Option<crate::server::metrics::MetricsSocket>,
    ),
    String,
> {
    let listener = server::bind(&config.socket, config.socket_mode)?;
    let mut broker = Broker::new(config, devices);
    if let Some(source) = source {
        broker = broker.with_source(source);
    }
    let broker = Arc::new(broker);
    log_devices(&broker);
    // Served until the caller drops it, when serving ends.
    let metrics = crate::server::metrics::listen(&broker)?;
    Ok((listener, broker, metrics))
}

/// A daemon running on its own thread (used by `barkeep demo` and tests).
/// Dropping it stops it.
pub struct RunningDaemon {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningDaemon {
    /// Path of the listening socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Stops the daemon: every lease is revoked, the socket removed, and the
    /// thread joined.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Starts a daemon for `config` on a thread of its own, bound to
/// `config.socket`; returns once the socket accepts connections.
pub fn spawn(config: Config) -> Result<RunningDaemon, String> {
    let devices = open_devices(&config);
    spawn_with_devices(config, devices)
}

/// Like [`spawn`], with devices the caller made (fakes in tests), in the
/// order of `config.devices` (only the names matter to the grants).
pub fn spawn_with_devices(
    config: Config,
    devices: Vec<Box<dyn Device>>,
) -> Result<RunningDaemon, String> {
    let socket = config.socket.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("barkeepd".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("barkeepd-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the tokio runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let (listener, broker, _metrics) = match start(config, None, devices) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let path = broker.config().socket.clone();
                // Bound and listening: connects succeed from here on.
                let _ = ready_tx.send(Ok(()));
                server::serve(listener, path, broker, async {
                    let _ = stop_rx.await;
                })
                .await;
            });
        })
        .map_err(|e| format!("cannot start the daemon thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(RunningDaemon {
            socket,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err("the daemon thread ended before it was ready (it panicked; see stderr)".into())
        }
    }
}
