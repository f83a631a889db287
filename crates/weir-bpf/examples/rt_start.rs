fn main() {
    let t = std::time::Instant::now();
    let lsm = weir_bpf::probe::bpf_lsm_allowed();
    println!("lsm probe {:?} {:?}", t.elapsed(), lsm.is_ok());
    let t = std::time::Instant::now();
    let s = weir_bpf::runtime::start(
        weir_bpf::runtime::SensorOptions { scope_cgroup: "/sys/fs/cgroup/unified".into(), lsm: false },
        |_| {},
    )
    .expect("start");
    println!("start {:?} {:?}", t.elapsed(), s.report.attached.len());
}
