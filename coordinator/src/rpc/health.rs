//! The coordinator's own health port (`--health-listen`): the standard gRPC health service
//! (`grpc.health.v1.Health`, no token, call-rate and connection limited) served from the moment
//! the command starts until it exits, whatever it is doing: reading data, planning, loading,
//! waiting for workers, scoring, writing files, or between the fleets of a multi-step job.
//!
//! The fleet port's own health service exists only while a fleet serves, so a probe on it would
//! fail in those phases and a Kubernetes liveness probe would kill a coordinator that is working
//! (docs/ARCHITECTURE.md, "Health"). The status is `SERVING` from the start and turns
//! `NOT_SERVING` when a stop (SIGINT/SIGTERM) is requested.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use super::RateOnly;
use super::limits::{ClientGate, Limits};

/// The health server; dropping it closes the port.
pub struct HealthServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl HealthServer {
    /// Binds `addr` and serves health on it (`SERVING` before the first connection is
    /// accepted) until dropped; a stop request turns it `NOT_SERVING`.
    pub async fn start(addr: SocketAddr, limits: &Limits) -> std::io::Result<HealthServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let gate = ClientGate::new(limits);
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let service = InterceptedService::new(service, RateOnly(gate.clone()));
        let router = tonic::transport::Server::builder().add_service(service);
        let incoming = gate.incoming(listener);
        let server = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                warn!("health server on {addr} stopped: {e}");
            }
        });
        let on_stop = tokio::spawn(async move {
            let signal = crate::stop::requested().await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            info!("health on {addr} set to NOT_SERVING: stopping on {signal}");
        });
        info!("health (grpc.health.v1, no token) on {addr} until this command exits");
        Ok(HealthServer {
            addr,
            tasks: vec![server, on_stop],
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn status(addr: SocketAddr) -> Result<i32, tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = HealthClient::new(channel);
        let reply = client.check(HealthCheckRequest::default()).await?;
        Ok(reply.into_inner().status)
    }

    #[tokio::test]
    async fn serves_from_the_start() {
        let server = HealthServer::start("127.0.0.1:0".parse().unwrap(), &Limits::none())
            .await
            .unwrap();
        assert_eq!(
            status(server.addr()).await.unwrap(),
            ServingStatus::Serving as i32
        );
    }
}
