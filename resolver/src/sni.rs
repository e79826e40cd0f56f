//! The server name of a TLS ClientHello (the SNI extension, RFC 6066 section 3), read from the
//! first bytes a client sends, without I/O.

use crate::domain::DomainName;

/// The TLS server name found in the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHelloName {
    /// The bytes so far are the start of a ClientHello; more are needed.
    NeedMore,
    /// The ClientHello names this host.
    Name(DomainName),
    /// A complete ClientHello without a usable host name: no SNI extension, or one whose name
    /// is not a valid domain name (an IP address, for example).
    NoName,
    /// The bytes are not a TLS ClientHello, or are malformed.
    NotTls,
}

/// Reads the server name from `bytes`, the first bytes the client sent.
///
/// The ClientHello may span several TCP segments and several TLS records: with a prefix of it,
/// the result is [`ClientHelloName::NeedMore`], and the caller reads more and calls again with
/// all bytes so far. A handshake message larger than [`MAX_CLIENT_HELLO`] counts as malformed.
pub fn client_hello_name(bytes: &[u8]) -> ClientHelloName {
    let handshake = match reassemble(bytes) {
        Ok(handshake) => handshake,
        Err(result) => return result,
    };
    match parse_client_hello(&handshake) {
        Some(Some(name)) => ClientHelloName::Name(name),
        Some(None) => ClientHelloName::NoName,
        None => ClientHelloName::NotTls,
    }
}

/// Largest ClientHello handshake message accepted, in bytes.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Collects the payload of the handshake records at the start of `bytes` until it holds the
/// whole first handshake message, which it returns.
fn reassemble(bytes: &[u8]) -> Result<Vec<u8>, ClientHelloName> {
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        if let Some(length) = message_length(&handshake)?
            && handshake.len() >= length
        {
            handshake.truncate(length);
            return Ok(handshake);
        }
        let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
            return Err(check_partial_header(rest));
        };
        let record_length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != CONTENT_HANDSHAKE
            || header[1] != 3
            || record_length == 0
            || record_length > MAX_RECORD_LEN
        {
            return Err(ClientHelloName::NotTls);
        }
        let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + record_length) else {
            // Check what the partial record holds so far, so garbage fails early.
            let partial = &rest[RECORD_HEADER_LEN..];
            handshake.extend_from_slice(partial);
            message_length(&handshake)?;
            return Err(ClientHelloName::NeedMore);
        };
        handshake.extend_from_slice(payload);
        rest = &rest[RECORD_HEADER_LEN + record_length..];
    }
}

/// Returns the length of the handshake message (header included) once its header is there.
fn message_length(handshake: &[u8]) -> Result<Option<usize>, ClientHelloName> {
    if let Some(&kind) = handshake.first()
        && kind != HANDSHAKE_CLIENT_HELLO
    {
        return Err(ClientHelloName::NotTls);
    }
    let Some(header) = handshake.get(..4) else {
        return Ok(None);
    };
    let length =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if length > MAX_CLIENT_HELLO {
        return Err(ClientHelloName::NotTls);
    }
    Ok(Some(length + 4))
}

/// Checks the first bytes of a record header that is not complete yet.
fn check_partial_header(partial: &[u8]) -> ClientHelloName {
    match partial {
        [] => ClientHelloName::NeedMore,
        [kind, ..] if *kind != CONTENT_HANDSHAKE => ClientHelloName::NotTls,
        [_, major, ..] if *major != 3 => ClientHelloName::NotTls,
        _ => ClientHelloName::NeedMore,
    }
}

/// Parses a complete ClientHello handshake message. Returns `None` when it is malformed and
/// `Some(None)` when it carries no usable host name.
fn parse_client_hello(message: &[u8]) -> Option<Option<DomainName>> {
    let mut reader = Reader(message.get(4..)?);
    reader.skip(2 + 32)?; // legacy_version, random
    reader.skip_vector8()?; // legacy_session_id
    reader.skip_vector16()?; // cipher_suites
    reader.skip_vector8()?; // legacy_compression_methods
    if reader.is_empty() {
        return Some(None);
    }
    let mut extensions = Reader(reader.vector16()?);
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let body = extensions.vector16()?;
        if kind == EXTENSION_SERVER_NAME {
            return parse_server_name(body);
        }
    }
    Some(None)
}

fn parse_server_name(body: &[u8]) -> Option<Option<DomainName>> {
    let mut list = Reader(Reader(body).vector16()?);
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vector16()?;
        if kind == NAME_TYPE_HOST_NAME {
            return Some(host_name(name));
        }
    }
    Some(None)
}

/// Returns the name when it is a valid DNS name and not an IP address, which RFC 6066 forbids
/// in SNI.
fn host_name(bytes: &[u8]) -> Option<DomainName> {
    let text = std::str::from_utf8(bytes).ok()?;
    if !text.is_ascii() || text.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    DomainName::parse(text).ok()
}

/// A cursor over TLS wire data; every read fails instead of panicking past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(count)?;
        self.0 = tail;
        Some(head)
    }

    fn skip(&mut self, count: usize) -> Option<()> {
        self.take(count).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn vector16(&mut self) -> Option<&'a [u8]> {
        let length = self.u16()?;
        self.take(usize::from(length))
    }

    fn skip_vector8(&mut self) -> Option<()> {
        let length = self.u8()?;
        self.skip(usize::from(length))
    }

    fn skip_vector16(&mut self) -> Option<()> {
        self.vector16().map(|_| ())
    }
}

const RECORD_HEADER_LEN: usize = 5;
/// Largest TLS record payload: 2^14 bytes plus the expansion TLS 1.2 allows (RFC 5246 6.2.3).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Builds a ClientHello record carrying `server_name` (none when `None`), with `padding`
    /// bytes of an unknown extension before it.
    pub(crate) fn client_hello(server_name: Option<&str>, padding: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        extensions.extend_from_slice(&0xffa5u16.to_be_bytes());
        extensions.extend_from_slice(&(padding as u16).to_be_bytes());
        extensions.resize(extensions.len() + padding, 0);
        if let Some(name) = server_name {
            let name = name.as_bytes();
            let mut list = vec![NAME_TYPE_HOST_NAME];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
            extensions.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
            extensions.extend_from_slice(&(list.len() as u16 + 2).to_be_bytes());
            extensions.extend_from_slice(&(list.len() as u16).to_be_bytes());
            extensions.extend_from_slice(&list);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);

        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        records(&handshake, MAX_RECORD_LEN)
    }

    /// Splits a handshake message into records of at most `size` payload bytes.
    fn records(handshake: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn named(text: &str) -> ClientHelloName {
        ClientHelloName::Name(DomainName::parse(text).unwrap())
    }

    #[test]
    fn reads_server_name() {
        let hello = client_hello(Some("Www.Example.com"), 0);
        assert_eq!(client_hello_name(&hello), named("www.example.com"));
    }

    #[test]
    fn every_prefix_needs_more() {
        let hello = client_hello(Some("split.example"), 300);
        for end in 0..hello.len() {
            assert_eq!(
                client_hello_name(&hello[..end]),
                ClientHelloName::NeedMore,
                "prefix of {end} bytes"
            );
        }
        assert_eq!(client_hello_name(&hello), named("split.example"));
    }

    #[test]
    fn hello_across_records_is_reassembled() {
        let single = client_hello(Some("records.example"), 40);
        let handshake = &single[RECORD_HEADER_LEN..];
        let split = records(handshake, 17);
        assert_eq!(client_hello_name(&split), named("records.example"));
        assert_eq!(
            client_hello_name(&split[..split.len() - 1]),
            ClientHelloName::NeedMore
        );
    }

    #[test]
    fn hello_without_name_has_no_name() {
        assert_eq!(
            client_hello_name(&client_hello(None, 8)),
            ClientHelloName::NoName
        );
        assert_eq!(
            client_hello_name(&client_hello(Some("192.0.2.1"), 0)),
            ClientHelloName::NoName
        );
    }

    #[test]
    fn other_protocols_are_not_tls() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n",
            &[22, 9],
            &[22, 3, 1, 0, 0],
            &[23, 3, 3, 0, 5, 1, 2, 3, 4, 5],
        ] {
            assert_eq!(
                client_hello_name(bytes),
                ClientHelloName::NotTls,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn oversized_message_is_not_tls() {
        let bytes = [22, 3, 1, 0, 4, HANDSHAKE_CLIENT_HELLO, 0xff, 0xff, 0xff];
        assert_eq!(client_hello_name(&bytes), ClientHelloName::NotTls);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = client_hello_name(&bytes);
        }

        #[test]
        fn mutated_hello_never_panics(
            position in 0usize..200,
            value in any::<u8>(),
            cut in 0usize..200,
        ) {
            let mut hello = client_hello(Some("mutated.example"), 20);
            let position = position % hello.len();
            hello[position] = value;
            hello.truncate(hello.len() - cut % hello.len());
            let _ = client_hello_name(&hello);
        }

        // One hyphen at most and never at an end, so no label is "xn--" or otherwise rejected
        // by IDNA's hyphen rules.
        #[test]
        fn any_valid_name_round_trips(
            name in "[a-z][a-z0-9]{0,9}(-[a-z0-9]{1,9})?(\\.[a-z][a-z0-9]{0,10}){1,3}",
        ) {
            let hello = client_hello(Some(&name), 0);
            prop_assert_eq!(client_hello_name(&hello), named(&name));
        }
    }
}
