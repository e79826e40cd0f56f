//! The resolver end to end on loopback: a scripted upstream, real UDP and TCP clients.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};
use tollgate_resolver::{
    Asker, ByAddress, DnsConfig, DnsServer, DomainName, Hooks, NameScope, RefusalMode,
    UpstreamConfig, UpstreamProtocol, sockets::ListenConfig,
};

/// Bound on every wait; no test depends on the resolver being fast.
const WAIT: Duration = Duration::from_secs(10);
const EDGE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// A scripted upstream on 127.0.0.1: the zone of `zone_answer`, over UDP and TCP on one port.
struct Upstream {
    address: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstream {
    async fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(address).await.unwrap();
        let tasks = vec![tokio::spawn(serve_udp(udp)), tokio::spawn(serve_tcp(tcp))];
        Self { address, tasks }
    }

    fn config(&self) -> UpstreamConfig {
        UpstreamConfig {
            address: self.address.ip(),
            protocol: UpstreamProtocol::Udp,
            port: Some(self.address.port()),
            server_name: None,
            path: None,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((length, client)) = socket.recv_from(&mut buffer).await else {
            return;
        };
        let mut response = zone_answer(&buffer[..length]);
        if response.len() > 512 {
            let mut message = Message::from_vec(&response).unwrap().truncate();
            message.metadata.truncation = true;
            response = message.to_vec().unwrap();
        }
        let _ = socket.send_to(&response, client).await;
    }
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut length = [0u8; 2];
            while stream.read_exact(&mut length).await.is_ok() {
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let response = zone_answer(&query);
                let mut framed = (response.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&response);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Answers the test zone: a CNAME chain to one address, a name with 60 addresses, and
/// NXDOMAIN for everything else.
fn zone_answer(query: &[u8]) -> Vec<u8> {
    let query = Message::from_vec(query).unwrap();
    let question = query.queries[0].clone();
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let name = question.name().to_ascii().to_lowercase();
    match (name.as_str(), question.query_type()) {
        ("www.shop.test.", RecordType::A) => {
            response.add_answer(record(
                "www.shop.test.",
                RData::CNAME(CNAME(n("edge.cdn.test."))),
            ));
            response.add_answer(record("edge.cdn.test.", RData::A(A(EDGE))));
        }
        ("blog.test.", RecordType::A) => {
            response.add_answer(record("blog.test.", RData::A(A(EDGE))));
        }
        ("big.test.", RecordType::A) => {
            for last in 1..=60 {
                response.add_answer(record(
                    "big.test.",
                    RData::A(A(Ipv4Addr::new(198, 51, 100, last))),
                ));
            }
        }
        ("www.shop.test." | "blog.test." | "big.test.", _) => {}
        _ => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response.to_vec().unwrap()
}

fn n(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn record(name: &str, data: RData) -> Record {
    Record::from_rdata(n(name), 30, data)
}

fn start_resolver(
    upstreams: &[UpstreamConfig],
    refusal: RefusalMode,
    refused: &'static str,
) -> DnsServer {
    let config = DnsConfig {
        upstream_timeout_ms: 1000,
        refusal,
        ..DnsConfig::default()
    };
    let listen = ListenConfig {
        addresses: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
        transparent: false,
        mark: None,
    };
    let hooks = Hooks {
        askers: Arc::new(ByAddress),
        policy: Arc::new(move |_: Asker, name: &DomainName| name.as_str() == refused),
    };
    DnsServer::start(&config, upstreams, &listen, hooks).unwrap()
}

fn question(name: &str, record_type: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::new(0x4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(n(name), record_type));
    if edns {
        let mut options = Edns::new();
        options.set_max_payload(1232);
        message.set_edns(options);
    }
    message.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, query: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    let (length, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("no UDP answer in time")
        .unwrap();
    Message::from_vec(&buffer[..length]).unwrap()
}

async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.unwrap();
    let mut length = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut length))
        .await
        .expect("no TCP answer in time")
        .unwrap();
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut response).await.unwrap();
    Message::from_vec(&response).unwrap()
}

#[tokio::test]
async fn forwards_chain_and_records_names() {
    let upstream = Upstream::start().await;
    let resolver = start_resolver(&[upstream.config()], RefusalMode::Nxdomain, "");
    let server = resolver.udp_addresses()[0];

    let answer = ask_udp(server, &question("WWW.shop.test.", RecordType::A, true)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.metadata.id, 0x4242);
    assert_eq!(answer.answers.len(), 2, "{answer:?}");
    assert!(answer.edns.is_some(), "EDNS query must get EDNS answer");

    let named = resolver
        .names()
        .lookup(
            Asker::Address(IpAddr::from(Ipv4Addr::LOCALHOST)),
            EDGE.into(),
            Instant::now(),
        )
        .expect("answer not recorded");
    let chain: Vec<&str> = named.chain.iter().map(DomainName::as_str).collect();
    assert_eq!(chain, ["www.shop.test", "edge.cdn.test"]);
    assert_eq!(named.scope, NameScope::Asker);
}

#[tokio::test]
async fn nxdomain_passes_through() {
    let upstream = Upstream::start().await;
    let resolver = start_resolver(&[upstream.config()], RefusalMode::Nxdomain, "");
    let answer = ask_tcp(
        resolver.tcp_addresses()[0],
        &question("nope.test.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn oversized_udp_answer_is_truncated() {
    let upstream = Upstream::start().await;
    let resolver = start_resolver(&[upstream.config()], RefusalMode::Nxdomain, "");
    let query = question("big.test.", RecordType::A, false);

    let udp = ask_udp(resolver.udp_addresses()[0], &query).await;
    assert!(udp.metadata.truncation, "TC must be set: {udp:?}");
    assert!(udp.answers.len() < 60);
    let tcp = ask_tcp(resolver.tcp_addresses()[0], &query).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
}

#[tokio::test]
async fn upstream_down_gives_servfail_fast() {
    // Nothing listens on this port: the upstream's UDP gets ICMP errors and its TCP resets.
    let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead = UpstreamConfig::udp(IpAddr::from(Ipv4Addr::LOCALHOST));
    let dead = UpstreamConfig {
        port: Some(closed.local_addr().unwrap().port()),
        ..dead
    };
    drop(closed);
    let resolver = start_resolver(&[dead], RefusalMode::Nxdomain, "");

    let started = Instant::now();
    let answer = ask_udp(
        resolver.udp_addresses()[0],
        &question("blog.test.", RecordType::A, true),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn refused_names_follow_mode() {
    let upstream = Upstream::start().await;
    let nx = start_resolver(&[upstream.config()], RefusalMode::Nxdomain, "blog.test");
    let answer = ask_udp(
        nx.udp_addresses()[0],
        &question("blog.test.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);

    let null = start_resolver(
        &[upstream.config()],
        RefusalMode::NullAddress,
        "edge.cdn.test",
    );
    let answer = ask_udp(
        null.udp_addresses()[0],
        &question("www.shop.test.", RecordType::A, false),
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    assert_eq!(answer.answers[0].data, RData::A(A(Ipv4Addr::UNSPECIFIED)));
}

#[tokio::test]
async fn hostile_datagrams_never_stop_the_server() {
    let upstream = Upstream::start().await;
    let resolver = start_resolver(&[upstream.config()], RefusalMode::Nxdomain, "");
    let server = resolver.udp_addresses()[0];
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let mut seed: u32 = 0x9e37_79b9;
    for round in 0..300u32 {
        let mut garbage = question("blog.test.", RecordType::A, round % 2 == 0);
        let length = (seed as usize) % (garbage.len() + 8);
        garbage.resize(length, 0);
        for byte in garbage.iter_mut().skip(2) {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if seed.is_multiple_of(5) {
                *byte = (seed >> 24) as u8;
            }
        }
        socket.send_to(&garbage, server).await.unwrap();
    }

    let answer = ask_udp(server, &question("blog.test.", RecordType::A, false)).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
}
