//! A node binary whose V8 layout cannot be read gets one warning line that
//! says what is missing, and loopbpf carries on with the perf map: its
//! `v8dbg_*` symbols renamed (a build without postmortem metadata), or one
//! of their values out of range (a doctored binary).

use integration_tests::{node_for, overlaps, Episode, Run, Scenario};
use std::path::Path;

/// `node` with every `v8dbg_` in the file replaced by `replacement` (same
/// length: the ELF stays valid, only those symbol names change).
fn renamed_metadata(node: &Path, to: &Path, replacement: &[u8; 6]) {
    let mut data = std::fs::read(node).expect("read node");
    let mut renamed = 0;
    let mut i = 0;
    while let Some(at) = data[i..].windows(6).position(|w| w == b"v8dbg_") {
        data[i + at..i + at + 6].copy_from_slice(replacement);
        renamed += 1;
        i += at + 6;
    }
    assert!(
        renamed > 400,
        "only {renamed} v8dbg_ names in {}",
        node.display()
    );
    std::fs::write(to, &data).expect("write node copy");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(to, mode).expect("chmod node copy");
}

/// The perf map still names the busy loop (the script runs with its flags).
fn named_by_perf_map(run: &Run) -> Vec<String> {
    let blocks = run.blocks();
    let episodes = run.episodes();
    let mut problems = Vec::new();
    let Some(block) = blocks.iter().find(|b| b.name == "blockBusyLoop") else {
        return vec![format!("no blockBusyLoop block: {blocks:?}")];
    };
    let matching: Vec<&Episode> = episodes
        .iter()
        .filter(|e| overlaps(e.span(), block.span()))
        .collect();
    match matching[..] {
        [e] if e
            .top_frame
            .as_deref()
            .is_some_and(|t| t.starts_with("blockBusyLoop ")) => {}
        _ => problems.push(format!(
            "blockBusyLoop: want one episode named from the perf map, got {matching:?}"
        )),
    }
    problems
}

#[test]
fn a_node_without_v8_metadata_warns_once_and_keeps_perf_maps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node");
    renamed_metadata(&node_for(22), &node, b"v8DBG_");
    warns_once_and_keeps_perf_maps(&node, "no V8 postmortem metadata");
}

#[test]
fn a_node_with_an_out_of_range_layout_warns_once_and_keeps_perf_maps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node");
    std::fs::copy(node_for(22), &node).expect("copy node");
    // v8dbg_off_fp_function, a 4-byte value, set to 4096: out of range.
    let data = std::fs::read(&node).expect("read node");
    let at = value_offset(&data, "v8dbg_off_fp_function");
    let mut doctored = data;
    doctored[at..at + 4].copy_from_slice(&4096i32.to_le_bytes());
    std::fs::write(&node, &doctored).expect("write doctored node");
    warns_once_and_keeps_perf_maps(&node, "off_fp_function = 4096 is out of range");
}

/// Runs blocks.js on `node`: loopbpf must print exactly one "named from perf
/// maps only" warning, containing `why`, and still name the blocks from the
/// perf map.
fn warns_once_and_keeps_perf_maps(node: &std::path::Path, why: &str) {
    let run = Scenario::new(22, "blocks.js").node_binary(node).run();
    let warned: Vec<&str> = run
        .loopbpf_stderr
        .lines()
        .filter(|l| l.contains("named from perf maps only"))
        .collect();
    let mut problems = Vec::new();
    if warned.len() != 1 || !warned[0].contains(why) {
        problems.push(format!("want one warning saying {why:?}, got {warned:?}"));
    }
    problems.extend(named_by_perf_map(&run));
    run.check(problems);
}

/// File offset of the value of data symbol `name`.
fn value_offset(data: &[u8], name: &str) -> usize {
    use object::{Object, ObjectSection, ObjectSymbol};
    let elf = object::File::parse(data).expect("elf");
    let symbol = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} in node"));
    let section = elf
        .sections()
        .find(|s| s.address() <= symbol.address() && symbol.address() < s.address() + s.size())
        .expect("the symbol's section");
    let (offset, _) = section.file_range().expect("a section in the file");
    (offset + symbol.address() - section.address()) as usize
}
