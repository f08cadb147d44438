//! Turning repeated runs into the reported figures: the median of each
//! figure over the repetitions, its spread (min..max), the ratios
//! barkeep/floor against the targets (and barkeep/floor4, for
//! information), the JSON object and the table.

use crate::load::RunResult;
use crate::scale::ScaleResult;
use serde_json::{json, Map, Value};

/// Every repetition of one server at one concurrency.
pub type Reps = Vec<RunResult>;

/// Every server's repetitions at one concurrency.
#[derive(Default)]
pub struct Conc {
    pub sessions: usize,
    pub floor: Reps,
    /// The floor with barkeep's datagrams (`floor4`): acquire -> reply + fd,
    /// release -> revoke + event; JSON `floor_protocol`.
    pub floor4: Reps,
    /// barkeepd started directly (no systemd: no fd store, no state file).
    pub barkeep: Reps,
    /// barkeepd as under systemd: $NOTIFY_SOCKET with an fd store, so every
    /// grant also stashes its buffer and every grant and end appends to the
    /// state file.
    pub fdstore: Reps,
}

/// The figures of a run, by JSON name.
const FIGURES: [&str; 6] = [
    "p50_us",
    "p99_us",
    "p999_us",
    "rps",
    "fairness",
    "server_cpu_us",
];

fn figure(r: &RunResult, name: &str) -> f64 {
    match name {
        "p50_us" => r.p50_us,
        "p99_us" => r.p99_us,
        "p999_us" => r.p999_us,
        "rps" => r.rps,
        "fairness" => r.fairness,
        "server_cpu_us" => r.server_cpu_us,
        _ => unreachable!("unknown figure {name}"),
    }
}

/// Median of `xs` (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn values(reps: &Reps, name: &str) -> Vec<f64> {
    reps.iter().map(|r| figure(r, name)).collect()
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Medians of one server at one concurrency, as the JSON shape.
fn medians(reps: &Reps) -> Value {
    let mut m = Map::new();
    for name in FIGURES {
        let digits = if name == "fairness" { 3 } else { 2 };
        m.insert(
            name.into(),
            json!(round(median(&values(reps, name)), digits)),
        );
    }
    Value::Object(m)
}

/// `[min, max]` of every figure.
fn spreads(reps: &Reps) -> Value {
    let mut m = Map::new();
    for name in FIGURES {
        let v = values(reps, name);
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m.insert(name.into(), json!([round(lo, 3), round(hi, 3)]));
    }
    m.insert("runs".into(), json!(reps.len()));
    m.insert(
        "round_trips".into(),
        json!(reps.iter().map(|r| r.round_trips).sum::<u64>()),
    );
    Value::Object(m)
}

/// One target of the issue, checked on the medians.
pub struct Check {
    pub what: String,
    pub value: f64,
    /// `<= limit` when true, `>= limit` when false.
    pub at_most: bool,
    pub limit: f64,
    pub ok: bool,
    /// The same ratio against `floor4` (information only: the targets are
    /// against the floor).
    pub vs_floor4: Option<f64>,
}

impl Check {
    fn new(what: String, value: f64, at_most: bool, limit: f64) -> Check {
        let ok = if at_most {
            value <= limit
        } else {
            value >= limit
        };
        Check {
            what,
            value,
            at_most,
            limit,
            ok,
            vs_floor4: None,
        }
    }

    /// Notes the same ratio against `floor4` (when it ran).
    fn against(mut self, floor4: &Reps, barkeep: &Reps, name: &str) -> Check {
        if !floor4.is_empty() {
            self.vs_floor4 = Some(ratio(floor4, barkeep, name));
        }
        self
    }
}

fn ratio(floor: &Reps, barkeep: &Reps, name: &str) -> f64 {
    let f = median(&values(floor, name));
    let b = median(&values(barkeep, name));
    if f > 0.0 {
        b / f
    } else {
        f64::NAN
    }
}

/// The targets, against this run's figures.
pub fn checks(results: &[Conc], scale: Option<&ScaleResult>) -> Vec<Check> {
    let mut out = Vec::new();
    for c in results {
        let (n, floor, barkeep, floor4) = (&c.sessions, &c.floor, &c.barkeep, &c.floor4);
        // A barkeep/floor target, with barkeep/floor4 beside it.
        let against_floors = |label: String, key: &str, lower_is_better: bool, limit: f64| {
            Check::new(label, ratio(floor, barkeep, key), lower_is_better, limit)
                .against(floor4, barkeep, key)
        };
        if *n == 1 {
            out.push(against_floors(
                "p50 at 1 session, barkeep/floor".into(),
                "p50_us",
                true,
                1.2,
            ));
        }
        if *n >= 16 {
            out.push(against_floors(
                format!("p99 at {n} sessions, barkeep/floor"),
                "p99_us",
                true,
                1.5,
            ));
            out.push(against_floors(
                format!("throughput at {n} sessions, barkeep/floor"),
                "rps",
                false,
                0.9,
            ));
            out.push(Check::new(
                format!("fairness at {n} sessions (barkeep)"),
                median(&values(barkeep, "fairness")),
                false,
                0.5,
            ));
        }
        out.push(against_floors(
            format!("server CPU per grant at {n} sessions, barkeep/floor"),
            "server_cpu_us",
            true,
            1.2,
        ));
    }
    if let Some(s) = scale {
        out.push(Check::new(
            "RSS with 10k sessions + 100k leases (MB, projected from the measured costs)".into(),
            s.rss_projected_bytes as f64 / 1e6,
            true,
            200.0,
        ));
        out.push(Check::new(
            format!(
                "acquire with {} overlapping leases / with none",
                crate::scale::OVERLAPPING
            ),
            s.overlap_held_us / s.overlap_none_us.max(f64::MIN_POSITIVE),
            true,
            2.0,
        ));
        out.push(Check::new(
            "revoke of 10k leases (ms)".into(),
            s.revoke_10k_ms,
            true,
            1000.0,
        ));
        out.push(Check::new(
            "exec to READY with 8 devices (ms)".into(),
            s.ready_ms,
            true,
            50.0,
        ));
    }
    out
}

/// The JSON object of the issue (`floor`, `barkeep`, `scale`), plus
/// `floor_protocol` (floor4), `barkeep_fdstore`, `spread`, `ratios`,
/// `targets`, `scale_detail` and `meta`. `ratios.N` has each server
/// against the floor by its own key, and `barkeep_vs_floor_protocol`.
pub fn json_report(results: &[Conc], scale: Option<&ScaleResult>, meta: Value) -> Value {
    // Per server: its medians and its spreads, by concurrency.
    type Side<'a> = (&'a str, Map<String, Value>, Map<String, Value>);
    let mut sides: [Side; 4] = [
        ("floor", Map::new(), Map::new()),
        ("floor_protocol", Map::new(), Map::new()),
        ("barkeep", Map::new(), Map::new()),
        ("barkeep_fdstore", Map::new(), Map::new()),
    ];
    let mut ratios = Map::new();
    for c in results {
        let n = c.sessions.to_string();
        for (i, reps) in [&c.floor, &c.floor4, &c.barkeep, &c.fdstore]
            .into_iter()
            .enumerate()
        {
            if !reps.is_empty() {
                sides[i].1.insert(n.clone(), medians(reps));
                sides[i].2.insert(n.clone(), spreads(reps));
            }
        }
        let mut r = Map::new();
        for (key, base, reps) in [
            ("floor_protocol", &c.floor, &c.floor4),
            ("barkeep", &c.floor, &c.barkeep),
            ("barkeep_fdstore", &c.floor, &c.fdstore),
            ("barkeep_vs_floor_protocol", &c.floor4, &c.barkeep),
        ] {
            if base.is_empty() || reps.is_empty() {
                continue;
            }
            let mut m = Map::new();
            for name in FIGURES {
                m.insert(name.into(), json!(round(ratio(base, reps, name), 3)));
            }
            r.insert(key.into(), Value::Object(m));
        }
        ratios.insert(n, Value::Object(r));
    }
    let targets: Vec<Value> = checks(results, scale)
        .into_iter()
        .map(|c| {
            let mut t = json!({"target": c.what, "value": round(c.value, 3), "limit": c.limit, "at_most": c.at_most, "ok": c.ok});
            if let Some(x) = c.vs_floor4 {
                t["vs_floor_protocol"] = json!(round(x, 3));
            }
            t
        })
        .collect();
    let mut out = Map::new();
    let mut spread = Map::new();
    for (name, medians, spreads) in sides {
        if !medians.is_empty() {
            out.insert(name.into(), Value::Object(medians));
            spread.insert(name.into(), Value::Object(spreads));
        }
    }
    out.insert("spread".into(), Value::Object(spread));
    out.insert("ratios".into(), Value::Object(ratios));
    out.insert("targets".into(), json!(targets));
    out.insert("meta".into(), meta);
    let mut out = Value::Object(out);
    if let Some(s) = scale {
        out["scale"] = json!({
            "sessions": s.sessions,
            "leases": s.leases,
            "rss_bytes": s.rss_bytes,
            "revoke_10k_ms": round(s.revoke_10k_ms, 2),
            "ready_ms": round(s.ready_ms, 2),
        });
        out["scale_detail"] = json!({
            "rss_base_bytes": s.rss_base_bytes,
            "bytes_per_session": round(s.bytes_per_session, 1),
            "bytes_per_lease": round(s.bytes_per_lease, 1),
            "rss_projected_bytes": s.rss_projected_bytes,
            "measured_separately": s.measured_separately,
            "fd_limit": s.fd_limit,
            "revoke_how": "admin Revoke{session} for the sessions holding the leases, all requests in flight at once; revoke_10k_ms scales the measured time to 10,000 leases",
            "revoke_leases": s.revoke_leases,
            "revoke_ms": round(s.revoke_ms, 2),
            "ready_via": s.ready_via,
            "ready_all_ms": s.ready_all_ms.iter().map(|x| round(*x, 2)).collect::<Vec<_>>(),
            "connect_sessions_ms": round(s.connect_ms, 1),
            "acquire_leases_ms": round(s.acquire_ms, 1),
            "overlap_none_us": round(s.overlap_none_us, 1),
            "overlap_held_us": round(s.overlap_held_us, 1),
            "overlap_how": "median acquire + release of a read-only 20 KiB slice over poked bytes, alone and with 4,096 live read-only leases of the same range",
        });
    }
    out
}

fn fmt_val(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The human table: medians, spreads and ratios, then scale and targets.
pub fn table(results: &[Conc], scale: Option<&ScaleResult>) -> String {
    let mut s = String::new();
    s.push_str(
        "floor4 = the floor with barkeep's datagrams (acquire -> reply + fd, release -> event); \
         ratio = against the floor, /fl4 = barkeep/floor4\n\n",
    );
    s.push_str(&format!(
        "{:>8} {:<14} {:>22} {:>22} {:>6} {:>22} {:>6} {:>22} {:>6}\n",
        "sessions",
        "figure",
        "floor (min..max)",
        "barkeep (min..max)",
        "ratio",
        "floor4 (min..max)",
        "/fl4",
        "+fd store (min..max)",
        "ratio"
    ));
    let span = |v: &[f64]| {
        if v.is_empty() {
            return "-".to_string();
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{} ({}..{})", fmt_val(median(v)), fmt_val(lo), fmt_val(hi))
    };
    // A ratio with a server that did not run (`--only`, `--no-fdstore`).
    let rat = |base: &Reps, reps: &Reps, name: &str| {
        if base.is_empty() || reps.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", ratio(base, reps, name))
        }
    };
    for c in results {
        for name in FIGURES {
            s.push_str(&format!(
                "{:>8} {:<14} {:>22} {:>22} {:>6} {:>22} {:>6} {:>22} {:>6}\n",
                c.sessions,
                name,
                span(&values(&c.floor, name)),
                span(&values(&c.barkeep, name)),
                rat(&c.floor, &c.barkeep, name),
                span(&values(&c.floor4, name)),
                rat(&c.floor4, &c.barkeep, name),
                span(&values(&c.fdstore, name)),
                rat(&c.floor, &c.fdstore, name),
            ));
        }
    }
    if let Some(sc) = scale {
        s.push_str(&format!(
            "\nscale: {} idle sessions: {:.0} bytes each; {} live leases: {:.0} bytes each; RSS {:.1} MB measured{} ({:.1} MB base); 10k sessions + 100k leases: {:.1} MB projected\n",
            sc.sessions,
            sc.bytes_per_session,
            sc.leases,
            sc.bytes_per_lease,
            sc.rss_bytes as f64 / 1e6,
            if sc.measured_separately {
                format!(", sessions and leases measured separately (fd limit {})", sc.fd_limit)
            } else {
                String::new()
            },
            sc.rss_base_bytes as f64 / 1e6,
            sc.rss_projected_bytes as f64 / 1e6,
        ));
        s.push_str(&format!(
            "revoke: {} leases in {:.1} ms (admin revoke by session) = {:.1} ms per 10k; READY ({}): {:.1} ms median of {:?}\n",
            sc.revoke_leases,
            sc.revoke_ms,
            sc.revoke_10k_ms,
            sc.ready_via,
            sc.ready_ms,
            sc.ready_all_ms.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        ));
        s.push_str(&format!(
            "overlap: acquire + release of a 20 KiB slice {:.1} us alone, {:.1} us with {} overlapping live leases\n",
            sc.overlap_none_us,
            sc.overlap_held_us,
            crate::scale::OVERLAPPING,
        ));
    }
    s.push_str("\ntargets (against the floor; barkeep/floor4 for information):\n");
    for c in checks(results, scale) {
        s.push_str(&format!(
            "  [{}] {}: {:.3} ({} {}){}\n",
            if c.ok { "ok" } else { "MISS" },
            c.what,
            c.value,
            if c.at_most { "<=" } else { ">=" },
            c.limit,
            c.vs_floor4
                .map(|x| format!("; barkeep/floor4 {x:.3}"))
                .unwrap_or_default(),
        ));
    }
    s
}
