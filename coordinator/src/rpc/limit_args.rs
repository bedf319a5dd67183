//! The command-line options that set the gRPC port's per-client [`Limits`], the lease guards
//! and the local workers' restarts (`evalfleet run`, the steps, `sweep` and `serve` flatten them
//! into their arguments).

use clap::Args;

use super::limits::{
    DEFAULT_CALLS_PER_SECOND, DEFAULT_CONNECTIONS_PER_CLIENT, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MESSAGES_PER_SECOND, Limits,
};

/// The per-client limits of the gRPC port (`evalfleet run`, the steps, `sweep` and `serve`).
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// RPC calls per second per client address (bursts of ten seconds' worth); over it, calls
    /// are refused with RESOURCE_EXHAUSTED. 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CALLS_PER_SECOND)]
    pub max_calls_per_second: f64,
    /// Messages per second read from one worker's stream (faster senders are read more slowly,
    /// nothing is lost). 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MESSAGES_PER_SECOND)]
    pub max_messages_per_second: f64,
    /// Open connections per client address; more are closed at once. 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONNECTIONS_PER_CLIENT)]
    pub max_connections_per_client: usize,
    /// A connection that sends nothing within SECS of being accepted (no HTTP/2 preface, no TLS
    /// hello) is closed. 0 = never.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          default_value_t = DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64())]
    pub handshake_timeout: f64,
    /// A connection that sends nothing for SECS is closed (workers heartbeat every few seconds;
    /// clients reconnect on their own). 0 = never.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_connection_timeout: f64,
    /// A lease without any item result (or its model loaded) for SECS is taken back and its
    /// worker told to stop, however regularly its heartbeats come (a wedged GPU keeps its timer
    /// running); the items go to other workers. 0 = no deadline.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          default_value_t = crate::sched::DEFAULT_LEASE_PROGRESS_TIMEOUT.as_secs_f64())]
    pub lease_progress_timeout: f64,
    /// A worker that sends N refused results (the wrong kind for its item, a wrong number of
    /// probabilities, NaN or infinite scores, oversized texts, items of leases not its own) gets
    /// no more leases. 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = crate::sched::DEFAULT_MAX_INVALID_RESULTS)]
    pub max_invalid_results: u32,
    /// A local worker (--workers) that dies is started again after a backoff (1 s, doubling up
    /// to 30 s) and its leases go to the others; one that dies more than N times within
    /// --worker-restart-window stays down, and the job fails, with the workers' last stderr
    /// lines, once every local worker is down.
    #[arg(long, value_name = "N", default_value_t = crate::local::DEFAULT_MAX_RESTARTS)]
    pub max_worker_restarts: u32,
    /// The window of --max-worker-restarts, in seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          default_value_t = crate::local::DEFAULT_RESTART_WINDOW.as_secs_f64())]
    pub worker_restart_window: f64,
}

/// A number of seconds: finite, >= 0, at most a year (so that it fits a `Duration` from now).
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=365.0 * 86400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a number of seconds from 0 to 31536000, got {s:?}"
        )),
    }
}

impl LimitArgs {
    /// The scheduler settings these options set (the rest default).
    pub fn sched(&self) -> crate::sched::SchedConfig {
        let timeout = self.lease_progress_timeout;
        crate::sched::SchedConfig {
            lease_progress_timeout: (timeout > 0.0)
                .then(|| std::time::Duration::from_secs_f64(timeout)),
            max_invalid_results: self.max_invalid_results,
            ..Default::default()
        }
    }

    /// When local workers that die are started again.
    pub fn restarts(&self) -> crate::local::RestartPolicy {
        crate::local::RestartPolicy {
            max_restarts: self.max_worker_restarts,
            window: std::time::Duration::from_secs_f64(self.worker_restart_window),
            ..Default::default()
        }
    }

    /// The limits these options set (bursts derived from the rates).
    pub fn limits(&self) -> Limits {
        let secs = |s: f64| (s > 0.0).then(|| std::time::Duration::from_secs_f64(s));
        Limits::from_rates(
            self.max_calls_per_second,
            self.max_messages_per_second,
            self.max_connections_per_client,
        )
        .with_timeouts(
            secs(self.handshake_timeout),
            secs(self.idle_connection_timeout),
        )
    }
}
