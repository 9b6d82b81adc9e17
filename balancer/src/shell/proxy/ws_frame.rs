//! WebSocket frame boundaries (RFC 6455 5.2), followed as a tunnel's bytes go by, so that the
//! proxy can put a close frame of its own between two frames (control frames may come between
//! the fragments of a message, RFC 6455 5.4) when it ends a tunnel. Only frame heads are read:
//! payloads are counted, never copied or unmasked. Pure: no I/O, no clock, no allocation.

/// Where a stream of frames is: inside a frame head, or inside a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Reading a head: `have` of its bytes so far.
    Head { have: usize },
    /// Inside a payload, with this many bytes to go.
    Payload { left: u64 },
    /// The bytes are not WebSocket frames (a reserved opcode, a control frame too long or
    /// fragmented, a 64-bit length with its top bit set): no frame may be put in any more.
    Lost,
}

/// Follows the frames of one direction of a WebSocket connection.
#[derive(Debug, Clone)]
pub(crate) struct FrameTracker {
    at: At,
    head: [u8; 14],
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker {
            at: At::Head { have: 0 },
            head: [0; 14],
        }
    }
}

impl FrameTracker {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub(crate) fn at_boundary(&self) -> bool {
        self.at == At::Head { have: 0 }
    }

    /// Follows `bytes`, the next ones of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.at {
                At::Lost => return,
                At::Payload { left } => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    self.at = if n == left {
                        At::Head { have: 0 }
                    } else {
                        At::Payload { left: left - n }
                    };
                }
                At::Head { have } => {
                    let need = head_len(&self.head[..have]).unwrap_or(2);
                    let n = (need - have).min(bytes.len());
                    self.head[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    let have = have + n;
                    // The first two bytes tell how long the head is; it may need more.
                    let need = head_len(&self.head[..have]).unwrap_or(2);
                    self.at = if have < need {
                        At::Head { have }
                    } else {
                        match payload_len(&self.head[..have]) {
                            Some(0) => At::Head { have: 0 },
                            Some(left) => At::Payload { left },
                            None => At::Lost,
                        }
                    };
                }
            }
        }
    }
}

/// The length of a frame head whose first bytes are `h` (2 to 14), once its first two are known.
fn head_len(h: &[u8]) -> Option<usize> {
    let (&b1, masked) = (h.get(1)?, h[1] & 0x80 != 0);
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + if masked { 4 } else { 0 })
}

/// The payload length a whole frame head declares; None when the head is not a valid frame's.
fn payload_len(h: &[u8]) -> Option<u64> {
    let opcode = h[0] & 0x0f;
    let fin = h[0] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => u16::from_be_bytes([h[2], h[3]]) as u64,
        127 => {
            let l = u64::from_be_bytes(h[2..10].try_into().ok()?);
            // The most significant bit must be 0 (RFC 6455 5.2).
            if l >> 63 != 0 {
                return None;
            }
            l
        }
        n => n as u64,
    };
    match opcode {
        // continuation, text, binary
        0x0..=0x2 => Some(len),
        // close, ping, pong: at most 125 bytes and never fragmented (RFC 6455 5.5)
        0x8..=0xa if fin && len <= 125 => Some(len),
        _ => None,
    }
}

/// RFC 6455 7.4.1: 1001, "an endpoint is going away, such as a server going down".
pub(crate) const GOING_AWAY: u16 = 1001;

/// A close frame with `code` and `reason` (at most 123 bytes, RFC 6455 5.5), unmasked as a
/// server sends it, or masked with `mask` as a client must (RFC 6455 5.3).
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x88); // FIN, close
    match mask {
        None => {
            out.push(payload.len() as u8);
            out.extend_from_slice(&payload);
        }
        Some(key) => {
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as RFC 6455 5.2 lays it out.
    fn frame(opcode: u8, fin: bool, payload_len: u64, mask: bool) -> Vec<u8> {
        let mut f = vec![opcode | if fin { 0x80 } else { 0 }];
        let m = if mask { 0x80 } else { 0 };
        if payload_len < 126 {
            f.push(m | payload_len as u8);
        } else if payload_len <= u16::MAX as u64 {
            f.push(m | 126);
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&payload_len.to_be_bytes());
        }
        if mask {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x55, payload_len as usize));
        f
    }

    /// Feeds `bytes` one at a time and returns after which bytes a boundary was seen.
    fn boundaries(bytes: &[u8]) -> Vec<usize> {
        let mut t = FrameTracker::default();
        let mut out = Vec::new();
        for (i, b) in bytes.chunks(1).enumerate() {
            t.feed(b);
            if t.at_boundary() {
                out.push(i + 1);
            }
        }
        out
    }

    #[test]
    fn boundaries_are_found_for_every_length_form_masked_or_not() {
        for mask in [false, true] {
            let frames = [
                frame(0x1, true, 0, mask),
                frame(0x2, false, 125, mask),
                frame(0x9, true, 3, mask),
                frame(0x0, false, 126, mask),
                frame(0x0, true, 70_000, mask),
            ];
            let mut stream = Vec::new();
            let mut ends = Vec::new();
            for f in &frames {
                stream.extend_from_slice(f);
                ends.push(stream.len());
            }
            assert_eq!(boundaries(&stream), ends, "mask {mask}");
            // Fed in large pieces, the tracker ends where the stream does.
            let mut t = FrameTracker::default();
            for piece in stream.chunks(4096) {
                t.feed(piece);
            }
            assert!(t.at_boundary());
            let mut t = FrameTracker::default();
            t.feed(&stream[..stream.len() - 1]);
            assert!(!t.at_boundary());
        }
    }

    #[test]
    fn a_head_split_anywhere_is_still_read() {
        let f = frame(0x2, true, 300, true);
        for cut in 1..8 {
            let mut t = FrameTracker::default();
            t.feed(&f[..cut]);
            assert!(!t.at_boundary(), "cut {cut}");
            t.feed(&f[cut..]);
            assert!(t.at_boundary(), "cut {cut}");
        }
    }

    #[test]
    fn bytes_that_are_not_frames_stop_the_tracking_for_good() {
        for bad in [
            frame(0x3, true, 0, false),                 // reserved opcode
            frame(0x8, false, 2, false),                // fragmented close
            frame(0x9, true, 126, false),               // control frame over 125 bytes
            vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], // 64-bit length, top bit set
        ] {
            let mut t = FrameTracker::default();
            t.feed(&bad);
            t.feed(&frame(0x1, true, 0, false));
            assert!(!t.at_boundary(), "{bad:?}");
        }
    }

    #[test]
    fn close_frames_are_laid_out_as_rfc_6455_says() {
        assert_eq!(
            close_frame(GOING_AWAY, "bye", None),
            [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
        );
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let masked = close_frame(GOING_AWAY, "bye", Some(key));
        assert_eq!(&masked[..6], &[0x88, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xe9, b'b', b'y', b'e']);
        // A frame of ours is one whole frame to the tracker.
        let mut t = FrameTracker::default();
        t.feed(&masked);
        assert!(t.at_boundary());
        assert_eq!(close_frame(1000, &"x".repeat(200), None).len(), 2 + 125);
    }
}
