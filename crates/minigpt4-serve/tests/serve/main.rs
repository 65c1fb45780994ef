//! minigpt4-serve's integration tests, one binary (one link instead of 2).

mod browser;
mod common;
mod server;
