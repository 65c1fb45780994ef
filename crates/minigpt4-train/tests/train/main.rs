//! minigpt4-train's integration tests, one binary (one link instead of 3).

mod metrics;
mod speed;
mod train;
