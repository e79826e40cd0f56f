//! Upstreams over DNS over TLS and DNS over HTTPS, trusted through the extra CA setting.
//!
//! The encrypted upstream is hickory's own server with this crate's handler, forwarding to the
//! scripted upstream, so the chain is: client, resolver, TLS or HTTPS, handler, zone.

mod common;

use std::{io::Write, net::SocketAddr, sync::Arc, time::Duration};

use common::{EDGE, Upstream, ask_udp, question, start_with_config};
use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType, rdata::A},
};
use hickory_server::Server;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tollgate_resolver::{
    ByAddress, DnsConfig, NameMap, RefuseNothing, UpstreamConfig, UpstreamProtocol,
    handler::DnsHandler, name_map::NameMapConfig, upstream::Upstream as Forwarder,
};

const SERVER_NAME: &str = "dns.tollgate.test";

/// A CA and a certificate for [`SERVER_NAME`] signed by it.
struct TestPki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn server_tls(pki: &TestPki, alpn: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Starts hickory's server with this crate's handler, forwarding to `zone`.
async fn encrypted_server(
    zone: &Upstream,
    pki: &TestPki,
    https: bool,
) -> (Server<DnsHandler>, SocketAddr) {
    let forwarder = Forwarder::new(&DnsConfig::default(), &[zone.config()], None).unwrap();
    let names = Arc::new(NameMap::new(NameMapConfig {
        grace: Duration::from_secs(1),
        max_entries: std::num::NonZeroUsize::new(16).unwrap(),
    }));
    let handler = DnsHandler::new(
        forwarder,
        names,
        Arc::new(ByAddress),
        Arc::new(RefuseNothing),
        Default::default(),
        Duration::from_secs(5),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut server = Server::new(handler);
    let timeout = Duration::from_secs(5);
    if https {
        server
            .register_https_listener_with_tls_config(
                listener,
                timeout,
                server_tls(pki, b"h2"),
                Some(SERVER_NAME.to_owned()),
                "/dns-query".to_owned(),
            )
            .unwrap();
    } else {
        server
            .register_tls_listener_with_tls_config(listener, timeout, server_tls(pki, b"dot"))
            .unwrap();
    }
    (server, address)
}

/// Writes the CA certificate to a temporary PEM file, removed on drop.
fn ca_file(pki: &TestPki) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(pki.ca_pem.as_bytes()).unwrap();
    file
}

async fn resolve_through(protocol: UpstreamProtocol, trust_ca: bool) -> ResponseCode {
    let zone = Upstream::start().await;
    let pki = test_pki();
    let (_server, address) =
        encrypted_server(&zone, &pki, protocol == UpstreamProtocol::Https).await;
    let ca = ca_file(&pki);
    let config = DnsConfig {
        upstream_timeout_ms: 2000,
        extra_ca_path: trust_ca.then(|| ca.path().to_owned()),
        ..DnsConfig::default()
    };
    let upstream = UpstreamConfig {
        address: address.ip(),
        protocol,
        port: Some(address.port()),
        server_name: Some(SERVER_NAME.to_owned()),
        path: None,
    };
    let resolver = start_with_config(&config, &[upstream], "");
    let answer = ask_udp(
        resolver.udp_addresses()[0],
        &question("www.shop.test.", RecordType::A, true),
    )
    .await;
    if answer.metadata.response_code == ResponseCode::NoError {
        assert_eq!(answer.answers.last().unwrap().data, RData::A(A(EDGE)));
    }
    answer.metadata.response_code
}

#[tokio::test]
async fn tls_upstream_with_extra_ca() {
    assert_eq!(
        resolve_through(UpstreamProtocol::Tls, true).await,
        ResponseCode::NoError
    );
}

#[tokio::test]
async fn https_upstream_with_extra_ca() {
    assert_eq!(
        resolve_through(UpstreamProtocol::Https, true).await,
        ResponseCode::NoError
    );
}

#[tokio::test]
async fn untrusted_certificate_fails() {
    assert_eq!(
        resolve_through(UpstreamProtocol::Tls, false).await,
        ResponseCode::ServFail
    );
}
