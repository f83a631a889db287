//! A containerd container's labels, read from containerd's metadata by the
//! CNI plugin during ADD: containerd passes none to CNI plugins. `ctr run
//! --cni` sets the network up from the ctr process, so containerd holds
//! nothing while the plugin asks it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use weir_cni::error::TRY_AGAIN_LATER;
use weir_cni::CniError;
use weir_proto::containerd::containers::v1 as containers;

/// containerd's socket unless `CONTAINERD_ADDRESS` (ctr's own variable,
/// which the plugin inherits from ctr) names another.
const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// How long containerd may take to answer.
const WAIT: Duration = Duration::from_secs(5);

/// The (namespace, id) pairs a CNI container id may stand for: ctr passes
/// `NAMESPACE-ID`, and either part may hold a '-'. An id with none (a CRI
/// sandbox's, podman's) is no ctr container.
fn candidates(container_id: &str) -> Vec<(&str, &str)> {
    container_id
        .match_indices('-')
        .map(|(at, _)| (&container_id[..at], &container_id[at + 1..]))
        .filter(|(namespace, id)| !namespace.is_empty() && !id.is_empty())
        .collect()
}

fn socket() -> PathBuf {
    std::env::var_os("CONTAINERD_ADDRESS")
        .filter(|a| !a.is_empty())
        .map_or_else(|| DEFAULT_SOCKET.into(), PathBuf::from)
}

/// The labels containerd has for the container `container_id` names (empty
/// when it names none containerd has, or there is no containerd).
pub fn labels(container_id: &str) -> Result<BTreeMap<String, String>, CniError> {
    let candidates = candidates(container_id);
    let socket = socket();
    if candidates.is_empty() || !socket.exists() {
        return Ok(BTreeMap::new());
    }
    let failed = |why: String| {
        CniError::new(
            TRY_AGAIN_LATER,
            format!("reading {container_id}'s labels from containerd at {}", socket.display()),
        )
        .with_details(why)
    };
    let runtime = super::client::runtime().map_err(|e| failed(format!("{e:#}")))?;
    runtime.block_on(async {
        let ask = async {
            let channel = weir_agent::client::channel(socket.clone()).await.map_err(|e| failed(format!("{e:#}")))?;
            let mut client = containers::containers_client::ContainersClient::new(channel);
            for (namespace, id) in candidates {
                let Ok(header) = MetadataValue::try_from(namespace) else { continue };
                let mut request = tonic::Request::new(containers::GetContainerRequest { id: id.to_string() });
                request.metadata_mut().insert("containerd-namespace", header);
                match client.get(request).await {
                    Ok(found) => {
                        let labels = found.into_inner().container.map(|c| c.labels).unwrap_or_default();
                        return Ok(labels.into_iter().filter(|(k, v)| weir_spec::kubernetes_label(k, v)).collect());
                    }
                    Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {}
                    Err(status) => return Err(failed(status.message().to_string())),
                }
            }
            Ok(BTreeMap::new())
        };
        tokio::time::timeout(WAIT, ask).await.map_err(|_| failed(format!("no answer within {}s", WAIT.as_secs())))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_container_ids_are_split_at_every_dash() {
        assert_eq!(candidates("default-web"), [("default", "web")]);
        assert_eq!(candidates("my-ns-web-1"), [("my", "ns-web-1"), ("my-ns", "web-1"), ("my-ns-web", "1")]);
        assert!(candidates("0123456789abcdef").is_empty(), "podman's and CRI's ids name no ctr container");
        assert!(candidates("-x").is_empty() && candidates("x-").is_empty());
    }
}
