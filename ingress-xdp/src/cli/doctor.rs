//! `doctor`: the verdict of [`crate::doctor`] on this node, one line per
//! check, with the exit status saying the worst level.

use std::path::Path;

use super::*;
use crate::doctor::{self, Where};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// This node's Docker engine (unix:///PATH, a socket path, or
    /// tcp://HOST:PORT), as `run --local-docker` names it.
    #[arg(long, env = "INGRESS_XDP_LOCAL_DOCKER", value_name = "URL", default_value = DEFAULT_LOCAL_DOCKER)]
    pub local_docker: String,
    /// Network namespace file of Docker's ingress sandbox. [default:
    /// /var/run/docker/netns/ingress_sbox]
    #[arg(long, value_name = "PATH")]
    pub sbox_netns: Option<PathBuf>,
    /// Where the agent (`run`) writes its heartbeat.
    #[arg(long, env = "INGRESS_XDP_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Seconds without a heartbeat after which the agent counts as stuck.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub max_age: u64,
    /// Machine-readable output: {"checks": [...], "worst": "ok|warn|fail"}.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_doctor(pins: &Pins, args: &DoctorArgs) -> Result<()> {
    // No require_root: a missing privilege is one of the findings.
    let sbox = args
        .sbox_netns
        .clone()
        .unwrap_or_else(sys::default_sbox_netns);
    let seen = doctor::gather(&Where {
        pins,
        docker_host: &args.local_docker,
        sbox: Path::new(&sbox),
        run_dir: &args.run_dir,
        max_age: args.max_age,
    });
    let checks = doctor::checks(&seen);
    let worst = doctor::worst(&checks);
    if args.json {
        write_json(&serde_json::json!({ "checks": checks, "worst": worst }))?;
    } else {
        for c in &checks {
            let level = c.level.label();
            if c.fix.is_empty() {
                outln!("{level:<4} {}: {}", c.name, c.found);
            } else {
                outln!("{level:<4} {}: {} -> {}", c.name, c.found, c.fix);
            }
        }
    }
    std::process::exit(worst.exit_code());
}
