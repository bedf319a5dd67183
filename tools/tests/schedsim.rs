//! The scheduling simulation (`evalfleet-schedsim`) runs, and on its default fleet (64 workers of
//! uneven speed, late joiners, one silent worker, 100k items) with the worker's default batch of
//! 8 the real scheduler's makespan is within 5% of the ideal. Logical time: deterministic.

use std::process::Command;

/// The `ratio` figure of each `batch N:` line.
fn ratios(stdout: &str) -> Vec<(u32, f64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("batch")?;
            let (batch, rest) = rest.split_once(':')?;
            let ratio = rest.split_once("ratio ")?.1.split_whitespace().next()?;
            Some((batch.trim().parse().ok()?, ratio.parse().ok()?))
        })
        .collect()
}

#[test]
fn schedsim_default_fleet_is_within_five_percent_of_ideal() {
    let out = Command::new(env!("CARGO_BIN_EXE_evalfleet-schedsim"))
        .args(["--batch", "1,8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("64 workers"), "{stdout}");
    assert!(stdout.contains("100000 items"), "{stdout}");
    let found = ratios(&stdout);
    assert_eq!(found.len(), 2, "{stdout}");
    for (batch, ratio) in found {
        // No schedule beats the ideal; the aim is within 5% of it.
        assert!(
            (1.0..1.05).contains(&ratio),
            "batch {batch}: ratio {ratio}\n{stdout}"
        );
    }
}
