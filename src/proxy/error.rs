//! Why weir itself answered (or cut short) a request, and the one place a status is chosen for it.

use http::StatusCode;

/// Which side a failure came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("no healthy server in pool")]
    NoHealthyServer,
    #[error("pinned server unavailable and the pool rejects rebalancing")]
    StickyUnavailable,
    #[error("connecting to the server failed: {0}")]
    Connect(String),
    #[error("the server failed: {0}")]
    Upstream(String),
    #[error("the server did not answer in time")]
    Timeout,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("the client stopped sending its request body")]
    BodyTimeout,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("host not covered by the TLS certificate of this connection")]
    Misdirected,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// The reason code of the access log and of `weir_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyServer => "no_healthy_server",
            ProxyError::StickyUnavailable => "sticky_unavailable",
            ProxyError::Connect(_) => "connect_failed",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::Timeout => "upstream_timeout",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Misdirected => "misdirected",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::BodyTooLarge
            | ProxyError::UriTooLong
            | ProxyError::BodyTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::Misdirected => Side::Client,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Timeout => {
                Side::Upstream
            }
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable => Side::Internal,
        }
    }

    /// The short plain-text body a client sees: the status text, never internal names.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "404 Not Found\n",
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable => {
                "503 Service Unavailable\n"
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) => "502 Bad Gateway\n",
            ProxyError::Timeout => "504 Gateway Timeout\n",
            ProxyError::BodyTooLarge => "413 Payload Too Large\n",
            ProxyError::UriTooLong => "414 URI Too Long\n",
            ProxyError::BodyTimeout => "408 Request Timeout\n",
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::Misdirected => "421 Misdirected Request\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::NoHealthyServer, 503),
            (ProxyError::StickyUnavailable, 503),
            (ProxyError::Connect("refused".into()), 502),
            (ProxyError::Upstream("reset".into()), 502),
            (ProxyError::Timeout, 504),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::UriTooLong, 414),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::Misdirected, 421),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e}");
            assert!(e.body().starts_with(&code.to_string()));
        }
    }
}
