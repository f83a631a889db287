//! Services and EndpointSlices from the store, to the socket load balancer.

use tonic::{Request, Status};
use weir_proto::agent::v1::{self as pb, services_server::Services as _};
use weir_store::{Kind, ObjectRef, Stored};

use super::sink::{gone_is_fine, stream, Sink};
use crate::service::ServicesApi;

#[derive(Debug)]
pub struct Services(pub ServicesApi);

#[tonic::async_trait]
impl Sink for Services {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Service, Kind::EndpointSlice]
    }

    async fn put(&self, objects: &[(ObjectRef, Stored)]) -> Result<(), Status> {
        let request = pb::ServiceApplyRequest { yaml: stream(objects) };
        self.0.service_apply(Request::new(request)).await.map(drop)
    }

    async fn remove(&self, object: &ObjectRef) -> Result<(), Status> {
        let request = pb::ServiceDeleteRequest {
            kind: object.kind.name().to_string(),
            namespace: object.namespace.clone().unwrap_or_default(),
            name: object.name.clone(),
        };
        gone_is_fine(self.0.service_delete(Request::new(request)).await)
    }
}
