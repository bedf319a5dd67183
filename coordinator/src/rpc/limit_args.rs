//! The command-line options that set the gRPC port's per-client [`Limits`] (`evalfleet run`,
//! the steps, `sweep` and `serve` flatten them into their arguments).

use clap::Args;

use super::limits::{
    DEFAULT_CALLS_PER_SECOND, DEFAULT_CONNECTIONS_PER_CLIENT, DEFAULT_MESSAGES_PER_SECOND, Limits,
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
}

impl LimitArgs {
    /// The limits these options set (bursts derived from the rates).
    pub fn limits(&self) -> Limits {
        Limits::from_rates(
            self.max_calls_per_second,
            self.max_messages_per_second,
            self.max_connections_per_client,
        )
    }
}
