//! The emulator driven over real HTTP on 127.0.0.1 with reqwest: tokens, the Web API, `$batch`, the
//! service protection limits, fault injection, the admin API, persistence and the binary.

mod support;

mod admin_and_faults;
mod batch;
mod bulk;
mod columns_and_keys;
mod definitions;
mod documented;
mod limits;
mod process;
mod tokens;
mod web_api;
