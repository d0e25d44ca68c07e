//! The integration suite, one test binary: the engine and CLI, the daemon, faults, backups,
//! interoperability with Drizzle's own migrator and property tests over generated folders,
//! all against real PostgreSQL servers that `support` starts. Its tests run in parallel.

mod backup;
mod cli_flags;
mod connect;
mod daemon;
mod daemon_state;
mod drift;
mod drift_attr;
mod drift_policy;
mod drizzle1;
mod faults;
mod field_files;
mod field_indexes;
mod field_timeouts;
mod field_transactions;
mod first_hour;
mod folder_layout;
mod folders_prop;
mod history;
mod hostile;
mod interop;
mod interop_v1;
mod memory;
mod migrate;
mod neighbours;
mod poolers;
mod rehearsal;
mod restore;
mod review_fixes;
mod roles;
mod stop_phases;
mod support;
mod tls;
mod tracking_rows;
mod unknown_rows;
mod verify;
mod versions;
