//! Limits that keep one client from exhausting the coordinator:
//!
//! - **Calls** ([`CallLimiter`]): a token bucket per client address on new RPC calls (the fleet
//!   stream and health checks). A call over the limit is refused with `RESOURCE_EXHAUSTED`; the
//!   check runs before the token check, so a flood of unauthenticated calls is cut short too.
//! - **Connections** ([`ConnectionGate`]): at most so many open TCP connections per client
//!   address; one more is closed as soon as it is accepted (TCP has no status to send). A
//!   connection that sends nothing within the handshake timeout (10 s: the HTTP/2 preface or the
//!   TLS hello), or nothing at all for the idle timeout (5 min; a worker heartbeats every few
//!   seconds, a control client reconnects on its own), is closed, so idle sockets cannot pile
//!   up to the descriptor limit. TCP keepalive finds peers that vanished; HTTP/2 PINGs are not
//!   sent, since a peer answering them would never be idle. Accept errors (EMFILE: out of
//!   descriptors) back off, 5 ms doubling to 1 s, instead of spinning a core.
//! - **Messages** ([`TokenBucket`] per worker stream): a worker stream that sends faster than its
//!   rate is *read more slowly*, not cut: HTTP/2 flow control then pushes back on the sender, and
//!   a legitimate burst of results is delayed, never lost.
//!
//! Together with the message-size cap and the per-connection stream cap (in [`super`]), a
//! misbehaving client costs the coordinator a bounded share of its time and memory. Refusals are
//! logged with the client's address (never a token), at exponentially spaced counts so that a
//! flood cannot flood the log as well.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// Default of `--max-calls-per-second`.
pub const DEFAULT_CALLS_PER_SECOND: f64 = 20.0;
/// Default of `--max-messages-per-second`.
pub const DEFAULT_MESSAGES_PER_SECOND: f64 = 50_000.0;
/// Default of `--max-connections-per-client`.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 256;
/// Default of `--handshake-timeout`: a new connection's first bytes must come within it.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--idle-connection-timeout`: a connection that sends nothing for it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// TCP keepalive on accepted connections: probes after this long without traffic.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The limits; `0` turns one off. The defaults are generous: a real worker sends a handful of
/// calls in its life and at most a few thousand results a second.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// New RPC calls per second per client address (sustained).
    pub calls_per_second: f64,
    /// Calls a client address may make at once before the rate applies (a fleet behind one NAT
    /// address starting together).
    pub call_burst: u32,
    /// Messages per second read from one worker stream (sustained).
    pub messages_per_second: f64,
    /// Messages one stream may send at once before the rate applies.
    pub message_burst: u32,
    /// Open TCP connections per client address.
    pub connections_per_client: usize,
    /// A connection that sends nothing for this long after it was accepted is closed.
    pub handshake_timeout: Option<Duration>,
    /// A connection that sends nothing for this long (after its first bytes) is closed.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_rates(
            DEFAULT_CALLS_PER_SECOND,
            DEFAULT_MESSAGES_PER_SECOND,
            DEFAULT_CONNECTIONS_PER_CLIENT,
        )
    }
}

impl Limits {
    /// The limits the command line sets: rates, with bursts derived from them (calls: ten
    /// seconds' worth, messages: one second's), and the connection cap; `0` turns one off.
    pub fn from_rates(calls_per_second: f64, messages_per_second: f64, connections: usize) -> Self {
        let burst = |n: f64| n.clamp(1.0, f64::from(u32::MAX)) as u32;
        Limits {
            calls_per_second,
            call_burst: burst(calls_per_second * 10.0),
            messages_per_second,
            message_burst: burst(messages_per_second),
            connections_per_client: connections,
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }

    /// With these connection timeouts (`None`: none).
    pub fn with_timeouts(self, handshake: Option<Duration>, idle: Option<Duration>) -> Self {
        Limits {
            handshake_timeout: handshake,
            idle_timeout: idle,
            ..self
        }
    }

    /// No limits at all (benchmarks).
    pub fn none() -> Self {
        Limits {
            calls_per_second: 0.0,
            call_burst: 0,
            messages_per_second: 0.0,
            message_burst: 0,
            connections_per_client: 0,
            handshake_timeout: None,
            idle_timeout: None,
        }
    }
}

/// Counts of what the limits refused or delayed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Calls refused with `RESOURCE_EXHAUSTED`.
    pub calls_refused: u64,
    /// Connections closed on accept.
    pub connections_refused: u64,
    /// Messages whose reading was delayed.
    pub messages_delayed: u64,
    /// Connections closed for sending nothing within the handshake or idle timeout.
    pub connections_timed_out: u64,
    /// Failed accepts (each followed by a backoff).
    pub accept_errors: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    calls_refused: AtomicU64,
    connections_refused: AtomicU64,
    pub(super) messages_delayed: AtomicU64,
    connections_timed_out: AtomicU64,
    accept_errors: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> LimitStats {
        LimitStats {
            calls_refused: self.calls_refused.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            messages_delayed: self.messages_delayed.load(Ordering::Relaxed),
            connections_timed_out: self.connections_timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; `None` when `rate` is 0 (no limit).
    pub fn new(rate: f64, burst: u32, now: Instant) -> Option<Self> {
        (rate > 0.0).then(|| {
            let burst = f64::from(burst.max(1));
            TokenBucket {
                rate,
                burst,
                tokens: burst,
                last: now,
            }
        })
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + gained).min(self.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes a token, going into debt if there is none; returns how long to wait until the debt
    /// is paid (zero when a token was there).
    pub fn take_or_wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// True when the bucket has refilled completely (its state carries no information).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The call and connection limits of one server. [`crate::rpc::Fleet::serve_on`] applies them
/// itself; a front end that builds its own tonic server (`evalfleet serve`) uses
/// [`ClientGate::incoming`] for its connections and [`ClientGate::check_call`] in its
/// interceptors.
#[derive(Debug, Clone)]
pub struct ClientGate {
    pub(super) counters: Arc<Counters>,
    /// Each worker stream's message rate and burst.
    messages: (f64, u32),
    pub(super) calls: Arc<CallLimiter>,
    connections: Arc<ConnectionGate>,
}

impl ClientGate {
    pub fn new(limits: &Limits) -> Self {
        let counters = Arc::new(Counters::default());
        ClientGate {
            calls: Arc::new(CallLimiter::new(limits, counters.clone())),
            connections: ConnectionGate::new(limits, counters.clone()),
            counters,
            messages: (limits.messages_per_second, limits.message_burst),
        }
    }

    /// A new worker stream's message bucket (`None` without a message limit).
    pub fn message_bucket(&self, now: Instant) -> Option<TokenBucket> {
        TokenBucket::new(self.messages.0, self.messages.1, now)
    }

    /// Counts one delayed message; returns the count so far.
    pub fn message_delayed(&self) -> u64 {
        self.counters
            .messages_delayed
            .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// `listener`'s connections, those over the per-address limit closed at once, each closed
    /// when silent past the handshake or idle timeout; a failed accept is retried after a
    /// backoff ([`accept_backoff`]). For `tonic::transport::Server::serve_with_incoming` (TLS,
    /// if configured, is applied by tonic on top).
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<Guarded>> + Send + 'static {
        let gate = self.connections.clone();
        let counters = self.counters.clone();
        futures::stream::unfold(listener, move |listener| {
            let (gate, counters) = (gate.clone(), counters.clone());
            async move {
                let mut backoff = Duration::ZERO;
                loop {
                    match listener.accept().await {
                        Ok((tcp, _)) => {
                            backoff = Duration::ZERO;
                            if let Some(conn) = gate.admit(tcp) {
                                return Some((Ok(conn), listener));
                            }
                        }
                        Err(e) => {
                            backoff = accept_backoff(backoff);
                            let n = counters.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                warn!(
                                    "accepting a connection failed: {e} ({n} failures so far); \
                                         retrying in {backoff:?}"
                                );
                            }
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
            }
        })
    }

    /// Admits or refuses (`RESOURCE_EXHAUSTED`) one call, by its peer's address.
    pub fn check_call<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        self.calls.check(req.remote_addr().map(|a| a.ip()))
    }

    /// What was refused or delayed so far.
    pub fn stats(&self) -> LimitStats {
        self.counters.snapshot()
    }
}

/// The wait after a failed accept, given the previous one (zero after a success): 5 ms, doubling
/// to 1 s. A listener out of descriptors (EMFILE) fails every accept at once; retrying without a
/// wait would spin a core until a descriptor frees up.
pub fn accept_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

/// Buckets kept before idle (full) ones are dropped, bounding memory under many addresses.
const MAX_TRACKED_CLIENTS: usize = 4096;

/// Per-address call buckets.
#[derive(Debug)]
pub(super) struct CallLimiter {
    rate: f64,
    burst: u32,
    clients: Mutex<HashMap<IpAddr, (TokenBucket, u64)>>,
    counters: Arc<Counters>,
}

impl CallLimiter {
    pub(super) fn new(limits: &Limits, counters: Arc<Counters>) -> Self {
        CallLimiter {
            rate: limits.calls_per_second,
            burst: limits.call_burst,
            clients: Mutex::new(HashMap::new()),
            counters,
        }
    }

    /// Admits or refuses one call from `ip` (`None`: address unknown, admitted).
    pub(super) fn check(&self, ip: Option<IpAddr>) -> Result<(), tonic::Status> {
        let (Some(ip), true) = (ip, self.rate > 0.0) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut clients = lock(&self.clients);
        if clients.len() >= MAX_TRACKED_CLIENTS && !clients.contains_key(&ip) {
            clients.retain(|_, (bucket, _)| !bucket.is_full(now));
        }
        let (bucket, refused) = match clients.entry(ip) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Some(bucket) = TokenBucket::new(self.rate, self.burst, now) else {
                    return Ok(());
                };
                e.insert((bucket, 0))
            }
        };
        if bucket.try_take(now) {
            return Ok(());
        }
        *refused += 1;
        let n = *refused;
        drop(clients);
        self.counters.calls_refused.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            warn!(
                "refused a call from {ip}: over the limit of {} calls/s (burst {}); {n} refused so far",
                self.rate, self.burst
            );
        }
        Err(tonic::Status::resource_exhausted(format!(
            "too many calls from {ip}: the coordinator allows {} calls per second per client address (burst {}); retry later",
            self.rate, self.burst
        )))
    }
}

/// Open connections per address.
#[derive(Debug)]
pub(super) struct ConnectionGate {
    max: usize,
    open: Mutex<HashMap<IpAddr, (usize, u64)>>,
    counters: Arc<Counters>,
    handshake_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl ConnectionGate {
    pub(super) fn new(limits: &Limits, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(ConnectionGate {
            max: limits.connections_per_client,
            open: Mutex::new(HashMap::new()),
            counters,
            handshake_timeout: limits.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        })
    }

    /// Wraps an accepted connection if its address is under the limit; `None` closes it.
    pub(super) fn admit(self: &Arc<Self>, tcp: TcpStream) -> Option<Guarded> {
        // Latency matters more than packet count: each lease request waits for its answer.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE)
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let ip = tcp.peer_addr().ok().map(|a| a.ip());
        if let (Some(ip), true) = (ip, self.max > 0) {
            let mut open = lock(&self.open);
            let (count, refused) = open.entry(ip).or_default();
            if *count >= self.max {
                *refused += 1;
                let n = *refused;
                drop(open);
                self.counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    warn!(
                        "closed a connection from {ip}: it already holds {} (the limit per client address); {n} closed so far",
                        self.max
                    );
                }
                return None;
            }
            *count += 1;
        }
        let accepted = tokio::time::Instant::now();
        let timer = self
            .handshake_timeout
            .or(self.idle_timeout)
            .map(|t| Box::pin(tokio::time::sleep_until(accepted + t)));
        Some(Guarded {
            tcp,
            ip: ip.filter(|_| self.max > 0),
            gate: self.clone(),
            accepted,
            last_read: None,
            timer,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut open = lock(&self.open);
        if let Some((count, refused)) = open.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 && *refused == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// An accepted connection counted against its address until dropped, and closed (its reads
/// fail with `TimedOut`) once silent past its deadline.
pub struct Guarded {
    tcp: TcpStream,
    /// Counted under this address (`None`: not counted).
    ip: Option<IpAddr>,
    gate: Arc<ConnectionGate>,
    accepted: tokio::time::Instant,
    /// When bytes last came (`None`: none yet).
    last_read: Option<tokio::time::Instant>,
    /// Fires at the deadline (moved on lazily when it fires after newer bytes).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    /// The deadline for the next bytes: the handshake timeout before the first ones, the idle
    /// timeout after.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self.last_read {
            None => self
                .gate
                .handshake_timeout
                .or(self.gate.idle_timeout)
                .map(|t| self.accepted + t),
            Some(last) => self.gate.idle_timeout.map(|t| last + t),
        }
    }

    /// `Ready(Err)` once the deadline has passed with nothing read; else registers the wake-up.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let (Some(deadline), Some(timer)) = (self.deadline(), self.timer.as_mut()) else {
                return Poll::Pending;
            };
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if tokio::time::Instant::now() >= deadline => {
                    self.gate
                        .counters
                        .connections_timed_out
                        .fetch_add(1, Ordering::Relaxed);
                    let what = if self.last_read.is_none() {
                        "no handshake within the handshake timeout"
                    } else {
                        "idle past the idle timeout"
                    };
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        what,
                    )));
                }
                // Bytes came after the timer was set: it is moved on above.
                Poll::Ready(()) => {}
            }
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.gate.release(ip);
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Some(tokio::time::Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent between statements; a panic elsewhere must not stop admission.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0).unwrap();
        assert_eq!((0..5).filter(|_| b.try_take(t0)).count(), 3);
        // Half a second at 2/s refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.try_take(t1));
        assert!(!b.try_take(t1));
        // Never more than the burst, however long it waited.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.try_take(t2)).count(), 3);
    }

    #[test]
    fn take_or_wait_says_how_long_the_debt_lasts() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 1, t0).unwrap();
        assert_eq!(b.take_or_wait(t0), Duration::ZERO);
        let wait = b.take_or_wait(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        let wait = b.take_or_wait(t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        assert!(TokenBucket::new(0.0, 5, Instant::now()).is_none());
        let counters = Arc::new(Counters::default());
        let limiter = CallLimiter::new(&Limits::none(), counters.clone());
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!((0..1000).all(|_| limiter.check(Some(ip)).is_ok()));
        assert_eq!(counters.snapshot(), LimitStats::default());
    }

    #[test]
    fn calls_over_the_limit_are_resource_exhausted_per_address() {
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            calls_per_second: 0.001,
            call_burst: 2,
            ..Limits::default()
        };
        let limiter = CallLimiter::new(&limits, counters.clone());
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert!(limiter.check(Some(a)).is_ok() && limiter.check(Some(a)).is_ok());
        let err = limiter.check(Some(a)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("10.0.0.1"), "{}", err.message());
        // Another address has its own bucket.
        assert!(limiter.check(Some(b)).is_ok());
        assert_eq!(counters.snapshot().calls_refused, 1);
    }
}
