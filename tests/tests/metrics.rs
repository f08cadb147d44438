//! Metrics end to end: `barkeep metrics` and `Client::metrics` return
//! Prometheus text (format 0.0.4) that a strict parser accepts, whose
//! counters move as grants, denials and revocations happen and whose
//! latency histogram counts requests; the `[metrics] socket` serves the
//! same series to anything that connects (and reads, or first writes an
//! HTTP request as `curl --http0.9` does).

use barkeep_client::{Access, Client, MemAttrRequest, RevokeTarget, SliceRequest};
use barkeep_tests::{TestDaemon, SIM_DEVICE};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Label names and values, sorted.
type Labels = Vec<(String, String)>;

/// One sample: metric name and labels -> value.
type Series = BTreeMap<(String, Labels), f64>;

/// A parsed exposition: each family's type, and every sample.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Series,
}

impl Exposition {
    /// The value of `name{labels}`; panics when the sample is missing.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        *self
            .samples
            .get(&(name.to_string(), key))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    /// Sample keys (name and labels), without values.
    fn keys(&self) -> Vec<&(String, Vec<(String, String)>)> {
        self.samples.keys().collect()
    }
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// `{k="v",...}` at the start of `s` -> labels and the rest of `s`.
fn parse_labels(s: &str, line: &str) -> (Vec<(String, String)>, String) {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').expect("labels start with {");
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r.to_string());
        }
        let (name, r) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_name(name, false), "bad label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = r.chars();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape \\{other:?} in {line:?}"),
                },
                Some('"') => break,
                Some('\n') | None => panic!("unterminated label value in {line:?}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            !labels.iter().any(|(n, _)| n == name),
            "label {name} twice in {line:?}"
        );
        labels.push((name.to_string(), value));
        rest = chars.as_str();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
            assert!(!rest.starts_with('}'), "trailing comma in {line:?}");
        } else {
            assert!(rest.starts_with('}'), "labels not closed in {line:?}");
        }
    }
}

/// Parses the text exposition format 0.0.4 strictly: every line is
/// `# HELP`, `# TYPE` (both once per family, HELP first, before its
/// samples) or `name{labels} value`; samples belong to the family declared
/// last; no series twice; counters end in `_total`; histograms have
/// cumulative buckets ending at `+Inf` that equal `_count`, and a `_sum`.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the text ends with a newline");
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Series::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name, true), "bad family name {name:?}");
            assert!(!help.trim().is_empty(), "empty HELP for {name}");
            assert!(
                helps.insert(name.into(), help.into()).is_none(),
                "HELP {name} twice"
            );
            current = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helps.contains_key(name), "TYPE {name} before its HELP");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type {kind:?}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "TYPE {name} twice"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} ends in _total");
            }
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let (family, kind) = current
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        let end = line.find(['{', ' ']).expect("name then value");
        let name = &line[..end];
        assert!(is_name(name, true), "bad metric name in {line:?}");
        let (mut labels, rest) = if line[end..].starts_with('{') {
            parse_labels(&line[end..], line)
        } else {
            (Vec::new(), line[end..].to_string())
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("one space before the value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
        };
        let allowed = if kind == "histogram" {
            [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name.to_string())
        } else {
            name == family
        };
        assert!(
            allowed,
            "{name} does not belong to family {family} ({kind})"
        );
        if name.ends_with("_bucket") {
            assert!(labels.iter().any(|(k, _)| k == "le"), "bucket without le");
        }
        labels.sort();
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "series twice: {line:?}"
        );
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        // Per label set without le: cumulative buckets, +Inf last, = count.
        let mut by_set: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for (_, labels) in samples.keys().filter(|(s, _)| *s == bucket) {
            let le = labels.iter().find(|(k, _)| k == "le").unwrap().1.clone();
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            let v = samples[&(format!("{family}_bucket"), labels.clone())];
            by_set.entry(rest).or_default().push((le, v));
        }
        assert!(!by_set.is_empty(), "histogram {family} has no buckets");
        for (set, mut buckets) in by_set {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert_eq!(buckets.last().unwrap().0, f64::INFINITY, "{family}{set:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{set:?} buckets are not cumulative: {buckets:?}"
            );
            let count = samples
                .get(&(format!("{family}_count"), set.clone()))
                .unwrap_or_else(|| panic!("no {family}_count{set:?}"));
            assert_eq!(*count, buckets.last().unwrap().1, "{family}{set:?}");
            let sum = samples
                .get(&(format!("{family}_sum"), set.clone()))
                .unwrap_or_else(|| panic!("no {family}_sum{set:?}"));
            assert!(*sum >= 0.0);
        }
    }
    Exposition { types, samples }
}

#[test]
fn the_parser_rejects_malformed_text() {
    let good = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n";
    parse(good);
    for bad in [
        "x_total 1\n",                                                       // no TYPE
        "# HELP x_total T.\n# TYPE x_total counter\nx_total{a=\"b} 1\n",     // unterminated
        "# HELP x_total T.\n# TYPE x_total counter\nx_total{a=\"b\"}  1\n",  // two spaces
        "# HELP x_total T.\n# TYPE x_total counter\nx_total 1\nx_total 2\n", // twice
        "# HELP x_total T.\n# TYPE x_total counter\ny_total 1\n",            // other family
        "# HELP x T.\n# TYPE x counter\nx 1\n",                              // no _total
        "# HELP x_total T.\n# TYPE x_total counter\nx_total one\n",          // value
        "# HELP h T.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h T.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        "# HELP x_total T.\n# TYPE x_total counter\nx_total 1", // no final newline
    ] {
        let r = std::panic::catch_unwind(|| parse(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

const PAGE: u64 = 4096;

fn slice(offset: u64, length: u64) -> SliceRequest {
    SliceRequest {
        device: "sim0".into(),
        bar: 0,
        offset,
        length,
        access: Access::ReadWrite,
        memattr: MemAttrRequest::Uncached,
    }
}

fn config(extra: &str) -> String {
    format!(
        "{SIM_DEVICE}\n[[grant]]\ndevice = \"sim0\"\nbar = 0\nwindows = [\"0x0..0x10000\"]\naccess = \"rw\"\nuids = [{me}]\n[admin]\nuids = [{me}]\n{extra}",
        me = barkeep_tests::me()
    )
}

/// Reads the metrics socket: connect, optionally write `request`, read
/// to the end.
fn scrape(path: &Path, request: Option<&[u8]>) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect the metrics socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    if let Some(r) = request {
        s.write_all(r).unwrap();
    }
    let mut text = String::new();
    s.read_to_string(&mut text)
        .expect("read the metrics to the end");
    text
}

#[test]
fn counters_move_as_grants_denials_and_revocations_happen() {
    let d = TestDaemon::start(&config(""));
    let client = Client::connect(d.socket()).unwrap();
    let admin = Client::connect(d.socket()).unwrap();
    let before = parse(&client.metrics().unwrap());
    let delta = |after: &Exposition, name: &str, labels: &[(&str, &str)]| {
        after.get(name, labels) - before.get(name, labels)
    };

    assert_eq!(before.get("barkeep_up", &[]), 1.0);
    assert!(before.get("barkeep_sessions", &[]) >= 2.0);
    assert_eq!(
        before.get(
            "barkeep_build_info",
            &[("version", &client.welcome().daemon_version)]
        ),
        1.0
    );
    assert_eq!(
        before.get(
            "barkeep_device_info",
            &[
                ("device", "sim0"),
                ("backend", "sim"),
                ("pci", ""),
                ("ownership", "sim")
            ]
        ),
        1.0
    );
    assert_eq!(
        before.get(
            "barkeep_capability",
            &[("device", "sim0"), ("capability", "export")]
        ),
        1.0
    );
    assert_eq!(
        before.get("barkeep_device_usable", &[("device", "sim0")]),
        1.0
    );
    for (family, kind) in [
        ("barkeep_sessions", "gauge"),
        ("barkeep_leases", "gauge"),
        ("barkeep_grants_total", "counter"),
        ("barkeep_denials_total", "counter"),
        ("barkeep_revocations_total", "counter"),
        ("barkeep_request_duration_seconds", "histogram"),
        ("barkeep_capability", "gauge"),
    ] {
        assert_eq!(before.types.get(family).map(String::as_str), Some(kind));
    }

    let a = client.acquire(slice(0, PAGE)).unwrap();
    let b = client.acquire(slice(PAGE, 2 * PAGE)).unwrap();
    let e = client.acquire(slice(0x10000, PAGE)).unwrap_err();
    assert_eq!(
        e.daemon_code(),
        Some(barkeep_client::ErrorCode::OutsideWindow)
    );
    let e = client.acquire(slice(0x800, PAGE)).unwrap_err();
    assert_eq!(e.daemon_code(), Some(barkeep_client::ErrorCode::Unaligned));
    let e = client.acquire(slice(0, PAGE)).unwrap_err(); // a's range
    assert_eq!(e.daemon_code(), Some(barkeep_client::ErrorCode::Conflict));

    let held = parse(&client.metrics().unwrap());
    let active = [("device", "sim0"), ("state", "active")];
    assert_eq!(held.get("barkeep_leases", &active), 2.0);
    assert_eq!(
        delta(&held, "barkeep_grants_total", &[("device", "sim0")]),
        2.0
    );
    for code in ["outside-window", "unaligned", "conflict"] {
        assert_eq!(
            delta(&held, "barkeep_denials_total", &[("code", code)]),
            1.0,
            "{code}"
        );
    }
    assert_eq!(
        delta(&held, "barkeep_denials_total", &[("code", "denied")]),
        0.0
    );
    let count = |e: &Exposition, request: &str| {
        e.get(
            "barkeep_request_duration_seconds_count",
            &[("request", request)],
        )
    };
    assert_eq!(count(&held, "acquire") - count(&before, "acquire"), 5.0);
    assert!(
        count(&held, "metrics") >= 1.0,
        "the first metrics request is counted"
    );
    assert!(
        held.get(
            "barkeep_request_duration_seconds_sum",
            &[("request", "acquire")]
        ) > 0.0
    );

    let (_fd, lease_a) = a.detach();
    client.release(lease_a.id).unwrap();
    assert_eq!(admin.revoke(RevokeTarget::Lease(b.lease().id)).unwrap(), 1);
    let after = parse(&client.metrics().unwrap());
    assert_eq!(after.get("barkeep_leases", &active), 0.0);
    let reasons =
        |e: &Exposition, reason: &str| e.get("barkeep_revocations_total", &[("reason", reason)]);
    assert_eq!(
        reasons(&after, "released") - reasons(&held, "released"),
        1.0
    );
    assert_eq!(reasons(&after, "admin") - reasons(&held, "admin"), 1.0);
    assert_eq!(reasons(&after, "policy"), 0.0);
    assert_eq!(count(&after, "release") - count(&held, "release"), 1.0);
    assert_eq!(count(&after, "revoke") - count(&held, "revoke"), 1.0);

    // The CLI prints the same series, as is.
    let (ok, v) = d.cli_json(&["metrics"]);
    assert!(ok, "{v}");
    let json = parse(v["metrics"].as_str().expect("metrics text"));
    let out = d.cli(&["metrics"]);
    assert!(out.status.success());
    let human = parse(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(json.keys(), after.keys());
    assert_eq!(human.keys(), after.keys());
    assert_eq!(
        human.get("barkeep_grants_total", &[("device", "sim0")]),
        after.get("barkeep_grants_total", &[("device", "sim0")])
    );
}

#[test]
fn the_metrics_socket_serves_the_same_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/metrics.sock");
    let d = TestDaemon::start(&config(&format!(
        "[metrics]\nsocket = {:?}\nsocket_mode = \"0640\"\n",
        path.display().to_string()
    )));
    let mode = std::fs::metadata(&path)
        .expect("the metrics socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    let client = Client::connect(d.socket()).unwrap();
    let held = client.acquire(slice(0, PAGE)).unwrap();
    let over_client = parse(&client.metrics().unwrap());
    let over_socket = parse(&scrape(&path, None));
    assert_eq!(over_socket.keys(), over_client.keys());
    for (name, labels) in [
        ("barkeep_grants_total", &[("device", "sim0")][..]),
        ("barkeep_leases", &[("device", "sim0"), ("state", "active")]),
        ("barkeep_sessions", &[]),
    ] {
        assert_eq!(
            over_socket.get(name, labels),
            over_client.get(name, labels),
            "{name}"
        );
    }
    assert_eq!(
        over_socket.get("barkeep_grants_total", &[("device", "sim0")]),
        1.0
    );
    // A peer that writes first (an HTTP request) still gets the text.
    let text = scrape(&path, Some(b"GET /metrics HTTP/1.0\r\n\r\n"));
    assert_eq!(parse(&text).keys(), over_client.keys());
    drop(held);

    // Many scrapes in a row, each complete.
    for _ in 0..20 {
        parse(&scrape(&path, None));
    }
    drop(client);
    drop(d);
    // The daemon was killed (SIGKILL): the stale socket is replaced on the
    // next start, not refused.
    let again = TestDaemon::start(&config(&format!(
        "[metrics]\nsocket = {:?}\n",
        path.display().to_string()
    )));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "the default mode");
    assert_eq!(
        parse(&scrape(&path, None)).get("barkeep_grants_total", &[("device", "sim0")]),
        0.0
    );
    drop(again);
}
