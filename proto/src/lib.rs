//! The gRPC contract between the evalfleet coordinator and its workers (`evalfleet.v1`).

/// Bumped on any incompatible change to fleet.proto; both sides refuse a mismatch.
pub const PROTOCOL_VERSION: u32 = 2;

pub mod v1 {
    tonic::include_proto!("evalfleet.v1");
}
