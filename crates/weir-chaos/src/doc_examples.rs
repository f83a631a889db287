//! Chaos Mesh's own examples, as its documentation and its repository's
//! `examples/` write them (chaos-mesh.org "Simulate Network Faults" and
//! "Simulate Pod Faults"; `examples/network-*-example.yaml`,
//! `examples/pod-kill-example.yaml`): accepted when Weir can honour them,
//! else refused by the path of what it cannot.

use std::time::Duration;

use crate::delay::DelayModel;
use crate::spec::{Direction, Fault, Mode, Shaping};

fn network(yaml: &str) -> Result<crate::Experiment, weir_spec::SpecError> {
    crate::parse("NetworkChaos", yaml)
}

fn refused_at(yaml: &str) -> String {
    network(yaml).expect_err("refused").field
}

/// The docs' examples leave `target` out (every packet of the selected
/// pods); Weir judges pairs of pods, so they need one.
const TARGET: &str =
    "  direction: to\n  target:\n    mode: all\n    selector:\n      labelSelectors:\n        'app': 'db'\n";

const PARTITION: &str = "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: partition
spec:
  action: partition
  mode: all
  selector:
    namespaces:
      - default
    labelSelectors:
      'app': 'app1'
  direction: to
  target:
    mode: all
    selector:
      namespaces:
        - default
      labelSelectors:
        'app': 'app2'
";

#[test]
fn the_partition_example_is_accepted_as_written() {
    let exp = network(PARTITION).expect("valid");
    assert_eq!((exp.name.as_str(), exp.fault, exp.direction), ("partition", Fault::Partition, Direction::To));
    assert_eq!((exp.selection.mode, exp.target.mode), (Mode::All, Mode::All));
    assert_eq!(exp.selection.selector.namespaces, vec!["default".to_string()]);
    assert_eq!(exp.target.selector.namespaces, vec!["default".to_string()]);
    assert_eq!(exp.duration, None);
}

const DELAY_WITH_TARGET: &str = "# Copyright 2021 Chaos Mesh Authors.
apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: network-delay-example
  namespace: chaos-testing
spec:
  action: delay
  mode: one
  selector:
    namespaces:
      - web
    labelSelectors:
      \"app.kubernetes.io/component\": \"web-app\"
  delay:
    latency: \"90ms\"
    correlation: \"25\"
    jitter: \"90ms\"
  direction: to
  target:
    selector:
      namespaces:
        - db
        - storage
      labelSelectors:
        \"app.kubernetes.io/component\": \"pool\"
    mode: one
  duration: \"10s\"
";

#[test]
fn the_delay_with_target_example_is_accepted_as_written() {
    let exp = network(DELAY_WITH_TARGET).expect("valid");
    let model = DelayModel {
        latency: Duration::from_millis(90),
        jitter: Duration::from_millis(90),
        correlation: 1 << 30,
        reorder: None,
    };
    assert_eq!(exp.fault, Fault::Delay(model));
    assert_eq!((exp.namespace.as_str(), exp.direction), ("chaos-testing", Direction::To));
    assert_eq!((exp.selection.mode, exp.target.mode), (Mode::One, Mode::One));
    assert_eq!(exp.target.selector.namespaces, vec!["db".to_string(), "storage".to_string()]);
    assert_eq!(exp.duration, Some(Duration::from_secs(10)));
}

/// (the example, the field Weir refuses it at, the fault it holds once
/// given a target and rid of Chaos Mesh 1.x's `scheduler`).
const WITHOUT_TARGET: &[(&str, &str, Fault)] = &[
    (
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: delay
spec:
  action: delay
  mode: one
  selector:
    namespaces:
      - default
    labelSelectors:
      'app': 'web-show'
  delay:
    latency: '10ms'
    correlation: '100'
    jitter: '0ms'
",
        "spec.target",
        Fault::Delay(DelayModel {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            correlation: u32::MAX,
            reorder: None,
        }),
    ),
    (
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: network-loss-example
  namespace: chaos-testing
spec:
  action: loss
  mode: one
  selector:
    labelSelectors:
      \"app.kubernetes.io/component\": \"tikv\"
  loss:
    loss: \"25\"
    correlation: \"25\"
  duration: \"10s\"
  scheduler:
    cron: \"@every 15s\"",
        "spec.scheduler",
        Fault::Loss { probability: 1 << 30, correlation: 1 << 30 },
    ),
    (
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: network-duplicate-example
  namespace: chaos-testing
spec:
  action: duplicate
  mode: one
  selector:
    labelSelectors:
      \"app.kubernetes.io/component\": \"tikv\"
  duplicate:
    duplicate: \"40\"
    correlation: \"25\"
  duration: \"10s\"
  scheduler:
    cron: \"@every 15s\"",
        "spec.scheduler",
        Fault::Duplicate { probability: 1717986918, correlation: 1 << 30 },
    ),
    (
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: network-corrupt-example
  namespace: chaos-testing
spec:
  action: corrupt
  mode: one
  selector:
    labelSelectors:
      \"app.kubernetes.io/component\": \"tikv\"
  corrupt:
    corrupt: \"40\"
    correlation: \"25\"
  duration: \"10s\"
",
        "spec.target",
        Fault::Corrupt { probability: 1717986918, correlation: 1 << 30, fix_checksum: false },
    ),
    (
        "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: bandwidth
spec:
  action: bandwidth
  mode: all
  selector:
    namespaces:
      - default
    labelSelectors:
      'app': 'app1'
  bandwidth:
    rate: '1mbps'
    limit: 20971520
    buffer: 10000
",
        "spec.target",
        Fault::Bandwidth(Shaping { rate: 1 << 20, limit: 20971520, buffer: 10000, peak: None }),
    ),
];

#[test]
fn the_examples_without_a_target_are_refused_by_path_and_accepted_with_one() {
    for (yaml, field, fault) in WITHOUT_TARGET {
        assert_eq!(refused_at(yaml), *field, "{yaml}");
        let kept: String = yaml.split("  scheduler:").next().unwrap_or(yaml).to_string();
        let targeted = format!("{}\n{TARGET}", kept.trim_end());
        let exp = network(&targeted).unwrap_or_else(|e| panic!("{e}: {targeted}"));
        assert_eq!(exp.fault, *fault, "{targeted}");
        assert_eq!(exp.direction, Direction::To);
    }
}

#[test]
fn the_pod_kill_example_is_accepted_and_container_kill_refused() {
    let pod_kill = "# Copyright 2021 Chaos Mesh Authors.
apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata:
  name: pod-kill-example
spec:
  action: pod-kill
  mode: one
  selector:
    labelSelectors:
      \"app.kubernetes.io/component\": \"tikv\"
";
    let exp = crate::parse("PodChaos", pod_kill).expect("valid");
    assert_eq!(exp.name, "pod-kill-example");
    assert!(matches!(exp.fault, Fault::PodKill { .. }), "{:?}", exp.fault);
    assert_eq!(exp.selection.mode, Mode::One);
    let docs_pod_kill = "apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata:
  name: pod-kill-example
  namespace: chaos-testing
spec:
  action: pod-kill
  mode: one
  selector:
    namespaces:
      - tidb-cluster-demo
    labelSelectors:
      'app.kubernetes.io/component': 'tikv'
";
    let exp = crate::parse("PodChaos", docs_pod_kill).expect("valid");
    assert_eq!(exp.selection.selector.namespaces, vec!["tidb-cluster-demo".to_string()]);
    let container_kill = "apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata:
  name: container-kill-example
  namespace: chaos-testing
spec:
  action: container-kill
  mode: one
  containerNames: ['prometheus']
  selector:
    labelSelectors:
      'app.kubernetes.io/component': 'monitor'
";
    // Refused by the first field Weir cannot honour: the containers it names
    // (container-kill's action is refused too).
    let e = crate::parse("PodChaos", container_kill).expect_err("refused");
    assert_eq!(e.field, "spec.containerNames", "{e}");
    let whole_pods = container_kill.replace("  containerNames: ['prometheus']\n", "");
    let e = crate::parse("PodChaos", &whole_pods).expect_err("refused");
    assert_eq!(e.field, "spec.action", "{e}");
}
