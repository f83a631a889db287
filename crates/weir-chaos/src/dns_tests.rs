use super::*;
use std::time::Duration;

fn chaos_mesh(spec: &str) -> String {
    format!("apiVersion: chaos-mesh.org/v1alpha1\nkind: DNSChaos\nmetadata: {{name: api-dns, namespace: shop}}\nspec:\n{spec}")
}

fn weir(spec: &str) -> String {
    format!("apiVersion: chaos.weir.dev/v1alpha1\nkind: DNSChaos\nmetadata: {{name: api-dns, namespace: shop}}\nspec:\n{spec}")
}

const SELECT: &str = "  mode: all\n  selector: {labelSelectors: {app: web}}\n";

fn dns_fault(exp: &Experiment) -> DnsFault {
    match exp.fault {
        Fault::Dns(fault) => fault,
        other => panic!("not a DNS fault: {other:?}"),
    }
}

#[test]
fn chaos_mesh_error_answers_servfail_for_its_patterns() {
    let exp = parse(&chaos_mesh(&format!(
        "  action: error\n  patterns: [api.shop.example, \"github.*\", \"chaos-mes?.org\"]\n{SELECT}  duration: 30s\n"
    )))
    .expect("valid");
    let fault = dns_fault(&exp);
    assert_eq!(fault.answer, DnsAnswer::Rcode(RCODE_SERVFAIL));
    assert_eq!(fault.probability, u32::MAX);
    assert_eq!(exp.duration, Some(Duration::from_secs(30)));
    assert_eq!(exp.selection.selector.namespaces, vec!["shop".to_string()]);
    let p = fault.patterns;
    assert!(p.matches("api.shop.example"));
    assert!(p.matches("API.Shop.Example."), "case and the trailing dot do not matter");
    assert!(!p.matches("web.shop.example"));
    assert!(!p.matches("api.shop.example.org"), "an exact name is exact");
    assert!(p.matches("github.com") && p.matches("github.io.cdn"));
    assert!(!p.matches("gitlab.com"));
    assert!(p.matches("chaos-mesh.org") && p.matches("chaos-mesx.org"));
    assert!(!p.matches("chaos-me.org"), "? is exactly one character");
    assert_eq!(p.texts(), vec!["api.shop.example", "github.*", "chaos-mes?.org"]);
}

#[test]
fn no_patterns_is_every_name() {
    let exp = parse(&chaos_mesh(&format!("  action: error\n{SELECT}"))).expect("valid");
    assert!(dns_fault(&exp).patterns.matches("anything.example"));
    let exp = parse(&chaos_mesh(&format!("  action: error\n  patterns: [\"*\"]\n{SELECT}"))).expect("valid");
    assert!(dns_fault(&exp).patterns.matches("anything.example"));
}

#[test]
fn weirs_own_answers_nxdomain_servfail_or_delays_a_share() {
    let exp = parse(&weir(&format!("  action: nxdomain\n  patterns: [api.shop.example]\n  percent: \"50\"\n{SELECT}")))
        .expect("valid");
    let fault = dns_fault(&exp);
    assert_eq!((fault.answer, fault.probability), (DnsAnswer::Rcode(RCODE_NXDOMAIN), 1 << 31));
    let exp = parse(&weir(&format!("  action: servfail\n{SELECT}"))).expect("valid");
    assert_eq!(dns_fault(&exp).answer, DnsAnswer::Rcode(RCODE_SERVFAIL));
    let exp = parse(&weir(&format!("  action: delay\n  delay: {{latency: 300ms}}\n{SELECT}"))).expect("valid");
    match dns_fault(&exp).answer {
        DnsAnswer::Delay(model) => assert_eq!(model.latency, Duration::from_millis(300)),
        other => panic!("not a delay: {other:?}"),
    }
}

#[test]
fn bad_documents_are_refused_by_path() {
    let field = |doc: String| parse(&doc).expect_err("refused").field;
    assert_eq!(field(chaos_mesh(&format!("  action: random\n{SELECT}"))), "spec.action");
    assert_eq!(field(chaos_mesh(&format!("  action: nxdomain\n{SELECT}"))), "spec.action");
    assert_eq!(
        field(chaos_mesh(&format!("  action: error\n  patterns: [\"*.github.com\"]\n{SELECT}"))),
        "spec.patterns[0]"
    );
    assert_eq!(
        field(chaos_mesh(&format!("  action: error\n  patterns: [ok.example, \"a b\"]\n{SELECT}"))),
        "spec.patterns[1]"
    );
    assert_eq!(field(chaos_mesh(&format!("  action: error\n  patterns: [\"\"]\n{SELECT}"))), "spec.patterns[0]");
    let many: Vec<String> = (0..9).map(|i| format!("n{i}.example")).collect();
    assert_eq!(
        field(chaos_mesh(&format!("  action: error\n  patterns: [{}]\n{SELECT}", many.join(", ")))),
        "spec.patterns"
    );
    let long = "a".repeat(254);
    assert_eq!(field(chaos_mesh(&format!("  action: error\n  patterns: [{long}]\n{SELECT}"))), "spec.patterns[0]");
    assert_eq!(
        field(chaos_mesh(&format!("  action: error\n  containerNames: [app]\n{SELECT}"))),
        "spec.containerNames"
    );
    assert_eq!(field(chaos_mesh(&format!("  action: error\n  remoteCluster: east\n{SELECT}"))), "spec.remoteCluster");
    assert_eq!(field(chaos_mesh(&format!("  action: error\n  percent: \"50\"\n{SELECT}"))), "spec.percent");
    assert_eq!(field(chaos_mesh("  action: error\n  mode: sometimes\n")), "spec.mode");
    assert_eq!(field(weir(&format!("  action: refused\n{SELECT}"))), "spec.action");
    assert_eq!(field(weir(&format!("  action: delay\n{SELECT}"))), "spec.delay");
    assert_eq!(field(weir(&format!("  action: nxdomain\n  delay: {{latency: 1s}}\n{SELECT}"))), "spec.delay");
    assert_eq!(field(weir(&format!("  action: nxdomain\n  percent: \"150\"\n{SELECT}"))), "spec.percent");
    assert_eq!(field(weir(&format!("  action: delay\n  delay: {{latency: 2m}}\n{SELECT}"))), "spec.delay");
    assert_eq!(field(weir(&format!("  action: nxdomain\n  containerNames: [app]\n{SELECT}"))), "spec.containerNames");
    assert_eq!(field(weir(&format!("  action: nxdomain\n{SELECT}  duration: 0s\n"))), "spec.duration");
    let wrong_version = chaos_mesh(&format!("  action: error\n{SELECT}")).replace("chaos-mesh.org", "chaos-mesh.io");
    assert_eq!(field(wrong_version), "apiVersion");
}

#[test]
fn sources_pair_each_address_with_any_server() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v6: Ipv6Addr = "fd00::5".parse().expect("address");
    let pairs = sources(&[(Ipv4Addr::new(10, 0, 0, 5), Some(v6))]);
    assert_eq!(
        pairs,
        vec![
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            (IpAddr::V6(v6), IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        ]
    );
}

#[test]
fn the_documented_examples_are_accepted() {
    let page = include_str!("../../../docs/chaos.md");
    let blocks: Vec<&str> = page
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|block| block.contains("kind: DNSChaos"))
        .collect();
    assert_eq!(blocks.len(), 2, "Chaos Mesh's and Weir's");
    for block in blocks {
        parse(block).unwrap_or_else(|e| panic!("{e}: {block}"));
    }
}
