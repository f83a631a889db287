//! `weir probe` checked against independent evidence from the kernel itself.

mod common;

use common::*;

#[test]
fn probe_agrees_with_lockdown_and_the_kprobe_pmu() {
    if !privileged("probe_agrees_with_lockdown_and_the_kprobe_pmu") {
        return;
    }
    let report: serde_json::Value = serde_json::from_str(&weir_ok(&["probe", "-o", "json"])).expect("JSON");
    let available = |name: &str| {
        report["features"]
            .as_array()
            .expect("features")
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("feature {name} probed"))["available"]
            .as_bool()
            .expect("bool")
    };
    // Lockdown (integrity or stronger) forbids fentry and BPF LSM programs.
    let lockdown = report["lockdown"].as_str().unwrap_or("none");
    if lockdown != "none" {
        assert!(!available("fentry"), "lockdown={lockdown} forbids fentry");
        assert!(!available("bpf-lsm"), "lockdown={lockdown} forbids BPF LSM");
    }
    // Without the kprobe PMU and the legacy tracefs interface, kprobes cannot attach.
    let kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let legacy = std::path::Path::new("/sys/kernel/tracing/kprobe_events").exists();
    assert_eq!(available("kprobe"), kprobe_pmu || legacy, "kprobe verdict matches the kernel's kprobe interfaces");
    // What Weir's lab itself relies on must be reported available wherever the lab runs.
    for name in ["xdp-native", "xdp-generic", "tcx", "cgroup-connect4", "tp-btf", "ringbuf", "btf", "bpffs", "cgroup2"]
    {
        assert!(available(name), "{name} should be available here");
    }
    let capabilities = report["capabilities"].as_array().expect("capabilities");
    assert_eq!(capabilities.len(), 9, "one verdict per capability");
    let runtime = capabilities.iter().find(|c| c["capability"] == "runtime-security").expect("runtime-security");
    assert_eq!(runtime["verdict"], if available("bpf-lsm") { "full" } else { "fallback" });
    assert!(weir_host::netns::list_with_prefix("weir.probe.").is_empty(), "the probe removes its scratch namespace");
}
