//! Black-box integration tests: the real `shardgate` binary, real backends on 127.0.0.1,
//! real HTTP over real sockets. One test binary (one link) for the whole suite.

mod harness;

mod accepting;
mod access_plugins;
mod admin;
mod auth;
mod balancing;
mod bodies;
mod body_filters;
mod caching;
mod compression;
mod config_fuzz;
mod config_limits;
mod consumer_groups;
mod dashboard;
mod eligibility;
mod etcd;
mod failures;
mod fuzz_properties;
mod grpc;
mod headers;
mod health;
mod health_apisix;
mod http2;
mod jwt;
mod lifecycle;
mod limits;
mod limits_redis;
mod loadgen;
mod loggers;
mod malformed;
mod memory;
mod metrics;
mod parking;
mod plugins;
mod proxying;
mod rewrite_plugins;
mod routing;
mod slow_clients;
mod tls;
mod tracing;
mod tuning;
mod upgrade;
mod validation;
mod websocket;
