//! prodguard: a Kubernetes admission webhook that turns the enforceable parts of the OpenG2P
//! production deployment guide into admission policy.
//!
//! Data path: TLS socket -> [`server`] -> [`http`] router -> [`admission`] decode ->
//! [`engine`] -> each of the [`policies`] -> mode -> response; [`report`] is a side channel.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod audit;
pub mod body;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod engine;
pub mod exceptions;
pub mod floor;
pub mod floor_writer;
pub mod http;
pub mod policies;
pub mod report;
pub mod retry;
pub mod server;
pub mod unit;
pub mod view;
