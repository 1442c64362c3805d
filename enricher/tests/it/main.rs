//! Component tests of the enricher against a real broker and schema registry (started by the
//! harness as child processes): ordering, dead letters, crashes, group scaling, replay and
//! outages. Each test owns its broker, topics and group.

mod backlog;
mod crash;
mod flow;
mod group;
mod outage;
mod poison;
mod replay;
mod support;
