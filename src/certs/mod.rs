//! prodguard's own certificates: generating them, deciding what the certificate Secret calls
//! for, and the watches that apply those decisions.
//!
//! - [`pki`]: issues CAs and serving certificates (rcgen); used by `certs` and `serve`.
//! - [`decisions`]: pure functions from the Secret's bytes and the time to what to do (keep,
//!   renew, rotate the CA, replace), and the CA bundle it implies; tested as tables.
//! - [`manager`]: what each replica runs with the cluster (the Secret and webhook watches, the
//!   writer behind its Lease, readiness, arming the fail-closed webhooks).
//!
//! What is served and when it expires is the server's (`server::tls`, `server::expiry`); this
//! module uses them and the server never uses this one.

pub mod decisions;
pub mod manager;
pub mod pki;
