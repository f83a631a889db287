//! Kernel addresses to names through `/proc/kallsyms`, for the addresses a
//! profile saw.
//!
//! The table (120,000 lines on a distribution kernel) is never held: it is
//! read twice, line by line — once to find, for every asked address, the
//! highest symbol address at or below it, once to take the first name at
//! each of those addresses — so what is held is proportional to the
//! addresses asked. The choice is blazesym's (which the profiler used
//! before): the highest symbol at or below the address, the first in the
//! file among several at one address, address 0 (hidden addresses) never.

use std::io::BufRead;

/// One line's address and name: `ADDR TYPE NAME [MODULE]`.
fn parse_line(line: &str) -> Option<(u64, &str)> {
    let mut tokens = line.split_ascii_whitespace();
    let (addr, _kind, name) = (tokens.next()?, tokens.next()?, tokens.next()?);
    let addr = u64::from_str_radix(addr, 16).ok()?;
    (addr != 0).then_some((addr, name))
}

/// Calls `visit` with every symbol of one reading of the table.
fn for_each_symbol<R: BufRead>(mut reader: R, mut visit: impl FnMut(u64, &str)) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some((addr, name)) = parse_line(&line) {
            visit(addr, name);
        }
    }
}

/// The names of the symbols holding `addresses` (in their order; None where
/// no symbol is at or below one), reading the table from `open()` twice.
pub fn resolve<R: BufRead>(
    mut open: impl FnMut() -> std::io::Result<R>,
    addresses: &[u64],
) -> std::io::Result<Vec<Option<String>>> {
    let mut asked: Vec<u64> = addresses.to_vec();
    asked.sort_unstable();
    asked.dedup();
    // Each symbol is a candidate for the first asked address at or above it;
    // an address's symbol is the highest candidate of it and of every lower one.
    let mut best: Vec<Option<u64>> = vec![None; asked.len()];
    for_each_symbol(open()?, |addr, _| {
        let i = asked.partition_point(|a| *a < addr);
        if let Some(slot) = best.get_mut(i) {
            *slot = (*slot).max(Some(addr));
        }
    })?;
    let mut highest = None;
    for slot in &mut best {
        highest = highest.max(*slot);
        *slot = highest;
    }
    let mut starts: Vec<u64> = best.iter().flatten().copied().collect();
    starts.dedup();
    let mut names: Vec<Option<String>> = vec![None; starts.len()];
    for_each_symbol(open()?, |addr, name| {
        if let Ok(i) = starts.binary_search(&addr) {
            names[i].get_or_insert_with(|| name.to_string());
        }
    })?;
    let name_of = |start: u64| starts.binary_search(&start).ok().and_then(|i| names[i].clone());
    Ok(addresses.iter().map(|a| asked.binary_search(a).ok().and_then(|i| best[i]).and_then(name_of)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81001000 T do_one_initcall
ffffffff81001000 t do_one_initcall_alias
ffffffff81002000 t helper
ffffffffc0a00000 t bpf_prog_0123456789abcdef_weir_profile_sample	[bpf]
ffffffff81003000 T last_in_core
";

    fn resolve_in(table: &str, addresses: &[u64]) -> Vec<Option<String>> {
        resolve(|| Ok(std::io::Cursor::new(table.to_string())), addresses).expect("in memory")
    }

    #[test]
    fn resolves_to_the_highest_symbol_at_or_below_first_in_the_file() {
        let names = resolve_in(
            TABLE,
            &[0xffffffff81001000, 0xffffffff81001fff, 0xffffffff81002010, 0xffffffff81003100, 0xffffffffc0a00040, 0x10],
        );
        let names: Vec<Option<&str>> = names.iter().map(Option::as_deref).collect();
        assert_eq!(
            names,
            [
                Some("do_one_initcall"),
                Some("do_one_initcall"),
                Some("helper"),
                Some("last_in_core"),
                Some("bpf_prog_0123456789abcdef_weir_profile_sample"),
                None,
            ]
        );
    }

    #[test]
    fn skips_hidden_addresses_and_malformed_lines() {
        let names =
            resolve_in("0000000000000000 T hidden\nnot a line\nzz T bad\n0000000000001000 T shown\n", &[0x1800, 0x800]);
        assert_eq!(names, [Some("shown".to_string()), None]);
    }

    /// The real table: every symbol's own address and an address inside it
    /// resolve to it (or to the first of the names sharing its address).
    #[test]
    fn resolves_known_symbols_of_the_running_kernel() {
        let table = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
        let mut symbols: Vec<(u64, &str)> = table.lines().filter_map(parse_line).collect();
        assert!(!symbols.is_empty(), "kallsyms shows addresses (the tests run as root)");
        symbols.sort_by_key(|(addr, _)| *addr); // stable: the first in the file first

        // Only the core kernel's symbols are checked: BPF programs (`[bpf]`)
        // and modules come and go between the two reads of the table while
        // other tests load and unload programs, and a new one may take a
        // departed one's address.
        let core: std::collections::HashSet<u64> =
            table.lines().filter(|line| !line.contains('[')).filter_map(parse_line).map(|(addr, _)| addr).collect();
        let mut expected: Vec<(u64, &str)> = Vec::new();
        for (i, (addr, name)) in symbols.iter().enumerate() {
            if i % 97 == 0 && core.contains(addr) && expected.last().is_none_or(|(a, _)| a != addr) {
                let first = symbols.iter().find(|(a, _)| a == addr).map(|(_, n)| *n).unwrap_or(name);
                expected.push((*addr, first));
            }
        }
        let open = || std::fs::File::open("/proc/kallsyms").map(std::io::BufReader::new);
        let addresses: Vec<u64> = expected.iter().map(|(a, _)| *a).collect();
        let names = resolve(open, &addresses).expect("read");
        for ((addr, want), got) in expected.iter().zip(&names) {
            assert_eq!(got.as_deref(), Some(*want), "at {addr:#x}");
        }
        let schedule = symbols.iter().find(|(_, n)| *n == "schedule").expect("the kernel has schedule()");
        let next = symbols.iter().map(|(a, _)| *a).filter(|a| *a > schedule.0).min().expect("a symbol after it");
        let inside = resolve(open, &[schedule.0 + (next - schedule.0) / 2]).expect("read");
        assert_eq!(inside[0].as_deref(), Some("schedule"));
    }
}
