//! End-to-end tests of the HTTP API and the binary: one test binary, each
//! test on a fresh store of each backend (SQLite, and PostgreSQL started by
//! `scripts/test.sh`), each with its own server on 127.0.0.1:0.

mod common;

mod agents;
mod audit;
mod auth;
mod bad_input;
mod binary;
mod cells;
mod cluster;
mod cross_tenant;
mod demo;
mod gateway;
mod knowledge;
mod metrics;
mod sandbox;
mod tenants;
mod tiers;
mod tools;
mod usage;
