//! Health probes, shared by the socket load balancer's backends and the XDP
//! load balancer's reals: one probe ([`probe`]: TCP connect, HTTP GET, DNS
//! query, UDP payload; optionally through a socket mark), and the rounds
//! ([`probe_rounds`]): every interval, list the probes under the state's
//! lock, run them all at once, and settle the results under the lock
//! again, off the async threads.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_service::HealthCheck;

/// One probe of a round: its key, and its result (whether it passed, or
/// why it failed).
pub type ProbeFuture<K, R = bool> = Pin<Box<dyn Future<Output = (K, R)> + Send>>;

/// Runs rounds until `stop` turns true (or the state is poisoned). `list`
/// gets each probe's timeout (four fifths of the interval); `settle` gets
/// the results and the ktime the round started.
pub async fn probe_rounds<S, K, R>(
    state: Arc<Mutex<S>>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    list: impl Fn(&S, Duration) -> Vec<ProbeFuture<K, R>>,
    settle: impl Fn(&mut S, Vec<(K, R)>, u64) + Clone + Send + 'static,
) where
    S: Send + 'static,
    K: Send + 'static,
    R: Send + 'static,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let probes = match state.lock() {
            Ok(s) => list(&s, interval.mul_f32(0.8)),
            Err(_) => return,
        };
        let started_ns = weir_bpf::ktime_now_ns();
        let mut checks = tokio::task::JoinSet::new();
        for probe in probes {
            checks.spawn(probe);
        }
        let results = checks.join_all().await;
        let (state, settle) = (state.clone(), settle.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut s) = state.lock() {
                settle(&mut s, results, started_ns);
            }
        })
        .await;
    }
}

/// Runs one probe of `target` within `timeout`: for DNS and UDP checks a
/// request on a connected UDP socket, answered; otherwise a TCP connection
/// and, for HTTP, a GET answered 2xx or 3xx (as Kubernetes' `httpGet`).
/// A non-zero `mark` is the sockets' SO_MARK (the XDP load balancer's
/// probes: its tc egress program encapsulates them to one real). Err says
/// why the probe failed, short: `timeout`, `connection refused`, `HTTP 503`.
pub async fn probe(target: SocketAddr, check: &HealthCheck, mark: u32, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match check {
            HealthCheck::Dns | HealthCheck::Udp { .. } => probe_udp(target, check, mark).await,
            HealthCheck::Http { path } => probe_http(target, path, mark).await,
            HealthCheck::Tcp | HealthCheck::None => tcp_connect(target, mark).await.map(drop),
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err("timeout".into()))
}

/// A short reason: the error's words without "(os error N)".
fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::UnexpectedEof => "connection closed".into(),
        _ => {
            let text = e.to_string();
            text.split(" (os error").next().unwrap_or(&text).to_lowercase()
        }
    }
}

fn set_mark(socket: &impl AsRawFd, mark: u32) -> Result<(), String> {
    if mark == 0 {
        return Ok(());
    }
    // SAFETY: a valid socket fd and a u32 option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_MARK: {}", reason(&std::io::Error::last_os_error())));
    }
    Ok(())
}

async fn tcp_connect(target: SocketAddr, mark: u32) -> Result<tokio::net::TcpStream, String> {
    let socket = match target {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| reason(&e))?;
    set_mark(&socket, mark)?;
    socket.connect(target).await.map_err(|e| reason(&e))
}

async fn probe_http(target: SocketAddr, path: &str, mark: u32) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tcp_connect(target, mark).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: weir-health\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| reason(&e))?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.map_err(|e| reason(&e))?;
    let status = match (&head[..5], std::str::from_utf8(&head[9..12])) {
        (b"HTTP/", Ok(status)) if status.bytes().all(|b| b.is_ascii_digit()) => status,
        _ => return Err("not an HTTP answer".into()),
    };
    if status.starts_with('2') || status.starts_with('3') {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// A DNS query for the root's NS records, with id `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(17);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    q.extend_from_slice(&[0, 0, 2, 0, 1]); // ".", NS, IN
    q
}

/// The request goes out on a connected socket (so an ICMP port unreachable
/// comes back as an error), again each 300 ms until the caller's timeout;
/// any datagram back passes (for DNS, one with the query's id).
async fn probe_udp(target: SocketAddr, check: &HealthCheck, mark: u32) -> Result<(), String> {
    let id = (weir_bpf::ktime_now_ns() & 0xffff) as u16;
    let request = match check {
        HealthCheck::Dns => dns_query(id),
        HealthCheck::Udp { payload } => payload.as_bytes().to_vec(),
        _ => return Err("not a UDP probe".into()),
    };
    let local: SocketAddr =
        if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = tokio::net::UdpSocket::bind(local).await.map_err(|e| reason(&e))?;
    set_mark(&socket, mark)?;
    socket.connect(target).await.map_err(|e| reason(&e))?;
    let mut buf = [0u8; 512];
    loop {
        socket.send(&request).await.map_err(|e| reason(&e))?;
        match tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if matches!(check, HealthCheck::Dns) && (n < 2 || buf[..2] != id.to_be_bytes()) => {
                return Err("DNS answer of another id".into())
            }
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err("port unreachable".into()),
            Ok(Err(e)) => return Err(reason(&e)),
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(future)
    }

    /// A TCP server on loopback answering each connection's first read with `answer`.
    fn http_server(answer: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 512];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        addr
    }

    /// A UDP server on loopback: `answer` to each datagram (None: echo it).
    fn udp_server(answer: Option<&'static [u8]>) -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(answer.unwrap_or(&buf[..n]), from);
            }
        });
        addr
    }

    fn closed_port() -> SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn tcp_and_http_probes_pass_or_say_why_not() {
        let http = |path: &str| HealthCheck::Http { path: path.into() };
        let ok = http_server("HTTP/1.1 200 OK\r\n\r\n");
        let moved = http_server("HTTP/1.0 302 Found\r\n\r\n");
        let sick = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let ssh = http_server("SSH-2.0-OpenSSH_9.6\r\n");
        assert_eq!(run(probe(ok, &HealthCheck::Tcp, 0, TIMEOUT)), Ok(()));
        assert_eq!(run(probe(ok, &http("/healthz"), 0, TIMEOUT)), Ok(()));
        assert_eq!(run(probe(moved, &http("/"), 0, TIMEOUT)), Ok(()));
        assert_eq!(run(probe(sick, &http("/healthz"), 0, TIMEOUT)), Err("HTTP 503".into()));
        assert_eq!(run(probe(ssh, &http("/"), 0, TIMEOUT)), Err("not an HTTP answer".into()));
        // A UDP port bound and left: no TCP listener there either.
        let closed = closed_port();
        assert_eq!(run(probe(closed, &HealthCheck::Tcp, 0, TIMEOUT)), Err("connection refused".into()));
    }

    #[test]
    fn udp_and_dns_probes_pass_on_an_answer_or_say_why_not() {
        let udp = HealthCheck::Udp { payload: "ping".into() };
        let echo = udp_server(None);
        assert_eq!(run(probe(echo, &udp, 0, TIMEOUT)), Ok(()));
        assert_eq!(run(probe(echo, &HealthCheck::Dns, 0, TIMEOUT)), Ok(()), "the echo carries the query's id");
        let other = udp_server(Some(b"\x00"));
        assert_eq!(run(probe(other, &HealthCheck::Dns, 0, TIMEOUT)), Err("DNS answer of another id".into()));
        assert_eq!(run(probe(closed_port(), &udp, 0, TIMEOUT)), Err("port unreachable".into()));
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let silent_at = silent.local_addr().expect("addr");
        assert_eq!(run(probe(silent_at, &udp, 0, Duration::from_millis(700))), Err("timeout".into()));
    }
}
