//! Answers to requests that do not parse: FORMERR when the header can be read, nothing
//! otherwise.

use hickory_proto::{
    op::{Header, MessageType, Metadata, ResponseCode},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder},
};

/// Returns a FORMERR response with the id and opcode of `bytes`, or `None` when they are
/// shorter than a header or are a response themselves (answering those would let an attacker
/// bounce packets between two resolvers).
pub fn formerr_for(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let response = Header {
        metadata,
        counts: Default::default(),
    };
    let mut out = Vec::with_capacity(HEADER_LEN);
    response.emit(&mut BinEncoder::new(&mut out)).ok()?;
    Some(out)
}

const HEADER_LEN: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_gets_no_answer() {
        assert_eq!(formerr_for(&[1, 2, 3]), None);
    }

    #[test]
    fn garbage_after_header_gets_formerr() {
        let mut query = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(&[0xff; 7]);
        let answer = formerr_for(&query).unwrap();
        assert_eq!(&answer[..2], &[0xab, 0xcd]);
        assert_eq!(answer[3] & 0x0f, 1, "rcode is FORMERR");
        assert_eq!(answer[2] & 0x80, 0x80, "QR bit set");
    }

    #[test]
    fn responses_are_not_answered() {
        let response = [0, 1, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(formerr_for(&response), None);
    }
}
