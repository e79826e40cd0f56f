//! The request handler: answers one DNS request by forwarding it upstream, applies the refusal
//! policy, and records what the answer taught in the name map.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_net::{runtime::Time, xfer::Protocol};
use hickory_proto::{
    op::{Edns, MessageType, Metadata, OpCode, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, AAAA},
    },
    serialize::binary::BinEncoder,
};
use hickory_server::{
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tracing::{debug, trace};

use crate::{
    answer::{Answer, chain_and_addresses},
    asker::{AskerLookup, Transport},
    config::RefusalMode,
    domain::DomainName,
    name_map::NameMap,
    policy::QueryPolicy,
    upstream::{Upstream, UpstreamAnswer},
};

/// Answers requests through the upstream and records the answers. Cheap to clone.
#[derive(Clone)]
pub struct DnsHandler {
    inner: Arc<HandlerState>,
}

struct HandlerState {
    upstream: Upstream,
    names: Arc<NameMap>,
    askers: Arc<dyn AskerLookup>,
    policy: Arc<dyn QueryPolicy>,
    refusal: RefusalMode,
    deadline: Duration,
}

/// The parts of a response that [`DnsHandler::reply`] decides.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Header of the response.
    pub metadata: Metadata,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
}

impl DnsHandler {
    /// Creates a handler. `deadline` bounds the upstream lookup of one request; past it the
    /// client gets SERVFAIL.
    pub fn new(
        upstream: Upstream,
        names: Arc<NameMap>,
        askers: Arc<dyn AskerLookup>,
        policy: Arc<dyn QueryPolicy>,
        refusal: RefusalMode,
        deadline: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(HandlerState {
                upstream,
                names,
                askers,
                policy,
                refusal,
                deadline,
            }),
        }
    }

    /// Returns the name map the handler records into.
    pub fn names(&self) -> &Arc<NameMap> {
        &self.inner.names
    }

    /// Decides the reply to `request`, which reached the resolver at `server` (the address
    /// the client sent it to).
    pub async fn reply(&self, request: &Request, server: SocketAddr) -> Reply {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return error_reply(request, ResponseCode::NotImp);
        }
        let query = match request.request_info() {
            Ok(info) => info.query.original().clone(),
            Err(_) => return error_reply(request, ResponseCode::FormErr),
        };
        if query.query_class() != DNSClass::IN {
            return error_reply(request, ResponseCode::NotImp);
        }

        let transport = transport_of(request.protocol());
        let asker = self.inner.askers.asker(transport, request.src(), server);
        let name = query.name().clone();
        let record_type = query.query_type();
        let normalized = DomainName::parse(&name.to_ascii()).ok();
        if let Some(normalized) = &normalized
            && self.inner.policy.is_refused(asker, normalized)
        {
            debug!(name = %normalized, ?asker, "query refused by policy");
            return self.refusal_reply(request, &name, record_type);
        }

        let answer = self.lookup(name.clone(), record_type).await;
        let Some((chain, addresses)) = chain_and_addresses(&name, &answer.answers) else {
            return reply_from(request, answer);
        };
        if chain[1..]
            .iter()
            .any(|alias| self.inner.policy.is_refused(asker, alias))
        {
            debug!(name = %chain[0], ?asker, "alias in answer refused by policy");
            return self.refusal_reply(request, &name, record_type);
        }
        if !addresses.is_empty() {
            let recorded = Answer {
                asker,
                client: request.src(),
                transport,
                chain,
                addresses,
            };
            trace!(?recorded, "answer recorded");
            self.inner.names.record(&recorded, Instant::now());
        }
        reply_from(request, answer)
    }

    async fn lookup(&self, name: Name, record_type: RecordType) -> UpstreamAnswer {
        let lookup = self.inner.upstream.lookup(name, record_type);
        match tokio::time::timeout(self.inner.deadline, lookup).await {
            Ok(answer) => answer,
            Err(_) => {
                debug!(deadline = ?self.inner.deadline, "upstream lookup timed out");
                UpstreamAnswer {
                    code: ResponseCode::ServFail,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                }
            }
        }
    }

    fn refusal_reply(&self, request: &Request, name: &Name, record_type: RecordType) -> Reply {
        let mut reply = error_reply(request, ResponseCode::NoError);
        let null = match (self.inner.refusal, record_type) {
            (RefusalMode::Nxdomain, _) => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                return reply;
            }
            (RefusalMode::NullAddress, RecordType::A) => RData::A(A(Ipv4Addr::UNSPECIFIED)),
            (RefusalMode::NullAddress, RecordType::AAAA) => {
                RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))
            }
            (RefusalMode::NullAddress, _) => return reply,
        };
        reply
            .answers
            .push(Record::from_rdata(name.clone(), REFUSAL_TTL, null));
        reply
    }
}

/// Encodes `reply` to `request` for the wire, at most `max_size` bytes. An answer that does not
/// fit is cut at a record boundary and has the TC flag set, so the client retries over TCP.
pub fn encode_reply(request: &Request, reply: &Reply, max_size: u16) -> Vec<u8> {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let response = builder.build(
        reply.metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        [].iter(),
        [].iter(),
    );
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    if response.destructive_emit(&mut encoder).is_ok() {
        return bytes;
    }
    // Emitting fails only for records that cannot be encoded; answer SERVFAIL instead.
    servfail_bytes(request)
}

/// Returns the largest UDP response `request` accepts: its EDNS buffer size, at most
/// [`MAX_UDP_RESPONSE`], or 512 bytes without EDNS (RFC 1035 section 4.2.1).
pub fn udp_response_limit(request: &Request) -> u16 {
    match &request.edns {
        Some(edns) => edns.max_payload().clamp(512, MAX_UDP_RESPONSE),
        None => 512,
    }
}

/// Largest UDP response sent, in bytes: the EDNS buffer size that DNS Flag Day 2020 recommends
/// to avoid IP fragmentation.
pub const MAX_UDP_RESPONSE: u16 = 1232;

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // hickory's own server loops do not tell which address the client aimed at.
        let unknown = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let reply = self.reply(request, unknown).await;
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            reply.metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            [].iter(),
            [].iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(err) => {
                debug!(error = %err, "failed to send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        }
    }
}

fn reply_from(request: &Request, answer: UpstreamAnswer) -> Reply {
    let mut reply = error_reply(request, answer.code);
    reply.answers = answer.answers;
    reply.authorities = answer.authorities;
    reply
}

fn error_reply(request: &Request, code: ResponseCode) -> Reply {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.recursion_available = true;
    metadata.authoritative = false;
    metadata.response_code = code;
    Reply {
        metadata,
        answers: Vec::new(),
        authorities: Vec::new(),
    }
}

fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_RESPONSE);
        edns
    })
}

fn servfail_bytes(request: &Request) -> Vec<u8> {
    let reply = error_reply(request, ResponseCode::ServFail);
    let response =
        MessageResponseBuilder::new(&request.queries, None).build_no_records(reply.metadata);
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(512);
    match response.destructive_emit(&mut encoder) {
        Ok(_) => bytes,
        Err(_) => Vec::new(),
    }
}

fn transport_of(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Udp => Transport::Udp,
        _ => Transport::Tcp,
    }
}

/// TTL of a refusal's null address, in seconds: short, so a later allow takes effect soon.
const REFUSAL_TTL: u32 = 10;

#[cfg(test)]
mod tests {
    use hickory_proto::op::Message;
    use proptest::prelude::*;

    use super::*;

    /// A query for `blog.test` A with EDNS, as bytes.
    fn query_bytes() -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("blog.test.").unwrap(),
            RecordType::A,
        ));
        message.set_edns(Edns::new());
        message.to_vec().unwrap()
    }

    fn client() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5353))
    }

    #[test]
    fn long_answer_is_truncated_at_limit() {
        let request = Request::from_bytes(query_bytes(), client(), Protocol::Udp).unwrap();
        let mut reply = error_reply(&request, ResponseCode::NoError);
        for last in 0..=200u8 {
            let data = RData::A(A(Ipv4Addr::new(198, 51, 100, last)));
            reply.answers.push(Record::from_rdata(
                Name::from_ascii("blog.test.").unwrap(),
                60,
                data,
            ));
        }
        let bytes = encode_reply(&request, &reply, udp_response_limit(&request));
        assert!(
            bytes.len() <= usize::from(MAX_UDP_RESPONSE),
            "{} bytes",
            bytes.len()
        );
        let message = Message::from_vec(&bytes).unwrap();
        assert!(message.metadata.truncation);
        assert!(message.answers.len() < 201);
    }

    proptest! {
        #[test]
        fn arbitrary_requests_encode_or_fail_cleanly(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok(request) = Request::from_bytes(bytes, client(), Protocol::Udp) {
                let reply = error_reply(&request, ResponseCode::ServFail);
                let encoded = encode_reply(&request, &reply, udp_response_limit(&request));
                prop_assert!(encoded.len() <= usize::from(MAX_UDP_RESPONSE));
            }
        }

        #[test]
        fn mutated_queries_never_panic(position in 0usize..64, value in any::<u8>()) {
            let mut bytes = query_bytes();
            let position = position % bytes.len();
            bytes[position] = value;
            let _ = crate::malformed::formerr_for(&bytes);
            if let Ok(request) = Request::from_bytes(bytes, client(), Protocol::Tcp) {
                let reply = error_reply(&request, ResponseCode::FormErr);
                let _ = encode_reply(&request, &reply, u16::MAX);
            }
        }
    }
}
