//! `weir apply -f` and `weir delete -f`: Kubernetes-shaped documents, sent to
//! every agent they concern. Services and EndpointSlices go to the socket
//! load balancer, FilterPolicies to the packet filter.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weir_agent::client::connect;
use weir_filter::FilterPolicy;
use weir_proto::agent::v1 as pb;

use super::target::AgentTarget;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML files of Kubernetes `Service` (v1), `EndpointSlice`
    /// (discovery.k8s.io/v1) and Weir `FilterPolicy` documents, `---`
    /// separated; `-` reads standard input. Every document is checked before
    /// any agent is touched, and each agent applies them all or none.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: AgentTarget,
}

fn read(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// The documents of all files, split by where they go.
struct Documents {
    /// Services and EndpointSlices, as one YAML stream.
    services: String,
    service_objects: Vec<weir_service::Object>,
    filters: Vec<FilterPolicy>,
}

fn load(files: &[PathBuf]) -> anyhow::Result<Documents> {
    let mut docs = Documents { services: String::new(), service_objects: Vec::new(), filters: Vec::new() };
    for file in files {
        let text = read(file)?;
        let split = weir_spec::split_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for doc in split {
            let at = |e: weir_spec::SpecError| anyhow::anyhow!("{}: {}", file.display(), doc.locate(e));
            match doc.kind.as_str() {
                "Service" | "EndpointSlice" => {
                    docs.service_objects
                        .push(weir_service::table::parse_object(&doc.api_version, &doc.kind, &doc.text).map_err(at)?);
                    docs.services.push_str("---\n");
                    docs.services.push_str(&doc.text);
                }
                "FilterPolicy" => docs.filters.push(FilterPolicy::parse(&doc.text).map_err(at)?),
                other => anyhow::bail!(
                    "{}: document {}: kind {other:?} is not one weir applies (Service, EndpointSlice, FilterPolicy)",
                    file.display(),
                    doc.index
                ),
            }
        }
    }
    Ok(docs)
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let docs = load(&args.files)?;
    // The same consistency checks the agents make, before any of them is asked.
    weir_service::ClusterState::default().apply(docs.service_objects.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let agents = args.target.agents()?;
    let rt = super::filter::runtime()?;
    if !docs.services.is_empty() {
        for (node, socket) in &agents {
            let reply = rt
                .block_on(async {
                    let mut client = connect(socket.clone()).await?;
                    anyhow::Ok(
                        client
                            .service_apply(pb::ServiceApplyRequest { yaml: docs.services.clone() })
                            .await?
                            .into_inner(),
                    )
                })
                .map_err(|e| anyhow::anyhow!("{node}: {}", super::status_message(&e)))?;
            let mut what = Vec::new();
            for (verb, list) in
                [("created", &reply.created), ("configured", &reply.configured), ("unchanged", &reply.unchanged)]
            {
                if !list.is_empty() {
                    what.push(format!("{verb} {}", list.join(", ")));
                }
            }
            println!(
                "{node}: {} ({} map writes in {:.3} ms; {:.3} ms in the agent)",
                what.join("; "),
                reply.map_writes,
                reply.apply_ns as f64 / 1e6,
                reply.total_ns as f64 / 1e6
            );
        }
    }
    for policy in docs.filters {
        let request = pb::FilterUpdateRequest {
            mode: pb::filter_update_request::Mode::ReplaceOrigin.into(),
            rules_json: serde_json::to_string(&policy.spec.rules)?,
            delete: Vec::new(),
            origin: format!("FilterPolicy/{}", policy.metadata.name),
        };
        rt.block_on(super::filter::update_all(&args.target, request))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// YAML files naming the Services and EndpointSlices to remove (by kind,
    /// namespace and name), as given to `weir apply`.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: AgentTarget,
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let docs = load(&args.files)?;
    if !docs.filters.is_empty() {
        anyhow::bail!("weir delete removes Services and EndpointSlices; remove filter rules with `weir filter del`");
    }
    let rt = super::filter::runtime()?;
    for (node, socket) in args.target.agents()? {
        for object in &docs.service_objects {
            let key = object.key();
            let request = pb::ServiceDeleteRequest {
                kind: object.kind().to_string(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            let result = rt.block_on(async {
                let mut client = connect(socket.clone()).await?;
                anyhow::Ok(client.service_delete(request).await?.into_inner())
            });
            match result {
                Ok(reply) => println!("{node}: deleted {} ({} map writes)", reply.deleted.join(", "), reply.map_writes),
                Err(e) => println!("{node}: {}", super::status_message(&e)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
