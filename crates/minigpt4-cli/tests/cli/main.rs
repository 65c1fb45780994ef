//! minigpt4-cli's integration tests, one binary (one link instead of 5).

mod cli;
mod eval_cli;
mod fetch_presets;
mod hostile_files;
mod hostile_server;
mod train_cli;
mod train_mpi;
