//! Lowercase hex for trace and span ids, eight digits at a time.
//!
//! Every traced request leg decodes the ids of its `traceparent` (48 digits) and writes
//! them again with its own span id: a byte at a time, that was about 700 instructions
//! per request leg in the bench's callgrind profile. Here eight digits travel in one
//! `u64` (SWAR: the same steps on every byte lane at once); a rest shorter than a
//! lane goes a pair at a time. The tests compare both against a plain reference on
//! every byte value in every lane.

/// Lowercase hex digit values; `0xff` for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        t[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    t
};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `b` in every byte lane.
const fn lanes(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// In every lane whose byte (below 0x80) is at least `lo`: 0x80, else 0.
const fn at_least(x: u64, lo: u8) -> u64 {
    // Lanes are below 0x80 and `0x80 - lo` at most 0x80: no carry leaves a lane.
    x.wrapping_add(lanes(0x80 - lo)) & lanes(0x80)
}

/// Decodes 8 lowercase hex digits (`chunk`, in order) into 4 bytes; `None` when one of
/// them is not a lowercase hex digit.
fn decode8(chunk: [u8; 8]) -> Option<[u8; 4]> {
    let x = u64::from_le_bytes(chunk);
    if x & lanes(0x80) != 0 {
        return None;
    }
    let digit = at_least(x, b'0') & !at_least(x, b'9' + 1);
    let letter = at_least(x, b'a') & !at_least(x, b'f' + 1);
    if (digit | letter) != lanes(0x80) {
        return None;
    }
    // '0'..'9' keep their low nibble; 'a'..'f' (0x61..0x66) gain 9 on it.
    let nibbles = (x & lanes(0x0f)) + (letter >> 7) * 9;
    // Lane 2k holds the high nibble of byte k, lane 2k+1 its low nibble.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    let bytes = (quads | (quads >> 16)) & 0xffff_ffff;
    let [a, b, c, d, ..] = bytes.to_le_bytes();
    Some([a, b, c, d])
}

/// Encodes 4 bytes as 8 lowercase hex digits.
fn encode4(bytes: [u8; 4]) -> [u8; 8] {
    let x = u64::from(u32::from_le_bytes(bytes));
    // Byte k to the low byte of 16-bit lane k.
    let spread = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let spread = (spread | (spread << 8)) & 0x00ff_00ff_00ff_00ff;
    // Lane 2k: the high nibble of byte k; lane 2k+1: its low nibble.
    let nibbles = ((spread >> 4) & 0x000f_000f_000f_000f) | ((spread & 0x000f_000f_000f_000f) << 8);
    // Nibbles of 10 and more get the distance from '9' + 1 to 'a' (39) on top of '0'.
    let letters = (at_least(nibbles, 10) >> 7) * 39;
    (nibbles + lanes(b'0') + letters).to_le_bytes()
}

/// Decodes exactly `2 * N` lowercase hex digits.
pub(super) fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    // Index loops over constant bounds: the compiler drops every bounds check.
    for i in 0..N / 4 {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&s[8 * i..8 * i + 8]);
        out[4 * i..4 * i + 4].copy_from_slice(&decode8(chunk)?);
    }
    // The rest, shorter than a lane. Any invalid digit sets high bits here; checked
    // once, after the loop.
    let mut invalid = 0u8;
    for i in N / 4 * 4..N {
        let (hi, lo) = (
            HEX_VALUES[usize::from(s[2 * i])],
            HEX_VALUES[usize::from(s[2 * i + 1])],
        );
        invalid |= hi | lo;
        out[i] = (hi << 4) | (lo & 0x0f);
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// `bytes` as a lowercase hex string.
pub(super) fn encode_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII: this never falls back.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` as lowercase hex into `out` (`2 * bytes.len()` long; a shorter `out`
/// gets the digits that fit). Always inlined: with an id's constant length the
/// compiler drops every bounds check.
#[inline(always)]
pub(super) fn hex_into(bytes: &[u8], out: &mut [u8]) {
    let n = bytes.len().min(out.len() / 2);
    let (bytes, out) = (&bytes[..n], &mut out[..2 * n]);
    for i in 0..n / 4 {
        let mut four = [0u8; 4];
        four.copy_from_slice(&bytes[4 * i..4 * i + 4]);
        out[8 * i..8 * i + 8].copy_from_slice(&encode4(four));
    }
    for i in n / 4 * 4..n {
        out[2 * i] = DIGITS[usize::from(bytes[i] >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(bytes[i] & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain rule, a digit at a time.
    fn reference_decode(s: &[u8]) -> Option<Vec<u8>> {
        let value = |c: u8| DIGITS.iter().position(|d| *d == c).map(|v| v as u8);
        s.chunks(2)
            .map(|p| Some(value(p[0])? << 4 | value(p[1])?))
            .collect()
    }

    #[test]
    fn every_byte_in_every_lane_decodes_as_the_reference_says() {
        let base = *b"0123abcd";
        for lane in 0..8 {
            for b in 0..=255u8 {
                let mut chunk = base;
                chunk[lane] = b;
                let want = reference_decode(&chunk);
                assert_eq!(
                    decode8(chunk).map(Vec::from),
                    want,
                    "lane {lane} byte {b:#x}"
                );
                let mut long = *b"00112233445566778899aabbccddeeff";
                long[8 + lane] = b;
                assert_eq!(
                    decode_hex::<16>(&long).map(Vec::from),
                    reference_decode(&long),
                    "lane {lane} byte {b:#x} in a trace id"
                );
            }
        }
        // A rest shorter than a lane (a version or flags field; B3's 16 digits + 2).
        assert_eq!(decode_hex::<1>(b"0a"), Some([0x0a]));
        assert_eq!(decode_hex::<1>(b"0A"), None);
        assert_eq!(
            decode_hex::<5>(b"0123456789"),
            Some([1, 0x23, 0x45, 0x67, 0x89])
        );
        assert_eq!(decode_hex::<5>(b"012345678g"), None);
        assert_eq!(decode_hex::<8>(b"0123"), None, "length");
    }

    #[test]
    fn every_byte_value_encodes_in_every_position() {
        for b in 0..=255u8 {
            for at in 0..5 {
                let mut bytes = [0x5au8; 5];
                bytes[at] = b;
                let got = encode_hex(&bytes);
                let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(got, want);
                assert_eq!(decode_hex::<5>(got.as_bytes()), Some(bytes), "round trip");
            }
        }
        let id: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        let hex = encode_hex(&id);
        let mut short = [b'-'; 33];
        hex_into(&id, &mut short[..31]);
        assert_eq!(&short[..30], &hex.as_bytes()[..30], "what fits");
        assert_eq!(&short[30..], b"---");
        assert_eq!(
            hex,
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(decode_hex::<16>(hex.as_bytes()), Some(id));
    }
}
