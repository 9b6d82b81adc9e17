//! The differential corpus for `core::h1` (issue 18): request heads, valid and malformed, with
//! every request-smuggling class, run through today's path and the new one
//! ([`super::oracle::compare`]). The two must agree on accept or refuse, on the status where
//! both refuse, and on the forwarded head (header set after hygiene, target, framing) where
//! both forward; the only differences allowed are the new path's deliberate strictnesses
//! (`HeadError::stricter_than_today`), and each of those must show up in the corpus.
//!
//! The corpus: every request line below with every field variant below (each variant with a
//! valid `Host` unless it is about `Host`), then the seeds of fuzz/seeds/request/.

use super::oracle::{compare, new_path, today, Comparison, Verdict};
use std::collections::BTreeMap;

/// Request lines: valid ones of every target form and method kind, and malformed ones.
const LINES: &[&str] = &[
    "GET / HTTP/1.1",
    "GET /a/b?c=d&e=%20 HTTP/1.1",
    "HEAD /x HTTP/1.1",
    "POST /upload HTTP/1.1",
    "PUT /u HTTP/1.0",
    "get /lower HTTP/1.1",
    "PROPFIND /dav HTTP/1.1",
    "OPTIONS * HTTP/1.1",
    "GET * HTTP/1.1",
    "GET http://t.test/p?q HTTP/1.1",
    "GET http://t.test HTTP/1.1",
    "GET http://t.test?q=1 HTTP/1.1",
    "GET HTTPS://t.test:8443/s HTTP/1.1",
    "GET ftp://t.test/ HTTP/1.1",
    "GET http://u@t.test/ HTTP/1.1",
    "GET http://t.test:8x/ HTTP/1.1",
    "GET t.test:80 HTTP/1.1",
    "CONNECT t.test:443 HTTP/1.1",
    "GET /p#frag HTTP/1.1",
    "GET /a<b HTTP/1.1",
    "GET /a\"b{c}|d HTTP/1.1",
    "GET /?q=`x`\"y HTTP/1.1",
    "GET /\u{e9}t\u{e9} HTTP/1.1",
    "GET //double/slash HTTP/1.1",
    "GET echo HTTP/1.1",
    "GET ?q HTTP/1.1",
    "G@T / HTTP/1.1",
    "GET  / HTTP/1.1",
    "GET / HTTP/1.2",
    "GET / HTTP/2.0",
    "GET / http/1.1",
    "GET /",
    " GET / HTTP/1.1",
    // Targets as http::Uri reads them (found by mutation runs).
    "GET ://double/slash HTTP/1.1",
    "GET 0http://t.test/ HTTP/1.1",
    "GET http://t.tes[/ HTTP/1.1",
    "GET http://[::1]:80/ HTTP/1.1",
    "GET http://a%20b/ HTTP/1.1",
    "GET http://t.test#f HTTP/1.1",
    "CONNECT t.test:443@ HTTP/1.1",
];

/// Field variants: (name, field lines each ending in CRLF, whether it brings its own Host,
/// body).
const FIELDS: &[(&str, &str, bool, &str)] = &[
    ("plain", "", false, ""),
    ("no Host", "", true, ""),
    ("two Hosts", "Host: a.test\r\nHost: b.test\r\n", true, ""),
    ("Host list", "Host: a, b\r\n", true, ""),
    ("Host with path", "Host: a/b?c\r\n", true, ""),
    ("empty Host", "Host: \r\n", true, ""),
    ("Host userinfo", "Host: user@a.test\r\n", true, ""),
    ("Host bad port", "Host: a.test:8x\r\n", true, ""),
    ("Host with port", "Host: a.test:8080\r\n", true, ""),
    ("Host IPv6", "Host: [2001:db8::1]:80\r\n", true, ""),
    ("Host no space, upper case", "HOST:lb.test\r\n", true, ""),
    ("Host trailing space", "Host: lb.test \t\r\n", true, ""),
    ("CL 5", "Content-Length: 5\r\n", false, "hello"),
    ("CL 0", "Content-Length: 0\r\n", false, ""),
    ("CL leading zeros", "Content-Length: 005\r\n", false, "hello"),
    ("CL 5 twice", "Content-Length: 5\r\nContent-Length: 5\r\n", false, "hello"),
    ("CL 5 and 05", "Content-Length: 5\r\nContent-Length: 05\r\n", false, "hello"),
    ("CL 5 and 6", "Content-Length: 5\r\nContent-Length: 6\r\n", false, "hello!"),
    ("CL list", "Content-Length: 5, 5\r\n", false, "hello"),
    ("CL negative", "Content-Length: -1\r\n", false, ""),
    ("CL signed", "Content-Length: +5\r\n", false, "hello"),
    ("CL hex", "Content-Length: 0x5\r\n", false, "hello"),
    ("CL two numbers", "Content-Length: 5 5\r\n", false, "hello"),
    ("CL overflow", "Content-Length: 99999999999999999999\r\n", false, ""),
    ("CL u64 max", "Content-Length: 18446744073709551615\r\n", false, ""),
    ("CL empty", "Content-Length: \r\n", false, ""),
    ("TE chunked", "Transfer-Encoding: chunked\r\n", false, "5\r\nhello\r\n0\r\n\r\n"),
    ("TE Chunked", "Transfer-Encoding: Chunked\r\n", false, "0\r\n\r\n"),
    ("TE gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", false, "0\r\n\r\n"),
    ("TE identity, chunked", "Transfer-Encoding: identity, chunked\r\n", false, "0\r\n\r\n"),
    ("TE chunked, gzip", "Transfer-Encoding: chunked, gzip\r\n", false, ""),
    ("TE gzip", "Transfer-Encoding: gzip\r\n", false, ""),
    ("TE split", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", false, "0\r\n\r\n"),
    ("TE split, chunked first", "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", false, ""),
    ("TE chunked twice", "Transfer-Encoding: chunked, chunked\r\n", false, "0\r\n\r\n"),
    ("TE empty list elements", "Transfer-Encoding: , chunked\r\n", false, "0\r\n\r\n"),
    ("TE xchunked", "Transfer-Encoding: xchunked\r\n", false, ""),
    ("TE quoted", "Transfer-Encoding: \"chunked\"\r\n", false, ""),
    ("TE empty", "Transfer-Encoding: \r\n", false, ""),
    ("TE tab", "Transfer-Encoding:\tchunked\r\n", false, "0\r\n\r\n"),
    ("CL then TE", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", false, "5\r\nhello\r\n0\r\n\r\n"),
    ("TE then CL", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", false, "5\r\nhello\r\n0\r\n\r\n"),
    ("TE underscored", "Transfer_Encoding: chunked\r\n", false, "0\r\n\r\n"),
    ("CL underscored", "Content_Length: 5\r\n", false, "hello"),
    ("TE before colon space", "Transfer-Encoding : chunked\r\n", false, "0\r\n\r\n"),
    ("obs-fold", "X-A: b\r\n c\r\n", false, ""),
    ("obs-fold TE", "Transfer-Encoding: gzip\r\n ,chunked\r\n", false, ""),
    ("space before colon", "X-A : b\r\n", false, ""),
    ("tab before colon", "X-A\t: b\r\n", false, ""),
    ("invalid name", "X@A: b\r\n", false, ""),
    ("empty name", ": b\r\n", false, ""),
    ("bare CR in value", "X-A: b\rc\r\n", false, ""),
    ("NUL in value", "X-A: b\0c\r\n", false, ""),
    ("DEL in value", "X-A: b\u{7f}c\r\n", false, ""),
    ("obs-text value", "X-A: caf\u{e9}\r\n", false, ""),
    ("empty value", "X-A:\r\n", false, ""),
    ("tab in value", "X-A: a\tb\r\n", false, ""),
    ("bare LF line end", "X-A: b\nX-B: c\r\n", false, ""),
    ("bare CR line end", "X-A: b\rX-B: c\r\n", false, ""),
    ("Connection close", "Connection: close\r\n", false, ""),
    ("Connection keep-alive", "Connection: keep-alive\r\n", false, ""),
    ("Connection names a field", "Connection: close, X-Secret\r\nX-Secret: s\r\n", false, ""),
    ("Connection names Host", "Connection: host\r\n", false, ""),
    ("Connection names CL", "Connection: content-length\r\nContent-Length: 5\r\n", false, "hello"),
    ("Connection names XFF", "Connection: x-forwarded-for\r\nX-Forwarded-For: 6.6.6.6\r\n", false, ""),
    ("hop-by-hop", "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\nProxy-Connection: k\r\n", false, ""),
    ("h2c upgrade", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", false, ""),
    ("websocket upgrade", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", false, ""),
    ("websocket, two Hosts", "Host: a.test\r\nHost: b.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", true, ""),
    ("other upgrade", "Connection: upgrade\r\nUpgrade: foo/1\r\n", false, ""),
    ("upgrade not in Connection", "Upgrade: foo/1\r\n", false, ""),
    ("XFF", "X-Forwarded-For: 10.0.0.1\r\n", false, ""),
    ("XFF twice", "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n", false, ""),
    ("XFF empty", "X-Forwarded-For: \r\n", false, ""),
    ("XFF obs-text", "X-Forwarded-For: caf\u{e9}\r\n", false, ""),
    ("client X-Forwarded-Proto and -Host", "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n", false, ""),
    ("underscored XFF", "X_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\n", false, ""),
    ("Expect 100-continue", "Expect: 100-continue\r\nContent-Length: 5\r\n", false, "hello"),
    ("trace context", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n", false, ""),
    ("repeated plain fields", "Accept: a\r\nAccept: b\r\nCookie: x=1\r\nCookie: y=2\r\n", false, ""),
    ("Idempotency-Key", "Idempotency-Key: k-1\r\n", false, ""),
    // Values today's path reads only when visible ASCII (found by mutation runs).
    ("Connection obs-text", "Connection: clos\u{e9}, X-Secret\r\nX-Secret: s\r\n", false, ""),
    ("TE obs-text", "Transfer-Encoding: chunk\u{e9}d, chunked\r\n", false, "0\r\n\r\n"),
    ("CL then u64 max", "Content-Length: 5\r\nContent-Length: 18446744073709551615\r\n", false, ""),
];

/// The whole corpus: (name, bytes).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for line in LINES {
        for (name, fields, own_host, body) in FIELDS {
            let host = if *own_host { "" } else { "Host: lb.test\r\n" };
            out.push((
                format!("{line:?} + {name}"),
                format!("{line}\r\n{host}{fields}\r\n{body}").into_bytes(),
            ));
        }
    }
    // Sizes: around `max_header_bytes`, `max_headers` and `max_uri_bytes` (not at the exact
    // byte: hyper's read buffer makes the boundary fuzzy).
    let sized = |name: &str, target: String, fields: String| {
        (
            name.to_string(),
            format!("GET {target} HTTP/1.1\r\nHost: lb.test\r\n{fields}\r\n").into_bytes(),
        )
    };
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    out.push(sized("a 20 KB field", "/".into(), big(20_000)));
    out.push(sized("a 40 KB field", "/".into(), big(40_000)));
    out.push(sized("99 fields", "/".into(), many(98)));
    out.push(sized("101 fields", "/".into(), many(101)));
    out.push(sized(
        "a 7000-byte target",
        format!("/{}", "p".repeat(7000)),
        String::new(),
    ));
    out.push(sized(
        "a 9000-byte target",
        format!("/{}", "p".repeat(9000)),
        String::new(),
    ));
    out.push(sized(
        "a 9000-byte target and a bad CL",
        format!("/{}", "p".repeat(9000)),
        "Content-Length: x\r\n".into(),
    ));
    // Empty lines before the request line, and incomplete heads.
    for (name, raw) in [
        (
            "leading CRLF",
            "\r\nGET / HTTP/1.1\r\nHost: lb.test\r\n\r\n",
        ),
        ("leading LF", "\nGET / HTTP/1.1\r\nHost: lb.test\r\n\r\n"),
        ("no empty line", "GET / HTTP/1.1\r\nHost: lb.test\r\n"),
        ("half a request line", "GET / HT"),
        ("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("all bare LF", "GET / HTTP/1.1\nHost: lb.test\n\n"),
    ] {
        out.push((name.to_string(), raw.as_bytes().to_vec()));
    }
    // The fuzz seeds.
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request");
    let mut files: Vec<_> = std::fs::read_dir(&seeds)
        .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", seeds.display());
    for f in files {
        let name = format!("seed {}", f.file_name().unwrap().to_string_lossy());
        out.push((name, std::fs::read(&f).unwrap()));
    }
    out
}

#[test]
fn the_new_parser_agrees_with_todays_path_on_the_corpus() {
    let corpus = corpus();
    assert!(corpus.len() >= 500, "only {} cases", corpus.len());
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut stricter: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    let (mut forwarded, mut refused) = (0, 0);
    for (name, raw) in &corpus {
        let c = compare(raw);
        match &c {
            Comparison::Same => match today(raw) {
                Verdict::Forwarded(_) => forwarded += 1,
                _ => refused += 1,
            },
            Comparison::BothRefuse => refused += 1,
            Comparison::Stricter(why) => {
                stricter.entry(why.clone()).or_default().push(name.clone())
            }
            Comparison::Diverge(d) => wrong.push(format!("{name}: {d}")),
        }
        let key = match &c {
            Comparison::Stricter(_) => "stricter".to_string(),
            Comparison::Diverge(_) => "DIVERGE".to_string(),
            other => format!("{other:?}"),
        };
        *tally.entry(key).or_default() += 1;
    }
    println!(
        "{} cases: {tally:?}; agreeing: {forwarded} forwarded, {refused} refused",
        corpus.len()
    );
    for (why, names) in &stricter {
        println!(
            "stricter on purpose, {why}: {} cases, e.g. {}",
            names.len(),
            names[0]
        );
    }
    assert!(
        wrong.is_empty(),
        "{} divergences:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The corpus holds both sides, and every deliberate difference shows.
    assert!(
        forwarded >= 300 && refused >= 300,
        "{forwarded} forwarded, {refused} refused"
    );
    for why in [
        "BareLf",
        "RepeatedContentLength",
        "ContentLengthWithTransferEncoding",
        "BadScheme",
    ] {
        assert!(stricter.contains_key(why), "no case of {why}");
    }
}

/// A few verdicts spelled out, so that the corpus test's agreement is not agreement on nothing.
#[test]
fn verdicts_the_corpus_rests_on() {
    let v = |raw: &str| (today(raw.as_bytes()), new_path(raw.as_bytes()).0);
    let (old, new) = v("GET /a HTTP/1.1\r\nHost: lb.test\r\nX-A: 1\r\n\r\n");
    assert_eq!(old, new);
    let Verdict::Forwarded(f) = new else {
        panic!("{new:?}")
    };
    assert_eq!((f.method.as_str(), f.target.as_str()), ("GET", "/a"));
    assert!(f
        .headers
        .contains(&("x-forwarded-for".into(), b"127.0.0.1".to_vec())));
    for (raw, status) in [
        ("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ] {
        assert_eq!(
            v(raw),
            (Verdict::Refused(status), Verdict::Refused(status)),
            "{raw}"
        );
    }
    let (old, new) =
        v("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(matches!(old, Verdict::Forwarded(_)), "{old:?}");
    assert_eq!(new, Verdict::Refused(400));
}

/// Chunked bodies through hyper's decoder and the new one ([`super::oracle::compare_chunked`]):
/// valid ones of every shape, and each way to break the framing.
#[test]
fn the_chunked_decoder_agrees_with_hypers() {
    let bodies: &[&[u8]] = &[
        b"5\r\nhello\r\n0\r\n\r\n",
        b"0\r\n\r\n",
        b"5;a=b;c=\"d e\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
        b"5 ;x\r\nhello\r\n0\r\n\r\n",
        b"0005\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
        // A request pipelined behind the body (found by fuzz/, target h1: the oracle took the
        // second request's empty body for the first's).
        b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n",
        b"5\r\nhel",
        b"5\r\nhello\r\n",
        b"G\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"FFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\r0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\x7fb\r\nhello\r\n0\r\n\r\n",
        b"0\r\n\nX-T: 1\r\n\r\n",
        b"0\r\nX-T: 1\n\r\n",
        b"0\r\n folded\r\n\r\n",
        b"0\r\nX-T 1\r\n\r\n",
        b"0\r\n\r",
    ];
    // Trailer counts around hyper's bound (found by fuzz/, target h1: 101 trailer fields).
    let trailers = |n: usize| format!("0\r\n{}\r\n", "X-T: 1\r\n".repeat(n)).into_bytes();
    let (at, past) = (trailers(100), trailers(101));
    let bodies = [bodies, &[&at[..], &past[..]][..]].concat();
    let mut stricter = Vec::new();
    let mut wrong = Vec::new();
    for body in &bodies {
        match super::oracle::compare_chunked(body) {
            Comparison::Same | Comparison::BothRefuse => {}
            Comparison::Stricter(why) => stricter.push(why),
            Comparison::Diverge(d) => wrong.push(d),
        }
    }
    println!(
        "{} chunked bodies; stricter on purpose: {stricter:?}",
        bodies.len()
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    for why in ["chunked: BadExtension", "chunked: BadLineEnd in trailers"] {
        assert!(stricter.iter().any(|s| s == why), "{stricter:?}");
    }
}
