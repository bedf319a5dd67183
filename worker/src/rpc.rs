//! The worker's side of the fleet stream: hello, heartbeats, lease requests, streamed results.
