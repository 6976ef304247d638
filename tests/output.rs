//! Standard output that cannot be written. A reader that leaves early
//! (`ingress-xdp attach ... | head -1`) ends a command's report, never its
//! work, and the command exits 0 without a panic. A full disk behind `>` is
//! an error, said once the work is done. Root (attach points, pins).

#[path = "support/mod.rs"]
mod support;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use support::{Netns, TestPins, bin, unique};

/// Runs `cmd` with stdout on a pipe whose reader is already gone, so its
/// first write fails with EPIPE.
fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run ingress-xdp")
}

fn ingress_xdp(pin_dir: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--pin-dir").arg(pin_dir).args(args);
    cmd
}

#[track_caller]
fn assert_quiet_success(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{what} with a closed stdout: {}, stderr: {stderr}",
        out.status
    );
}

#[test]
fn a_closed_stdout_ends_the_report_not_the_work() {
    let ns = Netns::new("out");
    ns.exec("ip link add oa type veth peer name ob && ip link set oa up && ip link set ob up");
    let dir = PathBuf::from("/sys/fs/bpf").join(unique("out"));
    let _pins = TestPins::removed_on_drop(&dir);

    // The report is one line per point: the first write fails, and the
    // second point must be attached all the same.
    let mut attach = Command::new("nsenter");
    attach
        .arg(format!("--net={}", ns.path().display()))
        .arg(bin())
        .arg("--pin-dir")
        .arg(&dir)
        .args(["attach", "--iface", "oa", "--iface", "ob", "--no-sbox"]);
    assert_quiet_success("attach", &with_closed_stdout(&mut attach));
    let block = with_closed_stdout(&mut ingress_xdp(&dir, &["block", "8080/tcp"]));
    assert_quiet_success("block", &block);

    let status = ingress_xdp(&dir, &["status", "--json"])
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.matches("\"presence\":\"attached\"").count(),
        2,
        "both points attached after a closed stdout: {status}"
    );
    let list = ingress_xdp(&dir, &["list"]).output().expect("list");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("8080/tcp"),
        "the block was lost: {}",
        String::from_utf8_lossy(&list.stdout)
    );

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["list"],
        &["list", "--json"],
        &["stats"],
        &["stats", "--json"],
        &["metrics"],
        &["man"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let out = with_closed_stdout(&mut ingress_xdp(&dir, args));
        assert_quiet_success(&format!("{args:?}"), &out);
    }

    // A write that fails for another reason is the command's failure.
    for args in [&["status"][..], &["list"], &["list", "--json"]] {
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let out = ingress_xdp(&dir, args)
            .stdout(full)
            .output()
            .expect("run ingress-xdp");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("standard output"),
            "{args:?} > /dev/full: {}, stderr: {stderr}",
            out.status
        );
    }
}
