//! Kubernetes' WebSocket channel protocols (`channel.k8s.io` and its successors): every
//! message starts with the number of the channel it belongs to (stdin 0, stdout 1,
//! stderr 2, error 3, resize 4 for exec and attach); the base64 variants send text
//! messages with the channel as an ASCII digit. `v5.channel.k8s.io` adds a close signal
//! (channel 255 followed by the channel closed), so a client can end stdin without ending
//! the connection.

use base64::Engine;

/// One of the protocols, as named in `Sec-WebSocket-Protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `channel.k8s.io` (and the empty protocol): errors as plain text.
    V1,
    /// `base64.channel.k8s.io`.
    V1Base64,
    /// `v4.channel.k8s.io`: errors as a JSON Status.
    V4,
    /// `v4.base64.channel.k8s.io`.
    V4Base64,
    /// `v5.channel.k8s.io`: v4 with the close signal.
    V5,
}

/// The channel numbers of exec and attach.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// The v5 close signal's channel.
pub const CLOSE: u8 = 255;

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V1 => "channel.k8s.io",
            Protocol::V1Base64 => "base64.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V4Base64 => "v4.base64.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    fn from_name(n: &str) -> Option<Protocol> {
        [
            Protocol::V1,
            Protocol::V1Base64,
            Protocol::V4,
            Protocol::V4Base64,
            Protocol::V5,
        ]
        .into_iter()
        .find(|p| p.name() == n)
    }

    pub fn base64(self) -> bool {
        matches!(self, Protocol::V1Base64 | Protocol::V4Base64)
    }

    /// Whether errors are a JSON Status (v4 and later) rather than text.
    pub fn json_status(self) -> bool {
        matches!(self, Protocol::V4 | Protocol::V4Base64 | Protocol::V5)
    }

    /// The first of the client's protocols (in its order) that is one of these; a client
    /// that names none gets `channel.k8s.io`, as upstream's handshake.
    pub fn negotiate(requested: &[String]) -> Option<Protocol> {
        if requested.iter().all(|p| p.trim().is_empty()) {
            return Some(Protocol::V1);
        }
        requested.iter().find_map(|p| Protocol::from_name(p.trim()))
    }
}

/// A message to send: binary for the binary protocols, text for the base64 ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Binary(Vec<u8>),
    Text(String),
}

/// What `data` on `channel` is on the wire.
pub fn encode(p: Protocol, channel: u8, data: &[u8]) -> Message {
    if p.base64() {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push((b'0' + channel) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v)
    }
}

/// A message received.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Data(u8, Vec<u8>),
    /// v5: the client closed its side of this channel.
    Close(u8),
    /// An empty message (kept alive, nothing to do).
    Empty,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChannelError {
    #[error("a close signal must name exactly one channel, got {0} bytes")]
    BadClose(usize),
    #[error("bad base64 frame: {0}")]
    Base64(String),
}

/// Reads one message's payload.
pub fn decode(p: Protocol, msg: &[u8]) -> Result<Incoming, ChannelError> {
    let Some((&first, rest)) = msg.split_first() else {
        return Ok(Incoming::Empty);
    };
    if p == Protocol::V5 && first == CLOSE {
        return match rest {
            [c] => Ok(Incoming::Close(*c)),
            _ => Err(ChannelError::BadClose(rest.len())),
        };
    }
    if p.base64() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| ChannelError::Base64(e.to_string()))?;
        return Ok(Incoming::Data(first.wrapping_sub(b'0'), data));
    }
    Ok(Incoming::Data(first, rest.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiation_takes_the_clients_first_known_protocol() {
        let kubectl = names(&["v5.channel.k8s.io", "v4.channel.k8s.io"]);
        assert_eq!(Protocol::negotiate(&kubectl), Some(Protocol::V5));
        let python = names(&["v4.channel.k8s.io"]);
        assert_eq!(Protocol::negotiate(&python), Some(Protocol::V4));
        assert_eq!(Protocol::negotiate(&[]), Some(Protocol::V1));
        assert_eq!(Protocol::negotiate(&names(&["v9.example"])), None);
    }

    #[test]
    fn messages_carry_their_channel() {
        assert_eq!(
            encode(Protocol::V5, STDOUT, b"hi"),
            Message::Binary(vec![1, b'h', b'i'])
        );
        assert_eq!(
            encode(Protocol::V4Base64, STDERR, b"hi"),
            Message::Text("2aGk=".into())
        );
        assert_eq!(
            decode(Protocol::V4Base64, b"0aGk="),
            Ok(Incoming::Data(STDIN, b"hi".to_vec()))
        );
        assert_eq!(
            decode(Protocol::V5, &[0, b'x']),
            Ok(Incoming::Data(0, b"x".to_vec()))
        );
        assert_eq!(decode(Protocol::V5, &[255, 0]), Ok(Incoming::Close(0)));
        assert_eq!(
            decode(Protocol::V5, &[255, 0, 1]),
            Err(ChannelError::BadClose(2))
        );
        // Before v5, 255 is just a channel nobody reads.
        assert_eq!(
            decode(Protocol::V4, &[255, 0]),
            Ok(Incoming::Data(255, vec![0]))
        );
        assert_eq!(decode(Protocol::V4, &[]), Ok(Incoming::Empty));
    }
}
