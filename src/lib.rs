//! vamsa-migrate: applies Vamsa's Drizzle ORM migrations to PostgreSQL.
//!
//! Data flows one way: [`source`] reads the folder, [`plan`] decides, [`engine`] applies through
//! [`db`], [`report`] shows it. The CLI ([`cli`]) drives the engine.

pub mod backup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod engine;
pub mod logging;
pub mod newfile;
pub mod plan;
pub mod report;
pub mod source;
pub mod summary;
pub mod trigger;
