//! The daemon's metrics: counters and the request latency histogram, kept
//! in fixed arrays of relaxed atomics (the request path neither allocates
//! nor takes a lock for them); their Prometheus text exposition (format
//! 0.0.4). The metrics socket that serves that text is
//! [`crate::server::metrics`].
//!
//! Gauges (sessions, leases by device and state) are read from the broker's
//! state when the text is made, not kept on the side, so they cannot drift.

use crate::leases::LeaseTable;
use barkeep_protocol::{
    DeviceInfo, ErrorCode, LeaseState, RequestKind, RevokeReason, REQUEST_KINDS,
};
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in nanoseconds: a decision takes
/// microseconds, an export on real hardware up to milliseconds; above a
/// second something is wrong.
const BUCKET_NANOS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// The same bounds in seconds, as the `le` labels say them.
const BUCKET_LABELS: [&str; 16] = [
    "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
    "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
];

/// Lease states, in [`lease_state`] order.
pub const LEASE_STATES: [LeaseState; 4] = [
    LeaseState::Active,
    LeaseState::Kept,
    LeaseState::AwaitingReclaim,
    LeaseState::Lingering,
];

fn lease_state(state: LeaseState) -> usize {
    match state {
        LeaseState::Active => 0,
        LeaseState::Kept => 1,
        LeaseState::AwaitingReclaim => 2,
        LeaseState::Lingering => 3,
    }
}

/// Why leases end (`RevokeReason::as_str`), in [`revoke_reason`] order. A
/// reason missing here is counted as "other".
pub const REVOKE_REASONS: [&str; 7] = [
    "released",
    "disconnected",
    "admin",
    "policy",
    "device",
    "shutdown",
    "unclaimed",
];

/// The slot of a reason: its place in [`REVOKE_REASONS`], or the last slot
/// ("other"). Leases end under the broker's lock, rarely next to a
/// request's cost, so a few short compares do.
fn revoke_reason(reason: RevokeReason) -> usize {
    let name = reason.as_str();
    REVOKE_REASONS
        .iter()
        .position(|r| *r == name)
        .unwrap_or(REVOKE_REASONS.len())
}

const CODES: usize = ErrorCode::ALL.len();

/// The slot of an error code: its place in [`ErrorCode::ALL`], or the last
/// slot for a code this version does not know.
fn code_slot(code: ErrorCode) -> usize {
    ErrorCode::ALL
        .iter()
        .position(|c| *c == code)
        .unwrap_or(CODES)
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The counters. Each update is one or two relaxed `fetch_add`s on a slot
/// chosen by index; the text is made from loads, so a scrape sees each
/// counter as it was at some moment during the scrape.
pub struct Metrics {
    started: Instant,
    /// Per request kind: observations per bucket (not cumulative; the last
    /// slot is above the largest bound).
    latency: [[AtomicU64; BUCKET_NANOS.len() + 1]; REQUEST_KINDS],
    /// Per request kind: total time, in nanoseconds.
    latency_nanos: [AtomicU64; REQUEST_KINDS],
    /// Leases granted, per device (in device order).
    grants: Box<[AtomicU64]>,
    /// Acquires refused, per error code slot ([`code_slot`]).
    denials: [AtomicU64; CODES + 1],
    /// Leases ended, per reason.
    revocations: [AtomicU64; REVOKE_REASONS.len() + 1],
}

impl Metrics {
    /// Zeroed counters for `devices` devices.
    pub fn new(devices: usize) -> Metrics {
        Metrics {
            started: Instant::now(),
            latency: std::array::from_fn(|_| zeros()),
            latency_nanos: zeros(),
            grants: (0..devices).map(|_| AtomicU64::new(0)).collect(),
            denials: zeros(),
            revocations: zeros(),
        }
    }

    /// One request of kind `kind` took `elapsed`.
    pub fn observe(&self, kind: RequestKind, elapsed: Duration) {
        let kind = kind.wire_index() as usize;
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.latency[kind][bucket].fetch_add(1, Relaxed);
        self.latency_nanos[kind].fetch_add(nanos, Relaxed);
    }

    /// A lease of device `device` (its index) was granted.
    pub fn granted(&self, device: usize) {
        if let Some(c) = self.grants.get(device) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// An acquire was refused with `code`.
    pub fn denied(&self, code: ErrorCode) {
        self.denials[code_slot(code)].fetch_add(1, Relaxed);
    }

    /// A lease ended for `reason`.
    pub fn revoked(&self, reason: RevokeReason) {
        self.revocations[revoke_reason(reason)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of these counters and of `gauges`
    /// (read from the broker's state), for `devices`.
    pub fn render(&self, devices: &[DeviceInfo], gauges: &Gauges) -> String {
        let mut t = Exposition::default();
        t.family("barkeep_up", "gauge", "1 while barkeepd answers.");
        t.sample("barkeep_up", &[], 1);
        t.family(
            "barkeep_build_info",
            "gauge",
            "The daemon's version, as a label; always 1.",
        );
        t.sample(
            "barkeep_build_info",
            &[("version", crate::DAEMON_VERSION)],
            1,
        );
        t.family(
            "barkeep_uptime_seconds",
            "gauge",
            "Seconds since barkeepd started.",
        );
        t.sample(
            "barkeep_uptime_seconds",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        render_gauges(&mut t, devices, gauges);
        self.render_counters(&mut t, devices);
        self.render_latency(&mut t);
        render_devices(&mut t, devices);
        t.out
    }

    /// Grants by device, denials by code, revocations by reason.
    fn render_counters(&self, t: &mut Exposition, devices: &[DeviceInfo]) {
        t.family(
            "barkeep_grants_total",
            "counter",
            "Leases granted, by device.",
        );
        for (info, n) in devices.iter().zip(self.grants.iter()) {
            t.sample(
                "barkeep_grants_total",
                &[("device", &info.name)],
                n.load(Relaxed),
            );
        }
        t.family(
            "barkeep_denials_total",
            "counter",
            "Acquire requests refused, by error code (the audit log's deny events).",
        );
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            t.sample(
                "barkeep_denials_total",
                &[("code", code.slug())],
                self.denials[i].load(Relaxed),
            );
        }
        let unknown = self.denials[CODES].load(Relaxed);
        if unknown > 0 {
            t.sample("barkeep_denials_total", &[("code", "unknown")], unknown);
        }
        t.family(
            "barkeep_revocations_total",
            "counter",
            "Leases ended, by reason (released: by their holder).",
        );
        for (reason, n) in REVOKE_REASONS.iter().zip(&self.revocations) {
            t.sample(
                "barkeep_revocations_total",
                &[("reason", reason)],
                n.load(Relaxed),
            );
        }
        let other = self.revocations[REVOKE_REASONS.len()].load(Relaxed);
        if other > 0 {
            t.sample("barkeep_revocations_total", &[("reason", "other")], other);
        }
    }

    /// The request-duration histogram, one per request kind.
    fn render_latency(&self, t: &mut Exposition) {
        let h = "barkeep_request_duration_seconds";
        t.family(
            h,
            "histogram",
            "Time barkeepd took to decide and answer requests, by request kind (decoding and sending excluded).",
        );
        for (kind, name) in RequestKind::ALL
            .iter()
            .map(|k| (k.wire_index() as usize, k.name()))
        {
            let mut seen = 0u64;
            for (i, le) in BUCKET_LABELS.iter().enumerate() {
                seen += self.latency[kind][i].load(Relaxed);
                t.sample(
                    &format!("{h}_bucket"),
                    &[("request", name), ("le", le)],
                    seen,
                );
            }
            seen += self.latency[kind][BUCKET_NANOS.len()].load(Relaxed);
            t.sample(
                &format!("{h}_bucket"),
                &[("request", name), ("le", "+Inf")],
                seen,
            );
            let nanos = self.latency_nanos[kind].load(Relaxed);
            t.sample(
                &format!("{h}_sum"),
                &[("request", name)],
                nanos as f64 / 1e9,
            );
            t.sample(&format!("{h}_count"), &[("request", name)], seen);
        }
    }
}

/// Sessions, connections and leases by device and state.
fn render_gauges(t: &mut Exposition, devices: &[DeviceInfo], gauges: &Gauges) {
    t.family(
        "barkeep_sessions",
        "gauge",
        "Sessions open (clients past the handshake).",
    );
    t.sample("barkeep_sessions", &[], gauges.sessions);
    t.family(
        "barkeep_connections",
        "gauge",
        "Connections admitted, handshaking or established (counted against [limits] sessions).",
    );
    t.sample("barkeep_connections", &[], gauges.connections);
    t.family(
        "barkeep_leases",
        "gauge",
        "Leases the daemon holds, by device and state.",
    );
    for (info, counts) in devices.iter().zip(&gauges.leases) {
        for (state, n) in LEASE_STATES.iter().zip(counts) {
            t.sample(
                "barkeep_leases",
                &[("device", &info.name), ("state", state.as_str())],
                n,
            );
        }
    }
}

/// Per device: what it is, whether it is usable, what it can do.
fn render_devices(t: &mut Exposition, devices: &[DeviceInfo]) {
    t.family(
        "barkeep_device_info",
        "gauge",
        "Configured devices: backend, PCI address and ownership as labels; always 1.",
    );
    for d in devices {
        t.sample(
            "barkeep_device_info",
            &[
                ("device", &d.name),
                ("backend", &d.backend.to_string()),
                ("pci", d.pci.as_deref().unwrap_or("")),
                ("ownership", &d.ownership),
            ],
            1,
        );
    }
    t.family(
        "barkeep_device_usable",
        "gauge",
        "1 when the device opened and can serve, 0 when `barkeep status` shows a problem.",
    );
    for d in devices {
        t.sample(
            "barkeep_device_usable",
            &[("device", &d.name)],
            u8::from(d.problem.is_none()),
        );
    }
    t.family(
        "barkeep_capability",
        "gauge",
        "What the backend and kernel can do for each device: 1 yes, 0 no.",
    );
    for d in devices {
        let c = d.capabilities;
        for (name, yes) in [
            ("export", c.export),
            ("mmap", c.mmap),
            ("revoke", c.revoke),
            ("write_combining", c.write_combining),
            ("device_revoke", c.device_revoke),
        ] {
            t.sample(
                "barkeep_capability",
                &[("device", &d.name), ("capability", name)],
                u8::from(yes),
            );
        }
    }
}

/// What the broker's state says at one moment.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Sessions open.
    pub sessions: usize,
    /// Connections admitted.
    pub connections: usize,
    /// Per device (in device order), leases per state ([`LEASE_STATES`]
    /// order).
    pub leases: Vec<[u64; LEASE_STATES.len()]>,
}

/// Leases of `table` per device of `devices` and per state.
pub fn count_leases<B>(
    devices: &[DeviceInfo],
    table: &LeaseTable<B>,
) -> Vec<[u64; LEASE_STATES.len()]> {
    let mut counts = vec![[0u64; LEASE_STATES.len()]; devices.len()];
    for e in table.entries() {
        if let Some(i) = devices.iter().position(|d| d.name == e.lease.device) {
            counts[i][lease_state(e.state)] += 1;
        }
    }
    counts
}

/// Text in the exposition format: `# HELP` and `# TYPE` once per family,
/// then its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for ch in v.chars() {
                    match ch {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        ch => self.out.push(ch),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use barkeep_protocol::{
        Access, BackendKind, Capabilities, MemAttrRequest, PeerIdentity, Request, SliceRequest,
    };

    #[test]
    fn lease_states_and_revoke_reasons_are_labelled_with_their_names() {
        for (i, s) in LEASE_STATES.iter().enumerate() {
            assert_eq!(lease_state(*s), i);
        }
        for r in [
            RevokeReason::Released,
            RevokeReason::Disconnected,
            RevokeReason::Admin,
            RevokeReason::Policy,
            RevokeReason::Device,
            RevokeReason::Shutdown,
        ] {
            assert_eq!(REVOKE_REASONS[revoke_reason(r)], r.as_str());
        }
    }

    /// A broker with one simulated device, `grants` and `[metrics] extra`,
    /// and a session for `uid`.
    fn broker_with_session(extra: &str, uid: u32) -> (Broker, u64) {
        let text = format!(
            "[[device]]\nname = \"sim0\"\nsim = {{ bars = [ {{ index = 0, size = \"64K\" }} ] }}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nwindows = [\"0x0..0x8000\"]\nuids = [{uid}]\n[metrics]\n{extra}"
        );
        let config = crate::Config::from_toml_str(&text).unwrap();
        let devices = crate::open_devices(&config);
        let broker = Broker::new(config, devices);
        let (sink, _source) = crate::broker::event_channel(8);
        let peer = crate::server::identity::Peer {
            identity: PeerIdentity {
                uid,
                gid: uid,
                pid: std::process::id() as i32,
                ..Default::default()
            },
            pidfd: crate::sys::pidfd_open(std::process::id() as i32).unwrap(),
        };
        let session = broker.open_session(peer, "test".into(), sink).session_id;
        (broker, session)
    }

    fn metrics_of(b: &Broker, session: u64) -> Result<String, ErrorCode> {
        match b.handle(session, Request::Metrics) {
            Ok((barkeep_protocol::Response::Metrics(text), None)) => Ok(text),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.code),
        }
    }

    #[test]
    fn the_broker_counts_what_it_decides() {
        let (b, s) = broker_with_session("", 1000);
        let acquire = |offset| {
            b.handle(
                s,
                Request::Acquire(SliceRequest {
                    device: "sim0".into(),
                    bar: 0,
                    offset,
                    length: 0x1000,
                    access: Access::ReadOnly,
                    memattr: MemAttrRequest::Uncached,
                }),
            )
        };
        let (lease, _fd) = match acquire(0) {
            Ok((barkeep_protocol::Response::Granted(l, ..), fd)) => (l, fd),
            other => panic!("{other:?}"),
        };
        assert_eq!(acquire(0x8000).unwrap_err().code, ErrorCode::OutsideWindow);
        let text = metrics_of(&b, s).expect("anyone may read the metrics by default");
        for line in [
            "barkeep_sessions 1",
            "barkeep_grants_total{device=\"sim0\"} 1",
            "barkeep_leases{device=\"sim0\",state=\"active\"} 1",
            "barkeep_denials_total{code=\"outside-window\"} 1",
            "barkeep_request_duration_seconds_count{request=\"acquire\"} 2",
            "barkeep_revocations_total{reason=\"released\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        b.handle(s, Request::Release { lease: lease.id }).unwrap();
        let text = metrics_of(&b, s).unwrap();
        for line in [
            "barkeep_leases{device=\"sim0\",state=\"active\"} 0",
            "barkeep_revocations_total{reason=\"released\"} 1",
            "barkeep_request_duration_seconds_count{request=\"release\"} 1",
            "barkeep_request_duration_seconds_count{request=\"metrics\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn admin_only_metrics_refuse_everyone_else() {
        let (b, s) = broker_with_session("admin_only = true\n", 1000);
        assert_eq!(metrics_of(&b, s).unwrap_err(), ErrorCode::AdminOnly);
        let (b, s) = broker_with_session("admin_only = true\n", 0);
        assert!(metrics_of(&b, s).unwrap().contains("barkeep_up 1"));
    }

    #[test]
    fn bucket_labels_say_the_bounds() {
        for (nanos, label) in BUCKET_NANOS.iter().zip(BUCKET_LABELS) {
            let secs: f64 = label.parse().unwrap();
            assert!(
                (secs * 1e9 - *nanos as f64).abs() < 1e-3,
                "{label} vs {nanos}"
            );
        }
        assert!(BUCKET_NANOS.windows(2).all(|w| w[0] < w[1]));
    }

    fn device(name: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            backend: BackendKind::Sim,
            pci: None,
            ownership: "sim \"x\"".into(),
            bars: vec![],
            capabilities: Capabilities {
                export: true,
                mmap: true,
                ..Capabilities::default()
            },
            problem: None,
        }
    }

    #[test]
    fn counters_land_in_their_samples() {
        let m = Metrics::new(2);
        let devices = [device("a"), device("b")];
        m.granted(1);
        m.granted(1);
        m.granted(7); // not a device: ignored
        m.denied(ErrorCode::Denied);
        m.denied(ErrorCode::Other(999));
        m.revoked(RevokeReason::Policy);
        m.observe(RequestKind::Acquire, Duration::from_micros(10)); // on the bound: in it
        m.observe(RequestKind::Acquire, Duration::from_micros(11));
        m.observe(RequestKind::Acquire, Duration::from_secs(3));
        let g = Gauges {
            sessions: 3,
            connections: 4,
            leases: vec![[1, 0, 0, 2], [0, 5, 0, 0]],
        };
        let text = m.render(&devices, &g);
        let has = |line: &str| {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        };
        has("barkeep_sessions 3");
        has("barkeep_connections 4");
        has("barkeep_leases{device=\"a\",state=\"active\"} 1");
        has("barkeep_leases{device=\"a\",state=\"lingering\"} 2");
        has("barkeep_leases{device=\"b\",state=\"kept\"} 5");
        has("barkeep_grants_total{device=\"a\"} 0");
        has("barkeep_grants_total{device=\"b\"} 2");
        has("barkeep_denials_total{code=\"denied\"} 1");
        has("barkeep_denials_total{code=\"quota\"} 0");
        has("barkeep_denials_total{code=\"unknown\"} 1");
        has("barkeep_revocations_total{reason=\"policy\"} 1");
        has("barkeep_revocations_total{reason=\"admin\"} 0");
        has("barkeep_request_duration_seconds_bucket{request=\"acquire\",le=\"0.00001\"} 1");
        has("barkeep_request_duration_seconds_bucket{request=\"acquire\",le=\"0.000025\"} 2");
        has("barkeep_request_duration_seconds_bucket{request=\"acquire\",le=\"1\"} 2");
        has("barkeep_request_duration_seconds_bucket{request=\"acquire\",le=\"+Inf\"} 3");
        has("barkeep_request_duration_seconds_count{request=\"acquire\"} 3");
        has("barkeep_request_duration_seconds_sum{request=\"acquire\"} 3.000021");
        has("barkeep_request_duration_seconds_count{request=\"status\"} 0");
        has("barkeep_device_info{device=\"a\",backend=\"sim\",pci=\"\",ownership=\"sim \\\"x\\\"\"} 1");
        has("barkeep_capability{device=\"b\",capability=\"mmap\"} 1");
        has("barkeep_capability{device=\"b\",capability=\"revoke\"} 0");
        has("barkeep_device_usable{device=\"a\"} 1");
        has("# TYPE barkeep_request_duration_seconds histogram");
        has("# TYPE barkeep_grants_total counter");
        has("barkeep_up 1");
        assert!(text.ends_with('\n'));
    }
}
