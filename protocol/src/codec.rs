//! Encoding and decoding of whole datagrams, with the framing limits enforced.
//!
//! Decoding never panics: empty, truncated, oversized, malformed, trailing and
//! unknown-variant input all become a [`DecodeError`], which maps onto an
//! [`ErrorCode`] and a message suitable for an error reply.

use crate::{ClientMessage, DaemonMessage, ErrorCode, ErrorReply, MAX_DATAGRAM};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a datagram could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram of {len} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    Oversized {
        /// Size received (at least this many bytes).
        len: usize,
    },
    /// The message ended early.
    #[error("truncated message: it ends before its last field")]
    Truncated,
    /// A variant this version does not know (a newer peer, or garbage).
    #[error("unknown message or request variant (is the peer a newer version?)")]
    UnknownVariant,
    /// Bytes left over after a complete message.
    #[error("{extra} stray bytes after the end of the message")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// Any other malformation (bad varint, bad UTF-8, bad bool...).
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The stable code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Oversized { .. } => ErrorCode::Oversized,
            DecodeError::UnknownVariant => ErrorCode::UnknownRequest,
            _ => ErrorCode::Malformed,
        }
    }

    /// An error reply describing this failure.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(self.code(), self.to_string())
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed [`MAX_DATAGRAM`].
    #[error("message of {len} bytes exceeds the {MAX_DATAGRAM}-byte datagram limit")]
    TooLarge {
        /// Encoded size.
        len: usize,
    },
    /// Serialization failed.
    #[error("cannot encode message: {0}")]
    Serialize(String),
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = postcard::to_stdvec(msg).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    if bytes.len() > MAX_DATAGRAM {
        return Err(EncodeError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Number of variants of [`ClientMessage`], [`crate::Request`] and
/// [`DaemonMessage`] this version knows; a larger tag is a newer peer's.
const CLIENT_VARIANTS: u32 = 2;
const REQUEST_VARIANTS: u32 = crate::REQUEST_KINDS as u32;
const DAEMON_VARIANTS: u32 = 4;

/// Postcard reports an unknown enum tag as a generic serde error; look at
/// the tags ourselves so a newer peer's message gets a precise error.
fn has_unknown_tag(bytes: &[u8], top: u32, nested: Option<(u32, u32)>) -> bool {
    match postcard::take_from_bytes::<u32>(bytes) {
        Ok((tag, _)) if tag >= top => true,
        Ok((tag, rest)) => match nested {
            Some((nested_tag, count)) if tag == nested_tag => {
                matches!(postcard::take_from_bytes::<(u64, u32)>(rest), Ok(((_, t), _)) if t >= count)
            }
            _ => false,
        },
        Err(_) => false,
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized { len: bytes.len() });
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(DecodeError::TrailingBytes { extra: rest.len() }),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::Truncated),
        Err(postcard::Error::DeserializeBadEnum) => Err(DecodeError::UnknownVariant),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// Encodes a client message into one datagram.
pub fn encode_client(msg: &ClientMessage) -> Result<Vec<u8>, EncodeError> {
    encode(msg)
}

/// The encoded size of any protocol value (e.g. one [`crate::LeaseInfo`]):
/// a message's size is the sum of its parts', so a daemon can fill a page
/// up to [`MAX_DATAGRAM`].
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_stdvec(value).map_or(usize::MAX, |b| b.len())
}

/// Encodes a daemon message into one datagram.
pub fn encode_daemon(msg: &DaemonMessage) -> Result<Vec<u8>, EncodeError> {
    encode(msg)
}

/// Decodes one datagram from a client.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    decode(bytes).map_err(|e| match e {
        DecodeError::Malformed(_)
            if has_unknown_tag(bytes, CLIENT_VARIANTS, Some((1, REQUEST_VARIANTS))) =>
        {
            DecodeError::UnknownVariant
        }
        e => e,
    })
}

/// Decodes one datagram from the daemon.
pub fn decode_daemon(bytes: &[u8]) -> Result<DaemonMessage, DecodeError> {
    decode(bytes).map_err(|e| match e {
        DecodeError::Malformed(_) if has_unknown_tag(bytes, DAEMON_VARIANTS, None) => {
            DecodeError::UnknownVariant
        }
        e => e,
    })
}

/// Reads the protocol version from a datagram that starts like a `Hello` of
/// any protocol version, even when the rest cannot be decoded by this version.
pub fn decode_hello_prefix(bytes: &[u8]) -> Option<u32> {
    match postcard::take_from_bytes::<(u32, u32)>(bytes) {
        Ok(((0, version), _)) => Some(version),
        _ => None,
    }
}

/// Reads the request id from a datagram that starts like a `Request`, even
/// when the request itself cannot be decoded, so the error reply can echo it.
pub fn request_id_hint(bytes: &[u8]) -> Option<u64> {
    match postcard::take_from_bytes::<(u32, u64)>(bytes) {
        Ok(((1, id), _)) => Some(id),
        _ => None,
    }
}
