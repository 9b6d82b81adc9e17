//! The IO shell around the core: the reverse proxy, connection pools, the backend registry with
//! its atomics, the dispatcher's async wait, health probes, listeners and the admin API.

/// `AsyncWrite` for a wrapper that only watches the read side of its `io` field: every write call
/// goes to `io` unchanged (the head deadline, the HTTP/2 first-frame watch).
macro_rules! write_through {
    (impl $([$($generics:tt)*])? for $ty:ty) => {
        impl $(<$($generics)*>)? tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.get_mut().io), cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write_vectored(std::pin::Pin::new(&mut self.get_mut().io), cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                tokio::io::AsyncWrite::is_write_vectored(&self.io)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.get_mut().io), cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.get_mut().io), cx)
            }
        }
    };
}

pub mod access_log;
pub mod admin;
pub mod body;
pub mod clock;
pub mod dashboard;
pub mod discovery;
pub mod dispatch;
pub(crate) mod head_deadline;
pub mod health;
pub(crate) mod heap_trim;
pub mod idempotency;
pub mod metrics;
pub(crate) mod per_client;
pub mod pool;
pub mod proxy;
pub mod registry;
pub mod serve;
pub mod tls;
pub mod upstream_tls;
pub(crate) mod workers;
