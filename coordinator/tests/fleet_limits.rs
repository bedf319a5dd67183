//! Per-client limits with real clients over loopback: a client that floods calls is refused with
//! RESOURCE_EXHAUSTED, one that opens too many connections has the extra ones closed, one that
//! floods messages is read more slowly, and meanwhile a well-behaved worker finishes its job.
//! Other loopback addresses (127.0.0.2, .3) stand for other clients. Counts are asserted, and
//! the one bound that involves time uses the time measured.

mod rpc_client;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use evalfleet::rpc::Fleet;
use evalfleet::rpc::limits::{LimitStats, Limits};
use evalfleet_proto::v1 as pb;
use pb::worker_message::Msg as Up;
use rpc_client::{TOKEN, hello, msg, open, plain_channel, start, work};
use tonic::Code;

const CALLS: usize = 40;
const FLOOD_CONNECTIONS: usize = 10;
const HEARTBEATS: usize = 400;

/// Polls `fleet`'s limit counters until `reached` holds (fails after a minute: a hang guard,
/// not a timing assumption).
async fn wait_stats(fleet: &Fleet, reached: impl Fn(&LimitStats) -> bool) -> LimitStats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = fleet.limit_stats();
        if reached(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "limits never reached: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_limited_and_a_good_worker_still_finishes() {
    let limits = Limits {
        calls_per_second: 1.0,
        call_burst: 3,
        messages_per_second: 200.0,
        message_burst: 20,
        connections_per_client: 4,
        ..Limits::default()
    };
    let (fleet, server) = start(20, None, limits).await;
    let flooder: IpAddr = [127, 0, 0, 2].into();

    // Calls: one connection, many calls (with a wrong token: the rate check comes first).
    let started = Instant::now();
    let channel = plain_channel(&server, Some(flooder)).await.unwrap();
    let mut codes: HashMap<Code, usize> = HashMap::new();
    let mut exhausted_message = String::new();
    for _ in 0..CALLS {
        let err = open(channel.clone(), Some("wrong"), hello())
            .await
            .unwrap_err();
        if err.code() == Code::ResourceExhausted {
            exhausted_message = err.message().to_string();
        }
        *codes.entry(err.code()).or_default() += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let unauthenticated = codes.get(&Code::Unauthenticated).copied().unwrap_or(0);
    let exhausted = codes.get(&Code::ResourceExhausted).copied().unwrap_or(0);
    assert_eq!(unauthenticated + exhausted, CALLS, "{codes:?}");
    // The burst, plus what the rate refilled while the loop ran.
    assert!(
        unauthenticated as f64 <= 3.0 + elapsed + 1.0,
        "{unauthenticated} calls got through in {elapsed:.2} s"
    );
    assert!(
        exhausted_message.contains("too many calls from 127.0.0.2"),
        "{exhausted_message:?}"
    );
    assert_eq!(fleet.limit_stats().calls_refused, exhausted as u64);

    // Connections: the flooder holds one already; of ten more, all beyond four are closed.
    let mut held = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(flooder, 0)).unwrap();
        held.push(socket.connect(server.addr).await.unwrap());
    }
    let refused = (1 + FLOOD_CONNECTIONS - 4) as u64;
    wait_stats(&fleet, |s| s.connections_refused >= refused).await;

    // Messages: a third client floods heartbeats while a good worker (127.0.0.1) runs the job.
    let message_flood = async {
        let channel = plain_channel(&server, Some([127, 0, 0, 3].into()))
            .await
            .unwrap();
        let (tx, inbound) = open(channel, Some(TOKEN), hello()).await.unwrap();
        for _ in 0..HEARTBEATS {
            let beat = msg(Up::Heartbeat(pb::Heartbeat::default()));
            tx.send(beat).await.unwrap();
        }
        (tx, inbound)
    };
    let good = async { work(plain_channel(&server, None).await.unwrap()).await };
    let (answered, _flood) = tokio::join!(good, message_flood);
    assert_eq!(answered.len(), 20);
    let done = fleet.wait_complete().await;
    assert_eq!((done.done, done.failed, done.total), (20, 0, 20));
    let stats = wait_stats(&fleet, |s| s.messages_delayed > 0).await;
    // The extra connections stayed refused; the good worker's were never counted against it.
    assert_eq!(stats.connections_refused, refused, "{stats:?}");
    drop(held);
    server.stop();
}

/// `evalfleet serve`'s hub reads each worker stream at the same message rate as `evalfleet run`'s
/// fleet: a flood of heartbeats is delayed (counted in the hub's limit counters), and the stream
/// still answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_hub_reads_a_flooding_stream_more_slowly_too() {
    use evalfleet::rpc::FleetOptions;
    use evalfleet::serve::hub::{Hub, HubService};
    use evalfleet::serve::metrics::Metrics;
    use evalfleet_proto::v1::fleet_server::FleetServer;
    use pb::coordinator_message::Msg as Down;

    let limits = Limits {
        messages_per_second: 200.0,
        message_burst: 20,
        ..Limits::none()
    };
    let opts = FleetOptions {
        job_id: "serve".into(),
        limits,
        ..Default::default()
    };
    let hub = Hub::new(opts, Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FleetServer::new(HubService { hub: hub.clone() }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (tx, mut inbound) = open(channel, Some(TOKEN), hello()).await.unwrap();
    assert!(matches!(
        rpc_client::next(&mut inbound).await,
        Down::Welcome(_)
    ));
    for _ in 0..HEARTBEATS {
        tx.send(msg(Up::Heartbeat(pb::Heartbeat::default())))
            .await
            .unwrap();
    }
    // Read after the flood: the reply proves every heartbeat before it was read.
    tx.send(msg(Up::LeaseRequest(pb::LeaseRequest { max_items: 1 })))
        .await
        .unwrap();
    assert!(matches!(
        rpc_client::next(&mut inbound).await,
        Down::NoWork(_)
    ));
    // 400 heartbeats against a burst of 20 at 200 a second: reading them took about 2 s.
    let delayed = hub.gate().stats().messages_delayed;
    assert!(delayed > 0, "no message was delayed");
    server.abort();
}
