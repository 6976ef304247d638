//! The deployment files in `deploy/`, checked with the tools that consume
//! them.
//!
//! * `systemd_unit_verifies`: `systemd-analyze verify` accepts
//!   deploy/ingress-xdp.service (with ExecStart pointed at the binary under
//!   test, since verify checks that the command exists), and the same file
//!   with a misspelt directive is refused, so the check can fail. The
//!   unit's `systemd-analyze security` exposure score is reported and must
//!   stay at or below 3.0 ("OK").
//!
//! Needs systemd-analyze (Debian package systemd, `cargo xtask setup
//! --test-packages`).

#[path = "support/mod.rs"]
mod support;

use std::{fs, path::Path, process::Command};

use support::pki::TempDir;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/ingress-xdp.service");
const MAX_EXPOSURE: f64 = 3.0;

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("run systemd-analyze (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_unit_verifies() {
    let tmp = TempDir::new("unit");
    let text = fs::read_to_string(UNIT).expect("deploy/ingress-xdp.service");
    assert!(
        text.contains("ExecStart=/usr/local/bin/ingress-xdp run"),
        "{text}"
    );
    let bin = fs::canonicalize(support::bin()).expect("the binary under test");
    let unit = tmp.path.join("ingress-xdp.service");
    fs::write(
        &unit,
        text.replace("/usr/local/bin/ingress-xdp", &bin.display().to_string()),
    )
    .unwrap();
    let (ok, out) = analyze(&["verify"], &unit);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );

    let broken = tmp.path.join("broken").join("ingress-xdp.service");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    fs::write(
        &broken,
        fs::read_to_string(&unit)
            .unwrap()
            .replace("NoNewPrivileges=", "NoNewPrivilege="),
    )
    .unwrap();
    let (_, out) = analyze(&["verify"], &broken);
    assert!(
        out.contains("NoNewPrivilege"),
        "a misspelt directive is reported:\n{out}"
    );

    let (_, out) = analyze(&["security", "--offline=yes"], &unit);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("exposure level for ingress-xdp.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{out}"));
    eprintln!("REPORT systemd-analyze security: exposure {score} for deploy/ingress-xdp.service");
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{out}"
    );
}
