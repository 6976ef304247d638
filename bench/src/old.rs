//! Release 0.1.0 of ingress-xdp, for parts 4 (reads before/after) and 5 (an
//! in-place upgrade from it): built from this repository's history by
//! tests/support/old_release.rs (as the upgrade tests build it: a debug
//! build, cached by commit in target/compat/0.1.0).

use std::{panic::AssertUnwindSafe, path::PathBuf, sync::OnceLock};

use anyhow::{Result, anyhow};

use crate::support::old_release::{COMMIT_0_1_0, release_0_1_0};

/// How the 0.1.0 binary was built, for the report.
pub const BUILD: &str = "debug build, as the upgrade tests build it";

/// The 0.1.0 binary, built on first use (minutes, once per machine). The
/// builder panics on failure; that becomes an error here.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        eprintln!(
            "bench: building ingress-xdp 0.1.0 ({:.7}) if it is not cached...",
            COMMIT_0_1_0
        );
        std::panic::catch_unwind(AssertUnwindSafe(|| release_0_1_0().to_path_buf())).map_err(
            |panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the 0.1.0 build panicked".into())
            },
        )
    })
    .clone()
    .map_err(|e| anyhow!("ingress-xdp 0.1.0: {e}"))
}
