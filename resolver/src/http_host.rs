//! The `Host` header of an HTTP/1.x request, read from the first bytes a client sends, without
//! I/O.

use crate::domain::DomainName;

/// The HTTP host found in the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpHost {
    /// The bytes so far are the start of an HTTP/1.x request; more are needed.
    NeedMore,
    /// The request's `Host` header names this host.
    Name(DomainName),
    /// A complete request head without a usable host: no `Host` header, or one with an IP
    /// address or an invalid name.
    NoName,
    /// The bytes are not an HTTP/1.x request, or its head is longer than [`MAX_REQUEST_HEAD`].
    NotHttp,
}

/// Reads the `Host` header from `bytes`, the first bytes the client sent.
///
/// With a prefix of a request head the result is [`HttpHost::NeedMore`]; the caller reads more
/// and calls again with all bytes so far.
pub fn http_host(bytes: &[u8]) -> HttpHost {
    let head = &bytes[..bytes.len().min(MAX_REQUEST_HEAD)];
    let mut lines = head.split_inclusive(|&byte| byte == b'\n');

    let Some(request_line) = lines.next() else {
        return HttpHost::NeedMore;
    };
    if !request_line.ends_with(b"\n") {
        return partial_request_line(request_line, bytes.len());
    }
    if !is_request_line(trim_line_end(request_line)) {
        return HttpHost::NotHttp;
    }

    for line in lines {
        if !line.ends_with(b"\n") {
            break;
        }
        let line = trim_line_end(line);
        if line.is_empty() {
            return HttpHost::NoName;
        }
        if let Some(value) = header_value(line, b"host") {
            return host_name(value);
        }
    }
    if bytes.len() >= MAX_REQUEST_HEAD {
        HttpHost::NotHttp
    } else {
        HttpHost::NeedMore
    }
}

/// Maximum request head read, in bytes, before giving up on finding the `Host` header.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Decides a request line that has not ended yet: still a plausible start, or garbage.
fn partial_request_line(partial: &[u8], total: usize) -> HttpHost {
    if total >= MAX_REQUEST_HEAD {
        return HttpHost::NotHttp;
    }
    let method_end = partial
        .iter()
        .position(|&byte| byte == b' ')
        .unwrap_or(partial.len());
    let method = &partial[..method_end];
    let plausible = method.len() <= MAX_METHOD_LEN && method.iter().all(u8::is_ascii_uppercase);
    // A carriage return may only be the last byte so far, just before the line feed.
    let before_last = &partial[..partial.len().saturating_sub(1)];
    if plausible && !before_last.contains(&b'\r') {
        HttpHost::NeedMore
    } else {
        HttpHost::NotHttp
    }
}

/// Checks `METHOD SP target SP HTTP/1.x`.
fn is_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&byte| byte == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method.iter().all(u8::is_ascii_uppercase)
        && !target.is_empty()
        && (version == b"HTTP/1.1" || version == b"HTTP/1.0")
}

/// Returns the value of header `line` when its name is `name`, compared case-insensitively.
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    let (field, value) = line.split_at(colon);
    field
        .eq_ignore_ascii_case(name)
        .then(|| value[1..].trim_ascii())
}

/// Turns a `Host` value such as `example.com:8080` into a name; IP literals have none.
fn host_name(value: &[u8]) -> HttpHost {
    let Ok(text) = std::str::from_utf8(value) else {
        return HttpHost::NoName;
    };
    if text.starts_with('[') {
        return HttpHost::NoName;
    }
    let host = match text.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => host,
        _ => text,
    };
    if !host.is_ascii() || host.parse::<std::net::IpAddr>().is_ok() {
        return HttpHost::NoName;
    }
    match DomainName::parse(host) {
        Ok(name) => HttpHost::Name(name),
        Err(_) => HttpHost::NoName,
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Maximum method length accepted; the registered methods have at most 17 letters.
const MAX_METHOD_LEN: usize = 20;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn named(text: &str) -> HttpHost {
        HttpHost::Name(DomainName::parse(text).unwrap())
    }

    const REQUEST: &[u8] =
        b"GET /index.html HTTP/1.1\r\nUser-Agent: curl\r\nHOST: Www.Example.com:8080\r\n\r\n";

    #[test]
    fn reads_host_header() {
        assert_eq!(http_host(REQUEST), named("www.example.com"));
        assert_eq!(
            http_host(b"POST /x HTTP/1.0\nhost:a.test\n\n"),
            named("a.test")
        );
    }

    #[test]
    fn prefixes_need_more() {
        let end = REQUEST
            .windows(4)
            .position(|window| window.eq_ignore_ascii_case(b"host"))
            .unwrap();
        let line_end = end + REQUEST[end..].iter().position(|&b| b == b'\n').unwrap();
        for cut in 0..=line_end {
            assert_eq!(
                http_host(&REQUEST[..cut]),
                HttpHost::NeedMore,
                "{cut} bytes"
            );
        }
    }

    #[test]
    fn missing_or_literal_host_has_no_name() {
        assert_eq!(
            http_host(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            HttpHost::NoName
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n"),
            HttpHost::NoName
        );
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nHost: [2001:db8::10]:80\r\n\r\n"),
            HttpHost::NoName
        );
    }

    #[test]
    fn other_protocols_are_not_http() {
        for bytes in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"get / HTTP/1.1\r\n",
        ] {
            assert_eq!(http_host(bytes), HttpHost::NotHttp, "{bytes:?}");
        }
    }

    #[test]
    fn endless_head_is_not_http() {
        let mut request = b"GET / HTTP/1.1\r\n".to_vec();
        while request.len() < MAX_REQUEST_HEAD + 10 {
            request.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(http_host(&request), HttpHost::NotHttp);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = http_host(&bytes);
        }

        #[test]
        fn header_lines_never_panic(lines in proptest::collection::vec("[ -~]{0,40}", 0..8)) {
            let request = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
            let _ = http_host(request.as_bytes());
        }
    }
}
