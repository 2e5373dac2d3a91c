//! Where the WAL has no kernel completions to watch (not Linux: no AIO channel in the
//! core), there is no watch: every append commits on the commit thread.

use napi::{sys, Env};

/// Never started here (see `uv.rs` for Linux).
pub struct ReadyWatch;

impl ReadyWatch {
    pub fn start(
        _env: &Env,
        _fd: i32,
        _on_ready: Box<dyn Fn() -> bool>,
        _js: sys::napi_value,
    ) -> Option<ReadyWatch> {
        None
    }
}
