//! `weir cni` (also `weir` run under the name `weir-cni`): the CNI plugin.
//! It speaks only the CNI protocol: environment and stdin in, a result or
//! an error object on stdout, nonzero exit on error.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use weir_cni::error::{AGENT_REFUSED, TRY_AGAIN_LATER};
use weir_cni::handoff::{Attached, Endpoint, Registered};
use weir_cni::AgentLink;
use weir_proto::agent::v1 as pb;

use super::client;

use weir_cni::config;
use weir_cni::plugin::LATEST_VERSION;
use weir_cni::{CniError, Env};

/// The name runtimes call the plugin by (the config's `type`).
pub const PLUGIN_NAME: &str = config::PLUGIN_TYPE;

/// Runs one CNI invocation from this process's environment and stdin.
pub fn run() -> ExitCode {
    let mut stdin = Vec::new();
    let result = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| {
            CniError::new(weir_cni::error::IO_FAILURE, "reading the network config from stdin").with_details(e)
        })
        .and_then(|_| weir_cni::run(&Env::from_process(), &stdin, &GrpcAgent));
    let mut out = std::io::stdout().lock();
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => {
            // A runtime that hung up cannot be told anything more.
            let _ = writeln!(out, "{value}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let version = config::version_of(&stdin)
                .filter(|v| config::supports(v))
                .unwrap_or_else(|| LATEST_VERSION.to_string());
            let _ = writeln!(out, "{}", err.to_json(&version));
            eprintln!("weir-cni: {err}");
            ExitCode::FAILURE
        }
    }
}

/// How long ADD and DEL wait for an agent that is not answering (starting,
/// or restarting) before answering "try again later".
const AGENT_WAIT: Duration = Duration::from_secs(30);

/// How long a request the agent took may run (installing an endpoint
/// attaches the datapath to its veth).
const CALL_WAIT: Duration = Duration::from_secs(30);

/// The host agent over its gRPC socket.
struct GrpcAgent;

fn try_again(socket: &Path, why: impl std::fmt::Display) -> CniError {
    CniError::new(
        TRY_AGAIN_LATER,
        format!("the Weir agent at {} did not answer within {}s", socket.display(), AGENT_WAIT.as_secs()),
    )
    .with_details(why)
}

/// Runs `call` against the agent, connecting until it answers or
/// [`AGENT_WAIT`] has passed: a socket missing or refusing is an agent
/// (re)starting. An answer that is an error is the agent refusing.
fn with_agent<C: client::ServiceClient, T>(
    socket: &Path,
    call: impl AsyncFnOnce(&mut C) -> Result<T, tonic::Status>,
) -> Result<T, CniError> {
    let runtime = client::runtime()
        .map_err(|e| CniError::new(weir_cni::error::IO_FAILURE, "starting the agent client").with_details(e))?;
    runtime.block_on(async {
        let deadline = Instant::now() + AGENT_WAIT;
        let mut client = loop {
            match client::connect::<C>(socket.to_path_buf()).await {
                Ok(client) => break client,
                Err(e) if Instant::now() >= deadline => return Err(try_again(socket, format!("{e:#}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        match tokio::time::timeout(CALL_WAIT, call(&mut client)).await {
            Err(_) => Err(try_again(socket, format!("the request took longer than {}s", CALL_WAIT.as_secs()))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => Err(try_again(socket, status.message())),
            Ok(Err(status)) => Err(CniError::new(
                AGENT_REFUSED,
                format!("the Weir agent at {} refused the endpoint: {}", socket.display(), status.message()),
            )),
            Ok(Ok(value)) => Ok(value),
        }
    })
}

impl AgentLink for GrpcAgent {
    fn add(&self, socket: &Path, endpoint: &Endpoint) -> Result<(), CniError> {
        // containerd's labels first: those the runtime passed win.
        let mut labels = super::containerd::labels(&endpoint.container_id)?;
        labels.extend(endpoint.labels.clone());
        let request = pb::EndpointAddRequest {
            host_interface: endpoint.host_interface.clone(),
            namespace: endpoint.namespace.clone(),
            name: endpoint.name.clone(),
            labels: labels.into_iter().collect(),
            ip: endpoint.ip.to_string(),
            ipv6: endpoint.ip6.map(|ip| ip.to_string()).unwrap_or_default(),
            container_mac: endpoint.container_mac.clone(),
            netns: endpoint.netns.clone(),
            container_id: endpoint.container_id.clone(),
            ifname: endpoint.ifname.clone(),
            port_mappings: endpoint
                .port_mappings
                .iter()
                .map(|m| pb::PortMapping {
                    host_port: m.host_port.into(),
                    container_port: m.container_port.into(),
                    protocol: m.protocol.clone(),
                    host_ip: m.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                })
                .collect(),
            chained: endpoint.chained,
            network: endpoint.network.clone(),
        };
        with_agent(socket, async move |client: &mut client::Endpoints| client.endpoint_add(request).await.map(|_| ()))
    }

    fn delete(&self, socket: &Path, host_interface: &str) -> Result<(), CniError> {
        let request = pb::EndpointDeleteRequest { host_interface: host_interface.to_string() };
        with_agent(socket, async move |client: &mut client::Endpoints| {
            client.endpoint_delete(request).await.map(|_| ())
        })
    }

    fn list(&self, socket: &Path) -> Result<Vec<Attached>, CniError> {
        let got = with_agent(socket, async move |client: &mut client::Endpoints| {
            client.endpoint_list(pb::EndpointListRequest {}).await
        })?
        .into_inner();
        Ok(got
            .endpoints
            .into_iter()
            .map(|e| Attached {
                host_interface: e.host_interface,
                network: e.network,
                container_id: e.container_id,
                ifname: e.ifname,
                chained: e.chained,
            })
            .collect())
    }

    fn get(&self, socket: &Path, host_interface: &str) -> Result<Option<Registered>, CniError> {
        let request = pb::EndpointGetRequest { host_interface: host_interface.to_string() };
        let got = with_agent(socket, async move |client: &mut client::Endpoints| client.endpoint_get(request).await)?
            .into_inner();
        Ok(got.found.then_some(Registered { namespace: got.namespace, name: got.name, ip: got.ip }))
    }
}
