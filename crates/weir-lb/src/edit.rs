//! `weir lb vip add|del` and `weir lb real add|del|drain`: one change to
//! the XdpLoadBalancer document as written (Katran's imperative
//! commands, on Weir's declarative document). The edited document is
//! then checked whole by [`crate::spec::validate`] and applied like any
//! other, so an edit is never half applied and the agent keeps one
//! document to restart from.

use std::net::IpAddr;

use weir_spec::{err, ObjectMeta, SpecError};

use crate::spec::{self, RealSpec, VipSpec, XdpLoadBalancer, XdpLoadBalancerSpec};

/// One change.
#[derive(Debug, Clone)]
pub enum Edit {
    /// A new VIP (with no reals, or those it is written with).
    VipAdd(VipSpec),
    VipDelete {
        name: String,
    },
    /// Adds the real to the VIP, or gives an existing one this weight
    /// (none given: 1 for a new real, unchanged for an existing one).
    RealAdd {
        vip: String,
        address: String,
        port: Option<u16>,
        weight: Option<u32>,
    },
    /// Removes the real: its connections move to the others.
    RealDelete {
        vip: String,
        address: String,
        port: Option<u16>,
    },
    /// Weight 0: the real leaves the ring, its established connections stay.
    RealDrain {
        vip: String,
        address: String,
        port: Option<u16>,
    },
}

/// The name of the document an edit starts when none was applied.
pub const DEFAULT_NAME: &str = "default";

/// The document before any: no VIPs.
pub fn empty_document() -> XdpLoadBalancer {
    XdpLoadBalancer {
        api_version: spec::API_VERSION.into(),
        kind: spec::KIND.into(),
        metadata: ObjectMeta { name: DEFAULT_NAME.into(), ..Default::default() },
        spec: XdpLoadBalancerSpec::default(),
        status: None,
    }
}

fn vip_index(doc: &XdpLoadBalancer, name: &str) -> Result<usize, SpecError> {
    doc.spec.vips.iter().position(|v| v.name == name).ok_or_else(|| {
        let why = if name.contains('/') {
            format!("{name:?} is a Service's VIP: change the Service or its EndpointSlices instead")
        } else {
            format!("no VIP named {name:?} in the XdpLoadBalancer document (weir lb vip list)")
        };
        err("vip", why)
    })
}

/// The real of `vip` at `address` (and `port`, when given or when the VIP
/// has several reals at that address).
fn real_index(vip: &VipSpec, address: &str, port: Option<u16>) -> Result<Option<usize>, SpecError> {
    let wanted = spec::parse_address("address", address)?;
    let same = |r: &RealSpec| r.address.parse::<IpAddr>().ok() == Some(wanted);
    let at: Vec<usize> = vip.reals.iter().enumerate().filter(|(_, r)| same(r)).map(|(i, _)| i).collect();
    match port {
        Some(port) => Ok(at.into_iter().find(|i| vip.reals[*i].port.unwrap_or(0) == port)),
        None if at.len() > 1 => {
            Err(err("port", format!("VIP {} has {} reals at {wanted}: name the port", vip.name, at.len())))
        }
        None => Ok(at.first().copied()),
    }
}

/// `doc` with `edit` made, checked whole, and a line saying what changed.
pub fn apply(doc: &XdpLoadBalancer, edit: &Edit) -> Result<(XdpLoadBalancer, String), SpecError> {
    let mut out = doc.clone();
    let vips = &mut out.spec.vips;
    let line = match edit {
        Edit::VipAdd(vip) => {
            if vips.iter().any(|v| v.name == vip.name) {
                return Err(err("name", format!("VIP {:?} exists (weir lb vip del first)", vip.name)));
            }
            vips.push(vip.clone());
            format!("VIP {} added", vip.name)
        }
        Edit::VipDelete { name } => {
            let i = vip_index(doc, name)?;
            vips.remove(i);
            format!("VIP {name} deleted")
        }
        Edit::RealAdd { vip, address, port, weight } => {
            let v = &mut vips[vip_index(doc, vip)?];
            match real_index(v, address, *port)? {
                Some(i) => {
                    let Some(weight) = weight else {
                        return Err(err(
                            "weight",
                            format!("{address} is already a real of VIP {vip}: give --weight to change it"),
                        ));
                    };
                    v.reals[i].weight = Some(*weight);
                    format!("VIP {vip}: real {address} weight {weight}")
                }
                None => {
                    v.reals.push(RealSpec {
                        address: address.clone(),
                        weight: *weight,
                        port: *port,
                        quic_server_id: None,
                    });
                    format!("VIP {vip}: real {address} added (weight {})", weight.unwrap_or(1))
                }
            }
        }
        Edit::RealDelete { vip, address, port } | Edit::RealDrain { vip, address, port } => {
            let v = &mut vips[vip_index(doc, vip)?];
            let Some(i) = real_index(v, address, *port)? else {
                return Err(err("address", format!("{address} is not a real of VIP {vip}")));
            };
            if matches!(edit, Edit::RealDrain { .. }) {
                v.reals[i].weight = Some(0);
                format!("VIP {vip}: real {address} drained (weight 0: established connections stay)")
            } else {
                let removed = v.reals.remove(i);
                let routes = v.source_routes.len();
                v.source_routes.retain(|r| r.real.parse::<IpAddr>().ok() != removed.address.parse::<IpAddr>().ok());
                match routes - v.source_routes.len() {
                    0 => format!("VIP {vip}: real {address} deleted"),
                    n => format!("VIP {vip}: real {address} deleted, with the {n} source route(s) to it"),
                }
            }
        }
    };
    spec::validate(&out)?;
    Ok((out, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, port: u16) -> VipSpec {
        let yaml = format!("{{name: {name}, address: 198.51.100.1, port: {port}, protocol: TCP}}");
        weir_spec::parse_yaml(&yaml).expect("vip")
    }

    fn real(vip: &str, address: &str, weight: Option<u32>) -> Edit {
        Edit::RealAdd { vip: vip.into(), address: address.into(), port: None, weight }
    }

    #[test]
    fn edits_build_a_document_that_validates_and_say_what_they_did() {
        let (doc, line) = apply(&empty_document(), &Edit::VipAdd(vip("web", 80))).expect("vip add");
        assert_eq!(line, "VIP web added");
        let (doc, _) = apply(&doc, &real("web", "10.0.0.1", None)).expect("real add");
        let (doc, line) = apply(&doc, &real("web", "10.0.0.2", Some(3))).expect("real add");
        assert_eq!(line, "VIP web: real 10.0.0.2 added (weight 3)");
        let (doc, line) = apply(&doc, &real("web", "10.0.0.1", Some(2))).expect("weight");
        assert_eq!(line, "VIP web: real 10.0.0.1 weight 2");
        let drain = Edit::RealDrain { vip: "web".into(), address: "10.0.0.2".into(), port: None };
        let (doc, _) = apply(&doc, &drain).expect("drain");
        let lb = spec::validate(&doc).expect("valid");
        let weights: Vec<u32> = lb.vips[0].reals.iter().map(|r| r.weight).collect();
        assert_eq!(weights, [2, 0]);
        let delete = Edit::RealDelete { vip: "web".into(), address: "10.0.0.1".into(), port: None };
        let (doc, _) = apply(&doc, &delete).expect("delete");
        assert_eq!(doc.spec.vips[0].reals.len(), 1);
        let (doc, line) = apply(&doc, &Edit::VipDelete { name: "web".into() }).expect("vip del");
        assert_eq!(line, "VIP web deleted");
        assert!(doc.spec.vips.is_empty());
        // What the agent keeps reads back as the same document.
        let text = serde_json::to_string(&doc).expect("json");
        spec::parse(&text).expect("the written document parses");
    }

    #[test]
    fn bad_edits_are_refused_naming_what_is_wrong() {
        let (doc, _) = apply(&empty_document(), &Edit::VipAdd(vip("web", 80))).expect("vip add");
        let (doc, _) = apply(&doc, &real("web", "10.0.0.1", None)).expect("real add");
        let cases: Vec<(Edit, &str, &str)> = vec![
            (Edit::VipAdd(vip("web", 81)), "name", "exists"),
            (Edit::VipAdd(vip("other", 80)), "spec.vips[1]", "already VIP"),
            (Edit::VipDelete { name: "nope".into() }, "vip", "no VIP named"),
            (Edit::VipDelete { name: "shop/web:80/TCP".into() }, "vip", "a Service's VIP"),
            (real("web", "10.0.0.1", None), "weight", "already a real"),
            (real("web", "not-an-ip", None), "address", "not-an-ip"),
            (real("web", "::ffff:10.0.0.9", None), "address", "IPv4-mapped"),
            (real("web", "10.0.0.3", Some(70000)), "spec.vips[0].reals[1].weight", ""),
            (Edit::RealDelete { vip: "web".into(), address: "10.0.0.7".into(), port: None }, "address", "not a real"),
        ];
        for (edit, field, why) in cases {
            let error = apply(&doc, &edit).expect_err(&format!("{edit:?}"));
            assert_eq!(error.field, field, "{edit:?}: {error}");
            assert!(error.message.contains(why), "{edit:?}: {error}");
        }
    }
}
