//! `metrics`: the pinned state's Prometheus series, once.

use std::path::Path;

use super::*;

pub(super) fn cmd_metrics(pins: &Pins, output: Option<&Path>, max_rules: usize) -> Result<()> {
    sys::require_root()?;
    pins.require()?;
    // Fail loudly here rather than print pinned_state_up 0.
    let snapshot = crate::metrics::pinned::Snapshot::read(pins)?;
    let text = crate::metrics::render(&crate::metrics::registry_with(
        pins,
        max_rules,
        None,
        Some(snapshot),
    ));
    let Some(path) = output else {
        out!("{text}");
        return Ok(());
    };
    let name = path
        .file_name()
        .with_context(|| format!("--output {}: not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}
