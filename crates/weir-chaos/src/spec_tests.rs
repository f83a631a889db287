use super::*;

fn doc(spec: &str) -> String {
    format!("apiVersion: chaos-mesh.org/v1alpha1\nkind: NetworkChaos\nmetadata:\n  name: cut\n  namespace: shop\nspec:\n{spec}")
}

const PARTITION: &str = "  action: partition
  mode: all
  selector:
    labelSelectors: {app: web}
  direction: both
  target:
    mode: one
    selector:
      namespaces: [shop]
      labelSelectors: {app: db}
  duration: 30s
";

fn refused(spec: &str) -> SpecError {
    NetworkChaos::parse(&doc(spec)).expect_err("accepted")
}

#[test]
fn a_partition_as_chaos_mesh_writes_it() {
    let exp = NetworkChaos::parse(&doc(PARTITION)).expect("valid");
    assert_eq!(exp.name, "cut");
    assert_eq!(exp.fault, Fault::Partition);
    assert_eq!(exp.direction, Direction::Both);
    assert_eq!(exp.selection.mode, Mode::All);
    // No namespaces: the experiment's own (Chaos Mesh's default).
    assert_eq!(exp.selection.selector.namespaces, vec!["shop".to_string()]);
    assert_eq!(exp.target.mode, Mode::One);
    assert_eq!(exp.duration, Some(Duration::from_secs(30)));
}

#[test]
fn loss_percentages_are_strings_as_chaos_mesh_writes_them() {
    let exp = NetworkChaos::parse(&doc("  action: loss
  mode: fixed-percent
  value: \"50\"
  selector:
    pods: {shop: [web-0, web-1]}
  target:
    mode: fixed
    value: \"2\"
    selector:
      expressionSelectors: [{key: app, operator: In, values: [db]}]
  loss:
    loss: \"25\"
    correlation: \"50\"
"))
    .expect("valid");
    assert_eq!(exp.fault, Fault::Loss { probability: 1 << 30, correlation: 1 << 31 });
    assert_eq!(exp.direction, Direction::To);
    assert_eq!(exp.selection.mode, Mode::FixedPercent(50));
    assert_eq!(exp.target.mode, Mode::Fixed(2));
    // Pods named: no namespace default.
    assert!(exp.selection.selector.namespaces.is_empty());
    assert_eq!(exp.duration, None);
    let all = NetworkChaos::parse(&doc(&PARTITION
        .replace("action: partition", "action: loss")
        .replace("  duration: 30s\n", "  loss: {loss: \"100\"}\n")))
    .expect("valid");
    assert_eq!(all.fault, Fault::Loss { probability: u32::MAX, correlation: 0 });
}

#[test]
fn kubectl_output_with_status_is_accepted() {
    let text = doc(PARTITION).replace("  namespace: shop\n", "  namespace: shop\n  uid: 1f0c\n  generation: 1\n")
        + "status:\n  experiment: {desiredPhase: Run}\n";
    NetworkChaos::parse(&text).expect("valid");
}

#[test]
fn what_weir_cannot_honour_is_refused_by_path() {
    let cases = [
        ("  delay: {latency: 10ms}\n", "spec.delay"),
        ("  netem: {loss: \"10\"}\n", "spec.netem"),
        ("  externalTargets: [example.com]\n", "spec.direction"),
        ("  bandwidth: {rate: 1mbps, limit: 100, buffer: 10}\n", "spec.bandwidth"),
        ("  rate: {rate: 1mbps}\n", "spec.rate"),
        ("  device: eth0\n", "spec.device"),
        ("  remoteCluster: east\n", "spec.remoteCluster"),
        ("  loss: {loss: \"10\"}\n", "spec.loss"),
        ("  corrupt: {corrupt: \"10\"}\n", "spec.corrupt"),
        ("  scheduler: {cron: \"@every 15s\"}\n", "spec.scheduler"),
    ];
    for (extra, path) in cases {
        let e = refused(&format!("{PARTITION}{extra}"));
        assert_eq!(e.field, path, "{extra}: {e}");
    }
    let e = refused(&PARTITION.replace("action: partition", "action: netem"));
    assert_eq!(e.field, "spec.action");
    assert!(e.message.contains("not supported"), "{e}");
    let e = refused(&PARTITION.replace("action: partition", "action: explode"));
    assert_eq!(e.field, "spec.action");
    let e = refused(&PARTITION.replace("    labelSelectors: {app: web}\n", "    nodeSelectors: {zone: a}\n"));
    assert_eq!(e.field, "spec.selector.nodeSelectors");
    let e = refused(&PARTITION.replace("      namespaces: [shop]\n", "      podPhaseSelectors: [Running]\n"));
    assert_eq!(e.field, "spec.target.selector.podPhaseSelectors");
    let e = refused(&PARTITION.replace("    labelSelectors: {app: web}\n", "    labelSelector: {app: web}\n"));
    assert!(e.field.starts_with("spec.selector"), "{e}");
}

#[test]
fn bad_values_are_refused_by_path() {
    let loss = |l: &str| refused(&format!("  action: loss\n  mode: all\n  target: {{mode: all}}\n  loss: {l}\n"));
    assert_eq!(loss("{loss: \"120\"}").field, "spec.loss.loss");
    assert_eq!(loss("{loss: \"lots\"}").field, "spec.loss.loss");
    assert_eq!(loss("{loss: \"10\", correlation: \"-1\"}").field, "spec.loss.correlation");
    assert_eq!(refused("  action: loss\n  mode: all\n  target: {mode: all}\n").field, "spec.loss");
    assert_eq!(refused(&PARTITION.replace("mode: all", "mode: some")).field, "spec.mode");
    assert_eq!(refused(&PARTITION.replace("mode: all", "mode: fixed")).field, "spec.value");
    assert_eq!(refused(&PARTITION.replace("mode: all", "mode: fixed\n  value: \"0\"")).field, "spec.value");
    assert_eq!(refused(&PARTITION.replace("mode: all", "mode: fixed-percent\n  value: \"101\"")).field, "spec.value");
    assert_eq!(refused(&PARTITION.replace("mode: one", "mode: fixed")).field, "spec.target.value");
    assert_eq!(refused(&PARTITION.replace("direction: both", "direction: sideways")).field, "spec.direction");
    assert_eq!(refused(&PARTITION.replace("duration: 30s", "duration: soon")).field, "spec.duration");
    assert_eq!(refused(&PARTITION.replace("duration: 30s", "duration: \"0s\"")).field, "spec.duration");
    let no_target = PARTITION.split("  target:").next().expect("has a target").to_string();
    assert_eq!(refused(&no_target).field, "spec.target");
    let e = refused(&PARTITION.replace(
        "    labelSelectors: {app: web}\n",
        "    expressionSelectors: [{key: app, operator: Exists, values: [x]}]\n",
    ));
    assert_eq!(e.field, "spec.selector.expressionSelectors[0].values");
    let e = NetworkChaos::parse(&doc(PARTITION).replace("chaos-mesh.org/v1alpha1", "pingcap.com/v1alpha1"))
        .expect_err("refused");
    assert_eq!(e.field, "apiVersion");
}

#[test]
fn duplicate_and_corrupt_as_chaos_mesh_writes_them() {
    let base = "  mode: all\n  selector: {labelSelectors: {app: web}}\n  target: {mode: all}\n";
    let exp = NetworkChaos::parse(&doc(&format!(
        "  action: duplicate\n{base}  duplicate:\n    duplicate: \"50\"\n    correlation: \"25\"\n"
    )))
    .expect("valid");
    assert_eq!(exp.fault, Fault::Duplicate { probability: 1 << 31, correlation: 1 << 30 });
    let exp = NetworkChaos::parse(&doc(&format!("  action: corrupt\n{base}  corrupt: {{corrupt: \"25\"}}\n")))
        .expect("valid");
    assert_eq!(exp.fault, Fault::Corrupt { probability: 1 << 30, correlation: 0, fix_checksum: false });
    // Weir's annotation repairs the checksum.
    let annotated = doc(&format!("  action: corrupt\n{base}  corrupt: {{corrupt: \"25\"}}\n")).replace(
        "  namespace: shop\n",
        &format!("  namespace: shop\n  annotations:\n    {CHECKSUM_ANNOTATION}: fixed\n"),
    );
    let exp = NetworkChaos::parse(&annotated).expect("valid");
    assert_eq!(exp.fault, Fault::Corrupt { probability: 1 << 30, correlation: 0, fix_checksum: true });
    let e = NetworkChaos::parse(&annotated.replace(": fixed", ": sometimes")).expect_err("refused");
    assert_eq!(e.field, format!("metadata.annotations.{CHECKSUM_ANNOTATION}"));
    let e = NetworkChaos::parse(&annotated.replace("action: corrupt", "action: loss").replace("corrupt:", "loss:"))
        .expect_err("refused");
    assert_eq!(e.field, format!("metadata.annotations.{CHECKSUM_ANNOTATION}"), "{e}");

    // Bad values and other actions' parameters, by path.
    let refused_at = |spec: String| refused(&spec).field;
    assert_eq!(refused_at(format!("  action: duplicate\n{base}")), "spec.duplicate");
    assert_eq!(refused_at(format!("  action: corrupt\n{base}")), "spec.corrupt");
    assert_eq!(
        refused_at(format!("  action: duplicate\n{base}  duplicate: {{duplicate: \"101\"}}\n")),
        "spec.duplicate.duplicate"
    );
    assert_eq!(
        refused_at(format!("  action: corrupt\n{base}  corrupt: {{corrupt: \"5\", correlation: \"x\"}}\n")),
        "spec.corrupt.correlation"
    );
    assert_eq!(
        refused_at(format!("  action: corrupt\n{base}  corrupt: {{corrupt: \"5\"}}\n  loss: {{loss: \"5\"}}\n")),
        "spec.loss"
    );
    assert_eq!(
        refused_at(format!("  action: loss\n{base}  loss: {{loss: \"5\"}}\n  duplicate: {{duplicate: \"5\"}}\n")),
        "spec.duplicate"
    );
}

#[test]
fn bandwidth_as_chaos_mesh_writes_it() {
    let base = "  action: bandwidth\n  mode: all\n  selector: {labelSelectors: {app: web}}\n  target: {mode: all}\n";
    let exp = NetworkChaos::parse(&doc(&format!(
        "{base}  bandwidth:\n    rate: 1mbps\n    limit: 20971520\n    buffer: 10000\n"
    )))
    .expect("valid");
    assert_eq!(exp.fault, Fault::Bandwidth(Shaping { rate: 1 << 20, limit: 20971520, buffer: 10000, peak: None }));
    let exp = NetworkChaos::parse(&doc(&format!(
        "{base}  bandwidth: {{rate: 8Mbit, limit: 100, buffer: 1500, peakrate: 2000000, minburst: 1500}}\n"
    )))
    .expect("valid");
    assert_eq!(
        exp.fault,
        Fault::Bandwidth(Shaping { rate: 1_000_000, limit: 100, buffer: 1500, peak: Some((2_000_000, 1500)) })
    );
    assert_eq!(crate::params::rate_bytes("r", "10 KBPS").expect("rate"), 10240);
    let field = |bandwidth: &str| refused(&format!("{base}  bandwidth: {bandwidth}\n")).field;
    assert_eq!(field("{rate: fast, limit: 1, buffer: 1}"), "spec.bandwidth.rate");
    assert_eq!(field("{rate: 1.5mbps, limit: 1, buffer: 1}"), "spec.bandwidth.rate");
    assert_eq!(field("{rate: 0bps, limit: 1, buffer: 1}"), "spec.bandwidth.rate");
    assert_eq!(field("{rate: 1mbps, limit: 0, buffer: 1}"), "spec.bandwidth.limit");
    assert_eq!(field("{rate: 1mbps, limit: 1, buffer: 0}"), "spec.bandwidth.buffer");
    assert_eq!(field("{rate: 1mbps, limit: 1, buffer: 1, peakrate: 5}"), "spec.bandwidth.minburst");
    assert_eq!(field("{rate: 1mbps, limit: 1, buffer: 1, minburst: 5}"), "spec.bandwidth.peakrate");
    assert_eq!(field("{rate: 1mbps, limit: 1, buffer: 1, peakrate: 5, minburst: 5}"), "spec.bandwidth.peakrate");
    assert!(field("{rate: 1mbps, limit: 1}").starts_with("spec.bandwidth"));
    assert_eq!(refused(base).field, "spec.bandwidth");
}

#[test]
fn delay_as_chaos_mesh_writes_it() {
    use crate::delay::{DelayModel, Reorder};
    let base = "  action: delay\n  mode: all\n  selector: {labelSelectors: {app: web}}\n  target: {mode: all}\n";
    let exp = NetworkChaos::parse(&doc(&format!(
        "{base}  delay:\n    latency: 90ms\n    correlation: \"25\"\n    jitter: 90ms\n    reorder: {{reorder: \"50\", correlation: \"0\", gap: 3}}\n"
    )))
    .expect("valid");
    assert_eq!(
        exp.fault,
        Fault::Delay(DelayModel {
            latency: Duration::from_millis(90),
            jitter: Duration::from_millis(90),
            correlation: 1 << 30,
            reorder: Some(Reorder { probability: 1 << 31, correlation: 0, gap: 3 }),
        })
    );
    let exp = NetworkChaos::parse(&doc(&format!("{base}  delay: {{latency: 10ms, reorder: {{reorder: \"5\"}}}}\n")))
        .expect("valid");
    let Fault::Delay(model) = exp.fault else { panic!("a delay") };
    assert_eq!(model.reorder.map(|r| r.gap), Some(1), "tc's gap of 1");
    let field = |delay: &str| refused(&format!("{base}  delay: {delay}\n")).field;
    assert_eq!(field("{latency: soon}"), "spec.delay.latency");
    assert_eq!(field("{latency: 10ms, jitter: -1ms}"), "spec.delay.jitter");
    assert_eq!(field("{latency: 10ms, correlation: \"200\"}"), "spec.delay.correlation");
    assert_eq!(field("{latency: 10ms, reorder: {reorder: \"5\", gap: -2}}"), "spec.delay.reorder.gap");
    assert_eq!(field("{latency: 0ms, reorder: {reorder: \"5\"}}"), "spec.delay.reorder");
    assert_eq!(field("{latency: 2m}"), "spec.delay");
    assert_eq!(refused(base).field, "spec.delay");
}

#[test]
fn external_targets_with_direction_to_and_without_target_pods() {
    let to = PARTITION.replace("direction: both", "direction: to");
    let (exp, targets) =
        NetworkChaos::parse_with_targets(&doc(&format!("{to}  externalTargets: [172.30.0.9, example.com]\n")))
            .expect("valid");
    assert_eq!(exp.direction, Direction::To);
    assert!(targets.pods, "target pods too");
    assert_eq!(targets.external.len(), 2);
    let alone = to.split("  target:").next().expect("head").to_string() + "  externalTargets: [10.0.0.0/30]\n";
    let (_, targets) = NetworkChaos::parse_with_targets(&doc(&alone)).expect("valid without target");
    assert!(!targets.pods);
    assert_eq!(targets.external[0].addresses().map(|a| a.len()), Some(4));
    // Left out direction is to.
    let default = alone.replace("  direction: to\n", "");
    NetworkChaos::parse_with_targets(&doc(&default)).expect("direction defaults to to");
    assert_eq!(refused(&alone.replace("direction: to", "direction: from")).field, "spec.direction");
    assert_eq!(refused(&alone.replace("10.0.0.0/30", "10.0.0.0/8")).field, "spec.externalTargets[0]");
    assert_eq!(refused(&alone.replace("  externalTargets: [10.0.0.0/30]\n", "")).field, "spec.target");
}
