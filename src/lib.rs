//! weir: an L7 HTTP reverse-proxy load balancer.
//!
//! A request's path through the code, in module order: [`listener`] accepts the TCP connection,
//! [`tls`] terminates TLS (SNI picks the certificate), [`server`] speaks HTTP/1.1 or HTTP/2 with the
//! client (while [`framing`] shadow-parses HTTP/1 bytes for ambiguous framing and [`conn`] times idle
//! and slow clients), [`proxy`] handles the request: [`router`] picks the first matching route from the
//! [`runtime`] table, its [`pool`] picks a server with a [`balance`]r (or [`sticky`] cookie) among those
//! [`health`] considers up, and the pooled client forwards it, streaming both bodies. [`config`]
//! builds the table; [`app`] wires signals, reload and drain; [`admin`] and [`metrics`] report.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod config;
pub mod conn;
pub mod demo;
pub mod framing;
pub mod handover;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod sticky;
pub mod telemetry;
pub mod tls;
pub mod watch;
