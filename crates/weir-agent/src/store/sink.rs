//! What a capability offers the store: the kinds it takes, and how it
//! applies and removes them. Each capability's sink is a module of its own,
//! calling the capability through its gRPC service's handlers, so a document
//! from the store is checked and applied exactly as one sent to the agent.

use tonic::Status;
use weir_store::{Kind, ObjectRef, Stored};

/// One capability, as the store sees it.
#[tonic::async_trait]
pub trait Sink: Send + Sync {
    /// The kinds this capability applies.
    fn kinds(&self) -> &'static [Kind];
    /// Applies `objects` (all of this capability's kinds), all or none.
    async fn put(&self, objects: &[(ObjectRef, Stored)]) -> Result<(), Status>;
    /// Removes one object; one the capability does not hold is no error.
    async fn remove(&self, object: &ObjectRef) -> Result<(), Status>;
}

/// The documents' YAML as one stream.
pub fn stream(objects: &[(ObjectRef, Stored)]) -> String {
    objects.iter().map(|(_, stored)| format!("---\n{}\n", stored.yaml.trim_end())).collect()
}

/// A removal the capability answers NotFound to has nothing left to do.
pub fn gone_is_fine<T>(result: Result<T, Status>) -> Result<(), Status> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(status),
    }
}
