//! `loopbpf daemon`: the always-on service. Watches every selected Node
//! process on the host (one /proc scan at start, then the kernel's exec and
//! exit events), serves Prometheus metrics and keeps episodes in the state
//! directory. SIGHUP reloads the configuration; SIGTERM/SIGINT flush what is
//! open and exit 0.
pub mod config;
pub mod discovery;
pub mod logging;
pub mod metrics;
pub mod sink;
pub mod state;
pub mod store;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use config::{Config, ConfigError};
use sink::{Sink, SinkMsg};
use state::State;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc::unbounded_channel,
};

use crate::{
    daemon::{
        metrics::{http, Metrics},
        store::{Store, StoreError},
    },
    kernel::{
        privileges::{self, PrivilegeError},
        probes::{self, ProbeError, Probes, SyscallProbes, SyscallProbesChoice},
    },
    lifecycle::Lifecycle,
    limits::{
        DRAIN_EVERY, METRICS_EVERY, PERF_MAP_REFRESH_EVERY, RETENTION_EVERY, STALL_CHECK_EVERY,
        SWEEP_EVERY,
    },
    symbolize::{SymbolizeError, Symbolizer},
};

/// Command-line settings; `Some` overrides the file, also after a reload.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub config: PathBuf,
    pub threshold: Option<Duration>,
    pub frequency_hz: Option<u64>,
    pub state_dir: Option<PathBuf>,
    pub metrics_address: Option<SocketAddr>,
    /// Stack files stored per episode.
    pub formats: Vec<crate::export::FileFormat>,
}

impl Settings {
    fn load(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(&self.config)?;
        c.threshold = self.threshold.unwrap_or(c.threshold);
        c.frequency_hz = self.frequency_hz.unwrap_or(c.frequency_hz);
        c.state_dir = self.state_dir.clone().unwrap_or(c.state_dir);
        c.metrics_address = self.metrics_address.unwrap_or(c.metrics_address);
        Ok(c)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error(transparent)]
    Symbolizer(#[from] SymbolizeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metrics(#[from] http::BindError),
    #[error("watching the ring buffer or signals failed: {0}")]
    Io(#[from] std::io::Error),
}

fn kernel_config(c: &Config) -> Result<profiler_common::Config, ProbeError> {
    probes::kernel_config(c.threshold.as_nanos() as u64, c.frequency_hz, true)
}

pub async fn run(settings: Settings) -> Result<(), DaemonError> {
    // Handled from the first moment: start-up (probes, the first scan, each
    // process's symbols and unwind tables) takes a second or more, and a
    // SIGHUP's default action would kill the daemon in that window (a reload
    // sent as soon as /metrics showed a process did).
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let config = settings.load()?;
    let syscall_probes = SyscallProbesChoice::from_env()?;
    privileges::check()?;
    let store = Store::open(&config.state_dir, config.retention)?;
    let metrics = Metrics::default();
    metrics.set_series_labels(config.series_labels);
    let bound = http::serve(config.metrics_address, metrics.clone())?;
    let symbolizer = Symbolizer::start()?;
    let mut startup = crate::kernel::startup::Startup::default();
    let (probes, ring) = Probes::attach(
        kernel_config(&config)?,
        config.frequency_hz,
        syscall_probes,
        &mut startup,
    )?;
    log::info!("start-up: {}", startup.describe());
    let syscall_probes = probes.syscall_probes().clone();
    if syscall_probes.probes == SyscallProbes::TpBtf {
        // Users must know they pay the higher cost, and why.
        log::warn!("{}", syscall_probes.describe());
    } else {
        log::info!("{}", syscall_probes.describe());
    }
    let (tx, rx) = unbounded_channel();
    let sink = Sink {
        store,
        symbolizer: symbolizer.clone(),
        metrics: metrics.clone(),
        realtime_minus_monotonic_ns: sink::realtime_offset(),
        frequency_hz: config.frequency_hz,
        formats: settings.formats.clone(),
        provisional: HashMap::new(),
    };
    let sink = sink::spawn(sink, rx)?;
    let config_threshold_ns = config.threshold.as_nanos() as u64;
    let mut st = State {
        probes,
        config,
        watched: HashMap::new(),
        life: Lifecycle::new(config_threshold_ns),
        metrics,
        symbolizer,
        sink: tx,
        pending: Vec::new(),
        pool_candidates: HashMap::new(),
        unwind_ready: Default::default(),
    };
    // Attached before the scan: a process started during the scan is caught by its exec event.
    st.scan();
    st.refresh_metrics();
    // BTF, the BPF object and the ELF parses of start-up are freed by now.
    crate::memory::release_freed();
    log::info!(
        "ready: watching {} processes, threshold {} ms, {} Hz stacks, {} syscall probes, metrics on http://{bound}/metrics, state in {}",
        st.watched.len(),
        st.config.threshold.as_secs_f64() * 1e3,
        st.config.frequency_hz,
        syscall_probes.probes.as_str(),
        st.config.state_dir.display()
    );

    // SAFETY: the AsyncFd owns the RingBuf, which owns the fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut last = [tokio::time::Instant::now(); 5];
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                st.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => {
                st.drain_and_tick_pools(ring.get_mut());
                st.retry_pending();
                let due = |i: usize, every: Duration, last: &mut [tokio::time::Instant; 5]| {
                    let now = tokio::time::Instant::now();
                    let due = now - last[i] >= every;
                    if due { last[i] = now; }
                    due
                };
                if due(0, METRICS_EVERY, &mut last) {
                    st.free_dead_threads();
                    st.refresh_metrics();
                }
                if due(1, SWEEP_EVERY, &mut last) {
                    st.sweep();
                    // What exited processes held (symbols, tables) goes back to the kernel.
                    crate::memory::release_freed();
                }
                if due(4, STALL_CHECK_EVERY, &mut last) { st.check_stalls(); }
                if due(2, PERF_MAP_REFRESH_EVERY, &mut last) {
                    for &pid in st.watched.keys() {
                        let s = st.symbolizer.clone();
                        tokio::spawn(async move { let _ = s.symbolize(pid, Vec::new()).await; });
                    }
                }
                if due(3, RETENTION_EVERY, &mut last) {
                    let _ = st.sink.send(SinkMsg::Retention(st.config.retention));
                }
            }
            _ = sighup.recv() => reload(&mut st, &settings),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    log::info!("stopping: flushing {} watched processes", st.watched.len());
    st.drain(ring.get_mut());
    let pids: Vec<u32> = st.watched.keys().copied().collect();
    for pid in pids {
        st.detach(pid, false, "stopping");
    }
    if st.life.decode_errors > 0 {
        log::warn!(
            "{} malformed ring-buffer records skipped",
            st.life.decode_errors
        );
    }
    drop(st);
    // The sink drains every episode sent above before it returns.
    if let Ok(Err(_)) = tokio::task::spawn_blocking(move || sink.join()).await {
        log::error!("the episode writer panicked; episodes still queued were not stored");
    }
    log::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the file. Threshold, matching, series labels and retention apply at once;
/// frequency, state directory and metrics address need a restart (the perf
/// events, store and listener are set up once).
fn reload(st: &mut State, settings: &Settings) {
    let new = match settings.load() {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload failed, keeping the running configuration: {e}");
            st.metrics.reload_failed();
            return;
        }
    };
    for (what, changed) in [
        ("frequency", new.frequency_hz != st.config.frequency_hz),
        ("state_dir", new.state_dir != st.config.state_dir),
        (
            "metrics_address",
            new.metrics_address != st.config.metrics_address,
        ),
    ] {
        if changed {
            log::warn!("reload: {what} changed; it takes effect after a restart");
        }
    }
    let mut new = new;
    new.frequency_hz = st.config.frequency_hz;
    new.state_dir = st.config.state_dir.clone();
    new.metrics_address = st.config.metrics_address;
    if let Err(e) = kernel_config(&new).and_then(|k| st.probes.set_config(k)) {
        log::error!("reload: setting the threshold failed: {e}");
    }
    // Episodes, stalls and every threadpool monitor from now on.
    st.life.set_threshold(new.threshold.as_nanos() as u64);
    let _ = st.sink.send(SinkMsg::Retention(new.retention));
    st.metrics.set_series_labels(new.series_labels);
    st.config = new;
    let unselected: Vec<u32> = st
        .watched
        .iter()
        .filter(|(_, id)| !discovery::selected(&st.config, id))
        .map(|(&pid, _)| pid)
        .collect();
    for pid in unselected {
        st.detach(pid, false, "no longer selected");
    }
    st.scan();
    log::info!(
        "reloaded {}: watching {} processes, threshold {} ms",
        settings.config.display(),
        st.watched.len(),
        st.config.threshold.as_secs_f64() * 1e3
    );
}
