//! The resolver end to end on loopback: a scripted upstream, real UDP and TCP clients.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use common::{EDGE, Upstream, ask_tcp, ask_udp, question, start_resolver};
use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType, rdata::A},
};
use tokio::net::UdpSocket;
use tollgate_resolver::{Asker, DomainName, NameScope, RefusalMode, UpstreamConfig};

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
