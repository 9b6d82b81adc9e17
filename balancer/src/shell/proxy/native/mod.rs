//! The native HTTP/1.1 lane (`[listener] http1 = "native"`, issue 18): a plain client
//! connection read, parsed once with `core::h1`, edited and written through to a plain
//! HTTP/1.1 backend socket, instead of being parsed into a `HeaderMap` and encoded again on each
//! leg by hyper.
//!
//! What the lane serves itself, one request at a time (pipelined requests are answered in
//! order): HTTP/1.1 requests without `Upgrade`, without `Idempotency-Key` (when idempotency is
//! on) or a gRPC content type, with at most one `X-Request-Id`, when no `hash_key` is
//! configured and every backend speaks plain HTTP/1.1. Request bodies of both framings: one
//! small enough is read whole before a slot is taken (`forward`'s rule: `request_buffer`, or
//! `retries.buffer_limit` for an idempotent method that may be retried; a chunked one if it
//! ends within `request_buffer`), a larger one is streamed during its one try ([`Upload`]);
//! `Expect: 100-continue` is answered before the body is read. Responses of every framing are
//! relayed: none (HEAD, 1xx skipped, 204, 304), `Content-Length`, chunked (validated by
//! `ChunkedDecoder`, trailers passed on) and until close (the client connection then closes
//! too).
//!
//! Anything else (HTTP/1.0, WebSockets and other upgrades, `Idempotency-Key`, gRPC, the HTTP/2
//! preface) is handed to hyper for the rest of the connection, with the bytes already read
//! replayed first ([`Prefixed`]): every feature keeps working, and the lane covers the common
//! case.
//!
//! A request the lane serves takes the same path through the shared machinery as one hyper
//! serves: `Proxy::arrive`, a slot from `acquire_slot`, the pure `retry::verdict` and the
//! budget, `on_failure`/`on_success`/`count_response` on the backend, and a `Completion`
//! guard that frees the slot and records the signals, the duration histogram, the counters and
//! the access log when the response has been written. ebbtide's own answers are `Proxy::local`
//! and `Proxy::shed`, serialised.
//!
//! An idle client connection holds no buffer: the read buffer and the field list are let go
//! while the connection waits for its next request, and the request's state is boxed (issue
//! 18's <= 4 KiB per idle connection). `bench/native-h1.sh` (2026-11-30, shared 2-core machine,
//! load 3-6): 1.75 KiB per idle connection (hyper 30.0, HAProxy 1.1); wrk -t1 -c64 on one
//! core: 14.8-17.1 us of proxy CPU per request (hyper 23.4-28.2, HAProxy 13.9-15.4).

mod prefixed;
mod room;
mod upload;

pub use prefixed::Prefixed;
use room::Room;
use upload::{Rest, Upload, UploadError};

use super::client_body::ClientFault;
use super::completion::{Body, Completion};
use super::forward::{reads_whole, with_tries, RefusedWait};
use super::local::LocalAnswer;
use super::request_id::usable_bytes;
use super::retry::{is_idempotent, Attempt, TryOutcome, Verdict};
use super::{grpc, Live, Peer, Proxy};
use crate::access_log::{AccessRecord, Tries};
use crate::body::OnEnd;
use crate::core::h1::chunked::ChunkedDecoder;
use crate::core::h1::edit::{write_request, write_response_without, Forwarding};
use crate::core::h1::request::{parse_request, RequestBody, RequestHead, Upgrade};
use crate::core::h1::response::{parse_response, ResponseBody, ResponseHead};
use crate::core::h1::{Field, FieldKind, HeadError, Limits, Parsed, Version};
use crate::dispatch::Tried;
use crate::shell::head_deadline::stall_answer;
use ebbtide_config::time::Nanos;
use http::header::HeaderValue;
use http_body_util::BodyExt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// A read of a client head starts with this much room; it grows (doubling) up to the head limit.
const HEAD_BUFFER: usize = 4096;
/// Longest backend response head read.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const X_REQUEST_ID: &[u8] = b"x-request-id";
/// How long a request is at a backend before the lane watches for its client leaving: the
/// watch costs a syscall (a peek), which the common fast request should not pay; requests
/// worth cancelling are the slow ones (clients that give up on an overloaded fleet).
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(500);
/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The lane's settings for one listener, and the proxy it forwards for.
pub struct NativeH1 {
    proxy: Arc<Proxy>,
    max_head_bytes: usize,
    max_fields: usize,
    header_read_timeout: Duration,
}

/// Why a connection stops being the lane's.
enum Next {
    /// Serve the next request.
    KeepAlive,
    /// Close the connection.
    Close,
}

impl NativeH1 {
    /// The lane of a listener with these `[listener]` settings.
    pub fn new(proxy: Arc<Proxy>, listener: &ebbtide_config::Listener) -> Self {
        NativeH1 {
            proxy,
            max_head_bytes: listener.max_header_bytes,
            max_fields: listener.max_headers,
            header_read_timeout: listener.header_read_timeout.0,
        }
    }

    /// Serves a plain client connection until it closes, `stop` turns true (between requests),
    /// or a request comes that the lane does not serve: then the stream is returned with the
    /// bytes read from it so far in front, for hyper to serve, with what is left of the first
    /// head's deadline if no request was served yet (for `HeadDeadline`). The first head is due
    /// within `first` of the call (a client that sent part of one then gets 408, as from
    /// `HeadDeadline`), each later one within `header_read_timeout` of the last response.
    pub async fn serve(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        first: Option<Duration>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<(Prefixed<TcpStream>, Option<Duration>)> {
        let peer = Peer::new(peer);
        let mut buf: Vec<u8> = Vec::new();
        let mut fields: Vec<Field> = Vec::new();
        let mut first_request = true;
        loop {
            if *stop.borrow() {
                return None;
            }
            let wait = match first_request {
                true => first,
                false => Some(self.header_read_timeout),
            };
            let deadline = wait.map(|w| Instant::now() + w);
            let left = |first_request: bool| {
                deadline
                    .filter(|_| first_request)
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
            if buf.is_empty() {
                // Idle: no buffer held while waiting.
                buf = Vec::new();
                fields = Vec::new();
                tokio::select! {
                    r = stream.readable() => if r.is_err() { return None },
                    () = sleep_until(deadline) => return None,
                    _ = stop.changed() => return None,
                }
            }
            let max_uri_bytes = self.proxy.live().settings.max_uri_bytes;
            let limits = Limits {
                max_head_bytes: self.max_head_bytes,
                max_fields: self.max_fields,
                max_target_bytes: max_uri_bytes,
            };
            let (head, head_len) = loop {
                if first_request && h2_preface(&buf) {
                    if buf.len() >= 4 {
                        return Some((Prefixed::new(buf, stream), left(true)));
                    }
                } else {
                    match parse_request(&buf, &limits, &mut fields) {
                        Ok(Parsed::Complete(h, n)) => break (h, n),
                        Ok(Parsed::Partial) => {}
                        Err(e) => {
                            Box::pin(self.refuse(&mut stream, e)).await;
                            return None;
                        }
                    }
                }
                if buf.capacity() - buf.len() < 512 {
                    buf.reserve(buf.len().max(HEAD_BUFFER));
                }
                tokio::select! {
                    r = stream.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    },
                    () = sleep_until(deadline) => {
                        if let Some(answer) = stall_answer(&buf).filter(|_| first_request) {
                            tracing::debug!("request head incomplete at header_read_timeout; 408 and closed");
                            let _ = stream.write_all(answer).await;
                        }
                        return None;
                    }
                }
            };
            let was_first = std::mem::replace(&mut first_request, false);
            let live = self.proxy.live();
            let Some(method) = self.serves(&buf, &head, &fields, &live) else {
                return Some((Prefixed::new(buf, stream), left(was_first)));
            };
            // Boxed: the request's state (the try loop, the relay) is allocated while a
            // request is served, not held by every idle connection's task.
            let next = Box::pin(self.proxy.serve_native(
                &mut stream,
                &mut buf,
                NativeRequest {
                    head: &head,
                    head_len,
                    fields: &fields,
                    method,
                },
                &peer,
            ))
            .await;
            if matches!(next, Next::Close) || !head.keep_alive {
                return None;
            }
        }
    }

    /// The request's method when the lane serves it (see the module doc); `None`: hyper does.
    fn serves(
        &self,
        buf: &[u8],
        head: &RequestHead,
        fields: &[Field],
        live: &Live,
    ) -> Option<http::Method> {
        let s = &live.settings;
        if head.version != Version::Http11 || head.upgrade != Upgrade::None || s.hash_key.is_some()
        {
            return None;
        }
        let method = http::Method::from_bytes(head.method.of(buf)).ok()?;
        let mut ids = 0;
        for f in fields.iter().filter(|f| f.kind == FieldKind::Other) {
            let name = f.name.of(buf);
            let value = f.value.of(buf);
            if (s.idempotency.enabled && name.eq_ignore_ascii_case(b"idempotency-key"))
                || (name.eq_ignore_ascii_case(b"content-type") && grpc::is_grpc_content_type(value))
            {
                return None;
            }
            if s.request_id && name.eq_ignore_ascii_case(X_REQUEST_ID) {
                ids += 1;
                if ids > 1 || !usable_bytes(value) {
                    return None;
                }
            }
        }
        let plain = self
            .proxy
            .registry
            .snapshot()
            .backends
            .iter()
            .all(|b| b.pool.speaks_plain_http1());
        plain.then_some(method)
    }

    /// Answers a head the parser refused, as today's path does: the proxy's own refusals
    /// (`LocalAnswer`, counted) with their text, hyper's (syntax, sizes) with an empty body.
    async fn refuse(&self, stream: &mut TcpStream, e: HeadError) {
        use HeadError::*;
        let answer = match e {
            Connect => Some(LocalAnswer::ConnectNotSupported),
            UpgradeNotSupported => Some(LocalAnswer::UpgradeNotSupported),
            TransferCodingNotImplemented => Some(LocalAnswer::TransferCodingNotImplemented),
            NoHost => Some(LocalAnswer::NoHost),
            BadHost => Some(LocalAnswer::BadHost),
            BadTarget | BadScheme => Some(LocalAnswer::BadTarget),
            UriTooLong => Some(LocalAnswer::UriTooLong),
            ContentLengthWithTransferEncoding | TransferEncodingInHttp10 => {
                Some(LocalAnswer::AmbiguousFraming)
            }
            _ => None,
        };
        tracing::debug!(error = ?e, status = e.status(), "request head refused");
        match answer {
            Some(answer) => {
                let (start, live) = self.proxy.arrive();
                let id = live.settings.request_id.then(|| self.proxy.ids.make());
                let resp = self.proxy.local(start, None, answer);
                write_local(stream, resp, id.as_ref(), None, true, false).await;
            }
            None => {
                let status =
                    http::StatusCode::from_u16(e.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
                let out = format!(
                    "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                );
                let _ = stream.write_all(out.as_bytes()).await;
            }
        }
    }
}

/// A parsed request head the lane serves, in the connection's buffer.
struct NativeRequest<'a> {
    head: &'a RequestHead,
    head_len: usize,
    fields: &'a [Field],
    method: http::Method,
}

/// The backend's response head, parsed, in `buf` (with the first body bytes after it).
struct Answered {
    up: TcpStream,
    buf: Vec<u8>,
    head: ResponseHead,
    head_len: usize,
    fields: Vec<Field>,
    /// The backend answered before it had the whole request body: its socket is not reused.
    body_unsent: bool,
}

impl Proxy {
    /// Serves one request of the native lane: its body read (it is in `buf` after the head on
    /// return), the tries, the response written to `client`. `buf` loses the request.
    async fn serve_native(
        self: &Arc<Self>,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        req: NativeRequest<'_>,
        peer: &Peer,
    ) -> Next {
        let (start, live) = self.arrive();
        let settings = &live.settings;
        let head = req.head;
        // The id: the client's (checked usable by `serves`) or a new one, added to the head.
        let client_id = settings
            .request_id
            .then(|| {
                req.fields
                    .iter()
                    .find(|f| f.name.of(buf).eq_ignore_ascii_case(X_REQUEST_ID))
                    .and_then(|f| HeaderValue::from_bytes(f.value.of(buf)).ok())
            })
            .flatten();
        let made_id = (settings.request_id && client_id.is_none()).then(|| self.ids.make());
        let id = client_id.or_else(|| made_id.clone());
        let record = self
            .access
            .get()
            .map(|_| access_record(start, peer, &buf[..req.head_len], head, id.clone()));
        // A client that asked to be told before it sends its body (RFC 9110 10.1.1) is told
        // now, unless some of the body came with the head: the body is read next.
        if head.expect_continue
            && head.body != RequestBody::None
            && buf.len() == req.head_len
            && client.write_all(CONTINUE).await.is_err()
        {
            return Next::Close;
        }
        // A small body (or one kept for retries) is read whole before a slot is taken, so a slow
        // upload holds no backend, as `forward` does; a larger one is streamed during the try.
        let (total, mut upload) = match self
            .read_body(client, buf, req.head_len, head, &req.method, settings)
            .await
        {
            Ok(read) => read,
            Err(answer) => {
                let resp = self.local(start, None, answer);
                write_local(client, resp, id.as_ref(), record, true, head.is_head).await;
                return Next::Close;
            }
        };
        let mut out = Vec::with_capacity(total + 160);
        let fwd = Forwarding {
            client_ip: peer.ip_text(),
            tls: false,
        };
        write_request(buf, head, req.fields, fwd, &mut out);
        if let Some(made) = &made_id {
            out.truncate(out.len() - 2);
            out.extend_from_slice(b"X-Request-Id: ");
            out.extend_from_slice(made.as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
        }
        out.extend_from_slice(&buf[req.head_len..total]);
        buf.drain(..total);
        let next = self
            .tries_native(
                client,
                &out,
                upload.as_mut(),
                &req.method,
                head.is_head,
                start,
                &live,
                id,
                record,
            )
            .await;
        match upload {
            Some(mut u) if u.finished() => {
                buf.extend_from_slice(&u.take_spill());
                next
            }
            // Body bytes left unread: the connection cannot carry another request.
            Some(_) => Next::Close,
            None => next,
        }
    }

    /// Reads the request body as far as it is read before a slot is taken: whole (bounded by
    /// `request_buffer`, or `retries.buffer_limit` for an idempotent request that may be
    /// retried: `forward`'s rule), or, for a larger one, what has come so far, the rest left
    /// to an [`Upload`]. Returns where in `buf` the head and the bytes read of the body end.
    async fn read_body(
        &self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        head_len: usize,
        head: &RequestHead,
        method: &http::Method,
        s: &super::ProxySettings,
    ) -> Result<(usize, Option<Upload>), LocalAnswer> {
        let limits = s.body_limits;
        match head.body {
            RequestBody::None => Ok((head_len, None)),
            RequestBody::Length(n) => {
                if !reads_whole(s, is_idempotent(method), n) {
                    let here = ((buf.len() - head_len) as u64).min(n);
                    let rest = Upload::new(Rest::Length(n - here), limits);
                    return Ok((head_len + here as usize, Some(rest)));
                }
                let total = head_len + n as usize;
                buf.reserve(total.saturating_sub(buf.len()));
                while buf.len() < total {
                    read_more(client, buf, limits.timeout).await?;
                }
                Ok((total, None))
            }
            RequestBody::Chunked => {
                // Read ahead as far as `request_buffer`: a body that ends within it is sent
                // whole (and may be retried), a longer one streams from where this stopped.
                let mut dec = ChunkedDecoder::new();
                let mut i = head_len;
                loop {
                    i += dec.check(&buf[i..]).map_err(|_| LocalAnswer::BadBody)?.0;
                    if dec.is_done() {
                        return Ok((i, None));
                    }
                    if i - head_len >= s.request_buffer {
                        return Ok((i, Some(Upload::new(Rest::Chunked(dec), limits))));
                    }
                    if buf.capacity() - buf.len() < 512 {
                        buf.reserve(HEAD_BUFFER.max(buf.len().min(s.request_buffer)));
                    }
                    read_more(client, buf, limits.timeout).await?;
                }
            }
        }
    }

    /// The try loop of the native lane (`forward`'s, on raw sockets): a slot, a socket, the
    /// request `out` written, the response head read; another try where the retry rule and
    /// the budget allow; then the response relayed to `client`.
    #[allow(clippy::too_many_arguments)]
    async fn tries_native(
        self: &Arc<Self>,
        client: &mut TcpStream,
        out: &[u8],
        mut upload: Option<&mut Upload>,
        method: &http::Method,
        is_head: bool,
        start: Nanos,
        live: &Live,
        id: Option<HeaderValue>,
        record: Option<Box<AccessRecord>>,
    ) -> Next {
        let settings = &live.settings;
        let retries = &settings.retries;
        let max_attempts = retries.max_attempts.max(1);
        let idempotent = is_idempotent(method);
        let ready = self.clock.now();
        let per_try = if retries.per_try_timeout.0.is_zero() {
            settings.response_timeout
        } else {
            retries.per_try_timeout.0
        };
        let deadline = (!retries.deadline.0.is_zero()).then(|| start + retries.deadline.as_nanos());
        let logging = self.access.get().is_some();
        let mut tries = Tries::default();
        let mut tried = Tried::new();
        let mut attempt = 0;
        let mut acquire_from = ready;
        let mut refused = RefusedWait::default();
        let replayable = upload.is_none();
        // Body bytes the client has not sent yet (the try that streamed them failed, or none
        // started): the connection closes after ebbtide's answer.
        let unread = |u: &Option<&mut Upload>| u.as_ref().is_some_and(|u| !u.finished());
        loop {
            attempt += 1;
            let facts = |deadline_passed| Attempt {
                idempotent,
                // A body read whole can be sent again; a streamed one cannot.
                replayable,
                number: attempt,
                max_attempts,
                deadline_passed,
            };
            let acquired = self.acquire_slot(None, tried, refused.next.take()).await;
            if logging {
                tries.queue_ns += self.clock.now().saturating_sub(acquire_from);
            }
            let slot = match acquired {
                Ok(s) => s,
                Err(shed) => {
                    let resp = with_tries(self.shed(start, shed), tries);
                    let close = unread(&upload);
                    return write_local(client, resp, id.as_ref(), record, close, is_head).await;
                }
            };
            tries.attempts = attempt;
            let backend = slot.backend().clone();
            let (outcome, now, answered) = match backend.pool.checkout_raw().await {
                Err(e) => {
                    if !e.is_local() {
                        self.on_failure(&backend, None);
                    }
                    tracing::warn!(backend = %backend.address, error = %e, attempt, "no connection to the backend");
                    (TryOutcome::NoConnection, self.clock.now(), None)
                }
                Ok((up, reused)) => {
                    let sent_at = self.clock.now();
                    let in_flight = backend.in_flight();
                    let limit = match deadline {
                        Some(d) => per_try.min(Duration::from_nanos(d.saturating_sub(sent_at))),
                        None => per_try,
                    };
                    let exchanged = match upload.as_deref_mut() {
                        Some(u) => exchange(up, out, is_head, Some((&mut *client, u)), limit).await,
                        // A client that leaves while its request is at a backend takes the
                        // request with it, as hyper's server drops the request's future: the
                        // backend sees its connection close and the slot is freed.
                        None => tokio::select! {
                            e = exchange(up, out, is_head, None, limit) => e,
                            () = client_gone(client) => {
                                tracing::debug!(backend = %backend.address, "client closed its connection while its request was at the backend");
                                return Next::Close;
                            }
                        },
                    };
                    let now = self.clock.now();
                    tries.upstream_ns = Some(now.saturating_sub(sent_at));
                    // The backend's time counts from when it had the whole request.
                    let sent_at = exchanged
                        .body_sent
                        .map_or(sent_at, |d| sent_at.saturating_add(d.as_nanos() as Nanos));
                    match exchanged.result {
                        Ok(a) => {
                            let status = a.head.status;
                            backend.count_response(status);
                            if (500..600).contains(&status) && settings.outlier.count_5xx {
                                self.on_failure(&backend, None);
                            } else {
                                backend.on_success(now.saturating_sub(sent_at), in_flight, now);
                            }
                            (TryOutcome::Answered { status }, now, Some((a, sent_at)))
                        }
                        Err(Failed::Client(fault)) => {
                            // The client's doing, not the backend's: no failure, no sample.
                            tracing::debug!(backend = %backend.address, ?fault, "client request body failed");
                            let too_slow = fault == ClientFault::TooSlow;
                            (TryOutcome::ClientBodyFailed { too_slow }, now, None)
                        }
                        Err(Failed::Io(e)) => {
                            self.on_failure(&backend, Some((sent_at, in_flight)));
                            tracing::warn!(backend = %backend.address, error = %e, reused, "backend closed the connection without a response");
                            (TryOutcome::ClosedBeforeHeaders, now, None)
                        }
                        Err(Failed::TimedOut) => {
                            self.on_failure(&backend, Some((sent_at, in_flight)));
                            tracing::warn!(backend = %backend.address, timeout = ?limit, "backend did not answer in time");
                            (TryOutcome::TryTimedOut, now, None)
                        }
                    }
                }
            };
            acquire_from = now;
            let deadline_passed = deadline.is_some_and(|d| now >= d);
            let Some(verdict) = self.after_try(
                outcome,
                facts(deadline_passed),
                &live.budget,
                now,
                &mut tried,
                &backend,
                &mut refused,
            ) else {
                continue;
            };
            return match (verdict, answered) {
                (Verdict::PassThrough, Some((a, sent))) => {
                    let mut guard = Completion::new(self.clone(), start, Some(slot), None)
                        .ready_at(ready)
                        .sent_at(sent);
                    guard.tries = tries;
                    if let Some(mut r) = record {
                        r.status = a.head.status;
                        guard.log = Some(r);
                    }
                    relay(client, a, id.as_ref(), &mut guard).await
                }
                (Verdict::Answer(answer), _) => {
                    let resp = with_tries(self.local(start, Some(slot), answer), tries);
                    let close = answer.closes_connection() || unread(&upload);
                    write_local(client, resp, id.as_ref(), record, close, is_head).await
                }
                (v, _) => {
                    unreachable!("{v:?} after {outcome:?}: only a backend's answer passes through")
                }
            };
        }
    }
}

/// The access log's record of a native request: built from the head's bytes only when the log
/// is on.
fn access_record(
    start: Nanos,
    peer: &Peer,
    buf: &[u8],
    head: &RequestHead,
    id: Option<HeaderValue>,
) -> Box<AccessRecord> {
    let mut req = http::Request::new(());
    if let Ok(m) = http::Method::from_bytes(head.method.of(buf)) {
        *req.method_mut() = m;
    }
    if let Ok(u) = http::Uri::try_from(head.target.of(buf)) {
        *req.uri_mut() = u;
    }
    let mut fields = Vec::new();
    let limits = Limits {
        max_head_bytes: buf.len(),
        max_fields: 100,
        max_target_bytes: usize::MAX,
    };
    if let Ok(Parsed::Complete(..)) = parse_request(buf, &limits, &mut fields) {
        for f in &fields {
            let name = f.name.of(buf);
            for known in [http::header::USER_AGENT, http::header::REFERER] {
                if name.eq_ignore_ascii_case(known.as_str().as_bytes()) {
                    if let Ok(v) = HeaderValue::from_bytes(f.value.of(buf)) {
                        req.headers_mut().insert(known, v);
                    }
                }
            }
        }
    }
    AccessRecord::begin(start, peer, &req, id)
}

/// How one try's exchange with the backend ended.
struct Exchanged {
    result: Result<Answered, Failed>,
    /// For a streamed body: when its last byte was written, from the start of the try.
    body_sent: Option<Duration>,
}

/// Why a try got no response head.
enum Failed {
    /// The backend closed, reset, or sent no valid head.
    Io(io::Error),
    /// No head within the try's time (counted from the end of a streamed body).
    TimedOut,
    /// The client's streamed body failed: its doing.
    Client(ClientFault),
}

/// Writes the request (`out`: the head and the body's bytes read so far) to the backend and
/// reads its response head within `limit`. With `streamed`, the rest of the body is copied
/// from the client meanwhile, and `limit` counts from its end; a backend that answers before
/// it has the whole body (an early 413, say) is answered with, the client connection then
/// closing after the response.
async fn exchange(
    mut up: TcpStream,
    out: &[u8],
    is_head: bool,
    streamed: Option<(&mut TcpStream, &mut Upload)>,
    limit: Duration,
) -> Exchanged {
    let Some((client, upload)) = streamed else {
        let sent = async {
            up.write_all(out).await?;
            read_head(&mut up, is_head).await
        };
        let result = match tokio::time::timeout(limit, sent).await {
            Ok(Ok(head)) => Ok(head.with(up, false)),
            Ok(Err(e)) => Err(Failed::Io(e)),
            Err(_) => Err(Failed::TimedOut),
        };
        return Exchanged {
            result,
            body_sent: None,
        };
    };
    let began = Instant::now();
    let mut body_sent = None;
    let head = async {
        match tokio::time::timeout(limit, up.write_all(out)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failed::Io(e)),
            Err(_) => return Err(Failed::TimedOut),
        }
        let (mut r, mut w) = up.split();
        let mut uploading = std::pin::pin!(upload.run(client, &mut w));
        let mut reading = std::pin::pin!(read_head(&mut r, is_head));
        let mut uploaded = false;
        let mut due = None;
        loop {
            tokio::select! {
                res = &mut uploading, if !uploaded => {
                    uploaded = true;
                    due = Some(Instant::now() + limit);
                    match res {
                        Ok(()) => body_sent = Some(began.elapsed()),
                        Err(UploadError::Client(fault)) => return Err(Failed::Client(fault)),
                        // It may still answer (it stopped reading to say why).
                        Err(UploadError::Backend(e)) => {
                            tracing::debug!(error = %e, "backend stopped taking the request body");
                        }
                    }
                }
                head = &mut reading => return head.map_err(Failed::Io),
                () = sleep_until(due) => return Err(Failed::TimedOut),
            }
        }
    }
    .await;
    let unsent = !upload.finished();
    Exchanged {
        result: head.map(|h| h.with(up, unsent)),
        body_sent,
    }
}

/// A response head read off a backend socket, with the bytes after it.
struct HeadRead {
    buf: Vec<u8>,
    head: ResponseHead,
    head_len: usize,
    fields: Vec<Field>,
}

impl HeadRead {
    fn with(self, up: TcpStream, body_unsent: bool) -> Answered {
        Answered {
            up,
            buf: self.buf,
            head: self.head,
            head_len: self.head_len,
            fields: self.fields,
            body_unsent,
        }
    }
}

/// Reads a response head (1xx interim responses are skipped: 100 Continue is the client's
/// business with the lane, and 103 Early Hints are not passed on).
async fn read_head<R: AsyncRead + Unpin>(up: &mut R, is_head: bool) -> io::Result<HeadRead> {
    let mut buf = Vec::with_capacity(HEAD_BUFFER);
    let mut fields = Vec::new();
    let limits = Limits {
        max_head_bytes: MAX_RESPONSE_HEAD,
        max_fields: 100,
        max_target_bytes: usize::MAX,
    };
    loop {
        match parse_response(&buf, &limits, is_head, &mut fields) {
            Ok(Parsed::Complete(head, _)) if head.status == 101 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "101 Switching Protocols to a request that asked for no upgrade",
                ));
            }
            Ok(Parsed::Complete(head, n)) if head.status < 200 => {
                buf.drain(..n);
                continue;
            }
            Ok(Parsed::Complete(head, head_len)) => {
                return Ok(HeadRead {
                    buf,
                    head,
                    head_len,
                    fields,
                })
            }
            Ok(Parsed::Partial) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("invalid response head: {e:?}"),
                ))
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.len().max(HEAD_BUFFER));
        }
        if up.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
    }
}

/// Writes the backend's response to the client: its head edited, its body relayed by its
/// framing through a bounded buffer. The socket goes back to the backend's pool when the
/// response ended cleanly, the backend keeps it open and sent nothing more.
async fn relay(
    client: &mut TcpStream,
    a: Answered,
    id: Option<&HeaderValue>,
    guard: &mut Completion,
) -> Next {
    let Answered {
        mut up,
        mut buf,
        head,
        head_len,
        fields,
        body_unsent,
    } = a;
    let mut out = Vec::with_capacity(head_len + 64);
    let replaced = id.map(|_| X_REQUEST_ID);
    write_response_without(&buf, &head, &fields, false, replaced, &mut out);
    if let Some(id) = id {
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }
    if body_unsent && head.body != ResponseBody::Close {
        // The rest of the request body is unread: this connection ends with the response.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    drop(fields);
    buf.drain(..head_len);
    let relayed = match head.body {
        ResponseBody::None => {
            let clean = buf.is_empty();
            client.write_all(&out).await.map(|()| clean)
        }
        ResponseBody::Length(n) => relay_length(client, &mut up, out, buf, n, guard).await,
        ResponseBody::Chunked => relay_chunked(client, &mut up, out, buf, guard).await,
        ResponseBody::Close => relay_until_close(client, &mut up, out, buf, guard)
            .await
            .map(|()| false),
    };
    match relayed {
        Ok(reusable) => {
            if reusable && head.keep_alive && !body_unsent {
                guard.check_in_raw(up);
            }
            if head.body == ResponseBody::Close || body_unsent {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "response relay broke off");
            Next::Close
        }
    }
}

/// A `Content-Length` body: `n` bytes, the first of them in `buf`. Reusable: nothing followed.
async fn relay_length(
    client: &mut TcpStream,
    up: &mut TcpStream,
    mut out: Vec<u8>,
    mut buf: Vec<u8>,
    n: u64,
    guard: &mut Completion,
) -> io::Result<bool> {
    let first = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    let extra = buf.len() > first;
    out.extend_from_slice(&buf[..first]);
    client.write_all(&out).await?;
    guard.on_data(first);
    let mut left = n - first as u64;
    let mut room = Room::for_length(left);
    while left > 0 {
        room.prepare(&mut buf);
        let read = up.read_buf(&mut buf).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed before the end of its Content-Length body",
            ));
        }
        room.after(read);
        let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        client.write_all(&buf[..take]).await?;
        guard.on_data(take);
        left -= take as u64;
        if buf.len() > take {
            return Ok(false);
        }
    }
    Ok(!extra)
}

/// A chunked body, passed on as it came (sizes, extensions, trailers) once `ChunkedDecoder` has
/// checked it, so that the client reads the same message boundaries as the lane.
async fn relay_chunked(
    client: &mut TcpStream,
    up: &mut TcpStream,
    mut out: Vec<u8>,
    mut buf: Vec<u8>,
    guard: &mut Completion,
) -> io::Result<bool> {
    let mut dec = ChunkedDecoder::new();
    let mut room = Room::new();
    loop {
        let (i, data) = dec
            .check(&buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        guard.on_data(data);
        out.extend_from_slice(&buf[..i]);
        client.write_all(&out).await?;
        out.clear();
        if dec.is_done() {
            return Ok(i == buf.len());
        }
        room.prepare(&mut buf);
        let read = up.read_buf(&mut buf).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "backend closed inside its chunked body",
            ));
        }
        room.after(read);
    }
}

/// A body until the backend closes; the client's connection closes after it.
async fn relay_until_close(
    client: &mut TcpStream,
    up: &mut TcpStream,
    mut out: Vec<u8>,
    mut buf: Vec<u8>,
    guard: &mut Completion,
) -> io::Result<()> {
    out.extend_from_slice(&buf);
    client.write_all(&out).await?;
    guard.on_data(buf.len());
    let mut room = Room::new();
    loop {
        room.prepare(&mut buf);
        let read = up.read_buf(&mut buf).await?;
        if read == 0 {
            return Ok(());
        }
        room.after(read);
        client.write_all(&buf).await?;
        guard.on_data(buf.len());
    }
}

/// Writes an answer of ebbtide's own (`Proxy::local`, `Proxy::shed`) to the client, with the
/// request id; its guard records the request as `handle` has it do. `close`: the connection
/// closes after it (`Connection: close` is said).
async fn write_local(
    client: &mut TcpStream,
    mut resp: http::Response<Body>,
    id: Option<&HeaderValue>,
    record: Option<Box<AccessRecord>>,
    close: bool,
    is_head: bool,
) -> Next {
    let status = resp.status();
    if let Some(id) = id {
        resp.headers_mut()
            .insert(super::request_id::X_REQUEST_ID.clone(), id.clone());
    }
    // Every local answer carries its guard, which writes the record when it drops.
    if let (Some(mut r), Some(guard)) = (record, resp.body_mut().guard_mut()) {
        r.status = status.as_u16();
        guard.log = Some(r);
    }
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(128 + bytes.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(format!("content-length: {}\r\n", bytes.len()).as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(&bytes);
    }
    match client.write_all(&out).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Returns when the client has closed its connection (or it failed), watched from
/// [`WATCH_CLIENT_AFTER`] on; never if the client sends more (a pipelined request, read after
/// this one is answered).
async fn client_gone(client: &TcpStream) {
    tokio::time::sleep(WATCH_CLIENT_AFTER).await;
    let mut one = [0u8; 1];
    match client.peek(&mut one).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// One more read of a request body into `buf`, within `timeout`: the client's fault if it
/// closes (400) or stays silent (408).
async fn read_more(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), LocalAnswer> {
    match tokio::time::timeout(timeout, client.read_buf(buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(LocalAnswer::BodyCutOff),
        Err(_) => Err(LocalAnswer::BodyTimeout),
    }
}

/// Whether `buf` is, or may grow into, the start of the HTTP/2 preface (`PRI * HTTP/2.0`).
fn h2_preface(buf: &[u8]) -> bool {
    const START: &[u8] = b"PRI ";
    let n = buf.len().min(START.len());
    n > 0 && buf[..n] == START[..n]
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection's task holds of the lane: the driver's state, with the
    /// request's boxed away (issue 18: <= 4 KiB per idle connection, socket buffers aside).
    #[tokio::test]
    async fn an_idle_connection_holds_a_small_driver() {
        let cfg = ebbtide_config::Config::from_toml(
            "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
            "t.toml",
        )
        .unwrap();
        let server = crate::serve::Server::bind(&cfg).await.unwrap();
        let native = NativeH1::new(server.proxy().clone(), &cfg.listener);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let ((stream, peer), _client) =
            tokio::join!(async { listener.accept().await.unwrap() }, async {
                client.await.unwrap()
            });
        let (_tx, rx) = watch::channel(false);
        let serving = native.serve(stream, peer, None, rx);
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 1024, "the driver's future is {size} bytes");
    }

    #[test]
    fn the_h2_preface_is_told_from_its_first_bytes() {
        assert!(h2_preface(b"P"));
        assert!(h2_preface(b"PRI * HTTP/2.0\r\n"));
        assert!(!h2_preface(b""));
        assert!(!h2_preface(b"POST / HTTP/1.1\r\n"));
        assert!(!h2_preface(b"PRIX"));
    }
}
