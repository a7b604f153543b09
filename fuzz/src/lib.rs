//! Helpers shared by the fuzz targets: turning `arbitrary` data into HTTP pieces.

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};

/// A header as a client could send it: any name and value bytes; invalid ones are dropped.
#[derive(Arbitrary, Debug, Clone)]
pub struct RawHeader {
    pub name: Name,
    pub value: Vec<u8>,
}

/// Mostly names weir looks at, so the fuzzer does not have to guess them.
#[derive(Arbitrary, Debug, Clone)]
pub enum Name {
    Cookie,
    Host,
    Connection,
    Te,
    Upgrade,
    KeepAlive,
    TransferEncoding,
    ContentLength,
    XForwardedFor,
    XForwardedHost,
    XRequestId,
    XCanary,
    XTenant,
    Other(Vec<u8>),
}

impl Name {
    pub fn header_name(&self) -> Option<HeaderName> {
        let s: &[u8] = match self {
            Name::Cookie => b"cookie",
            Name::Host => b"host",
            Name::Connection => b"connection",
            Name::Te => b"te",
            Name::Upgrade => b"upgrade",
            Name::KeepAlive => b"keep-alive",
            Name::TransferEncoding => b"transfer-encoding",
            Name::ContentLength => b"content-length",
            Name::XForwardedFor => b"x-forwarded-for",
            Name::XForwardedHost => b"x-forwarded-host",
            Name::XRequestId => b"x-request-id",
            Name::XCanary => b"x-canary",
            Name::XTenant => b"x-tenant",
            Name::Other(b) => b,
        };
        HeaderName::from_bytes(s).ok()
    }
}

/// The valid headers of `raw`, appended in order (so repeated names keep every value).
pub fn header_map(raw: &[RawHeader]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for r in raw {
        if let (Some(n), Ok(v)) = (r.name.header_name(), HeaderValue::from_bytes(&r.value)) {
            h.append(n, v);
        }
    }
    h
}
