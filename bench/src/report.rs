//! RESULTS.md and the printed summary.

use std::{fmt::Write as _, time::Duration};

use crate::{
    control::{ControlResults, ControlSettings},
    cost::{CostResults, CostSettings, Hook, Rules, Subject},
    duel::{DuelResults, Measure},
    feed::{FeedResults, FeedSettings},
    goals::Goal,
    machine::Machine,
    methods::Method,
    old,
    rate::{MethodResult, RateResults, RateSettings},
    reads::{self, Build, Read, ReadsResults, ReadsSettings, Series, Table},
    stats::{Summary, percentile},
    upgrade::{UpgradeResults, UpgradeSettings},
};

/// What became of one part of the benchmark.
pub enum Part<T> {
    Done(T),
    Failed(String),
    Skipped,
}

impl<T> Part<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Part::Done(t) => Some(t),
            _ => None,
        }
    }

    fn missing(&self) -> Option<String> {
        match self {
            Part::Done(_) => None,
            Part::Failed(e) => Some(format!("**This part failed:** `{e}`\n")),
            Part::Skipped => Some("Not run (`--parts`).\n".into()),
        }
    }
}

pub struct Run {
    pub quick: bool,
    pub machine: Machine,
    pub cost_settings: CostSettings,
    pub rate_settings: RateSettings,
    pub control_settings: ControlSettings,
    pub reads_settings: ReadsSettings,
    pub upgrade_settings: UpgradeSettings,
    pub feed_settings: FeedSettings,
    pub cost: Part<CostResults>,
    pub rate: Part<RateResults>,
    pub control: Part<ControlResults>,
    pub reads: Part<ReadsResults>,
    pub upgrade: Part<UpgradeResults>,
    pub feed: Part<FeedResults>,
    pub elapsed: Duration,
}

/// 1000000 -> "1,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cell(s: Option<Summary>, digits: usize) -> String {
    s.map_or_else(|| "-".into(), |s| s.show(digits))
}

fn signed(s: Option<Summary>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| format!("{:+.1} ({:+.1}…{:+.1})", s.median, s.min, s.max),
    )
}

pub fn markdown(run: &Run, goals: &[Goal], chart: &str) -> String {
    let mut md = String::new();
    let m = &run.machine;
    let _ = writeln!(md, "# ingress-xdp benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}` on {} in {:.0} s. Every figure is the median of \
         repeated trials, with (min–max) beside it; the parts and methods were interleaved so \
         that drift on the machine spreads over all of them.{}\n",
        if run.quick { " --quick" } else { "" },
        m.date,
        run.elapsed.as_secs_f64(),
        if run.quick {
            " **Quick run (CI smoke): too few trials to judge the goals.**"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "![chart]({chart})\n");
    machine(&mut md, m);
    goals_table(&mut md, goals);
    part1(&mut md, run);
    part2(&mut md, run);
    part3(&mut md, run);
    part4(&mut md, run);
    part5(&mut md, run);
    part6(&mut md, run);
    md
}

fn machine(md: &mut String, m: &Machine) {
    let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
    let rows = [
        ("CPU", format!("{} × {}", m.cpus, m.cpu_model)),
        ("Memory", m.memory.clone()),
        ("OS", m.os.clone()),
        ("Kernel", m.kernel.clone()),
        (
            "kernel.bpf_stats_enabled",
            format!(
                "{} (1 adds two clock reads to every program run)",
                m.bpf_stats
            ),
        ),
        ("ingress-xdp", m.commit.clone()),
        (
            "Load average (1/5/15 min)",
            format!("{} before, {} after", m.load_before, m.load_after),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    for (k, v) in &m.tools {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md);
}

fn goals_table(md: &mut String, goals: &[Goal]) {
    let _ = writeln!(
        md,
        "## Goals\n\n| Part | Goal | Measured (medians) | Holds |\n|---|---|---|---|"
    );
    for g in goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            g.part,
            g.text,
            g.measured,
            g.verdict()
        );
    }
    let _ = writeln!(md);
}

fn part1(md: &mut String, run: &Run) {
    let s = run.cost_settings;
    let _ = writeln!(
        md,
        "## 1. Per-packet cost of the program (BPF_PROG_TEST_RUN)\n\n\
         Each program runs {} times per trial on each frame ({} trials); the kernel reports the \
         mean time of one run in whole ns. Each program is loaded {} times and a trial's figure \
         is the mean over the copies: the JIT puts each copy elsewhere in memory, and where the \
         code lands moves one copy's time by 1-2 ns on this machine, the same way trial after \
         trial (one copy would measure its placement along with the program); xdp-filter, \
         loaded by xdp-tools, runs as one copy. The floor is a program that returns a fixed verdict: test_run's \
         own per-run overhead, one per hook (an skb test run costs more than an XDP one). \
         \"Above the floor\" is taken trial by trial. Ours counts every packet (per attach point) \
         and every match (per rule), as in production. \"1 port\" is 8080/tcp and 8080/udp \
         blocked; \"10k ports\" adds 20000-29999/tcp (one range: one rule, one counter); \
         \"4,096 counted\" is 8080/tcp, 8080/udp and 4,094 single-port tcp rules from 20000, \
         each blocked as a spec of its own, so each has its own counter and the counter table \
         is full (checked before the runs). The minimal port check is a reference \
         program that reads the TCP port at the fixed offset of an untagged IPv4 frame and \
         compares it (no parsing, no map, no counter); \"minimal + rule lookup\" takes its \
         verdict from the port's slot in an array shaped like our rule table (the one access no \
         table-driven filter can skip); \"minimal + our maps\" adds exactly \
         the memory ours touches for a blocked port (its rule slot, then the per-CPU chunk \
         holding that rule's counter and the attach point's drop tally), so the ladder bare \
         -> minimal -> \
         rule lookup -> minimal + our maps -> ours prices the packet, the lookup, the \
         counters and the parser apart. \
         \"ours XDP, events on\" has drop events on at the default rate limit; \"ours XDP, no \
         event code\" is the same program built with the event code compiled out (the eBPF \
         crate's second binary), so beside \"ours XDP\" (events off) it prices the switched-off \
         code.\n",
        thousands(u64::from(s.repeat)),
        s.trials,
        s.copies
    );
    if let Some(text) = run.cost.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(c) = run.cost.done() else { return };
    let subjects = [
        Subject::Ours(Hook::Xdp, Rules::One),
        Subject::Ours(Hook::Xdp, Rules::TenThousand),
        Subject::Ours(Hook::Xdp, Rules::Counted),
        Subject::Ours(Hook::Tc, Rules::One),
        Subject::Ours(Hook::Tc, Rules::TenThousand),
        Subject::Ours(Hook::Tc, Rules::Counted),
        Subject::XdpFilter,
        Subject::Minimal,
        Subject::MinimalLookup,
        Subject::MinimalMaps,
        Subject::OursEvents,
        Subject::OursNoEventCode,
    ];
    let _ = writeln!(md, "### ns per packet above the floor\n");
    let header: Vec<&str> = subjects.iter().map(|s| s.name()).collect();
    let _ = writeln!(
        md,
        "| Frame | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(subjects.len())
    );
    for (f, frame) in c.frames.iter().enumerate() {
        let cells: Vec<String> = subjects
            .iter()
            .map(|&s| signed(c.above_floor(s, f)))
            .collect();
        let _ = writeln!(md, "| {} | {} |", frame.name, cells.join(" | "));
    }
    let _ = writeln!(md, "\n### ns per run, absolute, and the verdict\n");
    let all = Subject::ALL;
    let header: Vec<&str> = all.iter().map(|s| s.name()).collect();
    let _ = writeln!(
        md,
        "| Frame | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(all.len())
    );
    for (f, frame) in c.frames.iter().enumerate() {
        let cells: Vec<String> = all
            .iter()
            .map(|&s| {
                format!(
                    "{} {}",
                    cell(c.absolute(s, f), 1),
                    c.verdict(s, f).unwrap_or("?")
                )
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", frame.name, cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nxdp-filter is Debian's xdp-tools program {}, loaded with `xdp-filter load --mode native` \
         and `xdp-filter port 8080` (tcp and udp), test-run by id like ours.\n",
        c.xdp_filter_prog
    );
}

fn part2(md: &mut String, run: &Run) {
    let s = run.rate_settings;
    let _ = writeln!(
        md,
        "## 2. Drop rate through a veth, and the receiver's cost\n\n\
         A veth pair between two namespaces. The generator is BPF_PROG_TEST_RUN in live-frames \
         mode on an XDP_TX program, which sends 64-byte TCP SYNs to the blocked port out of the \
         sending veth. **Rate:** the receiver has 2 rx queues, two generator threads are pinned \
         to CPU 0 and 1, and frames are received on the sending CPU, so each rate is that of \
         generator and receiver together: it ranks the receivers (the ceiling is the bare \
         XDP_DROP), it is not a receiver's limit. The rate counts what the method itself \
         counted as dropped (iptables/nft rule counters, veth `xdp_drops`, our attach-point \
         counters; with no filter, the packets the interface took in). **Receiver cost:** one \
         rx queue, threaded NAPI, its kthread pinned to CPU 1 and one generator thread on CPU \
         0; the kthread's run time (schedstat) divided by the packets it took in. It includes \
         veth's own work and a wake-up of the kthread per batch of {} frames. Each (method, \
         trial) runs on fresh namespaces: {} trials of {:.1} s per measurement, after {:.1} s \
         of warm-up.\n",
        s.batch,
        s.trials,
        s.duration.as_secs_f64(),
        s.warmup.as_secs_f64()
    );
    if let Some(text) = run.rate.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(rate) = run.rate.done() else {
        return;
    };
    let results = &rate.methods;
    let median_of = |m: Method, pick: fn(&MethodResult) -> &Vec<f64>| {
        results
            .iter()
            .find(|r| r.method == m)
            .and_then(|r| Summary::of(pick(r)))
            .map(|s| s.median)
    };
    let ipt = median_of(Method::IptablesInput, |r| &r.mpps);
    let bare = median_of(Method::BareDrop, |r| &r.mpps);
    let bare_cost = median_of(Method::BareDrop, |r| &r.cost_ns);
    let _ = writeln!(
        md,
        "| Method | Mpps | × iptables INPUT | × bare XDP_DROP | frames not counted | receiver ns/packet | × bare XDP_DROP | kthread busy |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let times = |x: Option<f64>, base: Option<f64>| match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "-".into(),
    };
    for r in results {
        let (mpps, cost) = (Summary::of(&r.mpps), Summary::of(&r.cost_ns));
        let missed = Summary::of(&r.missed).map_or(0.0, |s| s.max.max(0.0));
        let busy = Summary::of(&r.cost_busy).map_or(0.0, |s| s.median);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | ≤ {:.1}% | {} | {} | {:.0}% |",
            r.method.name(),
            cell(mpps, 2),
            times(mpps.map(|s| s.median), ipt),
            times(mpps.map(|s| s.median), bare),
            missed * 100.0,
            cell(cost, 0),
            times(cost.map(|s| s.median), bare_cost),
            busy * 100.0
        );
    }
    if let Some(d) = &rate.duel {
        duel(md, d);
    }
    let _ = writeln!(md, "\nMethods:\n");
    for m in Method::ALL {
        let _ = writeln!(md, "- **{}**: {}", m.name(), m.detail());
    }
    let _ = writeln!(md);
}

/// The goals' measurement of part 2 (see `duel.rs`).
fn duel(md: &mut String, d: &DuelResults) {
    let s = d.settings;
    let _ = writeln!(
        md,
        "\n### Head to head: {} beside the bare XDP_DROP (the goals)\n\n\
         The ranking above runs each method on its own, a minute or more apart, and this \
         machine's speed drifts by several percent over that time, more than the goals' \
         margins. Here both are installed at once, each on a veth pair of its own, set up as \
         above, and the generator alternates between them: {} slices of {:.2} s each per \
         round and measurement, ABAB then BABA. Each of the {} rounds uses fresh pairs and \
         freshly loaded programs; the ratio is taken round by round.\n\n\
         | | {} | bare XDP_DROP | ratio, round by round |\n|---|---|---|---|",
        d.ours.name(),
        s.slices,
        s.slice.as_secs_f64(),
        d.rounds.len(),
        d.ours.name(),
    );
    for m in Measure::ALL {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            m.unit(),
            cell(d.summary(|r| m.sides(r).0), m.digits()),
            cell(d.summary(|r| m.sides(r).1), m.digits()),
            cell(d.summary(|r| m.ratio(r)), 3)
        );
    }
}

fn part3(md: &mut String, run: &Run) {
    let s = run.control_settings;
    let _ = writeln!(
        md,
        "## 3. Control plane against a real dockerd\n\n\
         A private dockerd (its own namespace, data root and socket) as a one-node swarm, and \
         `ingress-xdp run --default deny` attached to the node's NIC and its ingress_sbox. \
         Latency: from the docker command returning to the port being in (or, for `rm`, out of) \
         the rule map, polled every millisecond ({} trials each; services have 0 replicas: the \
         agent reads service specs, not tasks). Full sync: one pass of the agent's sync (list \
         the services, evaluate the policy, apply the difference) with {} services, in-process \
         ({} trials): against an empty table, then again with nothing to change. Cold start: \
         from spawning `ingress-xdp run` to all {} ports in the map, attaching included ({} \
         trials).\n",
        s.latency_trials, s.services, s.sync_trials, s.services, s.cold_start_trials
    );
    if let Some(text) = run.control.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(c) = run.control.done() else { return };
    let _ = writeln!(
        md,
        "| Measurement | p50 | p99 | min | max | trials |\n|---|---|---|---|---|---|"
    );
    for (name, samples) in control_rows(c) {
        let (Some(p50), Some(p99), Some(all)) = (
            percentile(samples, 50.0),
            percentile(samples, 99.0),
            Summary::of(samples),
        ) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {name} | {p50:.1} ms | {p99:.1} ms | {:.1} ms | {:.1} ms | {} |",
            all.min, all.max, all.n
        );
    }
    let _ = writeln!(
        md,
        "\nDocker Engine {}. The docker commands themselves took {} ms (median, min–max).\n",
        c.docker_version,
        cell(Summary::of(&c.command_ms), 0)
    );
}

fn part4(md: &mut String, run: &Run) {
    let s = run.reads_settings;
    let _ = writeln!(
        md,
        "## 4. Control-plane reads with 10,000 rules\n\n\
         Two tables of {} blocked tcp ports, each in a pin directory of its own and attached \
         (XDP) to both ends of a veth pair in a namespace made for it ({} attach points, as a \
         node's NIC and ingress_sbox): **10,000 single-port rules**, every other port from \
         10000, each blocked as a spec of its own (so the first {} take every counter slot and \
         the rest block uncounted; no two are neighbours, so none fold into a range), and \
         **10,000 ports as one range** (20000-29999: one rule, one counter). The tables are \
         made with the binary's own `attach --iface A --iface B --no-sbox` and `block`. \
         In-process: `RuleTable::open` + `ranges()` (what `list` reads), and one `stats` \
         refresh with the `Registry` and `RuleTable` opened once beforehand: the attach points \
         with their counters and presence, plus the ranges (what `stats --watch` collects every \
         interval; rendering not included). Process: `ingress-xdp \
         list --json` and `stats --json` from spawn to exit, output read through a pipe, run \
         from a thread inside the namespace. {} trials, every read of every table interleaved; \
         the first trial also checks what was read (rule and attach-point counts). The same \
         processes run against release 0.1.0 ({}) on the same tables made by its own `attach` \
         and `block`. A debug build spends longer in user space than a release build would, \
         so beside its wall time stands the time it spent in the kernel (its system CPU time, \
         from getrusage): the ratio on that alone is a lower bound for a release 0.1.0.\n",
        reads::PORTS,
        run.reads.done().map_or(2, |r| r.points),
        crate::cost::COUNTED_RULES,
        s.trials,
        old::BUILD
    );
    if let Some(text) = run.reads.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(r) = run.reads.done() else { return };
    let _ = writeln!(
        md,
        "| Read | Table | this build, ms | 0.1.0, ms | 0.1.0 in the kernel, ms | 0.1.0 / this build |\n\
         |---|---|---|---|---|---|"
    );
    for (read, table, new, old) in reads_rows(r) {
        let new = Summary::of(new);
        let (old_ms, old_kernel) = (
            old.and_then(|o| Summary::of(&o.ms)),
            old.and_then(|o| Summary::of(&o.kernel_ms)),
        );
        let ratio = match (new, old_ms, old_kernel) {
            (Some(n), Some(o), Some(k)) if n.median > 0.0 => format!(
                "{:.1}× (≥ {:.1}× on its kernel time alone)",
                o.median / n.median,
                k.median / n.median
            ),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {ratio} |",
            read.name(),
            table.name(),
            cell(new, 2),
            cell(old_ms, 1),
            cell(old_kernel, 1)
        );
    }
    let _ = writeln!(
        md,
        "\nOf the 10,000 single-port rules, {} have a counter.{}\n",
        thousands(r.singles_counted as u64),
        match &r.old_missing {
            Some(why) => format!(" 0.1.0 was not measured: `{why}`"),
            None => String::new(),
        }
    );
}

/// The rows of part 4: (read, table, this build's ms, 0.1.0's series).
pub fn reads_rows(r: &ReadsResults) -> Vec<(Read, Table, &[f64], Option<&Series>)> {
    let mut rows = Vec::new();
    for read in Read::ALL {
        for table in Table::ALL {
            if let Some(new) = r.ms(Build::Current, table, read) {
                rows.push((read, table, new, r.series(Build::V010, table, read)));
            }
        }
    }
    rows
}

fn part5(md: &mut String, run: &Run) {
    let s = run.upgrade_settings;
    let _ = writeln!(
        md,
        "## 5. Upgrade in place from 0.1.0 under traffic\n\n\
         Per trial, on fresh namespaces: a veth pair with one rx queue; on the receiving end \
         release 0.1.0 ({}) runs `attach --iface RX --no-sbox --xdp-mode native` and `block \
         8080`, and an nft netdev ingress rule `tcp dport 8080 counter` (no verdict) counts what \
         XDP let through: an independent count of blocked packets that passed. Before 0.1.0 \
         attaches, a burst with nothing attached checks that this counter sees the SYNs. The \
         live-frames generator sends 64-byte SYNs to 8080 from one thread on CPU 0 without a \
         pause; after {:.1} s this build's `attach` (same arguments) is spawned, and the bench \
         polls the pinned link's program id (BPF_OBJ_GET_INFO_BY_FD, every 0.2 ms) and the \
         process. **New program**: spawn to the link holding another program; **exit**: spawn \
         to the process's exit (it migrates the layout-1 maps, swaps the program with \
         BPF_LINK_UPDATE and reports). Traffic goes on for {:.1} s after both; then the \
         generator's frames, the frames XDP dropped (veth `xdp_drops`, old and new program \
         alike) and the nft count over the whole run are read. Afterwards this build's `status \
         --json` must name the program on the link as its own and `list` must still hold \
         8080/tcp. {} trials.\n",
        old::BUILD,
        s.before.as_secs_f64(),
        s.after.as_secs_f64(),
        s.trials
    );
    if let Some(text) = run.upgrade.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(u) = run.upgrade.done() else { return };
    let _ = writeln!(
        md,
        "| Trial | new program on the link | attach exited | frames sent | dropped by XDP | passed (nft) | not seen | generator Mpps | program |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (i, t) in u.trials.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {:.1} ms | {:.1} ms | {} | {} | {} | {} | {:.2} | {} → {} |",
            i + 1,
            t.to_program_ms,
            t.to_exit_ms,
            thousands(t.sent),
            thousands(t.dropped),
            thousands(t.passed),
            thousands(t.sent.saturating_sub(t.dropped + t.passed)),
            t.mpps,
            t.old_program,
            t.new_program
        );
    }
    let (p, e) = upgrade_summaries(u);
    let _ = writeln!(
        md,
        "\nMedian (min–max): new program on the link after {} ms, attach exited after {} ms. \
         The nft counter saw {} SYNs of the check burst. What the new `attach` printed (first \
         trial):\n\n```text\n{}\n```\n",
        cell(p, 1),
        cell(e, 1),
        thousands(u.counter_check),
        u.output
    );
}

fn part6(md: &mut String, run: &Run) {
    let s = run.feed_settings;
    let _ = writeln!(
        md,
        "## 6. The policy feed: one manager, {} simulated workers\n\n\
         A manager and a worker (private dockerds). The bench's own root CA becomes the swarm's \
         (`docker swarm ca --rotate --ca-cert --ca-key`); it mints {} client certificates that \
         all name the worker node, and {} tokio clients in a lan namespace each hold a mutual-TLS \
         connection to the manager's agent (`ingress-xdp run`). Each of {} trials toggles a \
         service's `ingress-xdp.nodes=node.role==manager` label (`docker service update \
         --detach`) and times, per client, `docker service update` returning to that client \
         receiving the changed rule set. CPU: the agent's user + system time over the trials; \
         memory: its resident set with every client connected.\n",
        s.clients, s.clients, s.clients, s.trials
    );
    if let Some(text) = run.feed.missing() {
        let _ = writeln!(md, "{text}");
        return;
    }
    let Some(f) = run.feed.done() else { return };
    let (p50, p99, max) = feed_percentiles(f);
    let _ = writeln!(
        md,
        "| engine | clients | all connected | update → every client: p50 | p99 | max | agent CPU per update | agent RSS |\n\
         |---|---|---|---|---|---|---|---|\n\
         | {} | {} | {:.2} s | {p50:.0} ms | {p99:.0} ms | {max:.0} ms | {:.0} ms | {:.1} MB |\n",
        f.engine,
        f.clients,
        f.connect_all_s,
        f.cpu_per_trial_s * 1000.0,
        f.rss_mb
    );
}

/// (p50, p99, max) of part 6's latencies, in ms.
pub fn feed_percentiles(f: &FeedResults) -> (f64, f64, f64) {
    let mut v = f.latencies_ms.clone();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    (at(0.5), at(0.99), at(1.0))
}

/// (spawn to new program, spawn to exit) over the trials of part 5.
pub fn upgrade_summaries(u: &UpgradeResults) -> (Option<Summary>, Option<Summary>) {
    let p: Vec<f64> = u.trials.iter().map(|t| t.to_program_ms).collect();
    let e: Vec<f64> = u.trials.iter().map(|t| t.to_exit_ms).collect();
    (Summary::of(&p), Summary::of(&e))
}

/// The rows of part 3, for the table and the chart.
pub fn control_rows(c: &ControlResults) -> Vec<(String, &[f64])> {
    vec![
        ("`service create` → in map".into(), &c.create_ms[..]),
        (
            "`service update --publish-add` → in map".into(),
            &c.update_ms[..],
        ),
        ("`service rm` → out of map".into(), &c.remove_ms[..]),
        (
            format!("full sync, {} services, empty table", c.services),
            &c.first_sync_ms[..],
        ),
        (
            format!("full sync, {} services, no change", c.services),
            &c.resync_ms[..],
        ),
        (
            format!("agent cold start → {} ports in map", c.services),
            &c.cold_start_ms[..],
        ),
    ]
}

/// The short summary printed at the end.
pub fn summary(run: &Run, goals: &[Goal], written: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== ingress-xdp bench ({:.0} s)",
        run.elapsed.as_secs_f64()
    );
    if let Some(c) = run.cost.done() {
        for (f, frame) in c.frames.iter().enumerate().take(2) {
            let _ = writeln!(
                out,
                "part 1  {:<24} ns above floor: ours XDP {}, ours TC {}, xdp-filter {}",
                frame.name,
                signed(c.above_floor(Subject::Ours(Hook::Xdp, Rules::One), f)),
                signed(c.above_floor(Subject::Ours(Hook::Tc, Rules::One), f)),
                signed(c.above_floor(Subject::XdpFilter, f)),
            );
        }
    }
    if let Some(rate) = run.rate.done() {
        for r in &rate.methods {
            let _ = writeln!(
                out,
                "part 2  {:<24} {} Mpps, receiver {} ns/packet",
                r.method.name(),
                cell(Summary::of(&r.mpps), 2),
                cell(Summary::of(&r.cost_ns), 0)
            );
        }
        if let Some(d) = &rate.duel {
            let ratio = |m: Measure| cell(d.summary(|r| m.ratio(r)), 3);
            let _ = writeln!(
                out,
                "part 2  head to head, {} / bare XDP_DROP: rate {}x, receiver cost {}x",
                d.ours.name(),
                ratio(Measure::Rate),
                ratio(Measure::Cost)
            );
        }
    }
    if let Some(c) = run.control.done() {
        for (name, samples) in control_rows(c) {
            let _ = writeln!(
                out,
                "part 3  {name}: p50 {:.1} ms, p99 {:.1} ms",
                percentile(samples, 50.0).unwrap_or(f64::NAN),
                percentile(samples, 99.0).unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(r) = run.reads.done() {
        for (read, table, new, old) in reads_rows(r) {
            let _ = writeln!(
                out,
                "part 4  {} of {}: {} ms{}",
                read.name(),
                table.name(),
                cell(Summary::of(new), 2),
                old.and_then(|o| Summary::of(&o.ms))
                    .map_or_else(String::new, |o| format!(" (0.1.0: {} ms)", o.show(1)))
            );
        }
    }
    if let Some(u) = run.upgrade.done() {
        let (p, e) = upgrade_summaries(u);
        let passed: u64 = u.trials.iter().map(|t| t.passed).sum();
        let _ = writeln!(
            out,
            "part 5  upgrade from 0.1.0: new program after {} ms, attach exited after {} ms, {passed} blocked packets passed",
            cell(p, 1),
            cell(e, 1)
        );
    }
    if let Some(f) = run.feed.done() {
        let (p50, p99, _) = feed_percentiles(f);
        let _ = writeln!(
            out,
            "part 6  policy feed, {} clients: update -> every client p50 {p50:.0} ms, p99 {p99:.0} ms; agent {:.0} ms CPU per update, {:.1} MB RSS",
            f.clients,
            f.cpu_per_trial_s * 1000.0,
            f.rss_mb
        );
    }
    for (name, part) in [
        ("1", run.cost.missing()),
        ("2", run.rate.missing()),
        ("3", run.control.missing()),
        ("4", run.reads.missing()),
        ("5", run.upgrade.missing()),
        ("6", run.feed.missing()),
    ] {
        if let Some(text) = part {
            let _ = write!(out, "part {name}  {text}");
        }
    }
    let _ = writeln!(out, "goals:");
    for g in goals {
        let _ = writeln!(out, "  [{:>3}] {} — {}", g.verdict(), g.text, g.measured);
    }
    for w in written {
        let _ = writeln!(out, "wrote {w}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_thousands() {
        assert_eq!(super::thousands(1_000_000), "1,000,000");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
    }
}
