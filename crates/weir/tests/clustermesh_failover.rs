//! ClusterMesh failover under load: a client pod of east sends a request (a
//! new TCP connection and a read of the backend's name) every 10 ms to a
//! global Service with a backend in each of two clusters, and we count what
//! each change costs it. A backend taken out of its EndpointSlice costs no
//! request; a backend whose process dies costs at most one (passive health
//! steers the node away at the first refusal); a whole cluster lost (cut
//! off the fabric, or taken down) costs requests only until the agent has
//! found it lost.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mesh::{apply, backend, global_service, mesh_up, mesh_yaml, remote_state, VIP};
use common::{eventually, privileged, unique_name, weir};

/// One request of the paced client, as it logged it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Request {
    seq: u64,
    sent: u64,
    ok: bool,
    who: String,
}

/// The paced client (tests/fixtures/paced_client.py) running in pod
/// `shop/client` of a cluster, and the requests it has logged by sequence
/// number; stopped on drop.
struct LoadClient {
    child: Child,
    stdin: Option<ChildStdin>,
    log: Arc<Mutex<BTreeMap<u64, Request>>>,
}

impl LoadClient {
    fn start(cluster: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["lab", "exec", "--lab", cluster, "shop/client", "--", "python3", "-c"])
            .arg(include_str!("fixtures/paced_client.py"))
            .args([VIP, "80", "0.01", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(BTreeMap::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let request: Request = serde_json::from_str(&line).expect("a request line");
                sink.lock().expect("log").insert(request.seq, request);
            }
        });
        Self { child, stdin, log }
    }

    /// The requests logged so far, in the order they were sent.
    fn requests(&self) -> Vec<Request> {
        self.log.lock().expect("log").values().cloned().collect()
    }

    /// The number of requests sent so far (every one up to it will be logged).
    fn next_seq(&self) -> u64 {
        self.log.lock().expect("log").keys().next_back().map_or(0, |s| s + 1)
    }

    /// Waits until every request numbered below `end` has been logged
    /// (each is answered or fails within its 1 s timeout), and returns
    /// those from `begin` on.
    fn settled(&self, begin: u64, end: u64) -> Vec<Request> {
        let complete = || {
            let log = self.log.lock().expect("log");
            (begin..end).all(|s| log.contains_key(&s))
        };
        assert!(eventually(Duration::from_secs(30), complete), "requests {begin}..{end} were never all logged");
        self.log.lock().expect("log").range(begin..end).map(|(_, r)| r.clone()).collect()
    }

    /// Waits until the last `run` requests sent at or after `from_seq` were
    /// all answered by `who` and none since has failed or come from another:
    /// the client is steadily on `who`'s backend. Returns the sequence
    /// number that ends the run.
    fn steady_on(&self, from_seq: u64, who: &str, run: usize) -> u64 {
        let mut end = None;
        let on = || {
            let log = self.log.lock().expect("log");
            let tail: Vec<&Request> = log.range(from_seq..).map(|(_, r)| r).collect();
            // Only a gapless prefix counts: a request still in flight may yet fail.
            let gapless = tail.iter().enumerate().take_while(|(i, r)| r.seq == from_seq + *i as u64).count();
            let last_other = tail[..gapless].iter().rposition(|r| !(r.ok && r.who == who));
            let since = gapless - last_other.map_or(0, |i| i + 1);
            if since >= run {
                end = Some(from_seq + gapless as u64);
            }
            since >= run
        };
        let steady = eventually(Duration::from_secs(60), on);
        let seen: BTreeMap<String, usize> =
            self.requests().iter().filter(|r| r.seq >= from_seq).fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.who.clone()).or_default() += 1;
                m
            });
        assert!(steady, "the client never settled on {who}'s backend: since request {from_seq}: {seen:?}");
        end.expect("set when steady")
    }

    /// Waits until both `a` and `b` answered among the requests from `from_seq` on.
    fn reaches_both(&self, from_seq: u64, a: &str, b: &str) {
        let both = || {
            let log = self.log.lock().expect("log");
            let mut who = log.range(from_seq..).filter(|(_, r)| r.ok).map(|(_, r)| r.who.as_str());
            let (mut seen_a, mut seen_b) = (false, false);
            for w in &mut who {
                seen_a |= w == a;
                seen_b |= w == b;
            }
            seen_a && seen_b
        };
        assert!(eventually(Duration::from_secs(60), both), "the client never reached both {a} and {b}");
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if eventually(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After an event that takes `west` away from `east` (from request `begin`
/// on): waits until east's agent says west is lost, asserts that every
/// request sent after that was answered by east, and returns how many
/// failed before.
fn failures_until_found_lost(client: &LoadClient, begin: u64, east: &str, west: &str) -> usize {
    assert!(
        eventually(Duration::from_secs(30), || remote_state(east, west).is_some_and(|r| r["state"] == "lost")),
        "west was never found lost: {:?}",
        remote_state(east, west)
    );
    let lost_seen = unix_ns();
    let lost_seq = client.next_seq();
    let end = client.steady_on(lost_seq, east, 100);
    let scene = client.settled(begin, end);
    let (before, after): (Vec<Request>, Vec<Request>) = scene.into_iter().partition(|r| r.sent < lost_seen);
    assert!(!after.is_empty(), "no request was sent after west was found lost");
    assert!(failures(&after).is_empty(), "requests sent after west was found lost failed: {:?}", failures(&after));
    assert!(after.iter().all(|r| r.who == east), "a request sent after west was lost went elsewhere");
    failures(&before).len()
}

fn failures(requests: &[Request]) -> Vec<&Request> {
    requests.iter().filter(|r| !r.ok).collect()
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64
}

#[test]
fn under_a_request_every_10ms_a_slice_change_costs_nothing_a_dead_backend_one_request_and_a_lost_cluster_only_until_found_lost(
) {
    if !privileged("clustermesh failover under load") {
        return;
    }
    let base = unique_name("cmf");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let mesh = mesh_up(&name, &mesh_yaml(&name, &east, &west));
    let east_api = weir_lab::runtime::load_plan(&east).expect("east").pod("shop/api").expect("east api").clone();
    let west_api = weir_lab::runtime::load_plan(&west).expect("west").pod("shop/api").expect("west api").clone();
    let mut east_server = backend(&east_api.netns, east_api.ip, &east);
    let west_server = backend(&west_api.netns, west_api.ip, &west);
    let west_slice = global_service(&[], &[(west_api.ip, &format!("{west}-a"))]);
    apply(&west, &west_slice);
    apply(&east, &global_service(&[], &[(east_api.ip, &format!("{east}-a"))]));

    let client = LoadClient::start(&east);
    client.reaches_both(0, &east, &west);

    // (a) West's backend leaves its EndpointSlice (its server still runs):
    // no request fails, and from then on east's backend answers every one.
    let begin = client.next_seq();
    apply(&west, &global_service(&[], &[]));
    let end = client.steady_on(begin, &east, 100);
    let scene = client.settled(begin, end);
    assert!(failures(&scene).is_empty(), "a backend leaving its slice cost requests: {:?}", failures(&scene));

    // West's backend back in its slice: both answer again.
    let back = client.next_seq();
    apply(&west, &west_slice);
    client.reaches_both(back, &east, &west);

    // (b) East's server dies (its port refuses): at most one failed request
    // from the client's node, then west's backend answers every one.
    let begin = client.next_seq();
    east_server.stop();
    let end = client.steady_on(begin, &west, 100);
    let scene = client.settled(begin, end);
    assert!(failures(&scene).len() <= 1, "a dead backend cost more than one request: {:?}", failures(&scene));
    eprintln!("a dead backend cost {} request(s)", failures(&scene).len());

    // East's server back: its probe passes and both answer again.
    let back = client.next_seq();
    east_server = backend(&east_api.netns, east_api.ip, &east);
    client.reaches_both(back, &east, &west);

    // (c) West cut off the fabric (its node's port down: its etcd, node and
    // backend blackholed, nothing refuses): requests may fail until east's
    // agent finds west lost, none sent after that.
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let port = &west_plan.nodes[0].fabric_port;
    let link = |state: &str| {
        let out = Command::new("ip")
            .args(["-n", &west_plan.fabric_netns, "link", "set", port, state])
            .output()
            .expect("ip link");
        assert!(out.status.success(), "ip link set {port} {state}: {out:?}");
    };
    let begin = client.next_seq();
    link("down");
    let cost = failures_until_found_lost(&client, begin, &east, &west);
    eprintln!("west cut off cost {cost} request(s) before it was found lost");

    // West back on the fabric: connected again, and both answer.
    let back = client.next_seq();
    link("up");
    assert!(
        eventually(Duration::from_secs(30), || remote_state(&east, &west).is_some_and(|r| r["state"] == "connected")),
        "east did not reconnect to west: {:?}",
        remote_state(&east, &west)
    );
    client.reaches_both(back, &east, &west);

    // (d) West gone (`weir lab down`): the same.
    let begin = client.next_seq();
    let down = weir(&["lab", "down", &west]);
    assert!(down.status.success(), "{down:?}");
    drop(west_server);
    let cost = failures_until_found_lost(&client, begin, &east, &west);
    eprintln!("west down cost {cost} request(s) before it was found lost");

    drop(client);
    drop(east_server);
    drop(mesh);
}
