//! iperf3 runs: the client's arguments and the figures taken from its JSON report.
//!
//! Parsed fields are those of iperf 3.12 (Debian 12), `iperf3 --json`: `end.sum_received`
//! for TCP, and `end.sum` for UDP, where `packets` counts what the client sent and
//! `lost_packets` what the server did not receive.

use std::{net::IpAddr, time::Duration};

use serde_json::Value;

/// Port of the iperf3 server, TCP and UDP (iperf3's default).
pub const IPERF_PORT: u16 = 5201;

/// Size of a UDP datagram's payload in bytes: small, so the test counts per-packet costs.
pub const UDP_PAYLOAD: u32 = 64;

/// A TCP download: the server sends to the client (`--reverse`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpDownload {
    /// Bytes the client received.
    pub bytes: u64,
    /// Received bits per second.
    pub bits_per_second: f64,
}

/// A UDP upload at full speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpUpload {
    /// Datagrams the server received.
    pub received: u64,
    /// Datagrams the client sent.
    pub sent: u64,
    /// Received datagrams per second.
    pub packets_per_second: f64,
}

/// An iperf3 report without the expected fields.
#[derive(Debug, thiserror::Error)]
pub enum IperfError {
    /// The output is not JSON.
    #[error("iperf3 output is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// iperf3 reported an error.
    #[error("iperf3 failed: {0}")]
    Failed(String),
    /// A field is missing or has the wrong type.
    #[error("iperf3 report has no numeric field {0}")]
    Missing(&'static str),
}

/// Returns the client arguments of a TCP download of `duration` from `server` with `streams`
/// parallel connections.
pub fn tcp_download_args(server: IpAddr, duration: Duration, streams: u32) -> Vec<String> {
    let mut args = client_args(server, duration);
    args.extend(["--reverse".into(), "--parallel".into(), streams.to_string()]);
    args
}

/// Returns the client arguments of a UDP upload of `duration` to `server` at unlimited rate
/// with [`UDP_PAYLOAD`]-byte datagrams.
pub fn udp_upload_args(server: IpAddr, duration: Duration) -> Vec<String> {
    let mut args = client_args(server, duration);
    args.extend([
        "--udp".into(),
        "--bitrate".into(),
        "0".into(),
        "--length".into(),
        UDP_PAYLOAD.to_string(),
    ]);
    args
}

fn client_args(server: IpAddr, duration: Duration) -> Vec<String> {
    vec![
        "--client".into(),
        server.to_string(),
        "--port".into(),
        IPERF_PORT.to_string(),
        "--time".into(),
        duration.as_secs().max(1).to_string(),
        "--json".into(),
    ]
}

/// Reads a TCP download from the client's JSON report.
pub fn parse_tcp_download(json: &str) -> Result<TcpDownload, IperfError> {
    let report = parse_report(json)?;
    let received = &report["end"]["sum_received"];
    Ok(TcpDownload {
        bytes: number(received, "bytes", "end.sum_received.bytes")? as u64,
        bits_per_second: number(
            received,
            "bits_per_second",
            "end.sum_received.bits_per_second",
        )?,
    })
}

/// Reads a UDP upload from the client's JSON report.
pub fn parse_udp_upload(json: &str) -> Result<UdpUpload, IperfError> {
    let report = parse_report(json)?;
    let sum = &report["end"]["sum"];
    let sent = number(sum, "packets", "end.sum.packets")? as u64;
    let lost = number(sum, "lost_packets", "end.sum.lost_packets")? as u64;
    let seconds = number(sum, "seconds", "end.sum.seconds")?;
    if seconds <= 0.0 {
        return Err(IperfError::Missing("end.sum.seconds"));
    }
    let received = sent.saturating_sub(lost);
    Ok(UdpUpload {
        received,
        sent,
        packets_per_second: received as f64 / seconds,
    })
}

fn parse_report(json: &str) -> Result<Value, IperfError> {
    let report: Value = serde_json::from_str(json)?;
    if let Some(error) = report["error"].as_str() {
        return Err(IperfError::Failed(error.to_owned()));
    }
    Ok(report)
}

fn number(object: &Value, key: &str, path: &'static str) -> Result<f64, IperfError> {
    object[key].as_f64().ok_or(IperfError::Missing(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_download_is_read_from_sum_received() {
        let json = r#"{"end":{"sum_received":{"bytes":1191444480,
            "bits_per_second":4773417775.1,"seconds":1.99},"sum_sent":{"bytes":1}}}"#;

        let download = parse_tcp_download(json).unwrap();

        assert_eq!(download.bytes, 1_191_444_480);
        assert_eq!(download.bits_per_second, 4_773_417_775.1);
    }

    #[test]
    fn udp_upload_counts_received_datagrams() {
        let json = r#"{"end":{"sum":{"seconds":2.0,"packets":454160,
            "lost_packets":313143}}}"#;

        let upload = parse_udp_upload(json).unwrap();

        assert_eq!(upload.sent, 454_160);
        assert_eq!(upload.received, 141_017);
        assert_eq!(upload.packets_per_second, 70_508.5);
    }

    #[test]
    fn reported_error_is_returned() {
        let json = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;

        let error = parse_tcp_download(json).unwrap_err();

        assert!(matches!(error, IperfError::Failed(message) if message.contains("unable")));
    }

    #[test]
    fn missing_field_is_named() {
        let error = parse_udp_upload(r#"{"end":{"sum":{"seconds":1.0}}}"#).unwrap_err();

        assert!(matches!(error, IperfError::Missing("end.sum.packets")));
    }

    #[test]
    fn download_arguments_reverse_the_direction() {
        let args = tcp_download_args("203.0.113.10".parse().unwrap(), Duration::from_secs(5), 4);

        assert_eq!(
            args.join(" "),
            "--client 203.0.113.10 --port 5201 --time 5 --json --reverse --parallel 4"
        );
    }
}
