//! A server that answers before it has read the request body (an upload refused at its head).
//! `src/pool/h1.rs`'s unit tests include this file by path, as the black-box tests use it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads each request's head, answers `reply` at once whatever its body, and keeps the connection
/// open for a minute without reading on.
pub async fn answering_before_the_body(reply: &'static [u8]) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(reply).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}
