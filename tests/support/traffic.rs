//! Real traffic inside test namespaces: small TCP/UDP servers on threads that
//! entered a namespace, and clients that report whether they were served,
//! refused or met silence (a drop).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long a client waits before calling a silent port dropped. A dropped
/// SYN is retransmitted only after 1 s, so this never sees a late success.
pub const SILENCE: Duration = Duration::from_millis(400);
/// How long a client waits for a port that should answer (generous: two
/// cores shared by parallel tests).
pub const PATIENCE: Duration = Duration::from_secs(3);

fn enter_netns(path: &Path) {
    let file = std::fs::File::open(path).expect("open netns");
    // SAFETY: valid fd of a netns file.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}", path.display());
}

/// What a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Connected (TCP) or answered (UDP), with the server's reply.
    Served(String),
    /// TCP RST: something answered but nothing listens.
    Refused,
    /// No answer at all: the packets were dropped.
    Silent,
    Error(String),
}

impl Reach {
    pub fn served(&self) -> bool {
        matches!(self, Reach::Served(_))
    }
}

/// TCP and UDP servers that answer every client with `reply`; stopped and
/// joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        netns: PathBuf,
        body: impl FnOnce(Arc<AtomicBool>, mpsc::Sender<()>) + Send + 'static,
    ) {
        let stop = self.stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            enter_netns(&netns);
            body(stop, ready_tx);
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
    }

    pub fn tcp(&mut self, netns: &Path, addr: SocketAddr, reply: &str) {
        let reply = reply.to_string();
        self.spawn(netns.to_path_buf(), move |stop, ready| {
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    pub fn udp(&mut self, netns: &Path, addr: SocketAddr, reply: &str) {
        let reply = reply.to_string();
        self.spawn(netns.to_path_buf(), move |stop, ready| {
            let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(reply.as_bytes(), peer);
                }
            }
        });
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn client_socket(
    kind: Type,
    proto: Protocol,
    src: Option<IpAddr>,
    dst: SocketAddr,
    wait: Duration,
) -> std::io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(dst), kind, Some(proto))?;
    if let Some(src) = src {
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    sock.set_read_timeout(Some(wait))?;
    Ok(sock)
}

/// One TCP connection attempt from inside `netns`, waiting at most `wait`.
pub fn tcp(netns: &Path, src: Option<IpAddr>, dst: SocketAddr, wait: Duration) -> Reach {
    ingress_xdp::sys::in_netns(Some(netns), || {
        let sock = client_socket(Type::STREAM, Protocol::TCP, src, dst, wait)?;
        let reach = match sock.connect_timeout(&dst.into(), wait) {
            Ok(()) => {
                let mut stream: std::net::TcpStream = sock.into();
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                Reach::Served(reply)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Reach::Silent,
            Err(e) => Reach::Error(e.to_string()),
        };
        Ok(reach)
    })
    .unwrap_or_else(|e| Reach::Error(format!("{e:#}")))
}

/// One UDP request/response from inside `netns`, waiting at most `wait`.
pub fn udp(netns: &Path, src: Option<IpAddr>, dst: SocketAddr, wait: Duration) -> Reach {
    ingress_xdp::sys::in_netns(Some(netns), || {
        let sock = client_socket(Type::DGRAM, Protocol::UDP, src, dst, wait)?;
        sock.send_to(b"ping", &dst.into())?;
        let sock: UdpSocket = sock.into();
        let mut buf = [0u8; 1500];
        Ok(match sock.recv(&mut buf) {
            Ok(n) => Reach::Served(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Reach::Silent
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
            Err(e) => Reach::Error(e.to_string()),
        })
    })
    .unwrap_or_else(|e| Reach::Error(format!("{e:#}")))
}
