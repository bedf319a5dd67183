//! evalfleet's developer tools (not shipped in the product images): `evalfleet-bench` (model
//! benchmarks and parity checks of the worker's model code), `evalfleet-schedsim` (the lease
//! scheduler against a simulated fleet, in logical time) and `evalfleet-loadbench` (results per
//! second through the coordinator's result path). They use the product libraries (`evalfleet`,
//! `evalfleet_worker`); this library holds what only they need.
//!
//! - [`profile`]: time per model span, for `evalfleet-bench --profile`.

pub mod profile;
