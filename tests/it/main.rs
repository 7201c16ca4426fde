//! Black-box integration tests: the real `shardgate` binary, real backends on 127.0.0.1,
//! real HTTP over real sockets. One test binary (one link) for the whole suite.

mod harness;

mod accepting;
mod balancing;
mod bodies;
mod failures;
mod health;
mod lifecycle;
mod loadgen;
mod malformed;
mod plugins;
mod proxying;
mod routing;
mod tuning;
