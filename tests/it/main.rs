//! kiln's integration tests: one binary, real servers on 127.0.0.1:0, real model files.

mod api;
mod architecture;
mod auth;
mod batching;
mod clients;
mod connections;
mod defaults;
mod deps;
mod evaluate;
mod explain;
mod fuzz;
mod grpc;
mod import;
mod openapi;
mod ops;
mod panics;
mod pg;
mod postgres;
mod process;
mod reload;
mod repository;
mod schemathesis;
mod text;
mod training;
mod util;
mod v2;
