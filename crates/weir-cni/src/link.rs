//! The container's veth pair, its address and routes, through rtnetlink.
//!
//! Netlink sockets belong to the network namespace they were opened in, so
//! work inside the container's namespace runs on a short-lived thread that
//! entered it (setns(2) is per thread) and opens its socket there.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{new_connection, Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use futures_util::StreamExt;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::bandwidth::{self, Bandwidth, Shape};
use crate::error::{CniError, CHECK_MISMATCH, IO_FAILURE, NETLINK_FAILURE};

/// What ADD made, for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    pub host_mac: String,
    pub container_mac: String,
}

/// The container side's wanted configuration.
#[derive(Debug, Clone, Copy)]
pub struct Addressing {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// Dual-stack: the container's IPv6 address and gateway.
    pub v6: Option<Addressing6>,
}

/// A dual-stack container's IPv6 side, made as its IPv4 side is: its
/// address as a /128, the gateway on the host side of its veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing6 {
    pub address: Ipv6Addr,
    pub gateway: Ipv6Addr,
}

pub(crate) fn nl_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> CniError {
    CniError::new(NETLINK_FAILURE, what.to_string()).with_details(e)
}

pub(crate) fn block_on<T>(work: impl AsyncFnOnce(Handle) -> Result<T, CniError>) -> Result<T, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(IO_FAILURE, "starting the netlink runtime").with_details(e))?;
    runtime.block_on(async {
        let (connection, handle, _) = new_connection().map_err(|e| nl_err("opening a netlink socket", e))?;
        tokio::spawn(connection);
        work(handle).await
    })
}

/// Runs `work` on a thread inside the namespace `netns`.
pub(crate) fn in_netns<T: Send>(
    netns: &File,
    work: impl FnOnce() -> Result<T, CniError> + Send,
) -> Result<T, CniError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor `netns` keeps open; it moves only this thread.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(CniError::new(IO_FAILURE, "entering the container's network namespace")
                        .with_details(std::io::Error::last_os_error()));
                }
                work()
            })
            .join()
            .unwrap_or_else(|_| Err(CniError::new(IO_FAILURE, "the netns worker thread panicked")))
    })
}

pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    match handle.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"), e)),
    }
}

pub(crate) fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => {
                Some(bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether a link named `name` exists in the caller's namespace.
pub fn exists(name: &str) -> Result<bool, CniError> {
    block_on(async |handle| Ok(link_by_name(&handle, name).await?.is_some()))
}

/// Switches forwarding on in the host's namespace (IPv6's too for a
/// dual-stack container), as the reference `bridge` plugin does on ADD:
/// containers are routed through the host, so without it they reach the
/// host and nothing past it.
pub fn enable_forwarding(ipv6: bool) -> Result<(), CniError> {
    let switches: &[&str] = if ipv6 {
        &["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"]
    } else {
        &["/proc/sys/net/ipv4/ip_forward"]
    };
    for path in switches {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| CniError::new(IO_FAILURE, format!("switching {path} on: {e}")))?;
    }
    Ok(())
}

/// Deletes the host side of a pair (the kernel removes its peer); `false`
/// when there was none.
pub fn delete(host_name: &str) -> Result<bool, CniError> {
    block_on(async |handle| {
        let Some(link) = link_by_name(&handle, host_name).await? else { return Ok(false) };
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(false),
            Err(e) => Err(nl_err(format!("deleting link {host_name}"), e)),
        }
    })
}

/// Creates the pair with its peer `ifname` directly in `netns`, addresses
/// and routes both sides. On failure the pair is removed: nothing is left
/// half made.
pub fn create(
    host_name: &str,
    ifname: &str,
    netns: &File,
    mtu: Option<u32>,
    addressing: Addressing,
) -> Result<Veth, CniError> {
    block_on(async |handle| {
        let mut veth = rtnetlink::LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message(ifname, netns, mtu))));
        if let Some(mtu) = mtu {
            veth = veth.mtu(mtu);
        }
        handle.link().add(veth.build()).execute().await.map_err(|e| nl_err(format!("creating veth {host_name}"), e))
    })?;
    let configured = configure(host_name, ifname, netns, addressing);
    if configured.is_err() {
        let _ = delete(host_name);
    }
    configured
}

/// Shapes the pair as `bandwidth` says: a `tbf` qdisc as the root of the
/// host side (traffic to the container) and of the container side (traffic
/// from it), each replacing the default. The qdiscs go with the pair.
pub fn shape(host_name: &str, ifname: &str, netns: &File, bandwidth: &Bandwidth) -> Result<(), CniError> {
    if let Some(ingress) = &bandwidth.ingress {
        block_on(async |handle| add_tbf(&handle, host_name, ingress).await)?;
    }
    if let Some(egress) = &bandwidth.egress {
        in_netns(netns, || block_on(async |handle| add_tbf(&handle, ifname, egress).await))?;
    }
    Ok(())
}

async fn add_tbf(handle: &Handle, name: &str, shape: &Shape) -> Result<(), CniError> {
    let what = || format!("adding a tbf qdisc ({} bytes/s) to {name}", shape.rate);
    let link = link_by_name(handle, name).await?.ok_or_else(|| nl_err(what(), "no such link"))?;
    let mut message = TcMessage::with_index(link.header.index as i32);
    message.header.parent = TcHandle::ROOT;
    message.header.handle = TcHandle { major: 1, minor: 0 };
    message.attributes.push(TcAttribute::Kind("tbf".to_string()));
    let options = bandwidth::tbf_options(shape)
        .into_iter()
        .map(|(kind, value)| TcOption::Other(DefaultNla::new(kind, value)))
        .collect();
    message.attributes.push(TcAttribute::Options(options));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut handle = handle.clone();
    let mut response = handle.request(request).map_err(|e| nl_err(what(), e))?;
    while let Some(message) = response.next().await {
        if let NetlinkPayload::Error(e) = message.payload {
            if e.code.is_some() {
                return Err(nl_err(what(), rtnetlink::Error::NetlinkError(e)));
            }
        }
    }
    Ok(())
}

/// The peer, created directly in the container's namespace under its
/// final name (so it never clashes with a host interface such as eth0).
fn peer_message(ifname: &str, netns: &File, mtu: Option<u32>) -> LinkMessage {
    let mut peer =
        rtnetlink::LinkMessageBuilder::<LinkUnspec>::new().name(ifname.to_string()).setns_by_fd(netns.as_raw_fd());
    if let Some(mtu) = mtu {
        peer = peer.mtu(mtu);
    }
    peer.build()
}

/// Adds `address/prefix` to link `index`, without duplicate address
/// detection for IPv6: the address is the IPAM's alone, and a tentative one
/// could not be used for the second or so DAD takes, after ADD returned.
async fn add_address(handle: &Handle, index: u32, address: IpAddr, prefix: u8, on: &str) -> Result<(), CniError> {
    let mut request = handle.address().add(index, address, prefix).replace();
    if address.is_ipv6() {
        request.message_mut().header.flags = AddressHeaderFlags::Nodad;
    }
    request.execute().await.map_err(|e| nl_err(format!("adding {address}/{prefix} to {on}"), e))
}

/// The link-local address the kernel would give `link` (EUI-64 of its MAC).
fn link_local(link: &LinkMessage) -> Ipv6Addr {
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => Some(bytes.clone()),
            _ => None,
        })
        .unwrap_or_else(|| vec![0; 6]);
    let eui = [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]];
    let mut octets = [0u8; 16];
    octets[..2].copy_from_slice(&[0xfe, 0x80]);
    octets[8..].copy_from_slice(&eui);
    Ipv6Addr::from(octets)
}

/// The host side of a dual-stack container's veth: its link-local address
/// and the IPv6 gateway on it, both usable at once, and a route to the
/// container's /128.
async fn host_side6(
    handle: &Handle,
    index: u32,
    host_name: &str,
    link_local: Ipv6Addr,
    v6: Addressing6,
) -> Result<(), CniError> {
    let Addressing6 { address, gateway } = v6;
    add_address(handle, index, IpAddr::V6(link_local), 64, host_name).await?;
    add_address(handle, index, IpAddr::V6(gateway), 128, host_name).await?;
    let route = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(address, 128).output_interface(index).build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| nl_err(format!("routing {address}/128 to {host_name}"), e))
}

/// The container side's IPv6: its /128, a route to the gateway on the
/// link and the default route through it.
async fn container_side6(handle: &Handle, index: u32, ifname: &str, v6: Addressing6) -> Result<(), CniError> {
    let Addressing6 { address, gateway } = v6;
    add_address(handle, index, IpAddr::V6(address), 128, ifname).await?;
    let to_gateway =
        RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(gateway, 128).output_interface(index).build();
    handle.route().add(to_gateway).execute().await.map_err(|e| nl_err(format!("routing {gateway} on {ifname}"), e))?;
    let default = RouteMessageBuilder::<Ipv6Addr>::new().gateway(gateway).output_interface(index).build();
    handle
        .route()
        .add(default)
        .execute()
        .await
        .map_err(|e| nl_err(format!("adding the default route via {gateway}"), e))
}

fn configure(host_name: &str, ifname: &str, netns: &File, addressing: Addressing) -> Result<Veth, CniError> {
    let Addressing { address, gateway, v6 } = addressing;
    let host_mac = block_on(async |handle| {
        let link = link_by_name(&handle, host_name)
            .await?
            .ok_or_else(|| nl_err(format!("veth {host_name} vanished"), "not found"))?;
        let index = link.header.index;
        if v6.is_some() {
            // The host sends a neighbour solicitation (to reach a container
            // it forwards to) only from a usable link-local address: the
            // kernel's own would be tentative for the second or so its DAD
            // takes after the link is up, and the first packets to the
            // container lost. The host side gets one without DAD instead
            // (host_side6).
            let mut message = LinkUnspec::new_with_index(index).build();
            message.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
            ])]));
            handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(|e| nl_err(format!("turning off {host_name}'s own link-local address"), e))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("setting {host_name} up"), e))?;
        // The gateway is the host side of every container's veth: the
        // container ARPs for it and the host answers for its own address.
        handle
            .address()
            .add(index, IpAddr::V4(gateway), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format!("adding {gateway}/32 to {host_name}"), e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format!("routing {address}/32 to {host_name}"), e))?;
        if let Some(v6) = v6 {
            host_side6(&handle, index, host_name, link_local(&link), v6).await?;
        }
        Ok(mac_of(&link))
    })?;
    let container_mac = in_netns(netns, || {
        block_on(async |handle| {
            let link = link_by_name(&handle, ifname)
                .await?
                .ok_or_else(|| nl_err(format!("{ifname} is not in the container's namespace"), "not found"))?;
            let index = link.header.index;
            for (what, message) in [
                ("lo", LinkUnspec::new_with_name("lo").up().build()),
                (ifname, LinkUnspec::new_with_index(index).up().build()),
            ] {
                handle.link().set(message).execute().await.map_err(|e| nl_err(format!("setting {what} up"), e))?;
            }
            handle
                .address()
                .add(index, IpAddr::V4(address), 32)
                .execute()
                .await
                .map_err(|e| nl_err(format!("adding {address}/32 to {ifname}"), e))?;
            let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            handle
                .route()
                .add(to_gateway)
                .execute()
                .await
                .map_err(|e| nl_err(format!("routing {gateway} on {ifname}"), e))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
            handle
                .route()
                .add(default)
                .execute()
                .await
                .map_err(|e| nl_err(format!("adding the default route via {gateway}"), e))?;
            if let Some(v6) = v6 {
                container_side6(&handle, index, ifname, v6).await?;
            }
            Ok(mac_of(&link))
        })
    })?;
    Ok(Veth { host_mac, container_mac })
}

/// Checks that the attachment is as `create` made it; the error names
/// what differs (code 100).
pub fn check(host_name: &str, ifname: &str, netns: &File, addressing: Addressing) -> Result<(), CniError> {
    let Addressing { address, gateway, v6 } = addressing;
    let mismatch = |msg: String| CniError::new(CHECK_MISMATCH, msg);
    if !exists(host_name)? {
        return Err(mismatch(format!("host veth {host_name} is missing")));
    }
    in_netns(netns, || {
        block_on(async |handle| {
            let link = link_by_name(&handle, ifname)
                .await?
                .ok_or_else(|| mismatch(format!("interface {ifname} is missing in the container")))?;
            let index = link.header.index;
            let addresses: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_err(format!("listing addresses of {ifname}"), e))?;
            let routes4: Vec<_> = handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_err("listing the container's routes", e))?;
            let mut expected = vec![(IpAddr::V4(address), IpAddr::V4(gateway), routes4)];
            if let Some(Addressing6 { address, gateway }) = v6 {
                let routes6: Vec<_> = handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                    .execute()
                    .try_collect()
                    .await
                    .map_err(|e| nl_err("listing the container's IPv6 routes", e))?;
                expected.push((IpAddr::V6(address), IpAddr::V6(gateway), routes6));
            }
            for (address, gateway, routes) in expected {
                // A host address: /32, or /128 for IPv6.
                let prefix = if address.is_ipv4() { 32 } else { 128 };
                let has_address = addresses.iter().any(|a| {
                    a.header.prefix_len == prefix
                        && a.attributes
                            .iter()
                            .any(|attr| matches!(attr, AddressAttribute::Address(ip) if *ip == address))
                });
                if !has_address {
                    return Err(mismatch(format!("{ifname} does not have address {address}/{prefix}")));
                }
                let via_gateway = |a: &RouteAttribute| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => IpAddr::V4(*gw) == gateway,
                    RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => IpAddr::V6(*gw) == gateway,
                    _ => false,
                };
                let has_default = routes.iter().any(|r| {
                    r.header.destination_prefix_length == 0
                        && r.attributes.iter().any(via_gateway)
                        && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
                });
                if !has_default {
                    return Err(mismatch(format!("the container has no default route via {gateway} on {ifname}")));
                }
            }
            Ok(())
        })
    })
}
