//! Parsing of the numbers users type: decimal, `0x` hex, and K/M/G suffixes.

/// Why a number could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a number: {why} (use decimal, 0x hex, optionally with a K, M or G suffix, e.g. 4096, 0x1000, 64K)")]
pub struct NumberError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parses `4096`, `0x1000`, `4K`, `0x10M`, `1G` (binary multiples: K = 1024).
/// Underscores are allowed between digits. Overflow is an error.
pub fn parse_number(input: &str) -> Result<u64, NumberError> {
    let err = |why| NumberError {
        input: input.to_string(),
        why,
    };
    let s = input.trim().replace('_', "");
    let (body, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (&s[..], 0),
    };
    // "0x1B" must not read its trailing hex digit... B is not a suffix, so only
    // K/M/G are stripped above; none of them is a hex digit.
    let value = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() {
            return Err(err("no digits after 0x"));
        }
        u64::from_str_radix(hex, 16).map_err(|_| err("bad hex digits or too large"))?
    } else {
        if body.is_empty() {
            return Err(err("no digits"));
        }
        body.parse::<u64>()
            .map_err(|_| err("bad decimal digits or too large"))?
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| err("too large for 64 bits"))
}

/// Parses a range written `START..END` (end exclusive), each end a number as
/// in [`parse_number`]. Returns `(start, length)`; an empty or reversed range
/// is an error.
pub fn parse_range(input: &str) -> Result<(u64, u64), String> {
    let (a, b) = input
        .split_once("..")
        .ok_or_else(|| format!("{input:?} is not a range: write START..END, e.g. 0x0..0x8000"))?;
    let start = parse_number(a).map_err(|e| e.to_string())?;
    let end = parse_number(b).map_err(|e| e.to_string())?;
    if end <= start {
        return Err(format!(
            "range {input:?} is empty or reversed: END must be greater than START"
        ));
    }
    Ok((start, end - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("4096").unwrap(), 4096);
        assert_eq!(parse_number("0x1000").unwrap(), 4096);
        assert_eq!(parse_number("4K").unwrap(), 4096);
        assert_eq!(parse_number("4k").unwrap(), 4096);
        assert_eq!(parse_number("0x10M").unwrap(), 16 << 20);
        assert_eq!(parse_number("1G").unwrap(), 1 << 30);
        assert_eq!(parse_number("1_000").unwrap(), 1000);
        assert_eq!(parse_number("0xFFFFFFFFFFFFFFFF").unwrap(), u64::MAX);
        assert!(parse_number("").is_err());
        assert!(parse_number("0x").is_err());
        assert!(parse_number("K").is_err());
        assert!(parse_number("12Q").is_err());
        assert!(parse_number("-1").is_err());
        assert!(parse_number("0xFFFFFFFFFFFFFFFFF").is_err());
        assert!(parse_number("17179869184G").is_err());
        let e = parse_number("zz").unwrap_err().to_string();
        assert!(e.contains("0x hex"), "{e}");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0x0..0x8000").unwrap(), (0, 0x8000));
        assert_eq!(parse_range("4K..8K").unwrap(), (4096, 4096));
        assert!(parse_range("0x8000..0x8000").is_err());
        assert!(parse_range("0x9000..0x8000").is_err());
        assert!(parse_range("0x8000").is_err());
    }
}
