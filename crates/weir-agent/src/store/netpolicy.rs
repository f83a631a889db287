//! NetworkPolicies and CiliumNetworkPolicies from the store, to network policy.

use tonic::{Request, Status};
use weir_proto::agent::v1::{self as pb, network_policy_server::NetworkPolicy as _};
use weir_store::{Kind, ObjectRef, Stored};

use super::sink::{gone_is_fine, stream, Sink};
use crate::service::NetworkPolicyApi;

#[derive(Debug)]
pub struct NetPolicies(pub NetworkPolicyApi);

#[tonic::async_trait]
impl Sink for NetPolicies {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::NetworkPolicy, Kind::CiliumNetworkPolicy]
    }

    async fn put(&self, objects: &[(ObjectRef, Stored)]) -> Result<(), Status> {
        let request = pb::PolicyApplyRequest { yaml: stream(objects) };
        self.0.policy_apply(Request::new(request)).await.map(drop)
    }

    async fn remove(&self, object: &ObjectRef) -> Result<(), Status> {
        let name = pb::PolicyName {
            kind: object.kind.name().to_string(),
            namespace: object.namespace.clone().unwrap_or_default(),
            name: object.name.clone(),
        };
        gone_is_fine(self.0.policy_delete(Request::new(pb::PolicyDeleteRequest { names: vec![name] })).await)
    }
}
