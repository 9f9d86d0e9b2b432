//! The daemon's last stage, on a thread of its own so symbolization and disk
//! writes (two fsyncs per file) never hold up draining the ring buffer: name
//! the frames, store the episode (its files as `formats` chose + JSON + index
//! line), log one line.
use std::{collections::HashMap, path::PathBuf};

use tokio::sync::mpsc::UnboundedReceiver;

use super::discovery::Identity;
use crate::{
    assembly::{episode::Episode, threadpool::PoolEpisode},
    clock::WallClock,
    daemon::{
        metrics::Metrics,
        store::{Retention, Store, StoreError},
    },
    export::{
        common::Profile, json, pool_report::PoolReport, render_all, report::EpisodeReport,
        FileFormat,
    },
    lifecycle::Stall,
    symbolize::{PerfMapStatus, Symbolizer},
};

// Mostly episodes go through the channel: boxing them would add an allocation
// per message to save space in the rare small ones.
#[allow(clippy::large_enum_variant)]
pub enum SinkMsg {
    Episode(Episode, Identity),
    /// A loop still blocked, with its stacks so far.
    Stall(Stall, Identity),
    PoolSaturation(PoolEpisode, Identity),
    /// The process is gone and its episodes are out: drop its caches.
    Forget(u32),
    Retention(Retention),
}

pub struct Sink {
    pub store: Store,
    pub symbolizer: Symbolizer,
    pub metrics: Metrics,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC at start, to date episodes.
    pub realtime_minus_monotonic_ns: i128,
    /// Sampling rate: off-CPU time is written to folded files in samples.
    pub frequency_hz: u64,
    /// The stack files stored per episode.
    pub formats: Vec<FileFormat>,
    /// Provisional records of loops still blocked, by (pid, tid, iteration):
    /// the final episode replaces its own.
    pub provisional: HashMap<(u32, u32, u64), String>,
}

/// Runs `sink` on its own thread until every sender of `rx` is gone and the
/// queue is empty.
pub fn spawn(
    sink: Sink,
    rx: UnboundedReceiver<SinkMsg>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("loopbpf-store".into())
        .spawn(move || runtime.block_on(sink.run(rx)))
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now.
pub fn realtime_offset() -> i128 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    real - crate::clock::monotonic_ns() as i128
}

impl Sink {
    pub async fn run(mut self, mut rx: UnboundedReceiver<SinkMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                SinkMsg::Episode(e, id) => self.episode(e, id).await,
                SinkMsg::Stall(s, id) => self.stall(s, id).await,
                SinkMsg::PoolSaturation(e, id) => self.pool_saturation(e, id).await,
                SinkMsg::Forget(pid) => {
                    self.symbolizer.forget(pid);
                    // Its episodes are out: a provisional record left is all
                    // there is of that iteration (its end was never seen).
                    self.provisional.retain(|k, _| k.0 != pid);
                }
                SinkMsg::Retention(r) => {
                    if let Err(e) = self.store.set_retention(r) {
                        log::warn!("retention: {e}");
                    }
                }
            }
        }
    }

    /// The chosen files of a profile; a format that fails is logged and
    /// left out (the record and the other files are still stored).
    fn render(&self, profile: &Profile) -> Vec<(String, Vec<u8>)> {
        let (files, error) = render_all(profile, &self.formats);
        if let Some(err) = error {
            log::warn!("episode {}: {err}", profile.id);
        }
        files
    }

    /// Stores an episode's record with its files (none without samples),
    /// the record naming the paths the store wrote.
    fn put_episode(
        &mut self,
        report: &EpisodeReport,
        profile: &Profile,
        mut record: json::Line<json::Episode>,
    ) -> Result<(Vec<PathBuf>, PathBuf), StoreError> {
        let files = if report.episode.samples > 0 {
            self.render(profile)
        } else {
            Vec::new()
        };
        self.store.put(&profile.id, &files, |folded, files| {
            (record.body.folded, record.body.files) = (folded, files);
            record.to_json()
        })
    }

    fn clock(&self) -> WallClock {
        WallClock::with_offset(self.realtime_minus_monotonic_ns)
    }

    async fn pool_saturation(&mut self, e: PoolEpisode, id: Identity) {
        let pid = e.pid;
        let (report, err) = PoolReport::symbolize(e, &self.symbolizer).await;
        if let Some(err) = err {
            log::warn!("pid {pid}: symbolization failed: {err}");
        }
        let profile = Profile::of_pool(&report, self.frequency_hz);
        let file_id = profile.id.clone();
        let mut record = json::pool_saturation(&report, &self.clock());
        record.body.process = Some(labels(&id));
        let files = if report.stacks.is_empty() {
            Vec::new()
        } else {
            self.render(&profile)
        };
        let e = &report.episode;
        let work = report
            .top_work
            .as_ref()
            .map(|h| format!("{} ({:.0}%)", h.name, h.share * 100.0))
            .unwrap_or_else(|| "-".into());
        let record = |folded, files| {
            (record.body.folded, record.body.files) = (folded, files);
            record.to_json()
        };
        match self.store.put(&file_id, &files, record) {
            Ok((_, json_path)) => {
                self.metrics.episode_stored();
                log::info!(
                    "threadpool saturated pid={} comm={} container={} ms={:.1} workers={} items={} ongoing={} running={work} record={}",
                    e.pid, id.comm, id.container_label(), e.end_ns.saturating_sub(e.start_ns) as f64 / 1e6,
                    e.pool_size, e.items, e.ongoing, json_path.display()
                );
            }
            Err(err) => log::error!("threadpool saturation pid={} not stored: {err}", e.pid),
        }
    }

    /// A loop still blocked: one log line naming where its time goes so far
    /// (at the first notice, then every `STALL_REPEAT_EVERY`), and its
    /// stacks so far stored as a provisional record, replaced at each notice
    /// and by the final episode. If loopbpf dies first, it stays, marked
    /// `"provisional": true`.
    async fn stall(&mut self, s: Stall, id: Identity) {
        let busy_s = s.now_ns.saturating_sub(s.start_ns) as f64 / 1e9;
        let key = (s.pid, s.tid, s.seq);
        let Some(e) = s.so_far else {
            log::warn!(
                "still blocked for {busy_s:.1} s pid={} tid={} comm={} container={}",
                s.pid,
                s.tid,
                id.comm,
                id.container_label()
            );
            return;
        };
        let (report, _) = EpisodeReport::symbolize(e, &self.symbolizer).await;
        let mut profile = Profile::of_episode(&report, self.frequency_hz);
        profile.id = format!("{}-provisional", profile.id);
        let file_id = profile.id.clone();
        // Said before the files are rendered and synced: the line is what an
        // operator watching the journal needs first.
        log::warn!(
            "still blocked for {busy_s:.1} s, hottest so far: {} pid={} tid={} comm={} container={} thread={} samples={} record={}",
            hot_text(&report),
            s.pid,
            s.tid,
            id.comm,
            id.container_label(),
            report.role.as_str(),
            report.episode.samples,
            self.store.dir().join("episodes").join(format!("{file_id}.json")).display(),
        );
        let mut record = json::episode(&report, &self.clock());
        record.body.process = Some(labels(&id));
        record.body.id = file_id.clone();
        record.body.provisional = true;
        if let Some(old) = self.provisional.remove(&key) {
            // Same id (same iteration): the new one takes its place.
            if let Err(err) = self.store.remove(&old) {
                log::warn!("provisional record {old} not removed: {err}");
            }
        }
        match self.put_episode(&report, &profile, record) {
            Ok(_) => {
                self.provisional.insert(key, file_id);
            }
            Err(err) => log::error!("provisional record {file_id} not stored: {err}"),
        }
    }

    async fn episode(&mut self, e: Episode, id: Identity) {
        let pid = e.pid;
        let (report, status) = EpisodeReport::symbolize(e, &self.symbolizer).await;
        match status {
            Err(err) => log::warn!("pid {pid}: symbolization failed: {err}"),
            // A refused or bounded perf map is worth a line: it may be an
            // attack (a FIFO, a symlink, a forged or huge file).
            Ok(PerfMapStatus::Unreadable { path, reason }) => log::warn!(
                "pid {pid}: perf map {} unreadable ({reason}): JavaScript frames are not named",
                path.display()
            ),
            Ok(PerfMapStatus::Loaded {
                path,
                dropped_lines,
                ..
            }) if dropped_lines > 0 => log::warn!(
                "pid {pid}: perf map {}: {dropped_lines} lines dropped over loopbpf's limits",
                path.display()
            ),
            Ok(_) => {}
        }
        let role = report.role;
        // Counted whether or not the store takes it: it happened.
        self.metrics.episode(
            &id.labels(),
            role,
            report.episode.tid,
            report.breakdown.verdict,
        );
        let profile = Profile::of_episode(&report, self.frequency_hz);
        let mut record = json::episode(&report, &self.clock());
        record.body.process = Some(labels(&id));
        let stored = self.put_episode(&report, &profile, record);
        let key = (report.episode.pid, report.episode.tid, report.episode.seq);
        if let Some(provisional) = self.provisional.remove(&key) {
            if let Err(err) = self.store.remove(&provisional) {
                log::warn!("provisional record {provisional} not removed: {err}");
            }
        }
        let e = &report.episode;
        let hottest = hot_text(&report);
        match stored {
            Ok((_, json_path)) => {
                self.metrics.episode_stored();
                log::info!(
                    "episode pid={} tid={} comm={} container={} thread={} busy_ms={:.1} samples={} ongoing={} hottest={hottest} record={}",
                    e.pid, e.tid, id.comm, id.container_label(), role.as_str(),
                    e.busy_ns as f64 / 1e6, e.samples, e.ongoing, json_path.display()
                );
            }
            Err(err) => log::error!(
                "episode pid={} tid={} busy_ms={:.1} hottest={hottest} not stored: {err}",
                e.pid,
                e.tid,
                e.busy_ns as f64 / 1e6
            ),
        }
    }
}

/// Who the process was, as every stored record names it.
fn labels(id: &Identity) -> json::ProcessLabels {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    json::ProcessLabels {
        comm: id.comm.clone(),
        exe: id.exe.clone(),
        container: id.container.id.clone(),
        pod: non_empty(&id.container.pod),
        namespace: non_empty(&id.container.namespace),
        cgroup: id.cgroup.clone(),
    }
}

/// `name (share%)` of the hottest frame, `-` without samples.
fn hot_text(report: &EpisodeReport) -> String {
    report
        .top_frame
        .as_ref()
        .map(|h| format!("{} ({:.0}%)", h.name, h.share * 100.0))
        .unwrap_or_else(|| "-".into())
}
