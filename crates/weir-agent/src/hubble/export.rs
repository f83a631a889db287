//! Flows written to a file as Hubble's exporter writes them: one
//! GetFlowsResponse per line in Hubble's JSON, through an allowlist and a
//! denylist of FlowFilters, the file rotated by size with a bounded number
//! of backups (Cilium's `--hubble-export-file-*` options). Events the
//! exporter fell behind on are counted (the agent's slow-stream losses) and
//! written as a lost-events line, so a reader of the file knows.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast::error::TryRecvError;
use weir_proto::flow::{self, FlowFilter};

use crate::netpolicy::FlowShared;

/// What `--hubble-export-*` asked for.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub path: PathBuf,
    /// Rotate when the file would pass this size.
    pub max_size_bytes: u64,
    /// Rotated files kept, newest first; older ones are deleted.
    pub max_backups: usize,
    pub allow: Vec<FlowFilter>,
    pub deny: Vec<FlowFilter>,
}

/// A file that rotates by size: `flows.log` becomes
/// `flows-2026-12-06T04-12-37.496.log` (lumberjack's naming, which Cilium's
/// exporter uses).
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_backups: usize,
    file: File,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_size: u64, max_backups: usize) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { path: path.to_path_buf(), max_size: max_size.max(1), max_backups, file, size })
    }

    /// Writes one line (a whole line per write, so readers never see half).
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let bytes = line.len() as u64 + 1;
        if self.size > 0 && self.size + bytes > self.max_size {
            self.rotate()?;
        }
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        self.file.write_all(&buffer)?;
        self.size += bytes;
        Ok(())
    }

    fn backup_name(&self, unix_ns: u64) -> PathBuf {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let ext = self.path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let t = super::flows::prost_timestamp(unix_ns);
        // 2026-12-06T04:12:37.496Z → 2026-12-06T04-12-37.496
        let rfc = super::json::timestamp(&prost_types::Timestamp { nanos: t.nanos / 1_000_000 * 1_000_000, ..t });
        let stamp = rfc.trim_end_matches('Z').replace(':', "-");
        let stamp = if stamp.contains('.') { stamp } else { format!("{stamp}.000") };
        self.path.with_file_name(format!("{stem}-{stamp}{ext}"))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut backup = self.backup_name(now);
        // Two rotations within a millisecond: the next free name.
        let mut bump = 1;
        while backup.exists() {
            backup = self.backup_name(now + bump * 1_000_000);
            bump += 1;
        }
        std::fs::rename(&self.path, &backup)?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        self.prune()
    }

    /// Deletes the oldest backups beyond `max_backups`.
    fn prune(&self) -> std::io::Result<()> {
        let stem = self.path.file_stem().map(|s| format!("{}-", s.to_string_lossy())).unwrap_or_default();
        let ext = self.path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut backups: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| n.starts_with(&stem) && n.ends_with(&ext))
                    && *p != self.path
            })
            .collect();
        // The names sort by time.
        backups.sort();
        while backups.len() > self.max_backups {
            std::fs::remove_file(backups.remove(0))?;
        }
        Ok(())
    }
}

/// The FlowFilter fields that are lists of strings, by their JSON names.
fn string_list<'a>(filter: &'a mut FlowFilter, name: &str) -> Option<&'a mut Vec<String>> {
    Some(match name {
        "uuid" => &mut filter.uuid,
        "source_ip" | "sourceIp" => &mut filter.source_ip,
        "source_pod" | "sourcePod" => &mut filter.source_pod,
        "source_fqdn" | "sourceFqdn" => &mut filter.source_fqdn,
        "source_label" | "sourceLabel" => &mut filter.source_label,
        "source_service" | "sourceService" => &mut filter.source_service,
        "destination_ip" | "destinationIp" => &mut filter.destination_ip,
        "destination_pod" | "destinationPod" => &mut filter.destination_pod,
        "destination_fqdn" | "destinationFqdn" => &mut filter.destination_fqdn,
        "destination_label" | "destinationLabel" => &mut filter.destination_label,
        "destination_service" | "destinationService" => &mut filter.destination_service,
        "http_status_code" | "httpStatusCode" => &mut filter.http_status_code,
        "protocol" => &mut filter.protocol,
        "source_port" | "sourcePort" => &mut filter.source_port,
        "destination_port" | "destinationPort" => &mut filter.destination_port,
        "dns_query" | "dnsQuery" => &mut filter.dns_query,
        "http_method" | "httpMethod" => &mut filter.http_method,
        "http_path" | "httpPath" => &mut filter.http_path,
        "node_name" | "nodeName" => &mut filter.node_name,
        "trace_id" | "traceId" => &mut filter.trace_id,
        _ => return None,
    })
}

fn strings(key: &str, value: &Value) -> Result<Vec<String>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("{key}: a list is expected"))?
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("{key}: {other} is not a string")),
        })
        .collect()
}

fn enums(key: &str, value: &Value, from_name: fn(&str) -> Option<i32>) -> Result<Vec<i32>, String> {
    strings(key, value)?
        .into_iter()
        .map(|v| {
            v.parse::<i32>().ok().or_else(|| from_name(&v)).ok_or_else(|| format!("{key}: {v:?} is not a value of it"))
        })
        .collect()
}

/// One FlowFilter from protobuf's JSON (proto or camelCase field names).
fn filter_from_json(value: &Value) -> Result<FlowFilter, String> {
    let object = value.as_object().ok_or_else(|| format!("{value} is not a FlowFilter object"))?;
    let mut filter = FlowFilter::default();
    for (key, value) in object {
        if let Some(list) = string_list(&mut filter, key) {
            list.extend(strings(key, value)?);
            continue;
        }
        match key.as_str() {
            "verdict" => filter.verdict = enums(key, value, |n| flow::Verdict::from_str_name(n).map(|v| v as i32))?,
            "traffic_direction" | "trafficDirection" => {
                filter.traffic_direction =
                    enums(key, value, |n| flow::TrafficDirection::from_str_name(n).map(|v| v as i32))?
            }
            "ip_version" | "ipVersion" => {
                filter.ip_version = enums(key, value, |n| flow::IpVersion::from_str_name(n).map(|v| v as i32))?
            }
            "source_identity" | "sourceIdentity" | "destination_identity" | "destinationIdentity" => {
                let ids = strings(key, value)?
                    .into_iter()
                    .map(|v| v.parse::<u32>().map_err(|_| format!("{key}: {v:?} is not an identity")))
                    .collect::<Result<Vec<_>, _>>()?;
                if key.starts_with("source") {
                    filter.source_identity = ids;
                } else {
                    filter.destination_identity = ids;
                }
            }
            "tcp_flags" | "tcpFlags" => {
                for flags in value.as_array().ok_or_else(|| format!("{key}: a list is expected"))? {
                    let on = |name: &str| flags.get(name).and_then(Value::as_bool).unwrap_or(false);
                    filter.tcp_flags.push(flow::TcpFlags {
                        fin: on("FIN"),
                        syn: on("SYN"),
                        rst: on("RST"),
                        psh: on("PSH"),
                        ack: on("ACK"),
                        urg: on("URG"),
                        ece: on("ECE"),
                        cwr: on("CWR"),
                        ns: on("NS"),
                    });
                }
            }
            "reply" => {
                filter.reply = value
                    .as_array()
                    .ok_or_else(|| format!("{key}: a list is expected"))?
                    .iter()
                    .map(|v| v.as_bool().ok_or_else(|| format!("{key}: {v} is not true or false")))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("{other:?} is not a field of Hubble's FlowFilter (or not one Weir reads)")),
        }
    }
    Ok(filter)
}

/// `--hubble-export-allowlist`/`-denylist`: FlowFilters in protobuf's JSON,
/// one object, several separated by commas or whitespace, or a JSON list.
pub fn parse_filters(text: &str) -> Result<Vec<FlowFilter>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Value> = if text.starts_with('[') {
        serde_json::from_str::<Vec<Value>>(text).map_err(|e| format!("{text:?} is not JSON FlowFilters: {e}"))?
    } else {
        let streamed: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(text).into_iter::<Value>().collect();
        match streamed {
            Ok(values) => values,
            // Objects separated by commas, as a flag list joins them.
            Err(e) => serde_json::from_str::<Vec<Value>>(&format!("[{text}]"))
                .map_err(|_| format!("{text:?} is not JSON FlowFilters: {e}"))?,
        }
    };
    values.iter().map(filter_from_json).collect()
}

/// Writes every flow `shared` reads that the filters let through, until the
/// flow stream closes. Runs on its own thread: the file is written with
/// blocking calls.
pub fn run(shared: Arc<FlowShared>, config: ExportConfig, filters: super::filter::Filters) -> std::io::Result<()> {
    let mut file = RotatingFile::open(&config.path, config.max_size_bytes, config.max_backups)?;
    let node = shared.flow_node().to_string();
    let mut flows = shared.follow();
    std::thread::Builder::new().name("hubble-export".into()).spawn(move || loop {
        let next = match flows.try_recv() {
            Err(TryRecvError::Empty) => flows.blocking_recv().map_err(|e| match e {
                tokio::sync::broadcast::error::RecvError::Closed => TryRecvError::Closed,
                tokio::sync::broadcast::error::RecvError::Lagged(n) => TryRecvError::Lagged(n),
            }),
            other => other,
        };
        let line = match next {
            Ok((_, (event, naming))) => {
                let f = shared.hubble_flow(&event, &naming);
                if !filters.wants(&f) {
                    continue;
                }
                super::json::response(&f).to_string()
            }
            Err(TryRecvError::Lagged(missed)) => {
                shared.slow_stream.fetch_add(missed, std::sync::atomic::Ordering::Relaxed);
                serde_json::json!({
                    "lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": missed.to_string()},
                    "node_name": node,
                })
                .to_string()
            }
            Err(TryRecvError::Closed | TryRecvError::Empty) => return,
        };
        if let Err(error) = file.write_line(&line) {
            tracing::warn!(path = %config.path.display(), %error, "the flow export file cannot be written");
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_read_from_protobufs_json() {
        let filters = parse_filters(r#"{"verdict":["DROPPED"],"source_pod":["backend/"]} {"destinationPort":["53"]}"#)
            .expect("parses");
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].verdict, vec![flow::Verdict::Dropped as i32]);
        assert_eq!(filters[0].source_pod, vec!["backend/"]);
        assert_eq!(filters[1].destination_port, vec!["53"]);
        let listed = parse_filters(r#"[{"tcp_flags":[{"SYN":true}]}, {"source_identity":[258]}]"#).expect("a list");
        assert!(listed[0].tcp_flags[0].syn && !listed[0].tcp_flags[0].ack);
        assert_eq!(listed[1].source_identity, vec![258]);
        let commas = parse_filters(r#"{"verdict":["FORWARDED"]},{"verdict":["DROPPED"]}"#).expect("commas");
        assert_eq!(commas.len(), 2);
        assert!(parse_filters("").expect("empty").is_empty());
        for (bad, says) in [
            (r#"{"verdict":["MAYBE"]}"#, "\"MAYBE\" is not a value"),
            (r#"{"colour":["red"]}"#, "\"colour\" is not a field"),
            (r#"{"source_ip":"10.0.0.1"}"#, "a list is expected"),
            ("{", "EOF"),
        ] {
            let err = parse_filters(bad).expect_err("refused");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_its_newest_backups() {
        let dir = std::env::temp_dir().join(format!("weir-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("flows.log");
        let mut file = RotatingFile::open(&path, 100, 2).expect("opens");
        for i in 0..20 {
            file.write_line(&format!("{{\"line\":{},\"padding\":\"xxxxxxxxxxxx\"}}", 10 + i)).expect("writes");
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "the file and two backups: {names:?}");
        assert!(names.iter().filter(|n| *n != "flows.log").all(|n| n.starts_with("flows-") && n.ends_with(".log")));
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(current.len() <= 100 && current.ends_with("\"line\":29,\"padding\":\"xxxxxxxxxxxx\"}\n"), "{current}");
        for name in names {
            let text = std::fs::read_to_string(dir.join(&name)).expect("read");
            assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "whole lines in {name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
