//! Interactive flamegraph SVGs through inferno. Pure.

use crate::profile::Profile;

/// Renders `profile` as an interactive SVG (search, zoom) titled `title`.
pub fn svg(profile: &Profile, title: &str, subtitle: &str) -> Result<Vec<u8>, String> {
    let folded = profile.folded();
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = "samples".to_string();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut out)
        .map_err(|e| format!("rendering the flamegraph: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_frame() {
        let mut p = crate::Profile::default();
        p.add(vec!["node-a".into(), "hot_inner_loop".into()], 3);
        let svg = String::from_utf8(super::svg(&p, "t", "s").expect("svg")).expect("utf-8");
        assert!(svg.starts_with("<?xml") && svg.contains("hot_inner_loop"));
    }
}
