//! RuntimePolicies from the store, to runtime security.

use tonic::{Request, Status};
use weir_proto::agent::v1::{self as pb, runtime_server::Runtime as _};
use weir_store::{Kind, ObjectRef, Stored};

use super::sink::{gone_is_fine, stream, Sink};
use crate::service::RuntimeApi;

#[derive(Debug)]
pub struct RuntimePolicies(pub RuntimeApi);

#[tonic::async_trait]
impl Sink for RuntimePolicies {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::RuntimePolicy]
    }

    async fn put(&self, objects: &[(ObjectRef, Stored)]) -> Result<(), Status> {
        let request = pb::RuntimeApplyRequest { yaml: stream(objects) };
        self.0.runtime_apply(Request::new(request)).await.map(drop)
    }

    async fn remove(&self, object: &ObjectRef) -> Result<(), Status> {
        let request = pb::RuntimeDeleteRequest { names: vec![object.name.clone()] };
        gone_is_fine(self.0.runtime_delete(Request::new(request)).await)
    }
}
