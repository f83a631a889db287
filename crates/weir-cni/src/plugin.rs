//! The CNI commands: ADD, DEL, CHECK, VERSION, STATUS and GC.

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{self, Attachment, Ipam, NetConf, SUPPORTED_VERSIONS};
use crate::error::{
    CniError, CHECK_MISMATCH, INVALID_ENVIRONMENT, INVALID_NETWORK_CONFIG, NOT_AVAILABLE, UNKNOWN_CONTAINER,
};
use crate::handoff::{self, AgentLink, Endpoint};
use crate::ipam::{self, Store};
use crate::link::{self, Addressing, Addressing6};
use crate::{chained, delegate};

/// How long a run waits for the IPAM lock before answering "try again later".
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// The version answered when the request names none.
pub const LATEST_VERSION: &str = "1.1.0";

/// The CNI environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    /// The variables as the runtime set them for this process.
    pub fn from_process() -> Env {
        let var = |name: &str| std::env::var(name).ok();
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }
}

fn missing(name: &str, why: &str) -> CniError {
    CniError::new(INVALID_ENVIRONMENT, format!("{name}: {why}"))
}

pub(crate) fn container_id(env: &Env) -> Result<&str, CniError> {
    let id =
        env.container_id.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| missing("CNI_CONTAINERID", "required"))?;
    let first_ok = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(missing(
            "CNI_CONTAINERID",
            "must start with a letter or digit and hold only letters, digits, '_', '.', '-'",
        ));
    }
    Ok(id)
}

pub(crate) fn ifname(env: &Env) -> Result<&str, CniError> {
    let name = env.ifname.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| missing("CNI_IFNAME", "required"))?;
    if name.len() > 15
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err(missing("CNI_IFNAME", &format!("{name:?} is not a valid interface name")));
    }
    Ok(name)
}

pub(crate) fn open_netns(env: &Env) -> Result<File, CniError> {
    let path = env.netns.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| missing("CNI_NETNS", "required"))?;
    File::open(path)
        .map_err(|e| CniError::new(UNKNOWN_CONTAINER, format!("CNI_NETNS {path}: cannot be opened")).with_details(e))
}

/// The host side's name: fixed by network, container and interface, so DEL
/// finds it without any state.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a 64: stable across builds and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.bytes().chain([0]).chain(container_id.bytes()).chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("wcni{:011x}", hash >> 20)
}

/// `CNI_ARGS` must be `KEY=VALUE` pairs separated by `;`. Weir reads
/// Kubernetes' pod namespace and name from them (naming the endpoint it
/// hands to the agent); any other key is accepted.
fn check_args(env: &Env) -> Result<(), CniError> {
    for pair in env.args.as_deref().unwrap_or_default().split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(missing("CNI_ARGS", &format!("{pair:?} is not KEY=VALUE"))),
        }
    }
    Ok(())
}

/// Runs one invocation; `Some` is what to print on stdout.
pub fn run(env: &Env, stdin: &[u8], agent: &dyn AgentLink) -> Result<Option<Value>, CniError> {
    let command = env.command.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| missing("CNI_COMMAND", "required"))?;
    check_args(env)?;
    if command == "VERSION" {
        return Ok(Some(version(stdin)));
    }
    let conf = config::parse(stdin)?;
    match command {
        "ADD" => add(env, &conf, stdin, agent).map(Some),
        "DEL" => del(env, &conf, stdin, agent).map(|()| None),
        "CHECK" => check(env, &conf, stdin, agent).map(|()| None),
        "STATUS" => status(env, &conf, stdin).map(|()| None),
        "GC" => gc(env, &conf, stdin, agent).map(|()| None),
        other => {
            Err(missing("CNI_COMMAND", &format!("unknown command {other:?} (ADD, DEL, CHECK, VERSION, STATUS, GC)")))
        }
    }
}

fn version(stdin: &[u8]) -> Value {
    let asked = config::version_of(stdin).unwrap_or_else(|| LATEST_VERSION.to_string());
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The address and gateway an attachment gets, and whether this run
/// allocated it (so a failed ADD gives back only what it took).
struct Lease {
    addressing: Addressing,
    fresh: bool,
    dns: Option<Value>,
}

fn lease(env: &Env, conf: &NetConf, stdin: &[u8], id: &str, ifname: &str) -> Result<Lease, CniError> {
    match &conf.ipam {
        Ipam::Weir { subnet, gateway } => {
            let store = Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?;
            let (address, fresh) = store.allocate(*subnet, *gateway, id, ifname)?;
            // Dual-stack is all or nothing: no IPv6 address, no IPv4 one either.
            let v6 = match conf.subnet6.map(|pool| (pool, store.allocate6(pool, id, ifname))) {
                None => None,
                Some((pool, Ok((address, _)))) => Some(Addressing6 { address, gateway: pool.gateway }),
                Some((_, Err(err))) => {
                    if fresh {
                        let _ = store.release(id, ifname);
                    }
                    return Err(err);
                }
            };
            Ok(Lease { addressing: Addressing { address, gateway: *gateway, v6 }, fresh, dns: None })
        }
        Ipam::Previous => {
            // A chained ADD never leases (chained::add): its addresses are prevResult's.
            Err(CniError::new(INVALID_NETWORK_CONFIG, "chaining: the addresses are the previous plugin's"))
        }
        Ipam::Delegated { plugin } => {
            let exe = delegate::find(plugin, env.path.as_deref())?;
            let lease = delegate::lease_of(&delegate::exec(&exe, "ADD", stdin)?)?;
            Ok(Lease {
                addressing: Addressing { address: lease.address, gateway: lease.gateway, v6: lease.v6 },
                fresh: true,
                dns: lease.dns,
            })
        }
    }
}

fn release(env: &Env, conf: &NetConf, stdin: &[u8], id: &str, ifname: &str) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Weir { .. } => Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?.release(id, ifname).map(|_| ()),
        Ipam::Previous => Ok(()),
        Ipam::Delegated { plugin } => {
            delegate::exec(&delegate::find(plugin, env.path.as_deref())?, "DEL", stdin).map(|_| ())
        }
    }
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8], agent: &dyn AgentLink) -> Result<Value, CniError> {
    if conf.ipam == Ipam::Previous {
        return chained::add(env, conf, agent);
    }
    let id = container_id(env)?;
    let ifname = ifname(env)?;
    let netns = open_netns(env)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let host = host_veth_name(&conf.name, id, ifname);
    let lease = lease(env, conf, stdin, id, ifname)?;
    let made = link::enable_forwarding(lease.addressing.v6.is_some())
        .and_then(|()| link::create(&host, ifname, &netns, conf.mtu, lease.addressing));
    let veth = match made {
        Ok(veth) => veth,
        Err(err) => {
            if lease.fresh {
                // The address goes back; the link error is what the runtime needs to see.
                let _ = release(env, conf, stdin, id, ifname);
            }
            return Err(err);
        }
    };
    if let Err(err) = link::shape(&host, ifname, &netns, &conf.bandwidth) {
        let _ = link::delete(&host);
        if lease.fresh {
            let _ = release(env, conf, stdin, id, ifname);
        }
        return Err(err);
    }
    let Addressing { address, gateway, v6 } = lease.addressing;
    if let Some(socket) = &conf.agent_socket {
        let (namespace, name) = handoff::identity(env.args.as_deref(), id);
        let endpoint = Endpoint {
            host_interface: host.clone(),
            namespace,
            name,
            labels: conf.labels.clone(),
            ip: address,
            ip6: v6.map(|v6| v6.address),
            container_mac: veth.container_mac.clone(),
            netns: netns_path.clone(),
            container_id: id.to_string(),
            ifname: ifname.to_string(),
            network: conf.name.clone(),
            port_mappings: conf.port_mappings.clone(),
            chained: false,
        };
        // The container is not started without its policy: a refused or
        // unanswered hand-off undoes the link and the address.
        if let Err(err) = agent.add(socket, &endpoint) {
            let _ = link::delete(&host);
            if lease.fresh {
                let _ = release(env, conf, stdin, id, ifname);
            }
            return Err(err);
        }
    }
    let mut interfaces = vec![
        json!({ "name": host, "mac": veth.host_mac }),
        json!({ "name": ifname, "mac": veth.container_mac, "sandbox": netns_path }),
    ];
    let mut ip = json!({ "address": format!("{address}/32"), "gateway": gateway.to_string() });
    if conf.cni_version == "0.4.0" {
        ip["version"] = json!("4");
    }
    let mut ips = vec![ip];
    let mut routes =
        vec![json!({ "dst": format!("{gateway}/32") }), json!({ "dst": "0.0.0.0/0", "gw": gateway.to_string() })];
    if let Some(Addressing6 { address, gateway }) = v6 {
        let mut ip = json!({ "address": format!("{address}/128"), "gateway": gateway.to_string() });
        if conf.cni_version == "0.4.0" {
            ip["version"] = json!("6");
        }
        ips.push(ip);
        routes
            .extend([json!({ "dst": format!("{gateway}/128") }), json!({ "dst": "::/0", "gw": gateway.to_string() })]);
    }
    let our_ips = ips.len();
    let mut dns = conf.dns.clone().or(lease.dns).unwrap_or_else(|| json!({}));
    // A plugin earlier in the chain keeps its part of the result; ours follows.
    let mut offset = 0;
    if let Some(prev) = &conf.prev_result {
        let prev_interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
        offset = prev_interfaces.len();
        interfaces.splice(0..0, prev_interfaces);
        ips.splice(0..0, prev["ips"].as_array().cloned().unwrap_or_default());
        routes.splice(0..0, prev["routes"].as_array().cloned().unwrap_or_default());
        if dns.as_object().is_some_and(|d| d.is_empty()) {
            if let Some(prev_dns) = prev.get("dns") {
                dns = prev_dns.clone();
            }
        }
    }
    let ours = ips.len() - our_ips;
    for ip in &mut ips[ours..] {
        ip["interface"] = json!(offset + 1);
    }
    Ok(json!({ "cniVersion": conf.cni_version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns }))
}

fn del(env: &Env, conf: &NetConf, stdin: &[u8], agent: &dyn AgentLink) -> Result<(), CniError> {
    if conf.ipam == Ipam::Previous {
        return chained::del(env, conf, agent);
    }
    let id = container_id(env)?;
    let ifname = ifname(env)?;
    let host = host_veth_name(&conf.name, id, ifname);
    // The agent forgets the endpoint before its address can go to another
    // container; an agent away fails DEL (the runtime retries it).
    if let Some(socket) = &conf.agent_socket {
        agent.delete(socket, &host)?;
    }
    // Deleting the host side removes the container side with it, wherever
    // the netns is (or whether it still exists at all).
    link::delete(&host)?;
    release(env, conf, stdin, id, ifname)
}

/// The address prevResult gave our interface in the container.
fn prev_address(conf: &NetConf, ifname: &str, netns: &str) -> Result<Ipv4Addr, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(INVALID_NETWORK_CONFIG, "prevResult: CHECK needs the ADD result"))?;
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces.iter().position(|i| i["name"] == ifname && i["sandbox"] == netns).ok_or_else(|| {
        CniError::new(CHECK_MISMATCH, format!("prevResult has no interface {ifname} in sandbox {netns}"))
    })?;
    prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"] == json!(index))
        .find_map(|ip| ip["address"].as_str()?.parse::<ipnet::Ipv4Net>().ok())
        .map(|net| net.addr())
        .ok_or_else(|| CniError::new(CHECK_MISMATCH, format!("prevResult has no IPv4 address on {ifname}")))
}

/// The IPv6 address prevResult gave our interface, if any, and its gateway.
fn prev_address6(conf: &NetConf, ifname: &str, netns: &str) -> Option<(Ipv6Addr, Option<Ipv6Addr>)> {
    let prev = conf.prev_result.as_ref()?;
    let interfaces = prev["interfaces"].as_array()?;
    let index = interfaces.iter().position(|i| i["name"] == ifname && i["sandbox"] == netns)?;
    prev["ips"].as_array()?.iter().filter(|ip| ip["interface"] == json!(index)).find_map(|ip| {
        let address = ip["address"].as_str()?.parse::<ipnet::Ipv6Net>().ok()?.addr();
        Some((address, ip["gateway"].as_str().and_then(|g| g.parse().ok())))
    })
}

fn check(env: &Env, conf: &NetConf, stdin: &[u8], agent: &dyn AgentLink) -> Result<(), CniError> {
    if conf.ipam == Ipam::Previous {
        return chained::check(env, conf, agent);
    }
    let id = container_id(env)?;
    let ifname = ifname(env)?;
    let netns = open_netns(env)?;
    let address = prev_address(conf, ifname, env.netns.as_deref().unwrap_or_default())?;
    let prev6 = prev_address6(conf, ifname, env.netns.as_deref().unwrap_or_default());
    let mut v6 = None;
    let gateway = match &conf.ipam {
        Ipam::Weir { gateway, .. } => {
            let held = Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?.find(id, ifname)?;
            if held != Some(address) {
                return Err(CniError::new(
                    CHECK_MISMATCH,
                    format!(
                        "IPAM holds {} for {id}/{ifname}, prevResult says {address}",
                        held.map_or("nothing".into(), |ip| ip.to_string())
                    ),
                ));
            }
            if let Some(pool) = conf.subnet6 {
                let held = Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?.find6(id, ifname)?;
                let said = prev6.map(|(ip, _)| ip);
                if held.is_none() || held != said {
                    let text = |ip: Option<Ipv6Addr>| ip.map_or("nothing".into(), |ip| ip.to_string());
                    return Err(CniError::new(
                        CHECK_MISMATCH,
                        format!("IPAM holds IPv6 {} for {id}/{ifname}, prevResult says {}", text(held), text(said)),
                    ));
                }
                v6 = held.map(|address| Addressing6 { address, gateway: pool.gateway });
            }
            *gateway
        }
        Ipam::Previous => return chained::check(env, conf, agent),
        Ipam::Delegated { plugin } => {
            delegate::exec(&delegate::find(plugin, env.path.as_deref())?, "CHECK", stdin)?;
            if let Some((address6, gateway6)) = prev6 {
                let gateway = gateway6.ok_or_else(|| {
                    CniError::new(CHECK_MISMATCH, format!("prevResult has no gateway for {address6}"))
                })?;
                v6 = Some(Addressing6 { address: address6, gateway });
            }
            conf.prev_result
                .as_ref()
                .and_then(|p| p["ips"].as_array())
                .into_iter()
                .flatten()
                .find(|ip| {
                    ip["address"]
                        .as_str()
                        .and_then(|a| a.parse::<ipnet::Ipv4Net>().ok())
                        .is_some_and(|n| n.addr() == address)
                })
                .and_then(|ip| ip["gateway"].as_str()?.parse().ok())
                .ok_or_else(|| CniError::new(CHECK_MISMATCH, format!("prevResult has no gateway for {address}")))?
        }
    };
    let host = host_veth_name(&conf.name, id, ifname);
    link::check(&host, ifname, &netns, Addressing { address, gateway, v6 })?;
    // The agent must still have the endpoint: without it the container has
    // no identity, no policy, and the datapath does not deliver to it.
    if let Some(socket) = &conf.agent_socket {
        let mismatch = |what: String| CniError::new(CHECK_MISMATCH, what);
        match agent.get(socket, &host)? {
            None => {
                return Err(mismatch(format!(
                    "the Weir agent at {} has no endpoint on {host} (container {id}, interface {ifname})",
                    socket.display()
                )))
            }
            Some(registered) if registered.ip != address.to_string() => {
                return Err(mismatch(format!(
                    "the Weir agent at {} has {}/{} on {host} at {}, prevResult says {address}",
                    socket.display(),
                    registered.namespace,
                    registered.name,
                    registered.ip
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn status(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    match &conf.ipam {
        Ipam::Weir { subnet, gateway } => {
            let store = Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?;
            let taken: HashSet<Ipv4Addr> = store.allocations()?.into_iter().map(|(ip, _)| ip).collect();
            if ipam::candidates(*subnet, *gateway, None).all(|ip| taken.contains(&ip)) {
                return Err(CniError::new(NOT_AVAILABLE, format!("every address of {subnet} is allocated")));
            }
            if let Some(pool) = conf.subnet6 {
                if store.allocations6()?.len() as u128 >= ipam::capacity6(pool) {
                    let subnet6 = pool.subnet;
                    return Err(CniError::new(NOT_AVAILABLE, format!("every address of {subnet6} is allocated")));
                }
            }
            Ok(())
        }
        // Nothing of the chained Weir's own can run out.
        Ipam::Previous => Ok(()),
        Ipam::Delegated { plugin } => {
            let exe = delegate::find(plugin, env.path.as_deref())?;
            if delegate::speaks_1_1(&exe)? {
                delegate::exec(&exe, "STATUS", stdin)?;
            }
            Ok(())
        }
    }
}

fn gc(env: &Env, conf: &NetConf, stdin: &[u8], agent: &dyn AgentLink) -> Result<(), CniError> {
    let valid: HashSet<Attachment> = conf
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::new(INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments: GC needs the list"))?
        .into_iter()
        .collect();
    match &conf.ipam {
        Ipam::Weir { .. } => {
            let store = Store::open(&conf.data_dir, &conf.name, LOCK_WAIT)?;
            for (ip, attachment) in store.allocations()? {
                if !valid.contains(&attachment) {
                    let host = host_veth_name(&conf.name, &attachment.container_id, &attachment.ifname);
                    // As DEL: the agent forgets it before the address is free.
                    if let Some(socket) = &conf.agent_socket {
                        agent.delete(socket, &host)?;
                    }
                    // A veth dies with its namespace; one whose namespace a
                    // runtime forgot but kept alive goes here.
                    link::delete(&host)?;
                    store.release_address(ip)?;
                }
            }
            // A stale attachment's IPv6 address goes with it.
            for (ip, attachment) in store.allocations6()? {
                if !valid.contains(&attachment) {
                    store.release_address(ip)?;
                }
            }
            Ok(())
        }
        // A chained Weir keeps no addresses: the agent's endpoints are all
        // there is to collect (the previous plugin collects its own).
        Ipam::Previous => forget_stale_endpoints(conf, &valid, agent),
        Ipam::Delegated { plugin } => {
            // As DEL: the agent forgets before the addresses are free.
            forget_stale_endpoints(conf, &valid, agent)?;
            let exe = delegate::find(plugin, env.path.as_deref())?;
            if delegate::speaks_1_1(&exe)? {
                delegate::exec(&exe, "GC", stdin)?;
            }
            Ok(())
        }
    }
}

/// GC without Weir's IPAM store, which would name the stale attachments:
/// the agent's endpoints of this network whose attachment is not valid are
/// forgotten, and their veth deleted where Weir made it (a chained one's
/// is the previous plugin's).
fn forget_stale_endpoints(conf: &NetConf, valid: &HashSet<Attachment>, agent: &dyn AgentLink) -> Result<(), CniError> {
    let Some(socket) = &conf.agent_socket else { return Ok(()) };
    for endpoint in agent.list(socket)? {
        let attachment = Attachment { container_id: endpoint.container_id, ifname: endpoint.ifname };
        if endpoint.network != conf.name || valid.contains(&attachment) {
            continue;
        }
        agent.delete(socket, &endpoint.host_interface)?;
        if !endpoint.chained {
            link::delete(&endpoint.host_interface)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These runs fail (or answer) before any agent would be asked.
    struct NoAgent;

    impl AgentLink for NoAgent {
        fn add(&self, _: &std::path::Path, _: &Endpoint) -> Result<(), CniError> {
            unreachable!("no ADD reaches the agent here")
        }
        fn delete(&self, _: &std::path::Path, _: &str) -> Result<(), CniError> {
            unreachable!("no DEL reaches the agent here")
        }
        fn list(&self, _: &std::path::Path) -> Result<Vec<crate::handoff::Attached>, CniError> {
            unreachable!("no GC reaches the agent here")
        }
        fn get(&self, _: &std::path::Path, _: &str) -> Result<Option<crate::handoff::Registered>, CniError> {
            unreachable!("no CHECK reaches the agent here")
        }
    }

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert!(a.len() <= 15, "{a}");
        assert_ne!(a, host_veth_name("net", "c2", "eth0"));
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
        assert_ne!(a, host_veth_name("net2", "c1", "eth0"));
    }

    #[test]
    fn environment_errors_have_code_4() {
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24"}"#;
        let no_command = Env::default();
        assert_eq!(run(&no_command, conf, &NoAgent).expect_err("an error").code, INVALID_ENVIRONMENT);
        let bad_id = Env {
            command: Some("DEL".into()),
            container_id: Some("-x".into()),
            ifname: Some("eth0".into()),
            ..Env::default()
        };
        assert_eq!(run(&bad_id, conf, &NoAgent).expect_err("an error").code, INVALID_ENVIRONMENT);
        let bad_args = Env {
            command: Some("DEL".into()),
            container_id: Some("x".into()),
            ifname: Some("eth0".into()),
            args: Some("IgnoreUnknown=1;K8S_POD_NAME".into()),
            ..Env::default()
        };
        assert_eq!(run(&bad_args, conf, &NoAgent).expect_err("an error").code, INVALID_ENVIRONMENT);
        let bad_if = Env {
            command: Some("DEL".into()),
            container_id: Some("x".into()),
            ifname: Some("a/b".into()),
            ..Env::default()
        };
        assert_eq!(run(&bad_if, conf, &NoAgent).expect_err("an error").code, INVALID_ENVIRONMENT);
    }

    #[test]
    fn version_answers_in_the_asked_version() {
        let env = Env { command: Some("VERSION".into()), ..Env::default() };
        let out = run(&env, br#"{"cniVersion":"1.0.0"}"#, &NoAgent).expect("valid").expect("valid");
        assert_eq!(out, json!({"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}));
    }
}
