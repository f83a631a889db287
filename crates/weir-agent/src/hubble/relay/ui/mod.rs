//! The relay's service map (`weir relay --ui-listen-address`): a web page
//! showing the cluster as a live graph of pods, the Services they reach
//! and the flows between them.
//! The relay follows its own merged stream of every node's flows into a
//! bounded, time-windowed aggregate, and serves the page, its embedded
//! graph-layout library and a JSON API over plain HTTP/1.1.
//!
//! - [`graph`]: the aggregate (pure).
//! - [`reading`]: one flow's nodes, counts and account (pure).
//! - [`api`]: requests read and answered, the embedded files (pure).

pub mod api;
pub mod graph;
pub mod reading;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use weir_proto::observer::{self, get_flows_response::ResponseTypes};

use super::{now_ns, RelayObserver};
use crate::hubble::flows::{prost_timestamp, timestamp_ns};
use graph::Graph;

/// How long the follower waits before asking again when its stream ends.
const REFOLLOW: Duration = Duration::from_secs(1);
/// A request head longer than this is refused.
const MAX_HEAD: usize = 16 * 1024;

/// Follows the relay's merged flows into `graph` until `closing`: from the
/// window's start for the nodes connected now (their rings' flows), and as
/// they come for nodes that connect later.
pub async fn follow(relay: RelayObserver, graph: Arc<Mutex<Graph>>, mut closing: watch::Receiver<bool>) {
    // Asked again after a stream that ended, from after its last flow: none
    // counted twice.
    let mut last_ns = 0u64;
    loop {
        let window_ns = graph.lock().map(|g| g.limits().window_ns).unwrap_or(0);
        let since = now_ns().saturating_sub(window_ns).max(last_ns.saturating_add(1));
        let request =
            observer::GetFlowsRequest { follow: true, since: Some(prost_timestamp(since)), ..Default::default() };
        match relay.flows(request) {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = closing.wait_for(|c| *c) => return,
                };
                let Some(Ok(answer)) = next else { break };
                let Ok(mut graph) = graph.lock() else { return };
                match answer.response_types {
                    Some(ResponseTypes::Flow(f)) => {
                        last_ns = last_ns.max(f.time.as_ref().and_then(timestamp_ns).unwrap_or(0));
                        graph.add(&f, now_ns());
                    }
                    Some(ResponseTypes::LostEvents(lost)) => graph.lost(lost.num_events_lost),
                    Some(ResponseTypes::NodeStatus(status)) => {
                        let state = weir_proto::relay::NodeState::try_from(status.state_change)
                            .map_or("NODE_STATE_UNKNOWN", |s| s.as_str_name());
                        graph.node_state(&status.node_names, state, &status.message);
                    }
                    _ => {}
                }
            },
            Err(status) => tracing::warn!(error = status.message(), "the service map cannot follow the relay"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFOLLOW) => {}
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// Serves the page and its API on `listener` until `closing`.
pub async fn serve(listener: TcpListener, graph: Arc<Mutex<Graph>>, mut closing: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = closing.wait_for(|c| *c) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        tokio::spawn(answer_connection(stream, graph.clone()));
    }
}

/// Reads one request head and answers it (one request a connection).
async fn answer_connection(mut stream: TcpStream, graph: Arc<Mutex<Graph>>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() > MAX_HEAD {
                return false;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    let complete = matches!(tokio::time::timeout(Duration::from_secs(10), read).await, Ok(true));
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let reply = if !complete && head.len() > MAX_HEAD {
        api::Answer { status: 431, content_type: "text/plain", body: "request head too long\n".into() }
    } else if !complete || !target.starts_with('/') {
        api::Answer { status: 400, content_type: "text/plain", body: "not an HTTP/1.1 request\n".into() }
    } else {
        api::answer(method, target, &graph, now_ns())
    };
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(reply.body.as_bytes());
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
