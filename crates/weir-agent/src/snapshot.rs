//! One reading of the pinned datapath, rendered both as gRPC status and as
//! Prometheus metrics so the two can never disagree.

use weir_bpf::api::{drop_reason, traffic_class, Counter};
use weir_bpf::datapath::{self, AttachMode, Attachment, Hook, PinLayout};
use weir_bpf::stats::{self, Inspection};

/// An attachment as it stands now.
#[derive(Debug, Clone)]
pub struct AttachmentState {
    pub attachment: Attachment,
    pub attached: bool,
    pub link_id: u32,
    /// The program the link runs now (0 for clsact).
    pub program_id: u32,
}

/// Everything the agent reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub inspection: Inspection,
    pub attachments: Vec<AttachmentState>,
    /// (direction, class or reason name, counter)
    pub traffic: Vec<(&'static str, &'static str, Counter)>,
    /// Why health is degraded; empty when healthy.
    pub problems: Vec<String>,
}

pub fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::XdpIngress => "xdp-ingress",
        Hook::TcIngress => "tc-ingress",
        Hook::TcEgress => "tc-egress",
    }
}

pub fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::XdpNative => "xdp-native",
        AttachMode::XdpGeneric => "xdp-generic",
        AttachMode::Tcx => "tcx",
        AttachMode::Clsact => "clsact",
    }
}

/// Reads the pins. Blocking: call from a blocking task.
pub fn take(pins: &PinLayout, attachments: &[Attachment]) -> Snapshot {
    let mut problems = Vec::new();
    let inspection = stats::inspect(pins).unwrap_or_else(|err| {
        problems.push(format!("inspecting pins: {err}"));
        Inspection::default()
    });
    let attachments = attachments
        .iter()
        .map(|a| {
            let link = a.link_pin.as_ref().and_then(|pin| {
                let name = pin.file_name()?.to_string_lossy().into_owned();
                inspection.links.iter().find(|l| l.pin == name)
            });
            let (attached, link_id, program_id) = match (a.mode, link) {
                (AttachMode::Clsact, _) => (true, 0, 0),
                (_, Some(link)) => (link.ifindex != 0, link.id, link.program_id),
                (_, None) => (false, 0, 0),
            };
            if !attached {
                problems.push(format!("{} on {} is not attached (link missing or defunct)", a.program, a.interface));
            }
            AttachmentState { attachment: a.clone(), attached, link_id, program_id }
        })
        .collect();
    let mut traffic = Vec::new();
    match datapath::read_traffic(pins) {
        Ok(counters) => {
            for (direction, values, registry) in [
                ("ingress", &counters.ingress, traffic_class::ALL),
                ("egress", &counters.egress, traffic_class::ALL),
                ("invalid", &counters.invalid, drop_reason::ALL),
            ] {
                for (code, name, _) in registry {
                    if direction == "invalid" && *code == drop_reason::NONE {
                        continue;
                    }
                    if let Some(counter) = values.get(*code as usize) {
                        traffic.push((direction, *name, *counter));
                    }
                }
            }
        }
        Err(err) => problems.push(format!("reading traffic counters: {err}")),
    }
    Snapshot { inspection, attachments, traffic, problems }
}
