//! vamsa-migrate: applies Vamsa's Drizzle ORM migrations to PostgreSQL.
//!
//! Data flows one way: [`source`] reads the folder, [`plan`] decides, [`engine`] applies through
//! [`db`], [`report`] shows it. The CLI ([`cli`]) parses and hands each command to
//! `commands`; the [`daemon`] drives the same engine. What goes over the wire is in
//! [`protocol`]; what a failure means (cause, next step, exit code) in `diagnosis` and `exit`.
//! ARCHITECTURE.md has the map.

pub mod backup;
pub mod cli;
pub(crate) mod commands;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod db;
pub(crate) mod diagnosis;
pub mod drift;
pub mod engine;
pub(crate) mod exit;
pub(crate) mod history;
pub(crate) mod libpq;
pub mod logging;
pub mod newfile;
pub mod plan;
pub mod protocol;
pub mod report;
pub(crate) mod smallfile;
pub mod source;
pub(crate) mod sqlscan;
pub mod summary;
pub mod upgrade;
