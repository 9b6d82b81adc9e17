//! The new HTTP/1.1 head codec (`core::h1`, issue 18) on arbitrary bytes, through
//! `proxy::oracle`:
//! - as a request: the verdict of today's path (hyper's server as `ebbtide serve` sets it up,
//!   then the proxy's checks and rewriting) and of the new parser and editor must agree (same
//!   accept or refuse, same status, same forwarded head and framing) but for the new parser's
//!   deliberate strictnesses (`HeadError::stricter_than_today`); the new path's forwarded head
//!   must read back (httparse, and the new parser, with the same target and framing);
//! - as a chunked body (after a valid head): hyper's decoder and the new one take the same
//!   bodies with the same data, but for the new one's deliberate strictnesses (see
//!   `oracle::compare_chunked`); and the new one gives the same data, end and error fed whole,
//!   byte by byte, and in pieces of a size the input picks;
//! - as a response head: parsed and edited, it reads back with the same status and framing.
//!
//! Never a panic. Seeds: fuzz/seeds/request/ and fuzz/seeds/h1/; dictionary fuzz/request.dict.
#![no_main]

use ebbtide_balancer::proxy::oracle::{self, Comparison};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match oracle::compare(data) {
        Comparison::Diverge(d) => panic!(
            "today's path and the new parser diverge: {d}\ninput: {:?}",
            String::from_utf8_lossy(data)
        ),
        Comparison::Same | Comparison::BothRefuse | Comparison::Stricter(_) => {}
    }
    match oracle::compare_chunked(data) {
        Comparison::Diverge(d) => panic!(
            "hyper's chunked decoder and the new one diverge: {d}\ninput: {:?}",
            String::from_utf8_lossy(data)
        ),
        Comparison::Same | Comparison::BothRefuse | Comparison::Stricter(_) => {}
    }
    let piece = usize::from(data.first().copied().unwrap_or(1) % 17) + 1;
    let _ = oracle::chunked(data, piece);
    let _ = oracle::response(data, data.len() % 2 == 1);
});
