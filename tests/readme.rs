//! The README's TOML examples are what users copy: each one must parse as
//! written, into the config schema (unknown keys are errors there).

use switchyard::config::raw::RawConfig;

/// Every ```toml block of the README, with the line it starts on.
fn toml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_toml_example_in_the_readme_parses_into_the_config_schema() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = toml_blocks(&readme);
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|(line, block)| {
            toml::from_str::<RawConfig>(block)
                .err()
                .map(|e| format!("README.md line {line}: {e}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
