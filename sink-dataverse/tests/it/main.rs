//! Component tests of the sink against a real broker and schema registry (child processes started
//! by the harness) and the Dataverse emulator: contacts written with the right columns, replays
//! that change nothing, out-of-order delivery, throttling storms, dead letters, crashes, outages
//! and expiring tokens. Each test owns its broker, topics, group and emulator.

mod backlog;
mod crash;
mod dlq;
mod flow;
mod ordering;
mod outage;
mod provision;
mod racing;
mod replay;
mod startup;
mod support;
mod throttle;
mod token;
