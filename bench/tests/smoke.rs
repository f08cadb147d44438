//! The benchmark's quick mode, shrunk to a few thousand round trips: it
//! runs end to end against the real barkeepd and prints the JSON shape the
//! issue specifies, with sane (not fast) figures.

use std::process::{Command, Output};
use std::sync::Mutex;

/// One bench at a time: two at once would share the machine's CPUs (and
/// the servers' CPU figures would be each other's noise).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the quick mode as short as it goes (a few round trips per run)
/// with `args` added, and returns its JSON.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A window of several round trips at 256 sessions even for a debug
    // build on a busy machine: sessions are served round-robin, one
    // request each, so they complete their round trips together, and a
    // window shorter than one round can hold none.
    let short = [
        "--quick",
        "--json",
        "--run-ms",
        "250",
        "--warm-ms",
        "50",
        "--reps",
        "1",
    ];
    let out: Output = Command::new(env!("CARGO_BIN_EXE_barkeep-bench"))
        .args(short)
        .args(args)
        .output()
        .expect("run barkeep-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "barkeep-bench failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn quick_mode_prints_every_figure() {
    let v = bench_json(&[
        "--scale-sessions",
        "40",
        "--scale-leases",
        "300",
        "--ready-runs",
        "1",
    ]);

    for side in ["floor", "floor_protocol", "barkeep"] {
        for n in ["1", "16", "256"] {
            let r = &v[side][n];
            let num = |k: &str| {
                r[k].as_f64()
                    .unwrap_or_else(|| panic!("{side}.{n}.{k} is not a number: {r}"))
            };
            let (p50, p99, p999) = (num("p50_us"), num("p99_us"), num("p999_us"));
            assert!(
                0.0 < p50 && p50 <= p99 && p99 <= p999,
                "{side}.{n}: percentiles out of order: {r}"
            );
            assert!(num("rps") > 0.0, "{side}.{n}: {r}");
            let fairness = num("fairness");
            assert!((0.0..=1.0).contains(&fairness), "{side}.{n}: {r}");
            if n == "1" {
                assert_eq!(fairness, 1.0, "one session is its own busiest");
            }
            assert!(num("server_cpu_us") > 0.0, "{side}.{n}: {r}");
        }
    }
    // floor4 moves barkeep's datagrams: a release and its event besides
    // the acquire and reply, each as long as barkeep's.
    let meta = &v["meta"];
    for k in [
        "request_bytes",
        "reply_bytes",
        "release_bytes",
        "event_bytes",
    ] {
        assert!(meta[k].as_u64().is_some_and(|b| b > 0), "meta.{k}: {meta}");
    }
    for n in ["1", "16", "256"] {
        let r = &v["ratios"][n];
        for key in ["barkeep", "floor_protocol", "barkeep_vs_floor_protocol"] {
            assert!(
                r[key]["server_cpu_us"].as_f64().is_some_and(|x| x > 0.0),
                "ratios.{n}.{key}: {r}"
            );
        }
        assert!(
            v["spread"]["floor_protocol"][n]["runs"] == 1,
            "{}",
            v["spread"]
        );
    }
    let targets = v["targets"].as_array().expect("targets");
    assert!(
        targets
            .iter()
            .filter(|t| t["target"]
                .as_str()
                .is_some_and(|s| s.contains("barkeep/floor")))
            .all(|t| t["vs_floor_protocol"].as_f64().is_some_and(|x| x > 0.0)),
        "every ratio target also has barkeep/floor4: {targets:?}"
    );
    let s = &v["scale"];
    assert_eq!(s["sessions"], 40, "{s}");
    assert_eq!(s["leases"], 300, "{s}");
    assert!(s["rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20), "{s}");
    assert!(s["revoke_10k_ms"].as_f64().is_some_and(|x| x > 0.0), "{s}");
    assert!(s["ready_ms"].as_f64().is_some_and(|x| x > 0.0), "{s}");
    assert_eq!(
        v["scale_detail"]["revoke_leases"], 300,
        "every lease was revoked"
    );
    assert!(v["targets"].as_array().is_some_and(|t| !t.is_empty()));
}

/// `--only floor4` measures the floor with barkeep's datagrams alone: its
/// client checks that every release is answered by one event before the
/// next reply, so a run that completes round trips proves the exchange.
#[test]
fn only_floor4_measures_it_alone() {
    let v = bench_json(&["--only", "floor4", "--no-scale", "--sessions", "1,16"]);
    for n in ["1", "16"] {
        let r = &v["floor_protocol"][n];
        assert!(r["rps"].as_f64().is_some_and(|x| x > 0.0), "{n}: {r}");
        assert!(
            r["server_cpu_us"].as_f64().is_some_and(|x| x > 0.0),
            "{n}: {r}"
        );
    }
    for other in ["floor", "barkeep", "barkeep_fdstore"] {
        assert!(v.get(other).is_none(), "{other} was measured too: {v}");
    }
}
