//! Counters for `/metrics`, in Prometheus' text format (version 0.0.4),
//! shared by every frontend of a node (one `Arc<Metrics>`, made by whoever
//! starts the frontends). A handful of atomics: the set is small and fixed,
//! so no registry.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

const FRONTENDS: [&str; 3] = ["http", "https", "quic"];
const OUTCOMES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// The SSH-borne frontends, counted per session.
const SESSIONS: [&str; 3] = ["sftp", "git", "mount"];

#[derive(Default)]
pub struct Metrics {
    /// Sessions open now, per [`SESSIONS`] entry.
    sessions_open: [AtomicU64; 3],
    /// Sessions ended, `[frontend][ok, error]`.
    sessions: [[AtomicU64; 2]; 3],
    /// `[frontend][outcome]`
    requests: [[AtomicU64; 4]; 3],
    open: [AtomicU64; 3],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Cumulative counts per bucket, then the +Inf count.
    commits: [AtomicU64; 11],
    commit_nanos: AtomicU64,
    gc_runs: AtomicU64,
    /// The last blob-store figures (refreshed at each scrape).
    store: Mutex<Option<alknet_fs::Stats>>,
}

fn frontend_index(frontend: &str) -> usize {
    FRONTENDS.iter().position(|f| *f == frontend).unwrap_or(0)
}

/// An open connection, counted until dropped.
pub(crate) struct Open<'a>(&'a AtomicU64);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session of an SSH frontend, counted open until it ends with `done`
/// (or is dropped, which counts as an error).
pub(crate) struct Session<'a> {
    metrics: &'a Metrics,
    index: usize,
    ended: bool,
}

impl Session<'_> {
    pub(crate) fn done(mut self, ok: bool) {
        self.end(ok);
    }

    fn end(&mut self, ok: bool) {
        if !self.ended {
            self.ended = true;
            self.metrics.sessions_open[self.index].fetch_sub(1, Ordering::Relaxed);
            self.metrics.sessions[self.index][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl Metrics {
    /// A session of `frontend` (`sftp`, `git` or `mount`) begins.
    pub(crate) fn session(&self, frontend: &str) -> Session<'_> {
        let index = SESSIONS.iter().position(|f| *f == frontend).unwrap_or(0);
        self.sessions_open[index].fetch_add(1, Ordering::Relaxed);
        Session {
            metrics: self,
            index,
            ended: false,
        }
    }

    pub(crate) fn connection(&self, frontend: &str) -> Open<'_> {
        let gauge = &self.open[frontend_index(frontend)];
        gauge.fetch_add(1, Ordering::Relaxed);
        Open(gauge)
    }

    pub(crate) fn request(&self, frontend: &str, status: u16) {
        let outcome = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[frontend_index(frontend)][outcome].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// One commit of a write that came over HTTP, and how long it took.
    pub(crate) fn commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.commits[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.commits[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.commit_nanos.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn gc_run(&self) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_store(&self, stats: alknet_fs::Stats) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP alknet_http_requests_total HTTP requests answered, by frontend and status class.\n");
        out.push_str("# TYPE alknet_http_requests_total counter\n");
        for (f, frontend) in FRONTENDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                writeln!(
                    out,
                    "alknet_http_requests_total{{frontend=\"{frontend}\",outcome=\"{outcome}\"}} {}",
                    load(&self.requests[f][o])
                )
                .ok();
            }
        }
        out.push_str("# HELP alknet_http_open_connections HTTP connections open now.\n");
        out.push_str("# TYPE alknet_http_open_connections gauge\n");
        for (f, frontend) in FRONTENDS.iter().enumerate() {
            writeln!(
                out,
                "alknet_http_open_connections{{frontend=\"{frontend}\"}} {}",
                load(&self.open[f])
            )
            .ok();
        }
        out.push_str("# HELP alknet_sessions_open SSH sessions open now, by frontend.\n");
        out.push_str("# TYPE alknet_sessions_open gauge\n");
        for (i, frontend) in SESSIONS.iter().enumerate() {
            writeln!(
                out,
                "alknet_sessions_open{{frontend=\"{frontend}\"}} {}",
                load(&self.sessions_open[i])
            )
            .ok();
        }
        out.push_str("# HELP alknet_sessions_total SSH sessions ended, by frontend and outcome.\n");
        out.push_str("# TYPE alknet_sessions_total counter\n");
        for (i, frontend) in SESSIONS.iter().enumerate() {
            for (o, outcome) in ["ok", "error"].iter().enumerate() {
                writeln!(
                    out,
                    "alknet_sessions_total{{frontend=\"{frontend}\",outcome=\"{outcome}\"}} {}",
                    load(&self.sessions[i][o])
                )
                .ok();
            }
        }
        out.push_str("# HELP alknet_http_content_bytes_total File content bytes received and sent over HTTP.\n");
        out.push_str("# TYPE alknet_http_content_bytes_total counter\n");
        writeln!(
            out,
            "alknet_http_content_bytes_total{{direction=\"in\"}} {}",
            load(&self.bytes_in)
        )
        .ok();
        writeln!(
            out,
            "alknet_http_content_bytes_total{{direction=\"out\"}} {}",
            load(&self.bytes_out)
        )
        .ok();
        out.push_str("# HELP alknet_http_commit_seconds Time to commit a file written over HTTP.\n");
        out.push_str("# TYPE alknet_http_commit_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            writeln!(
                out,
                "alknet_http_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                load(&self.commits[i])
            )
            .ok();
        }
        let count = load(&self.commits[BUCKETS.len()]);
        writeln!(out, "alknet_http_commit_seconds_bucket{{le=\"+Inf\"}} {count}").ok();
        writeln!(
            out,
            "alknet_http_commit_seconds_sum {}",
            load(&self.commit_nanos) as f64 / 1e9
        )
        .ok();
        writeln!(out, "alknet_http_commit_seconds_count {count}").ok();
        out.push_str("# HELP alknet_gc_runs_total Garbage collections asked for over HTTP.\n");
        out.push_str("# TYPE alknet_gc_runs_total counter\n");
        writeln!(out, "alknet_gc_runs_total {}", load(&self.gc_runs)).ok();
        if let Some(s) = &*self.store.lock().unwrap_or_else(|e| e.into_inner()) {
            out.push_str("# HELP alknet_store_blob_bytes Bytes of the distinct blobs the trees reference.\n");
            out.push_str("# TYPE alknet_store_blob_bytes gauge\n");
            writeln!(out, "alknet_store_blob_bytes {}", s.blob_bytes).ok();
            out.push_str("# HELP alknet_store_blobs Distinct blobs the trees reference.\n");
            out.push_str("# TYPE alknet_store_blobs gauge\n");
            writeln!(out, "alknet_store_blobs {}", s.blobs).ok();
            out.push_str("# HELP alknet_store_disk_bytes Bytes of the data directory on disk.\n");
            out.push_str("# TYPE alknet_store_disk_bytes gauge\n");
            writeln!(out, "alknet_store_disk_bytes {}", s.disk_bytes).ok();
            out.push_str("# HELP alknet_store_versions Commits recorded.\n");
            out.push_str("# TYPE alknet_store_versions gauge\n");
            writeln!(out, "alknet_store_versions {}", s.versions).ok();
        }
        out
    }
}
