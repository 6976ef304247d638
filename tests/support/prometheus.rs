//! A real Prometheus server (Debian's `prometheus`) inside a test's network
//! namespace, scraping targets there every second, with its HTTP API for
//! PromQL queries. Killed and its data removed on drop.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    docker::{http_get_path, percent_encode},
    pki::TempDir,
    traffic::{PATIENCE, Reach},
};

pub struct Prometheus {
    child: Child,
    netns: PathBuf,
    listen: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus in `netns` on 127.0.0.1:`port`, scraping `targets`
    /// (host:port, plain HTTP, /metrics) as job "ingress-xdp"; waits until
    /// it answers.
    pub fn start(netns: &Path, port: u16, targets: &[SocketAddr]) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Self::with_scrape_configs(
            netns,
            port,
            &format!(
                "scrape_configs:\n  - job_name: ingress-xdp\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
    }

    /// Like [`Prometheus::start`] with `scrape_configs` (YAML with a
    /// top-level `scrape_configs:`), scraping every second.
    pub fn with_scrape_configs(netns: &Path, port: u16, scrape_configs: &str) -> Self {
        let dir = TempDir::new("prom");
        let config = dir.path.join("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{scrape_configs}"),
        )
        .unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let log = fs::File::create(dir.path.join("prometheus.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (apt install prometheus; cargo xtask test does)");
        let p = Self {
            child,
            netns: netns.to_path_buf(),
            listen,
            dir,
        };
        p.wait_for("Prometheus to answer", Duration::from_secs(30), || {
            matches!(p.get("/-/ready"), Reach::Served(_)).then_some(())
        });
        p
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Reach {
        http_get_path(&self.netns, self.listen, path, PATIENCE)
    }

    /// The JSON of GET `path`; panics unless it is a 200 with status success.
    #[track_caller]
    pub fn api(&self, path: &str) -> serde_json::Value {
        match self.get(path) {
            Reach::Served(body) => {
                let v: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
                assert_eq!(v["status"], "success", "{path}: {v}");
                v
            }
            other => panic!("GET {path}: {other:?}\n{}", self.log()),
        }
    }

    /// An instant query's result vector.
    #[track_caller]
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let v = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query returning one sample, if it does.
    pub fn value(&self, promql: &str) -> Option<f64> {
        match self.query(promql).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut ok: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = ok() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "{what} within {timeout:?}; Prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
