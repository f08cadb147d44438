//! Hex strings of bytes in memory order, as the CLI reads (`--write`,
//! `poke`) and prints them.

/// Parses `deadbeef` into `[0xde, 0xad, 0xbe, 0xef]` (memory order). `_`,
/// `:` and spaces between digits are ignored. A `0x` prefix is refused: it
/// would suggest a number, whose byte order is ambiguous.
pub fn parse_hex_bytes(input: &str) -> Result<Vec<u8>, String> {
    let t = input.trim();
    if t.starts_with("0x") || t.starts_with("0X") {
        return Err(format!(
            "{input:?}: HEXBYTES are bytes in memory order without 0x (e.g. `deadbeef` writes \
             de ad be ef)"
        ));
    }
    let digits: Vec<u8> = t
        .bytes()
        .filter(|b| !matches!(b, b'_' | b':' | b' '))
        .collect();
    if digits.is_empty() {
        return Err(format!("{input:?}: no hex bytes given"));
    }
    if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
        return Err(format!(
            "{input:?}: {:?} is not a hex digit (write bytes like `deadbeef`)",
            *bad as char
        ));
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "{input:?}: odd number of hex digits; write two digits per byte (e.g. `0f`, not `f`)"
        ));
    }
    Ok(digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16).expect("hex digit") as u8;
            let lo = (p[1] as char).to_digit(16).expect("hex digit") as u8;
            hi << 4 | lo
        })
        .collect())
}

/// Formats bytes as lowercase hex without separators (`deadbeef`).
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_in_memory_order() {
        assert_eq!(
            parse_hex_bytes("deadbeef").unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(
            parse_hex_bytes("DE:AD_be ef").unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(parse_hex_bytes("00").unwrap(), [0]);
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        assert!(parse_hex_bytes("0xdeadbeef")
            .unwrap_err()
            .contains("memory order"));
        assert!(parse_hex_bytes("abc").unwrap_err().contains("odd number"));
        assert!(parse_hex_bytes("zz")
            .unwrap_err()
            .contains("not a hex digit"));
        assert!(parse_hex_bytes("").is_err());
        assert!(parse_hex_bytes("::").is_err());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(to_hex(&[0xde, 0xad, 0x00, 0x0f]), "dead000f");
        let b = [1u8, 2, 250, 255];
        assert_eq!(parse_hex_bytes(&to_hex(&b)).unwrap(), b);
    }
}
