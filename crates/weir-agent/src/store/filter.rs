//! FilterPolicies from the store, to the packet filter: each policy's rules
//! are the rules of origin `FilterPolicy/<name>`, replaced whole.

use tonic::{Request, Status};
use weir_filter::FilterPolicy;
use weir_proto::agent::v1::{self as pb, filter_server::Filter as _};
use weir_store::{Kind, ObjectRef, Stored};

use super::sink::Sink;
use crate::service::FilterApi;

#[derive(Debug)]
pub struct FilterPolicies(pub FilterApi);

impl FilterPolicies {
    async fn replace(&self, name: &str, rules_json: String) -> Result<(), Status> {
        let request = pb::FilterUpdateRequest {
            mode: pb::filter_update_request::Mode::ReplaceOrigin.into(),
            rules_json,
            delete: Vec::new(),
            origin: format!("FilterPolicy/{name}"),
        };
        self.0.filter_update(Request::new(request)).await.map(drop)
    }
}

#[tonic::async_trait]
impl Sink for FilterPolicies {
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::FilterPolicy]
    }

    /// One origin per policy: each is replaced on its own.
    async fn put(&self, objects: &[(ObjectRef, Stored)]) -> Result<(), Status> {
        for (object, stored) in objects {
            let policy =
                FilterPolicy::parse(&stored.yaml).map_err(|e| Status::invalid_argument(format!("{object}: {e}")))?;
            let rules = serde_json::to_string(&policy.spec.rules).map_err(|e| Status::internal(e.to_string()))?;
            self.replace(&object.name, rules).await?;
        }
        Ok(())
    }

    async fn remove(&self, object: &ObjectRef) -> Result<(), Status> {
        self.replace(&object.name, "[]".into()).await
    }
}
