//! The one HTTP client of the admin API, typed by [`super`]'s structs: `ebbtide autoscale`,
//! `ebbtide load --admin` and the tests call balancers through it. hyper-util's pooled client
//! (already a dependency) rather than reqwest, which would add ~37 crates (url, idna, icu4x)
//! for three plain-HTTP calls on loopback.

use super::{paths, BackendInfo, Register, Signals};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Largest answer read (the backend list of a big fleet fits easily).
const MAX_ANSWER: usize = 4 << 20;

/// Why a call gave no typed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// No answer: could not connect, the connection failed, or the timeout passed.
    Transport(String),
    /// An answer that is not a success; `body` is its (plain text) error message.
    Status {
        /// `METHOD url`.
        call: String,
        /// The status.
        status: StatusCode,
        /// The body, trimmed.
        body: String,
    },
    /// A success whose body is not the expected JSON (another version's admin API?).
    Decode(String),
}

impl CallError {
    /// The status of a non-success answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) | CallError::Decode(e) => f.write_str(e),
            CallError::Status { call, status, body } => {
                write!(f, "{call} answered {status}: {body}")
            }
        }
    }
}

impl std::error::Error for CallError {}

/// A client for admin APIs: a connection pool, an optional bearer token and a per-call timeout.
/// Each call names the admin API it goes to, as `host:port` or `http://host:port[/]`.
#[derive(Clone)]
pub struct AdminClient {
    http: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
    timeout: Duration,
}

impl AdminClient {
    /// A client sending `Authorization: Bearer {token}` when given; a call that takes longer
    /// than `timeout` (connecting included) fails with [`CallError::Transport`].
    pub fn new(token: Option<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        AdminClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
            token,
            timeout,
        }
    }

    /// `GET /api/v1/signals`.
    pub async fn signals(&self, admin: &str) -> Result<Signals, CallError> {
        self.get_json(admin, paths::SIGNALS).await
    }

    /// `GET /api/v1/backends`.
    pub async fn backends(&self, admin: &str) -> Result<Vec<BackendInfo>, CallError> {
        self.get_json(admin, paths::BACKENDS).await
    }

    /// `POST /api/v1/backends`: the backend as registered (new or renewed).
    pub async fn register(&self, admin: &str, body: &Register) -> Result<BackendInfo, CallError> {
        self.post_json(admin, paths::BACKENDS, body).await
    }

    /// `DELETE /api/v1/backends/{id}`: the backend, now draining.
    pub async fn delete(&self, admin: &str, id: u64) -> Result<BackendInfo, CallError> {
        self.call(admin, Method::DELETE, &paths::backend(id), None)
            .await
    }

    /// `GET {path}`, its JSON answer as `T`.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        admin: &str,
        path: &str,
    ) -> Result<T, CallError> {
        self.call(admin, Method::GET, path, None).await
    }

    /// `POST {path}` with `body` as JSON, its JSON answer as `T`.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        admin: &str,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        self.call(admin, Method::POST, path, Some(Bytes::from(body)))
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        admin: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<T, CallError> {
        let admin = admin.trim_end_matches('/');
        let url = if admin.contains("://") {
            format!("{admin}{path}")
        } else {
            format!("http://{admin}{path}")
        };
        let call = format!("{method} {url}");
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| CallError::Transport(format!("{call}: {e}")))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, answer) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(CallError::Transport(format!("{call}: {e}"))),
            Err(_) => {
                return Err(CallError::Transport(format!(
                    "{call}: no answer within {:?}",
                    self.timeout
                )))
            }
        };
        if !status.is_success() {
            return Err(CallError::Status {
                call,
                status,
                body: String::from_utf8_lossy(&answer).trim().to_string(),
            });
        }
        serde_json::from_slice(&answer).map_err(|e| {
            CallError::Decode(format!(
                "{call}: {e} (is it an ebbtide balancer of this version?)"
            ))
        })
    }
}
