//! `completions` and `man`: shell completions and the man page, generated
//! from the clap definitions (so they always match `--help`); `cargo xtask
//! install` writes them where shells and man look.

use clap::CommandFactory;

use super::*;

pub(super) fn cmd_completions(shell: clap_complete::Shell) -> Result<()> {
    // Into memory first: clap_complete panics on a failed write, and a
    // closed pipe is a normal end (see `output`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "ingress-xdp", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing the completions to stdout")
}

/// ingress-xdp(1): the top-level page, with every subcommand's long help
/// as a section of it (one page to install, one `man ingress-xdp`).
pub(super) fn cmd_man() -> Result<()> {
    let cmd = Cli::command();
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let sub = sub.clone().bin_name(format!("ingress-xdp {name}"));
        let sub_man = clap_mangen::Man::new(sub.clone());
        let mut section = Vec::new();
        sub_man.render_synopsis_section(&mut section)?;
        sub_man.render_description_section(&mut section)?;
        sub_man.render_options_section(&mut section)?;
        // Each subcommand's part becomes a section titled by its name.
        let text = String::from_utf8_lossy(&section)
            .replace(
                ".SH SYNOPSIS",
                &format!(".SH \"COMMAND {}\"", name.to_uppercase()),
            )
            .replace(".SH DESCRIPTION\n", ".PP\n")
            .replace(".SH OPTIONS\n", ".SS Options\n");
        page.extend_from_slice(text.as_bytes());
    }
    man.render_version_section(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)
        .and_then(|()| out.flush())
        .context("writing the man page to stdout")
}
