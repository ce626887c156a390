//! Integration tests against real PostgreSQL, PostgREST and an nginx gateway (see `tests/stack`).

mod helpers;

mod edge;
mod faults;
mod operations;
mod promise;
mod queue;
mod queue_races;
mod senders;
mod toolchain;
mod twilio;
mod webhooks;
mod workers;
