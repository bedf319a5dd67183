//! A minimal HTTP/1.1 responder for the metrics port: `GET /metrics` answers the Prometheus text,
//! anything else 404 (405 for other methods). One request per connection (`Connection: close`),
//! request heads over 8 KiB or slower than 10 seconds are dropped, at most
//! [`MAX_CONNECTIONS`] connections are open at once (more are closed as soon as they are
//! accepted), and a failed accept (EMFILE) backs off before the next, so a scraper or a stray
//! client cannot hold the coordinator's memory, tasks or descriptors, nor make it spin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::rpc::limits::accept_backoff;

use super::metrics::Metrics;

/// The largest request head read.
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once (a scraper needs one at a time).
pub const MAX_CONNECTIONS: usize = 64;

/// The metrics endpoint, serving until dropped or [`MetricsServer::stop`].
pub struct MetricsServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `metrics` on `listener`.
    pub fn start(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            let (mut backoff, mut errors, mut refused) = (Duration::ZERO, 0u64, 0u64);
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        backoff = accept_backoff(backoff);
                        errors += 1;
                        if errors.is_power_of_two() {
                            warn!("metrics port: accepting failed: {e} ({errors} so far)");
                        }
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                backoff = Duration::ZERO;
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(
                            "metrics port: closed a connection from {peer}: {MAX_CONNECTIONS} are \
                                 open ({refused} closed so far)"
                        );
                    }
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &metrics).await {
                        debug!("metrics request from {peer}: {e}");
                    }
                    drop(permit);
                });
            }
        });
        Ok(MetricsServer { addr, task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head and writes the response.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow request head"))??;
    let (status, body) = route(&head, metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status.starts_with("200") {
            "text/plain; version=0.0.4; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        },
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The status line's tail and the body for a request head.
fn route(head: &str, metrics: &Metrics) -> (&'static str, String) {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        ("GET", _) => ("404 Not Found", "only /metrics is served here\n".into()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".into()),
    }
}

/// Reads until the blank line that ends the head (or [`MAX_HEAD`] bytes, or end of stream).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_metrics_answers_the_exposition_text_and_other_paths_404() {
        let metrics = Metrics::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = MetricsServer::start(listener, metrics).unwrap();
        for (request, want) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        ] {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            assert!(text.starts_with(want), "{request:?} → {text}");
            if want.ends_with("OK") {
                assert!(text.contains("version=0.0.4"), "{text}");
                assert!(text.contains("\r\n\r\n# HELP evalfleet_"), "{text}");
            }
        }
        server.stop();
    }
}
