//! The deterministic byte pattern that the bulk server sends and the client checks.
//!
//! Byte `i` of a stream is `(i * 31 + 7) % 251`. The period 251 is prime, so the pattern does
//! not line up with power-of-two buffer sizes, and a lost, repeated or reordered chunk shows up
//! as a mismatch.

/// Returns byte `index` of the pattern.
pub fn pattern_byte(index: u64) -> u8 {
    let value = (index % PERIOD) * MULTIPLIER + OFFSET;
    // The value is below PERIOD, which is below 256.
    (value % PERIOD) as u8
}

/// Fills `buf` with the pattern bytes that start at stream offset `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    let mut value = u64::from(pattern_byte(offset));
    for byte in buf {
        // The value is below PERIOD, which is below 256.
        *byte = value as u8;
        value = next_value(value);
    }
}

/// Returns the position in `buf` of the first byte that differs from the pattern at stream
/// offset `offset`, with the byte the pattern expects there.
pub fn find_mismatch(offset: u64, buf: &[u8]) -> Option<(usize, u8)> {
    let mut value = u64::from(pattern_byte(offset));
    for (position, &byte) in buf.iter().enumerate() {
        // The value is below PERIOD, which is below 256.
        let expected = value as u8;
        if byte != expected {
            return Some((position, expected));
        }
        value = next_value(value);
    }
    None
}

/// Returns the pattern value after `value`, without a division, because this runs per byte.
fn next_value(value: u64) -> u64 {
    let next = value + MULTIPLIER;
    if next >= PERIOD { next - PERIOD } else { next }
}

const PERIOD: u64 = 251;
const MULTIPLIER: u64 = 31;
const OFFSET: u64 = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_starts_with_formula() {
        assert_eq!(pattern_byte(0), 7);
        assert_eq!(pattern_byte(1), 38);
        assert_eq!(pattern_byte(8), (8 * 31 + 7) % 251);
        assert_eq!(
            pattern_byte(251),
            7,
            "the pattern does not repeat after 251 bytes"
        );
    }

    #[test]
    fn fill_matches_pattern_byte() {
        let offset = 1_000_003;
        let mut buf = vec![0; 600];

        fill_pattern(offset, &mut buf);

        for (position, &byte) in buf.iter().enumerate() {
            let expected = pattern_byte(offset + position as u64);
            assert_eq!(
                byte,
                expected,
                "byte at offset {}",
                offset + position as u64
            );
        }
    }

    #[test]
    fn mismatch_reports_first_difference() {
        let mut buf = vec![0; 300];
        fill_pattern(42, &mut buf);
        assert_eq!(find_mismatch(42, &buf), None);

        buf[260] ^= 0xff;
        buf[270] ^= 0xff;

        assert_eq!(find_mismatch(42, &buf), Some((260, pattern_byte(302))));
    }
}
