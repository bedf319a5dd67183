//! How `evalfleet status` shows a coordinator's jobs and workers: a table for people, JSON for
//! scripts (`--json`).

use std::fmt::Write as _;

use evalfleet_proto::v1 as pb;
use serde_json::{Value, json};

/// The status as text: one line per job (done/total, rate, ETA), then one per worker; with a
/// single job (`evalfleet status ID`), also its files or its error.
pub fn table(reply: &pb::StatusReply, one_job: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<10} {:<14} {:>13} {:>9} {:>8}  NAME",
        "JOB", "STATE", "STEP", "DONE/TOTAL", "RATE", "ETA"
    );
    for j in &reply.jobs {
        let step = if j.step.is_empty() { "-" } else { &j.step };
        let _ = writeln!(
            out,
            "{:<8} {:<10} {:<14} {:>13} {:>9} {:>8}  {}",
            j.job_id,
            j.state,
            step,
            format!("{}/{}", j.done, j.total),
            rate(j.items_per_second),
            eta(j.eta_seconds),
            j.name
        );
        if one_job {
            if !j.steps_done.is_empty() {
                let _ = writeln!(out, "  steps done: {}", j.steps_done.join(", "));
            }
            if j.failed > 0 {
                let _ = writeln!(out, "  failed items: {}", j.failed);
            }
            if j.leases_outstanding > 0 {
                let _ = writeln!(out, "  leases outstanding: {}", j.leases_outstanding);
            }
            if !j.error.is_empty() {
                let _ = writeln!(out, "  error: {}", j.error);
            }
            for f in &j.files {
                let _ = writeln!(out, "  wrote {f}");
            }
        }
    }
    if !reply.workers.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:<8} {:>7} {:>9} {:>6} {:>5}  MODELS",
            "WORKER", "DEVICE", "ITEMS", "RATE", "LEASES", "LOADS"
        );
        for w in &reply.workers {
            let _ = writeln!(
                out,
                "{:<24} {:<8} {:>7} {:>9} {:>6} {:>5}  {}",
                w.worker_id,
                w.device,
                w.items_done,
                rate(w.items_per_second),
                w.leases_outstanding,
                w.model_loads,
                w.models_held.join(", ")
            );
        }
    }
    out
}

fn rate(per_second: f64) -> String {
    if per_second > 0.0 {
        format!("{per_second:.2}/s")
    } else {
        "-".into()
    }
}

/// Seconds as `1h02m`, `3m05s`, `12s`; `-` when unknown (negative).
pub fn eta(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The status as JSON: `{"jobs": [...], "workers": [...]}` with the proto's field names.
pub fn json(reply: &pb::StatusReply) -> Value {
    let jobs: Vec<Value> = reply
        .jobs
        .iter()
        .map(|j| {
            json!({
                "job_id": j.job_id, "name": j.name, "state": j.state, "step": j.step,
                "done": j.done, "total": j.total, "failed": j.failed,
                "items_per_second": j.items_per_second, "eta_seconds": j.eta_seconds,
                "leases_outstanding": j.leases_outstanding, "steps_done": j.steps_done,
                "error": j.error, "files": j.files,
                "submitted_seq": j.submitted_seq, "ended_seq": j.ended_seq,
            })
        })
        .collect();
    let workers: Vec<Value> = reply
        .workers
        .iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id, "device": w.device, "models_held": w.models_held,
                "items_done": w.items_done, "items_per_second": w.items_per_second,
                "leases_outstanding": w.leases_outstanding, "model_loads": w.model_loads,
                "lease_jobs": w.lease_jobs,
            })
        })
        .collect();
    json!({
        "jobs": jobs, "workers": workers, "next_after_seq": reply.next_after_seq,
        "workers_omitted": reply.workers_omitted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_formats() {
        assert_eq!(eta(-1.0), "-");
        assert_eq!(eta(f64::NAN), "-");
        assert_eq!(eta(12.4), "12s");
        assert_eq!(eta(185.0), "3m05s");
        assert_eq!(eta(3720.0), "1h02m");
    }

    #[test]
    fn table_shows_progress_rate_and_eta() {
        let reply = pb::StatusReply {
            jobs: vec![pb::JobStatus {
                job_id: "job-2".into(),
                name: "a.yaml".into(),
                state: "running".into(),
                step: "step1".into(),
                done: 5,
                total: 16,
                items_per_second: 1.25,
                eta_seconds: 8.8,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = table(&reply, false);
        let line = text.lines().nth(1).unwrap();
        for part in [
            "job-2", "running", "step1", "5/16", "1.25/s", "9s", "a.yaml",
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
        assert_eq!(json(&reply)["jobs"][0]["done"], 5);
    }
}
