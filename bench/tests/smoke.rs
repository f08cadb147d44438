//! The benchmark's quick mode, shrunk to a few thousand round trips: it
//! runs end to end against the real barkeepd and prints the JSON shape the
//! issue specifies, with sane (not fast) figures.

use std::process::Command;

#[test]
fn quick_mode_prints_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_barkeep-bench"))
        .args([
            "--quick",
            "--json",
            "--run-ms",
            "60",
            "--warm-ms",
            "20",
            "--reps",
            "1",
            "--scale-sessions",
            "40",
            "--scale-leases",
            "300",
            "--ready-runs",
            "1",
        ])
        .output()
        .expect("run barkeep-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "barkeep-bench failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    for side in ["floor", "barkeep"] {
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
