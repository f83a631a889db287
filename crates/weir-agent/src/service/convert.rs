//! From the agent's modules to gRPC: errors as statuses (the code says
//! whose fault it was), changes and views as response messages.

use super::*;

pub(super) fn filter_status(err: crate::filtering::FilterError) -> Status {
    use crate::filtering::FilterError as E;
    match err {
        E::Spec(e) => Status::invalid_argument(e.to_string()),
        E::Conflict { .. } => Status::failed_precondition(err.to_string()),
        E::NoSuchRule(_) => Status::not_found(err.to_string()),
        E::Bpf(e) => Status::internal(format!("{:#}", DisplayChain(&e))),
        E::State { .. } => Status::internal(err.to_string()),
    }
}

pub(super) fn service_status(err: crate::services::ServiceError) -> Status {
    use crate::services::ServiceError as E;
    match err {
        E::Spec(e) => Status::invalid_argument(e.to_string()),
        E::HostPort { .. } => Status::invalid_argument(err.to_string()),
        E::FrontendTaken { .. } => Status::already_exists(err.to_string()),
        E::NotFound { .. } => Status::not_found(err.to_string()),
        E::Plan(_) => Status::resource_exhausted(err.to_string()),
        other => Status::internal(format!("{}", DisplayChain(&other))),
    }
}

pub(super) fn chaos_status(err: crate::chaos::ChaosError) -> Status {
    use crate::chaos::ChaosError as E;
    match err {
        E::Spec(_) => Status::invalid_argument(err.to_string()),
        E::NotFound(_) => Status::not_found(err.to_string()),
        other => Status::internal(format!("{}", DisplayChain(&other))),
    }
}

pub(super) fn lb_status(err: crate::lb::LbError) -> Status {
    use crate::lb::LbError as E;
    match err {
        E::Spec(_) => Status::invalid_argument(err.to_string()),
        E::NotRunning => Status::failed_precondition(err.to_string()),
        other => Status::internal(format!("{}", DisplayChain(&other))),
    }
}

pub(super) fn runtime_status(err: crate::runtime::RuntimeError) -> Status {
    use crate::runtime::RuntimeError as E;
    match err {
        E::Spec(e) => Status::invalid_argument(e.to_string()),
        E::NotFound(_) => Status::not_found(err.to_string()),
        other => Status::internal(format!("{}", DisplayChain(&other))),
    }
}

pub(super) fn netpolicy_status(err: crate::netpolicy::NetPolicyError) -> Status {
    use crate::netpolicy::NetPolicyError as E;
    match err {
        E::Spec(e) => Status::invalid_argument(e.to_string()),
        E::NotFound(_) => Status::not_found(err.to_string()),
        E::CniEndpoint(crate::cni_endpoints::CniEndpointError::Invalid(why)) => Status::invalid_argument(why),
        other => Status::internal(format!("{}", DisplayChain(&other))),
    }
}

pub(super) fn netpolicy_change(change: crate::netpolicy::Change, revision: u32) -> pb::PolicyChangeResponse {
    pb::PolicyChangeResponse {
        created: change.created,
        configured: change.configured,
        unchanged: change.unchanged,
        deleted: change.deleted,
        revision,
        endpoints_updated: change.endpoints_updated,
        apply_ns: change.apply_ns,
    }
}

pub(super) fn runtime_change(change: crate::runtime::Change) -> pb::RuntimeChangeResponse {
    pb::RuntimeChangeResponse {
        created: change.created,
        configured: change.configured,
        unchanged: change.unchanged,
        deleted: change.deleted,
        kernel_rules: change.installed.map_or(0, |i| i.rules),
        generation: change.installed.map_or(0, |i| i.generation),
        map_writes: change.installed.map_or(0, |i| i.map_writes),
        apply_ns: change.apply_ns,
    }
}

pub(super) fn change_response(outcome: crate::services::Outcome) -> pb::ServiceChangeResponse {
    pb::ServiceChangeResponse {
        created: outcome.report.created,
        configured: outcome.report.configured,
        unchanged: outcome.report.unchanged,
        deleted: outcome.deleted,
        map_writes: outcome.map_writes as u32,
        apply_ns: outcome.apply_ns,
        total_ns: outcome.total_ns,
    }
}

pub(super) fn frontend_message(view: crate::services::FrontendView) -> pb::ServiceFrontend {
    use weir_service::plan::KernelBackendState;
    let fe = &view.frontend;
    pb::ServiceFrontend {
        service: fe.service.to_string(),
        kind: format!("{:?}", fe.kind),
        address: fe.address.to_string(),
        port: u32::from(fe.port),
        protocol: fe.service.protocol.as_str().to_string(),
        service_id: view.service_id,
        algorithm: format!("{:?}", fe.algorithm).to_lowercase(),
        affinity_timeout: fe.affinity_timeout.unwrap_or(0),
        no_backend_errno: u32::from(fe.no_backend_errno),
        health_check: fe.health.describe(),
        source_ranges: fe.source_ranges.iter().map(ToString::to_string).collect(),
        slots: view.slots,
        active: u32::from(view.active),
        connects: view.counters.connects,
        no_backend: view.counters.no_backend,
        backends: view
            .backends
            .into_iter()
            .map(|b| pb::ServiceBackend {
                id: b.id,
                address: b.address.to_string(),
                port: u32::from(b.port),
                state: match b.state {
                    KernelBackendState::Active if b.suspect => "suspect",
                    KernelBackendState::Active => "active",
                    KernelBackendState::Terminating if b.standby => "standby",
                    KernelBackendState::Terminating => "terminating",
                    KernelBackendState::Quarantined => "quarantined",
                }
                .into(),
                connects: b.connects,
                node_name: b.node_name.unwrap_or_default(),
                zone: b.zone.unwrap_or_default(),
                judged_by: b.judged_by.unwrap_or_default(),
                cluster: b.cluster.unwrap_or_default(),
            })
            .collect(),
    }
}

pub(super) fn verdict_name(verdict: u32) -> String {
    weir_bpf::testrun::verdict_name(verdict)
}

pub(super) fn action_name(code: u8) -> &'static str {
    weir_bpf::api::filter_action::ALL
        .iter()
        .find(|(c, _, _)| *c == u32::from(code))
        .map_or("unknown", |(_, name, _)| name)
}
