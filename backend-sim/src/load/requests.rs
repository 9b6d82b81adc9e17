//! What each request of a run looks like.

use super::client::{RequestTemplate, Target};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// The requests of a run: built fresh for each send from what the options say.
pub(crate) struct Requests {
    target: Target,
    template: RequestTemplate,
}

impl Requests {
    /// Every request the same: `template` sent to `target`.
    pub(crate) fn single(target: Target, template: RequestTemplate) -> Requests {
        Requests { target, template }
    }

    /// The next request to send.
    pub(crate) fn next(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.template.body.clone()));
        *req.method_mut() = self.template.method.clone();
        *req.uri_mut() = self.target.path.clone();
        let headers = req.headers_mut();
        headers.insert(http::header::HOST, self.target.host.clone());
        for (k, v) in &self.template.headers {
            headers.insert(k.clone(), v.clone());
        }
        req
    }
}
