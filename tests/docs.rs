//! The shell completions and the man page the binary generates from its
//! clap definitions (`completions SHELL`, `man`; `cargo xtask install`
//! installs them): each mentions every subcommand, and bash loads its file.
//! No root needed.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

const SUBCOMMANDS: &[&str] = &[
    "attach",
    "detach",
    "block",
    "unblock",
    "list",
    "stats",
    "status",
    "run",
    "health",
    "doctor",
    "completions",
    "man",
];

fn generate(args: &[&str]) -> String {
    let out = Command::new(support::bin())
        .args(args)
        .output()
        .expect("run ingress-xdp");
    assert!(
        out.status.success(),
        "ingress-xdp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let text = generate(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
        // fish names long flags without their dashes.
        assert!(text.contains("pin-dir"), "{shell}: the global flag");
    }
    // Flags of a subcommand, too.
    assert!(generate(&["completions", "bash"]).contains("--sbox-netns"));
}

#[test]
fn bash_loads_its_completions() {
    let tmp = support::pki::TempDir::new("drdocs");
    let file = tmp.path.join("ingress-xdp.bash");
    std::fs::write(&file, generate(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p ingress-xdp",
            file.display()
        ))
        .output()
        .expect("run bash");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ingress-xdp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_man_page_has_a_section_per_subcommand() {
    let page = generate(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ingress-xdp 1"),
        "{page}"
    );
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!(".SH \"COMMAND {}\"", sub.to_uppercase())),
            "no section for {sub}"
        );
    }
    // The doctor's exit codes are documented where a reader looks.
    assert!(page.contains("2 on failures"), "{page}");
    // man-db renders it (cargo xtask test installs it).
    {
        let tmp = support::pki::TempDir::new("drman");
        let file = tmp.path.join("ingress-xdp.1");
        std::fs::write(&file, &page).unwrap();
        let out = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&file)
            .env("MANWIDTH", "100")
            .output()
            .expect("man (apt install man-db)");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("COMMAND DOCTOR"), "man renders it: {shown}");
    }
}
