//! A hand-written tonic service (no protoc): `test.Calc` with one method per gRPC call shape, a
//! tonic server for it on an ephemeral port (counting accepted connections), and tonic clients over
//! h2c or h2/TLS driven through a plain hyper HTTP/2 connection.
//!
//! - `Unary(Num) -> Num`: doubles `n`; a negative `n` fails with FAILED_PRECONDITION, a message
//!   and an `x-detail` trailer.
//! - `Count(Num) -> stream Num`: `0..n`, 50 ms apart.
//! - `Sum(stream Num) -> Num`: the sum.
//! - `Echo(stream Num) -> stream Num`: `n + 1` for each message, as soon as it arrives.
// tonic's own `Result<_, Status>` signatures.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::body::BoxBody;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Num {
    #[prost(int64, tag = "1")]
    pub n: i64,
}

pub fn num(n: i64) -> Num {
    Num { n }
}

#[derive(Clone, Default)]
pub struct Calc;

impl tonic::server::NamedService for Calc {
    const NAME: &'static str = "test.Calc";
}

struct Unary;
impl tonic::server::UnaryService<Num> for Unary {
    type Response = Num;
    type Future = BoxFuture<Response<Num>, Status>;
    fn call(&mut self, req: Request<Num>) -> Self::Future {
        Box::pin(async move {
            let n = req.into_inner().n;
            if n < 0 {
                let mut s = Status::failed_precondition(format!("negative number {n}"));
                s.metadata_mut()
                    .insert("x-detail", "from-calc".parse().unwrap());
                return Err(s);
            }
            Ok(Response::new(num(n * 2)))
        })
    }
}

struct Count;
impl tonic::server::ServerStreamingService<Num> for Count {
    type Response = Num;
    type ResponseStream = BoxStream<Num>;
    type Future = BoxFuture<Response<BoxStream<Num>>, Status>;
    fn call(&mut self, req: Request<Num>) -> Self::Future {
        let n = req.into_inner().n;
        Box::pin(async move {
            let s = futures_util::stream::iter(0..n).then(|i| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(num(i))
            });
            Ok(Response::new(Box::pin(s) as BoxStream<Num>))
        })
    }
}

struct Sum;
impl tonic::server::ClientStreamingService<Num> for Sum {
    type Response = Num;
    type Future = BoxFuture<Response<Num>, Status>;
    fn call(&mut self, req: Request<Streaming<Num>>) -> Self::Future {
        Box::pin(async move {
            let mut s = req.into_inner();
            let mut total = 0;
            while let Some(m) = s.message().await? {
                total += m.n;
            }
            Ok(Response::new(num(total)))
        })
    }
}

struct Echo;
impl tonic::server::StreamingService<Num> for Echo {
    type Response = Num;
    type ResponseStream = BoxStream<Num>;
    type Future = BoxFuture<Response<BoxStream<Num>>, Status>;
    fn call(&mut self, req: Request<Streaming<Num>>) -> Self::Future {
        Box::pin(async move {
            let s = req.into_inner().map(|m| m.map(|m| num(m.n + 1)));
            Ok(Response::new(Box::pin(s) as BoxStream<Num>))
        })
    }
}

impl<B> Service<http::Request<B>> for Calc
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut g = tonic::server::Grpc::new(ProstCodec::<Num, Num>::default());
            Ok(match req.uri().path() {
                "/test.Calc/Unary" => g.unary(Unary, req).await,
                "/test.Calc/Count" => g.server_streaming(Count, req).await,
                "/test.Calc/Sum" => g.client_streaming(Sum, req).await,
                "/test.Calc/Echo" => g.streaming(Echo, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server (h2c) with `Calc` and tonic-health; `health` reports the `test.Calc` service.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    pub health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcBackend {
    pub async fn start() -> GrpcBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l).inspect(move |_| {
            acc.fetch_add(1, SeqCst);
        });
        let (mut health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<Calc>().await;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(Calc)
                .add_service(health_svc)
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcBackend {
            addr,
            accepted,
            health,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
}

/// tonic's client over one hyper HTTP/2 connection (h2c on TCP, or h2 on a TLS stream).
#[derive(Clone)]
pub struct H2(hyper::client::conn::http2::SendRequest<BoxBody>);

impl Service<http::Request<BoxBody>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let f = self.0.send_request(req);
        Box::pin(f)
    }
}

pub type Client = tonic::client::Grpc<H2>;

pub async fn client_on<IO>(io: IO, authority: &str) -> Client
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let origin = format!("http://{authority}").parse().unwrap();
    tonic::client::Grpc::with_origin(H2(send), origin)
}

pub async fn h2c_client(addr: SocketAddr) -> Client {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client_on(tcp, &addr.to_string()).await
}

fn path(m: &str) -> http::uri::PathAndQuery {
    format!("/test.Calc/{m}").parse().unwrap()
}

pub async fn unary(c: &mut Client, req: Request<Num>) -> Result<Response<Num>, Status> {
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    c.unary(req, path("Unary"), ProstCodec::default()).await
}

pub async fn count(c: &mut Client, n: i64) -> Result<Response<Streaming<Num>>, Status> {
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    c.server_streaming(Request::new(num(n)), path("Count"), ProstCodec::default())
        .await
}

pub async fn sum<S>(c: &mut Client, s: S) -> Result<Response<Num>, Status>
where
    S: futures_util::Stream<Item = Num> + Send + 'static,
{
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    c.client_streaming(Request::new(s), path("Sum"), ProstCodec::default())
        .await
}

pub async fn echo<S>(c: &mut Client, s: S) -> Result<Response<Streaming<Num>>, Status>
where
    S: futures_util::Stream<Item = Num> + Send + 'static,
{
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    c.streaming(Request::new(s), path("Echo"), ProstCodec::default())
        .await
}
