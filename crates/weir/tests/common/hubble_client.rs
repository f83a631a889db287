//! A Hubble client for the tests: Python's grpcio, its stubs generated at
//! test time from proto/hubble/ (Debian's python3-grpc-tools), so what it
//! sees is what a client generated from Hubble's own files sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Debian's Python, which has python3-grpcio and python3-grpc-tools (a
/// python3 earlier in PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// The client: `status TARGET` (ServerStatus, GetNodes and GetNamespaces), `flows TARGET REQUEST_JSON TIMEOUT_S` or
/// `peers TARGET TIMEOUT_S` (one JSON line per response; an error as
/// {"error": CODE, "details": ...}).
const CLIENT: &str = r#"
import json, sys
import grpc
from google.protobuf import json_format
from observer import observer_pb2, observer_pb2_grpc
from peer import peer_pb2, peer_pb2_grpc

mode, target = sys.argv[1], sys.argv[2]
stub = observer_pb2_grpc.ObserverStub(grpc.insecure_channel(target))
out = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
try:
    if mode == "peers":
        peers = peer_pb2_grpc.PeerStub(grpc.insecure_channel(target))
        for change in peers.Notify(peer_pb2.NotifyRequest(), timeout=float(sys.argv[3])):
            print(json.dumps(out(change)), flush=True)
    elif mode == "status":
        print(json.dumps({"status": out(stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=20)),
                          "nodes": out(stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=20)),
                          "namespaces": out(stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=20))}),
              flush=True)
    else:
        request = json_format.ParseDict(json.loads(sys.argv[3]), observer_pb2.GetFlowsRequest())
        for response in stub.GetFlows(request, timeout=float(sys.argv[4])):
            print(json.dumps(out(response)), flush=True)
except grpc.RpcError as e:
    if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
        print(json.dumps({"error": e.code().name, "details": e.details()}), flush=True)
"#;

/// Generates the Python client from Weir's Hubble protos into a fresh directory.
pub fn generate_client(dir: &Path) {
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/hubble");
    std::fs::create_dir_all(dir).expect("client dir");
    let status = Command::new(PYTHON)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&protos)
        .arg("-I/usr/include")
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .args(["observer/observer.proto", "flow/flow.proto", "relay/relay.proto", "peer/peer.proto"])
        .current_dir(&protos)
        .status()
        .expect("python3 -m grpc_tools.protoc (Debian's python3-grpc-tools; scripts/setup.sh installs it)");
    assert!(status.success(), "generating the Python client");
    std::fs::write(dir.join("client.py"), CLIENT).expect("client.py");
}

pub struct Client {
    pub dir: PathBuf,
    /// Runs the client inside this network namespace (for TCP targets).
    pub netns: Option<String>,
}

impl Client {
    pub fn command(&self, args: &[&str]) -> Command {
        let script = self.dir.join("client.py");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, PYTHON]);
                c
            }
            None => Command::new(PYTHON),
        };
        command.arg(script).args(args).env("PYTHONPATH", &self.dir);
        command
    }

    pub fn lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.command(args).output().expect("python3");
        assert!(out.status.success(), "client {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn flows(&self, target: &str, request: Value) -> Vec<Value> {
        self.lines(&["flows", target, &request.to_string(), "30"])
    }

    pub fn status(&self, target: &str) -> Value {
        self.lines(&["status", target]).pop().expect("a status line")
    }
}

pub fn flows_of(responses: &[Value]) -> Vec<&Value> {
    responses.iter().filter_map(|r| r.get("flow")).collect()
}
