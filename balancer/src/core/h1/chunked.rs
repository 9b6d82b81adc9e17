//! A chunked body decoder (RFC 9112 7.1), sans-IO: fed whatever bytes have arrived, it says
//! how many it has checked, which of them are data, and when the body ends. A relay can so
//! forward a chunked body with a bounded buffer, either the checked bytes verbatim (chunked to
//! chunked) or only the data ranges.
//!
//! Strict where two hops could read a body differently: chunk sizes of hex digits only (no
//! sign, no `0x`, no whitespace before), at most `u64`, every line ended by CRLF (no bare CR
//! or LF), data followed by CRLF, extensions of visible bytes within a bound, trailer fields
//! of field syntax (no obs-fold) within a bound.

use std::ops::Range;

/// Longest extension text on one chunk-size line, and all of a body's trailer section.
/// hyper bounds a body's extensions to 16 KiB and its trailers to the head limit; lines this
/// long are an attack, not a use.
pub(crate) const MAX_EXTENSION_BYTES: usize = 4096;
pub(crate) const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields: hyper's, which is its header count (`[listener] max_headers`, 100).
pub(crate) const MAX_TRAILER_FIELDS: usize = 100;

/// Why a chunked body is refused (the client's fault: 400; a backend's: 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// A chunk-size line that does not start with a hex digit, or holds a byte that does not
    /// belong.
    BadSize,
    /// A chunk size past `u64`.
    SizeOverflow,
    /// A byte that may not be in an extension (a control byte).
    BadExtension,
    /// An extension longer than [`MAX_EXTENSION_BYTES`].
    ExtensionTooLong,
    /// A line not ended by CRLF: a bare CR or LF, or data not followed by CRLF.
    BadLineEnd,
    /// A trailer field that is not `name: value` (or an obs-fold).
    BadTrailer,
    /// Trailers longer than [`MAX_TRAILER_BYTES`].
    TrailersTooLarge,
    /// More trailer fields than [`MAX_TRAILER_FIELDS`].
    TooManyTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line.
    SizeStart,
    /// In the size's hex digits.
    Size(u64),
    /// After the digits: whitespace before `;` or CR.
    SizeWs(u64),
    /// In the extensions, so many bytes in.
    Ext(u64, usize),
    /// After the size line's CR.
    SizeLf(u64),
    /// In a chunk's data, so many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    Done,
}

/// The decoder of one chunked body.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
    trailer_fields: usize,
}

/// What one [`ChunkedDecoder::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Bytes of the input checked and used up: feed the rest (and what arrives next) again.
    pub(crate) consumed: usize,
    /// The data among them (empty if none), which ends at `consumed`.
    pub(crate) data: Range<usize>,
    /// The body ended (with its last CRLF) at `consumed`.
    pub(crate) done: bool,
}

fn hex(c: u8) -> Option<u64> {
    match c {
        b'0'..=b'9' => Some(u64::from(c - b'0')),
        b'a'..=b'f' => Some(u64::from(c - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(c - b'A' + 10)),
        _ => None,
    }
}

fn token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            trailer_bytes: 0,
            trailer_fields: 0,
        }
    }

    /// Whether the last chunk has been read and the trailer section (maybe empty) is being
    /// read or has been.
    pub(crate) fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::EndLf
                | State::Done
        )
    }

    /// Whether the body has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Checks as much of `input` as belongs to the body (from where the last call stopped):
    /// returns how many bytes that is (what follows is past the body's end) and how many of
    /// them are data.
    pub(crate) fn check(&mut self, input: &[u8]) -> Result<(usize, usize), ChunkError> {
        let (mut used, mut data) = (0, 0);
        while used < input.len() && !self.is_done() {
            let step = self.feed(&input[used..])?;
            if step.consumed == 0 {
                break;
            }
            data += step.data.len();
            used += step.consumed;
        }
        Ok((used, data))
    }

    /// Checks `input` from where the last call stopped, up to the end of the first data range
    /// in it, the end of the body, or the end of the input, whichever comes first.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        use State::*;
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            self.state = match self.state {
                Done => break,
                Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.state = if left == 0 { DataCr } else { Data(left) };
                    return Ok(Step {
                        consumed: i + n,
                        data: i..i + n,
                        done: false,
                    });
                }
                SizeStart => Size(hex(c).ok_or(ChunkError::BadSize)?),
                Size(n) => match (hex(c), c) {
                    (Some(d), _) => Size(
                        n.checked_mul(16)
                            .and_then(|n| n.checked_add(d))
                            .ok_or(ChunkError::SizeOverflow)?,
                    ),
                    (None, b' ' | b'\t') => SizeWs(n),
                    (None, b';') => Ext(n, 0),
                    (None, b'\r') => SizeLf(n),
                    (None, b'\n') => return Err(ChunkError::BadLineEnd),
                    (None, _) => return Err(ChunkError::BadSize),
                },
                SizeWs(n) => match c {
                    b' ' | b'\t' => SizeWs(n),
                    b';' => Ext(n, 0),
                    b'\r' => SizeLf(n),
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                },
                Ext(n, len) => match c {
                    b'\r' => SizeLf(n),
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ if len >= MAX_EXTENSION_BYTES => return Err(ChunkError::ExtensionTooLong),
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => Ext(n, len + 1),
                    _ => return Err(ChunkError::BadExtension),
                },
                SizeLf(n) => match c {
                    b'\n' if n == 0 => TrailerStart,
                    b'\n' => Data(n),
                    _ => return Err(ChunkError::BadLineEnd),
                },
                DataCr => match c {
                    b'\r' => DataLf,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                DataLf => match c {
                    b'\n' => SizeStart,
                    _ => return Err(ChunkError::BadLineEnd),
                },
                TrailerStart => match c {
                    b'\r' => EndLf,
                    _ if token(c) => self.trailer_byte(TrailerName)?,
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadTrailer),
                },
                TrailerName => match c {
                    b':' => self.trailer_byte(TrailerValue)?,
                    _ if token(c) => self.trailer_byte(TrailerName)?,
                    b'\r' | b'\n' => return Err(ChunkError::BadTrailer),
                    _ => return Err(ChunkError::BadTrailer),
                },
                TrailerValue => match c {
                    b'\r' => self.trailer_byte(TrailerLf)?,
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => self.trailer_byte(TrailerValue)?,
                    _ => return Err(ChunkError::BadTrailer),
                },
                TrailerLf => match c {
                    b'\n' => {
                        // hyper's bound, checked as it checks it: at each line's end.
                        if self.trailer_fields >= MAX_TRAILER_FIELDS {
                            return Err(ChunkError::TooManyTrailers);
                        }
                        self.trailer_fields += 1;
                        self.trailer_byte(TrailerStart)?
                    }
                    _ => return Err(ChunkError::BadLineEnd),
                },
                EndLf => match c {
                    b'\n' => {
                        self.state = Done;
                        return Ok(Step {
                            consumed: i + 1,
                            data: i + 1..i + 1,
                            done: true,
                        });
                    }
                    _ => return Err(ChunkError::BadLineEnd),
                },
            };
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: i..i,
            done: self.state == Done,
        })
    }

    /// Counts a trailer byte (line ends included, as hyper counts) against
    /// [`MAX_TRAILER_BYTES`].
    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes >= MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(next)
    }
}

/// Decodes a whole chunked body from `input` fed in pieces of `piece` bytes: the data, and how
/// many bytes the body took. For tests and the fuzz target.
pub(crate) fn decode_all(
    input: &[u8],
    piece: usize,
) -> Result<(Vec<u8>, Option<usize>), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pos = 0;
    let mut avail = piece.max(1).min(input.len());
    loop {
        let step = d.feed(&input[pos..avail])?;
        assert!(step.consumed <= avail - pos, "consumed past the input");
        assert!(step.data.end <= step.consumed || step.data.is_empty());
        data.extend_from_slice(&input[pos + step.data.start..pos + step.data.end]);
        pos += step.consumed;
        if step.done {
            return Ok((data, Some(pos)));
        }
        if pos == avail {
            if avail == input.len() {
                return Ok((data, None));
            }
            avail = (avail + piece.max(1)).min(input.len());
        } else {
            assert!(
                !step.data.is_empty(),
                "stopped with neither data nor the end"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_takes_the_body_and_leaves_what_follows() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.check(b"3\r\nab"), Ok((5, 2)));
        assert_eq!(d.check(b"c\r\n0\r\n\r\nGET"), Ok((8, 1)));
        assert!(d.is_done());
        assert_eq!(d.check(b"GET"), Ok((0, 0)));
        assert_eq!(ChunkedDecoder::new().check(b"zz"), Err(ChunkError::BadSize));
    }

    #[test]
    fn decodes_in_any_pieces() {
        let body = b"5;name=\"v\"\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..body.len() + 1 {
            let (data, end) = decode_all(body, piece).unwrap();
            assert_eq!(data, b"hello0123456789", "piece {piece}");
            assert_eq!(end, Some(body.len() - 4), "piece {piece}");
        }
        let (data, end) = decode_all(b"5\r\nhel", 100).unwrap();
        assert_eq!((data.as_slice(), end), (&b"hel"[..], None));
    }

    #[test]
    fn refuses_what_could_desync() {
        for (body, want) in [
            (&b"G\r\nhello\r\n0\r\n\r\n"[..], ChunkError::BadSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkError::BadSize),
            (b"FFFFFFFFFFFFFFFFF\r\n", ChunkError::SizeOverflow),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5\rhello\r\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhelloXX0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkError::BadLineEnd),
            (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", ChunkError::BadExtension),
            (b"0\r\nX-T: 1\n\r\n", ChunkError::BadLineEnd),
            (b"0\r\n folded\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nX-T 1\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\n\r\r", ChunkError::BadLineEnd),
        ] {
            assert_eq!(
                decode_all(body, 3),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let long_ext = format!(
            "1;{}\r\na\r\n0\r\n\r\n",
            "e".repeat(MAX_EXTENSION_BYTES + 1)
        );
        assert_eq!(
            decode_all(long_ext.as_bytes(), 64),
            Err(ChunkError::ExtensionTooLong)
        );
        let big_trailers = format!("0\r\nX-T: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(
            decode_all(big_trailers.as_bytes(), 64),
            Err(ChunkError::TrailersTooLarge)
        );
        let trailers = |n: usize| format!("0\r\n{}\r\n", "X-T: 1\r\n".repeat(n));
        assert!(decode_all(trailers(MAX_TRAILER_FIELDS).as_bytes(), 64).is_ok());
        assert_eq!(
            decode_all(trailers(MAX_TRAILER_FIELDS + 1).as_bytes(), 64),
            Err(ChunkError::TooManyTrailers)
        );
        // The largest size parses; the bytes after it are awaited.
        assert_eq!(
            decode_all(b"FFFFFFFFFFFFFFFF\r\nab", 5),
            Ok((b"ab".to_vec(), None))
        );
    }

    #[test]
    fn stops_after_each_data_range() {
        let mut d = ChunkedDecoder::new();
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let s = d.feed(input).unwrap();
        assert_eq!((s.consumed, s.data.clone(), s.done), (6, 3..6, false));
        let s = d.feed(&input[6..]).unwrap();
        assert_eq!((s.consumed, s.data.clone(), s.done), (7, 5..7, false));
        let s = d.feed(&input[13..]).unwrap();
        assert!(s.done && s.data.is_empty() && s.consumed == input.len() - 13);
        assert!(d.is_done());
    }
}
