//! Passerelle keeps business systems in sync through RabbitMQ: it consumes
//! messages, runs each through a sandboxed WebAssembly transform and performs
//! the actions the transform returns. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod amqp;
pub mod config;
pub mod delivery;
pub mod echo;
#[cfg(test)]
mod fuzzing;
pub mod guard;
pub mod host;
pub mod import;
pub mod ingest;
pub mod ledger;
pub mod logging;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod refused_body;
pub mod reload;
pub mod routes;
pub mod runtime;
pub mod scaffold;
pub mod shadow;
pub mod stats;
pub mod trace;
pub mod version;
