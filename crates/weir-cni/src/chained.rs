//! Weir chained after the plugin that made the container's interface
//! (`"chaining": "generic-veth"`, as Cilium's mode of that name): the
//! interface, its addresses and its forwarding (a Linux bridge, ptp routes)
//! are that plugin's; Weir hands the container to the host agent, which
//! judges and reports its packets on the host side of its veth.
//!
//! Which veth is the container's is read from the kernel, not from names:
//! the container's interface (`CNI_IFNAME` in `CNI_NETNS`, as `prevResult`
//! names it) must be a veth, and its peer (its IFLA_LINK, an ifindex of the
//! host's namespace) a veth whose own peer is that interface.

use std::fs::File;
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use serde_json::{json, Value};

use crate::config::NetConf;
use crate::error::{CniError, CHECK_MISMATCH, INVALID_NETWORK_CONFIG};
use crate::handoff::{self, AgentLink, Endpoint};
use crate::link::{block_on, in_netns, link_by_name, mac_of, nl_err};
use crate::plugin::{container_id, ifname, open_netns, Env};

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(INVALID_NETWORK_CONFIG, msg)
}

/// The container's interface as `prevResult` names it: its index among
/// `interfaces` and its first IPv4 address.
pub fn prev_interface(prev: Option<&Value>, ifname: &str, netns: &str) -> Result<(usize, Ipv4Addr), CniError> {
    let prev = prev.ok_or_else(|| {
        invalid("prevResult: \"chaining\" runs after the plugin that made the interface, and there is none")
    })?;
    let index = prev["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .position(|i| i["name"] == ifname && i["sandbox"] == netns)
        .ok_or_else(|| {
            invalid(format!("prevResult has no interface {ifname} in sandbox {netns} (CNI_IFNAME, CNI_NETNS)"))
        })?;
    let address = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"] == json!(index))
        .find_map(|ip| ip["address"].as_str()?.parse::<ipnet::Ipv4Net>().ok())
        .ok_or_else(|| invalid(format!("prevResult gives {ifname} no IPv4 address")))?;
    Ok((index, address.addr()))
}

/// The interfaces `prevResult` names outside the container: the host side
/// of the pair among them (with the bridge plugin, also the bridge).
fn prev_host_interfaces(prev: Option<&Value>) -> Vec<String> {
    prev.and_then(|p| p["interfaces"].as_array())
        .into_iter()
        .flatten()
        .filter(|i| i.get("sandbox").and_then(Value::as_str).is_none_or(str::is_empty))
        .filter_map(|i| i["name"].as_str().map(str::to_string))
        .collect()
}

/// The container's veth, seen from both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The host side's name, in the caller's (the host's) namespace.
    pub host_name: String,
    pub container_mac: String,
}

fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The container's interface `ifname` in `netns` and the host side of its
/// veth; None when the interface is not there. An interface that is not a
/// veth, or whose peer is not a veth of this namespace, is error 7.
pub fn pair(netns: &File, ifname: &str) -> Result<Option<Pair>, CniError> {
    let Some((container_index, peer, container_mac)) = in_netns(netns, || {
        block_on(async |handle| {
            let Some(link) = link_by_name(&handle, ifname).await? else { return Ok(None) };
            if !is_veth(&link) {
                return Err(invalid(format!(
                    "{ifname} in the container is not a veth: \"chaining\": \"generic-veth\" needs the previous plugin's veth"
                )));
            }
            let peer = peer_index(&link)
                .ok_or_else(|| invalid(format!("{ifname} in the container is a veth with no peer (IFLA_LINK)")))?;
            Ok(Some((link.header.index, peer, mac_of(&link))))
        })
    })?
    else {
        return Ok(None);
    };
    let host = block_on(async |handle| match handle.link().get().match_index(peer).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {peer}, {ifname}'s peer"), e)),
    })?;
    // The peer's index is one of the host's only if the host's link there
    // is a veth whose own peer is the container's interface.
    match host {
        Some(link) if is_veth(&link) && peer_index(&link) == Some(container_index) => {
            let host_name = name_of(&link).ok_or_else(|| nl_err(format!("link {peer}"), "has no name"))?;
            Ok(Some(Pair { host_name, container_mac }))
        }
        _ => Err(invalid(format!(
            "{ifname}'s peer (ifindex {peer}) is not a veth of this namespace: \"generic-veth\" needs its host side here"
        ))),
    }
}

/// ADD: the container's veth made by the previous plugin goes to the
/// agent as a chained endpoint; the result is `prevResult`, unchanged.
pub fn add(env: &Env, conf: &NetConf, agent: &dyn AgentLink) -> Result<Value, CniError> {
    let id = container_id(env)?;
    let ifname = ifname(env)?;
    let netns = open_netns(env)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let (_, address) = prev_interface(conf.prev_result.as_ref(), ifname, &netns_path)?;
    let pair = pair(&netns, ifname)?
        .ok_or_else(|| invalid(format!("prevResult names {ifname}, but the container has no such interface")))?;
    let socket = conf.agent_socket.as_ref().ok_or_else(|| invalid("agent: \"chaining\" needs the agent"))?;
    let (namespace, name) = handoff::identity(env.args.as_deref(), id);
    let endpoint = Endpoint {
        host_interface: pair.host_name,
        namespace,
        name,
        labels: conf.labels.clone(),
        ip: address,
        // Chained endpoints are IPv4 only (docs/cni.md).
        ip6: None,
        container_mac: pair.container_mac,
        netns: netns_path,
        container_id: id.to_string(),
        ifname: ifname.to_string(),
        network: conf.name.clone(),
        port_mappings: Vec::new(),
        chained: true,
    };
    // Nothing of ours to undo on a refusal: the interface is the previous
    // plugin's, and the runtime's DEL of the chain removes it.
    agent.add(socket, &endpoint)?;
    let mut result = conf.prev_result.clone().unwrap_or_default();
    result["cniVersion"] = json!(conf.cni_version);
    Ok(result)
}

/// DEL: the agent forgets the endpoint (and the kernel with it); the
/// interface is left to the plugin that made it. The host side is read
/// from the container's interface while it is there; once it is gone (its
/// namespace went first), every host-side interface `prevResult` names is
/// forgotten: the plugin hands the agent none but veths (never the
/// bridge), and an interface the agent has no endpoint on is no error.
pub fn del(env: &Env, conf: &NetConf, agent: &dyn AgentLink) -> Result<(), CniError> {
    container_id(env)?;
    let ifname = ifname(env)?;
    let socket = conf.agent_socket.as_ref().ok_or_else(|| invalid("agent: \"chaining\" needs the agent"))?;
    let netns = env.netns.as_deref().filter(|p| !p.is_empty()).and_then(|p| File::open(p).ok());
    let found = match &netns {
        // An interface ADD refused (not a veth) must not keep the chain's
        // DEL from going on: prevResult still names the host side.
        Some(netns) => pair(netns, ifname).ok().flatten(),
        None => None,
    };
    let names = match found {
        Some(pair) => vec![pair.host_name],
        None => prev_host_interfaces(conf.prev_result.as_ref()),
    };
    for name in names {
        agent.delete(socket, &name)?;
    }
    Ok(())
}

/// CHECK: the container's interface is still the veth `prevResult` names,
/// its host side is there, and the agent still has the endpoint on it.
pub fn check(env: &Env, conf: &NetConf, agent: &dyn AgentLink) -> Result<(), CniError> {
    let id = container_id(env)?;
    let ifname = ifname(env)?;
    let netns = open_netns(env)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let (_, address) = prev_interface(conf.prev_result.as_ref(), ifname, &netns_path)?;
    let pair = pair(&netns, ifname)?
        .ok_or_else(|| CniError::new(CHECK_MISMATCH, format!("interface {ifname} is missing in the container")))?;
    let socket = conf.agent_socket.as_ref().ok_or_else(|| invalid("agent: \"chaining\" needs the agent"))?;
    let (namespace, name) = handoff::identity(env.args.as_deref(), id);
    let pod = format!("{namespace}/{name}");
    match agent.get(socket, &pair.host_name)? {
        Some(held) if held.namespace == namespace && held.name == name && held.ip == address.to_string() => Ok(()),
        _ => Err(CniError::new(
            CHECK_MISMATCH,
            format!("the Weir agent has no endpoint {pod} at {address} (on {})", pair.host_name),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "02:00:00:00:00:01"},
                {"name": "veth1234", "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/c1"},
            ],
            "ips": [{"address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 2}],
        })
    }

    #[test]
    fn the_container_interface_and_its_address_come_from_prev_result() {
        assert_eq!(
            prev_interface(Some(&prev()), "eth0", "/run/netns/c1").expect("valid"),
            (2, "10.88.0.5".parse().expect("ip"))
        );
        for (prev, ifname, netns, named) in [
            (None, "eth0", "/run/netns/c1", "there is none"),
            (Some(prev()), "eth1", "/run/netns/c1", "no interface eth1 in sandbox /run/netns/c1"),
            (Some(prev()), "eth0", "/run/netns/c2", "no interface eth0 in sandbox /run/netns/c2"),
            (Some(json!({"interfaces": [{"name": "eth0", "sandbox": "/n"}], "ips": []})), "eth0", "/n", "no IPv4"),
        ] {
            let err = prev_interface(prev.as_ref(), ifname, netns).expect_err("refused");
            assert!(err.code == INVALID_NETWORK_CONFIG && err.msg.contains(named), "{err}");
        }
    }

    #[test]
    fn the_host_side_interfaces_are_those_outside_the_container() {
        assert_eq!(prev_host_interfaces(Some(&prev())), ["cni0", "veth1234"]);
        assert!(prev_host_interfaces(None).is_empty());
    }
}
