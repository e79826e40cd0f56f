//! Helpers of the resolver tests: a scripted upstream on loopback and DNS clients.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
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
    Asker, ByAddress, DnsConfig, DnsServer, DomainName, Hooks, RefusalMode, UpstreamConfig,
    UpstreamProtocol, sockets::ListenConfig,
};

/// Bound on every wait; no test depends on the resolver being fast.
pub const WAIT: Duration = Duration::from_secs(10);
pub const EDGE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// A scripted upstream on 127.0.0.1: the zone of `zone_answer`, over UDP and TCP on one port.
pub struct Upstream {
    pub address: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(address).await.unwrap();
        let tasks = vec![tokio::spawn(serve_udp(udp)), tokio::spawn(serve_tcp(tcp))];
        Self { address, tasks }
    }

    pub fn config(&self) -> UpstreamConfig {
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
pub fn zone_answer(query: &[u8]) -> Vec<u8> {
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

pub fn n(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

pub fn record(name: &str, data: RData) -> Record {
    Record::from_rdata(n(name), 30, data)
}

pub fn start_resolver(
    upstreams: &[UpstreamConfig],
    refusal: RefusalMode,
    refused: &'static str,
) -> DnsServer {
    let config = DnsConfig {
        upstream_timeout_ms: 1000,
        refusal,
        ..DnsConfig::default()
    };
    start_with_config(&config, upstreams, refused)
}

/// Starts a resolver on 127.0.0.1 with a system-chosen port, refusing the name `refused`.
pub fn start_with_config(
    config: &DnsConfig,
    upstreams: &[UpstreamConfig],
    refused: &'static str,
) -> DnsServer {
    let listen = ListenConfig {
        addresses: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))],
        transparent: false,
        mark: None,
    };
    let hooks = Hooks {
        askers: Arc::new(ByAddress),
        policy: Arc::new(move |_: Asker, name: &DomainName| name.as_str() == refused),
    };
    DnsServer::start(config, upstreams, &listen, hooks).unwrap()
}

pub fn question(name: &str, record_type: RecordType, edns: bool) -> Vec<u8> {
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

pub async fn ask_udp(server: SocketAddr, query: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(query, server).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    let (length, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buffer))
        .await
        .expect("no UDP answer in time")
        .unwrap();
    Message::from_vec(&buffer[..length]).unwrap()
}

pub async fn ask_tcp(server: SocketAddr, query: &[u8]) -> Message {
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
